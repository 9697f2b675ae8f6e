"""Explain: choose neurons, formats, an explainer and sampling; preview the exact prompts and their token counts;
then explain (and optionally score) with a progress bar and a live table. Admins only: it spends API credit or
compute. Nothing is loaded or sent before a button is pressed, except a tokenizer for the preview.
"""

from __future__ import annotations

import time

import streamlit as st

from core import dashboard, explain, llm, pipeline, prompts, render, simulate, tables
from core import db as dbmod
from core.records import NeuronId

st.set_page_config(page_title="Explain", page_icon="🔬", layout="wide")
st.title("Explain neurons")

DEFAULT_EXPLAINER = "openai:gpt-4o-mini"
LIVE_TABLE_EVERY_S = 0.5
PREVIEW_HEIGHT_PX = 420
ONE, LIST, FILE = "one neuron", "a list", "a file"


def _neurons(src: dashboard.Source, model: str) -> list[NeuronId]:
    how = st.radio("Neurons", [ONE, LIST, FILE], horizontal=True, key="explain_how")
    if how == ONE:
        left, right = st.columns(2)
        layer = left.selectbox("Layer", [layer for layer, _ in dashboard.layers(src, model)], key="explain_layer")
        index = right.selectbox("Neuron", dashboard.neuron_indices(src, model, layer), key="explain_neuron")
        return [NeuronId(layer, index)]
    if how == LIST:
        text = st.text_area("layer:index, separated by commas or new lines", key="explain_list", height=80)
        return dashboard.neurons_from_text(text) if text.strip() else []
    upload = st.file_uploader(
        "A CSV with columns layer,neuron, or text with layer:index entries", type=["csv", "txt"], key="explain_file"
    )
    return dashboard.neurons_from_upload(upload.name, upload.getvalue()) if upload is not None else []


def _settings() -> dict:
    defaults = llm.Sampling()
    with st.expander("Sampling, cutoff and few-shot examples"):
        first, second, third = st.columns(3)
        temperature = first.slider("Temperature", 0.0, 2.0, defaults.temperature, 0.1, key="explain_temperature")
        top_p = first.slider("top_p", 0.05, 1.0, defaults.top_p, 0.05, key="explain_top_p")
        max_tokens = second.number_input("Max tokens", 1, 1000, defaults.max_tokens, key="explain_max_tokens")
        seed = second.number_input("Seed (sample k uses seed + k)", 0, None, None, key="explain_seed")
        samples = second.number_input("Samples per neuron and format", 1, 20, 1, key="explain_samples")
        mode = third.selectbox(
            "Cutoff (natural formats)",
            prompts.CUTOFF_MODES,
            index=prompts.CUTOFF_MODES.index(prompts.DEFAULT_CUTOFF.mode),
            key="explain_cutoff_mode",
            help="quantile: the neuron's corpus quantile of excerpt maxima (the paper's rule); relative: a fraction "
            "of the shown maximum; absolute: a raw activation",
        )
        value = third.text_input("Cutoff value (empty: the mode's default)", key="explain_cutoff_value")
        few_shot = third.radio("Few-shot examples", ["bundled", "none"], horizontal=True, key="explain_few_shot")
        use_cache = third.checkbox("Reuse cached answers", value=True, key="explain_cache")
    return {
        "sampling": llm.Sampling(temperature, top_p, int(max_tokens), seed=None if seed is None else int(seed)),
        "samples": int(samples),
        "cutoff": prompts.Cutoff.parse(mode, value),
        "few_shot": None if few_shot == "bundled" else "none",
        "use_cache": use_cache,
    }


def _preview(src: dashboard.Source, model: str, neuron_id: NeuronId, formats: list[str], explainer: str, settings):
    record = dashboard.neuron(src, model, neuron_id)
    previews = tables.prompt_previews(record, formats, explainer, settings["cutoff"], settings["few_shot"])
    tokenizer = dashboard.markdown_escape(previews[0].tokenizer)
    st.caption(f"The exact prompts for neuron {neuron_id}, counted with the {tokenizer} tokenizer.")
    st.dataframe(
        tables.preview_table(previews),
        hide_index=True,
        width="content",
        column_config=tables.PREVIEW_TABLE_CONFIG,
    )
    for tab, preview in zip(st.tabs([p.format for p in previews]), previews, strict=True):
        with tab:
            if preview.error:
                st.warning(dashboard.one_line(preview.error))
            if preview.text:
                # A fixed height: the original format's prompt runs to hundreds of lines.
                st.code(preview.text, language=None, wrap_lines=True, height=PREVIEW_HEIGHT_PX)


