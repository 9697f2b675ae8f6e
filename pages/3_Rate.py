"""Rate: blinded pairwise ratings, one item at a time.

What a rater sees comes only from core.human_eval's RaterItem, which names no arm, format or explainer; nothing
else about the explanations is read here. The time on an item is measured on the server, from the moment the item
was first shown in this session to the moment its rating arrives.
"""

from __future__ import annotations

import time

import streamlit as st

from core import human_eval, raters, render
from core.errors import NotFoundError, WorkbenchError
from core.records import NeuronId
from ui import elements, nav, queries, signin, studies

nav.sidebar("Rate")
st.title("Rate explanations")

STUDY = "rate_study"
CONFIDENCE, COMMENT = "rate_confidence", "rate_comment"
SHOWN_AT = "rate_shown_at"  # {"study id:item id": time.monotonic() when first shown}
NOTICE = "rate_notice"  # ("success" | "error", text) from the last submission, shown once
CONFIDENCE_LABELS = {1: "1 · guessing", 2: "2", 3: "3 · fairly sure", 4: "4", 5: "5 · certain"}
DEFAULT_INSTRUCTIONS = (
    "Each item shows text excerpts where one neuron of a language model fires strongly; the background colour "
    "of a token shows how strongly. Read them, then choose the explanation that better describes what the "
    "neuron responds to."
)


def _submit(study: str, rater: str, item_id: int, timer: str, choice: str) -> None:
    """Store the rating (runs before the next script run, so that run already shows the next item)."""
    seconds = time.monotonic() - st.session_state.get(SHOWN_AT, {}).get(timer, time.monotonic())
    try:
        with queries.database() as db:
            human_eval.submit_rating(
                db,
                study,
                rater,
                item_id,
                choice,
                confidence=st.session_state.get(CONFIDENCE),
                comment=st.session_state.get(COMMENT),
                seconds=round(seconds, 3),
            )
            remaining = human_eval.rater_progress(db, study, rater).remaining
    except WorkbenchError as exc:
        st.session_state[NOTICE] = ("error", str(exc))
        return
    st.session_state.get(SHOWN_AT, {}).pop(timer, None)
    message = "Saved. Here is the next item." if remaining else "Saved. That was your last item in this study."
    st.session_state[NOTICE] = ("success", message)


def _notice() -> None:
    kind, text = st.session_state.pop(NOTICE, (None, None))
    if kind == "error":
        st.error(render.escape_markdown(text))
    elif kind == "success":
        st.toast(text)


def _excerpts(db, item: human_eval.RaterItem) -> None:
    try:
        record = queries.neuron(queries.source(db), item.model, NeuronId.parse(item.neuron))
    except NotFoundError:
        st.info("No text excerpts are stored for this neuron; judge the explanations on their own.")
        return
    excerpts = studies.rating_excerpts(record)
    st.caption(
        "Where the neuron fires: a stronger background means stronger activation; hover a token for its value. "
        "· is a space, ⏎ a new line, ⇥ a tab."
    )
    # Positive activations only, as the explainers saw them (docs/METHOD.md §1 normalises relu(a)).
    scale = render.default_scale(excerpts)
    st.html(render.styled(render.records_html(excerpts, scale, negatives=False)))


def _item(db, study: human_eval.Study, rater: raters.Rater, item: human_eval.RaterItem) -> None:
    timer = f"{study.id}:{item.item_id}"
    st.session_state.setdefault(SHOWN_AT, {}).setdefault(timer, time.monotonic())
    position, done = studies.progress_text(item.progress.rated, item.progress.remaining)
    st.progress(done, text=f"Item {position}")
    _excerpts(db, item)
    first, second = st.columns(2)
    with first:
        st.markdown(f"**{human_eval.CHOICE_LABELS['left']}**")
        st.html(render.styled(render.text_html(item.explanation_1)))
    with second:
        st.markdown(f"**{human_eval.CHOICE_LABELS['right']}**")
        st.html(render.styled(render.text_html(item.explanation_2)))
    # One form: Tab walks confidence → comment → the choice buttons; a choice button submits everything at once.
    with st.form("rating", clear_on_submit=True, enter_to_submit=False, border=True):
        st.radio(
            "How sure are you? (optional)",
            list(CONFIDENCE_LABELS),
            index=None,
            horizontal=True,
            format_func=CONFIDENCE_LABELS.get,
            key=CONFIDENCE,
        )
        st.text_area("Comment (optional)", key=COMMENT, max_chars=human_eval.MAX_COMMENT_CHARS, height=80)
        st.markdown("**Which explanation fits the neuron better?**")
        # Each explanation's button sits under it; the other choices get a row of their own, so that no label is
        # cut short in a narrow window.
        sides = [choice for choice in item.choices if choice in ("left", "right")]
        others = [choice for choice in item.choices if choice not in sides]
        for row in (sides, others) if others else (sides,):
            for column, choice in zip(st.columns(2), row, strict=False):
                column.form_submit_button(
                    human_eval.CHOICE_LABELS[choice],
                    key=f"rate_{choice}",
                    type="primary" if choice in sides else "secondary",
                    width="stretch",
                    on_click=_submit,
                    args=(study.name, rater.name, item.item_id, timer, choice),
                )


with elements.errors_shown(), queries.database() as db:
    if not human_eval.list_studies(db):
        st.info("No study is open yet. Please come back later.")
        st.stop()
    rater = signin.sign_in(db, "Sign in with the name and access code the study's admin gave you.")
    if rater is None:
        st.stop()
    # Only the open studies this rater is assigned to (admins: only where the study lets admins rate).
    names = [study.name for study in human_eval.studies_for_rater(db, rater.name)]
    if not names:
        st.info(
            "There is no open study for you to rate right now. If you expected one, ask the study's admin to "
            "assign it to you."
        )
        st.stop()
    study_name = st.selectbox("Study", names, key=STUDY)
    study = human_eval.get_study(db, study_name)
    # Open until the rater's first rating in the study; then folded, so the item starts higher up the page.
    started = human_eval.rater_progress(db, study.name, rater.name).rated > 0
    with st.expander("Instructions", expanded=not started):
        st.html(render.styled(render.text_html(study.instructions.strip() or DEFAULT_INSTRUCTIONS)))
    _notice()
    item = human_eval.next_item(db, study.name, rater.name)
    standing = human_eval.rater_standing(db, study.name, rater.name)
    if item is None and not standing.may_rate:
        st.info(standing.message)
        st.stop()
    if item is None:
        progress = human_eval.rater_progress(db, study.name, rater.name)
        st.success(f"You have rated every item open to you in this study ({progress.rated} in all). Thank you!")
        st.stop()
    _item(db, study, rater, item)