def _run(db, model: str, neurons: list[NeuronId], formats: list[str], explainer: str, settings, scorer) -> None:
    start = dbmod.last_explanation_id(db)  # the live table shows what this run stores after it
    bar = st.progress(0.0, text="Explaining…")
    live = st.empty()
    shown_at = [0.0]

    def progress(done: int, total: int) -> None:
        bar.progress(done / total if total else 1.0, text=f"Explained {done} of {total}")
        # Redraw the table at most every half second: a long job reports thousands of times.
        if done == total or time.monotonic() - shown_at[0] > LIVE_TABLE_EVERY_S:
            shown_at[0] = time.monotonic()
            rows = dbmod.explanations_after(db, start, model)
            live.dataframe(
                tables.job_table(rows), hide_index=True, width="stretch", column_config=tables.JOB_TABLE_CONFIG
            )

    report = explain.explain_neurons(db, model, neurons, formats, explainer, progress=progress, **settings)
    st.success(f"{report.ok} explained, {report.skipped} already done, {report.failed} failed (of {report.total})")
    for error in report.errors[:5]:
        st.error(dashboard.one_line(error))
    rows = report.rows(db)
    live.dataframe(tables.job_table(rows), hide_index=True, width="stretch", column_config=tables.JOB_TABLE_CONFIG)
    st.markdown("**Token cost per format**")
    st.caption(
        "Input tokens in their unit: cl100k counted offline (as the preview counts them) and server as the API "
        "reported them; both show when both exist."
    )
    st.dataframe(
        explain.cost_table(explain.with_cl100k_counts(rows)), width="stretch", column_config=tables.COST_TABLE_CONFIG
    )
    if scorer is None:
        return
    simulator, method = scorer
    score_bar = st.progress(0.0, text="Scoring…")
    scored = pipeline.score_explanations(
        db,
        model,
        simulator,
        method=method,
        neurons=neurons,
        formats=formats,
        explainers=[_explainer_name(explainer)],
        progress=lambda done, total: score_bar.progress(done / total if total else 1.0, f"Scored {done} of {total}"),
    )
    score_bar.progress(1.0, text="Scored")
    st.success(
        dashboard.markdown_escape(
            f"Scored with {scored.simulator} ({scored.method}): {scored.ok} ok, {scored.failed} failed, "
            f"{scored.skipped} already scored. Open a neuron on the Neurons page to see its simulation."
        )
    )
    for error in scored.errors[:5]:
        st.error(dashboard.one_line(error))


def _explainer_name(spec: str) -> str:
    """The explainer name explanations are stored under (`openai:MODEL`, `hf:PATH`)."""
    kind, name = llm.parse_backend_spec(spec)
    return f"{kind}:{name}"


def _simulator() -> tuple[str, str | None] | None:
    left, right = st.columns([2, 1])
    spec = left.text_input(
        "Simulator (optional: score the explanations after explaining)",
        key="explain_simulator",
        placeholder="hf:PATH_OR_ID or openai:MODEL",
    ).strip()
    methods = ["default", *simulate.SIMULATORS]
    method = right.selectbox("Simulation method", methods, key="explain_method")
    if not spec:
        return None
    simulate.parse_simulator_spec(spec)
    return spec, None if method == "default" else method


def _try_explanation(src: dashboard.Source, model: str, neuron_id: NeuronId) -> None:
    with st.expander(f"Simulate an explanation of your own on neuron {neuron_id}"):
        text = st.text_input("Explanation", key="explain_own_text")
        left, right = st.columns([2, 1])
        spec = left.text_input("Simulator", key="explain_own_simulator", placeholder="hf:PATH_OR_ID or openai:MODEL")
        method = right.selectbox("Simulation method", ["default", *simulate.SIMULATORS], key="explain_own_method")
        if not st.button("Simulate", key="explain_own_run", disabled=not (text.strip() and spec.strip())):
            return
        record = dashboard.neuron(src, model, neuron_id)
        records = record.split("valid")
        with st.spinner("Simulating…"):
            outcome = pipeline.simulate_text(text, records, spec.strip(), None if method == "default" else method)
        if outcome["status"] != "ok":
            st.error(dashboard.one_line(f"the simulation failed: {outcome['error']}"))
            return
        score = outcome["score"]
        st.metric("score (correlation, valid split)", "undefined" if score is None else f"{score:.3f}")
        scale = render.default_scale(record.top)
        tidy = render.spacing_lost(record.top + record.random)
        parts = []
        for number, (excerpt, predictions) in enumerate(zip(records, outcome["predictions"], strict=True), start=1):
            parts.append(render.label_html(f"excerpt {number}"))
            parts.append(render.comparison_html(excerpt, predictions, scale, tidy=tidy))
        st.html(render.styled(*parts))


with dashboard.errors_shown(), dashboard.database() as db:
    src = dashboard.source(db)
    models = list(dashboard.summary(src)["models"])
    if not models:  # said before signing in: there is nothing to explain either way
        st.info("No neurons in the database yet. Collect some with `python -m core collect` (see the home page).")
        st.stop()
    rater = dashboard.sign_in(db, "Explaining spends API credit or compute: sign in as an admin.")
    if rater is None:
        st.stop()
    if not rater.is_admin:
        st.error(f"{dashboard.markdown_escape(rater.name)} is a rater, not an admin: only admins may explain neurons.")
        st.stop()
    model = st.selectbox("Model", models, key="explain_model")
    neurons = _neurons(src, model)
    formats = st.multiselect(
        "Prompt formats", list(prompts.FORMATS), default=list(prompts.FORMATS), key="explain_formats"
    )
    explainer = st.text_input(
        "Explainer",
        value=DEFAULT_EXPLAINER,
        key="explain_explainer",
        help=" or ".join(backend.spec for backend in llm.BACKENDS.values()),
    ).strip()
    settings = _settings()
    scorer = _simulator()
    if not neurons or not formats:
        st.info("Choose at least one neuron and one format.")
        st.stop()
    llm.parse_backend_spec(explainer)
    total = len(neurons) * len(formats) * settings["samples"]
    st.caption(
        f"{len(neurons)} neuron(s) × {len(formats)} format(s) × {settings['samples']} sample(s) = {total:,} "
        "explanation(s); those already stored are skipped."
    )
    if st.toggle("Preview the prompts", key="explain_preview"):
        with dashboard.errors_shown():
            _preview(src, model, neurons[0], formats, explainer, settings)
    if st.button("Run", type="primary", key="explain_run"):
        _run(db, model, neurons, formats, explainer, settings, scorer)
    _try_explanation(src, model, neurons[0])
