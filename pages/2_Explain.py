"""Explain: choose neurons, formats, an explainer and sampling; preview the exact prompts and their token counts;
then explain (and optionally score) with a progress bar and a live table. Admins only: it spends API credit or
compute. Nothing is loaded or sent before a button is pressed, except a tokenizer for the preview.
"""

from __future__ import annotations

import time

import streamlit as st

from core import db as dbmod
from core import explain, jobs, llm, pipeline, prompts, records, render, simulate
from core.records import NeuronId
from core.scorers import SCORERS
from ui import elements, nav, prompt_preview, queries, resources, signin, tables

nav.sidebar("Explain")
st.title("Explain neurons")

DEFAULT_EXPLAINER = "openai:gpt-4o-mini"
POLL_EVERY_S = 1.0
JOB_KEY = "explain_job"  # the id of the job this session started or opened
PREVIEW_HEIGHT_PX = 420
ONE, LIST, FILE = "one neuron", "a list", "a file"


def _neurons(src: queries.Source, model: str) -> list[NeuronId]:
    how = st.radio("Neurons", [ONE, LIST, FILE], horizontal=True, key="explain_how")
    if how == ONE:
        left, right = st.columns(2)
        layer = left.selectbox("Layer", [layer for layer, _ in queries.layers(src, model)], key="explain_layer")
        index = right.selectbox("Neuron", queries.neuron_indices(src, model, layer), key="explain_neuron")
        return [NeuronId(layer, index)]
    if how == LIST:
        text = st.text_area("layer:index, separated by commas or new lines", key="explain_list", height=80)
        return records.parse_neurons(text) if text.strip() else []
    upload = st.file_uploader(
        "A CSV with columns layer,neuron, or text with layer:index entries", type=["csv", "txt"], key="explain_file"
    )
    return records.neurons_from_file(upload.name, upload.getvalue()) if upload is not None else []


def _settings() -> explain.ExplainOptions:
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
    return explain.ExplainOptions(
        sampling=llm.Sampling(temperature, top_p, int(max_tokens), seed=None if seed is None else int(seed)),
        samples=int(samples),
        cutoff=prompts.Cutoff.parse(mode, value),
        few_shot=None if few_shot == "bundled" else "none",
        use_cache=use_cache,
    )


def _preview(
    src: queries.Source, model: str, neurons: list[NeuronId], formats: list[str], explainer: str, settings, scorer
):
    record = queries.neuron(src, model, neurons[0])
    previews = prompt_preview.prompt_previews(record, formats, explainer, settings.cutoff, settings.few_shot)
    tokenizer = render.escape_markdown(previews[0].tokenizer)
    st.caption(f"The exact prompts for neuron {neurons[0]}, counted with the {tokenizer} tokenizer.")
    st.dataframe(
        prompt_preview.preview_table(previews),
        hide_index=True,
        width="content",
        column_config=prompt_preview.PREVIEW_TABLE_CONFIG,
    )
    estimate, note = prompt_preview.run_estimate(record, len(neurons), previews, explainer, settings, scorer)
    if estimate is not None:
        st.markdown("**Estimated cost**")
        st.caption(
            render.escape_markdown(
                f"Per neuron, like {neurons[0]}: explaining ({estimate.explanations_per_neuron} explanation(s), output "
                f"at most {settings.sampling.max_tokens} tokens each)"
                + (", then scoring each explanation" if estimate.scoring is not None else "")
                + f"; in all: {len(neurons)} neuron(s). "
                + note
            )
        )
        st.dataframe(
            estimate.rows(), hide_index=True, width="content", column_config=prompt_preview.ESTIMATE_TABLE_CONFIG
        )
    for tab, preview in zip(st.tabs([p.format for p in previews]), previews, strict=True):
        with tab:
            if preview.error:
                st.warning(render.escape_markdown(preview.error))
            if preview.text:
                # A fixed height: the original format's prompt runs to hundreds of lines.
                st.code(preview.text, language=None, wrap_lines=True, height=PREVIEW_HEIGHT_PX)


def _start(db, model: str, neurons: list[NeuronId], formats: list[str], explainer: str, settings, scorer) -> None:
    """Start the job in the background and remember its id in the session and the URL, so that a refresh or
    coming back to this page finds it."""
    name, simulator, method = scorer if scorer is not None else ("simulation", None, None)
    job = jobs.ExplainJob(
        dbmod.database_file(db),
        model,
        tuple(neurons),
        tuple(formats),
        explainer,
        settings,
        simulator=simulator,
        method=method,
        scorer=name,
    )
    job_id = resources.job_registry().start(job)
    st.session_state[JOB_KEY] = job_id
    st.query_params["job"] = job_id


def _job_id() -> str | None:
    """This session's job, or the one named in the URL (`?job=ID`) after a refresh or a visit elsewhere."""
    job_id = st.query_params.get("job") or st.session_state.get(JOB_KEY)
    if job_id:
        st.session_state[JOB_KEY] = job_id
        st.query_params["job"] = job_id
    return job_id


def _forget_job() -> None:
    st.session_state.pop(JOB_KEY, None)
    st.query_params.pop("job", None)


def _show(db, snapshot: jobs.JobSnapshot) -> None:
    """A job's progress and live table while it runs; its reports, table and costs once it ends."""
    job = snapshot.job
    st.subheader(f"Job {snapshot.job_id}")
    if snapshot.phase == jobs.EXPLAINING:
        fraction = snapshot.done / snapshot.total if snapshot.total else 0.0
        st.progress(fraction, text=f"Explained {snapshot.done} of {snapshot.total}")
    elif snapshot.phase == jobs.SCORING:
        fraction = snapshot.done / snapshot.total if snapshot.total else 0.0
        st.progress(fraction, text=f"Scored {snapshot.done} of {snapshot.total}")
    if snapshot.error:
        st.error(render.escape_markdown(f"the job stopped: {snapshot.error}"))
    report = snapshot.explained
    if report is None:
        rows = dbmod.explanations_after(db, snapshot.start_id, job.model)
        st.dataframe(tables.job_table(rows), hide_index=True, width="stretch", column_config=tables.JOB_TABLE_CONFIG)
        return
    st.success(f"{report.ok} explained, {report.skipped} already done, {report.failed} failed (of {report.total})")
    for error in report.errors[:5]:
        st.error(render.escape_markdown(error))
    rows = report.rows(db)
    st.dataframe(tables.job_table(rows), hide_index=True, width="stretch", column_config=tables.JOB_TABLE_CONFIG)
    st.markdown("**Token cost per format**")
    st.caption(
        "Input tokens in their unit: cl100k counted offline (as the preview counts them) and server as the API "
        "reported them; both show when both exist."
    )
    st.dataframe(
        explain.cost_table(explain.with_cl100k_counts(rows)), width="stretch", column_config=tables.COST_TABLE_CONFIG
    )
    scored = snapshot.scored
    if scored is None:
        return
    st.success(
        render.escape_markdown(
            f"Scored with {scored.simulator} ({scored.method}): {scored.ok} ok, {scored.failed} failed, "
            f"{scored.skipped} already scored. Open a neuron on the Neurons page to see its scores."
        )
    )
    for error in scored.errors[:5]:
        st.error(render.escape_markdown(error))


def _job_list(snapshots: list[jobs.JobSnapshot]) -> None:
    """The jobs of this server on this database, newest first: open one with its link."""
    with st.expander(f"Jobs of this server ({len(snapshots)})"):
        st.dataframe(
            [
                {
                    "job": f"?job={s.job_id}",
                    "phase": s.phase,
                    "progress": f"{s.done} of {s.total}",
                    "model": s.job.model,
                    "neurons": len(s.job.neurons),
                    "formats": ", ".join(s.job.formats),
                    "explainer": s.job.explainer,
                    "scorer": f"{s.job.scorer}: {s.job.simulator}" if s.job.simulator else "",
                    "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.started_at)),
                }
                for s in snapshots
            ],
            hide_index=True,
            width="stretch",
            column_config={"job": st.column_config.LinkColumn("job", display_text=r"\?job=(.*)")},
        )


def _scorer() -> tuple[str, str, str | None] | None:
    """(scorer, its model spec, simulation method) to score the explanations with after explaining, or None."""
    left, middle, right = st.columns([1, 2, 1])
    scorer = left.selectbox(
        "Scorer",
        list(SCORERS),
        key="explain_scorer",
        format_func=lambda name: f"{name}: {SCORERS[name].description}",
        help="Each scorer's scores are stored and shown apart (docs/METHOD.md §10)",
    )
    placeholders = {"simulator": "hf:PATH_OR_ID or openai:MODEL", "chat LLM": "openai:MODEL or hf:ID_OR_PATH"}
    spec = middle.text_input(
        f"{SCORERS[scorer].model_kind.capitalize()} (optional: score the explanations after explaining)",
        key="explain_simulator",
        placeholder=placeholders.get(SCORERS[scorer].model_kind, "minilm or openai:MODEL"),
    ).strip()
    method = None
    if scorer == "simulation":
        method = right.selectbox("Simulation method", ["default", *simulate.SIMULATORS], key="explain_method")
    else:
        right.caption(render.escape_markdown(simulate.method_note(SCORERS[scorer].metric)))
    if not spec:
        return None
    if scorer == "simulation":
        simulate.parse_simulator_spec(spec)
    return scorer, spec, None if method in (None, "default") else method


def _try_explanation(src: queries.Source, model: str, neuron_id: NeuronId) -> None:
    with st.expander(f"Simulate an explanation of your own on neuron {neuron_id}"):
        text = st.text_input("Explanation", key="explain_own_text")
        left, right = st.columns([2, 1])
        spec = left.text_input("Simulator", key="explain_own_simulator", placeholder="hf:PATH_OR_ID or openai:MODEL")
        method = right.selectbox("Simulation method", ["default", *simulate.SIMULATORS], key="explain_own_method")
        if not st.button("Simulate", key="explain_own_run", disabled=not (text.strip() and spec.strip())):
            return
        record = queries.neuron(src, model, neuron_id)
        records = record.split("valid")
        with st.spinner("Simulating…"):
            outcome = pipeline.simulate_text(text, records, spec.strip(), None if method == "default" else method)
        if not outcome.ok or outcome.predictions is None:
            st.error(render.escape_markdown(f"the simulation failed: {outcome.error}"))
            return
        score = outcome.score
        st.metric("score (correlation, valid split)", "undefined" if score is None else f"{score:.3f}")
        scale = render.default_scale(record.top)
        tidy = render.spacing_lost(record.top + record.random)
        parts = []
        for number, (excerpt, predictions) in enumerate(zip(records, outcome.predictions, strict=True), start=1):
            parts.append(render.label_html(f"excerpt {number}"))
            parts.append(render.comparison_html(excerpt, predictions, scale, tidy=tidy))
        st.html(render.styled(*parts))


def _form(db, src: queries.Source, models: list[str]) -> None:
    """Choose what to explain, preview it, and start a job."""
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
    scorer = _scorer()
    if not neurons or not formats:
        st.info("Choose at least one neuron and one format.")
        return
    llm.parse_backend_spec(explainer)
    total = len(neurons) * len(formats) * settings.samples
    st.caption(
        f"{len(neurons)} neuron(s) × {len(formats)} format(s) × {settings.samples} sample(s) = {total:,} "
        "explanation(s); those already stored are skipped. The job runs on the server: you may leave this page "
        "and come back (or keep its link) to follow it."
    )
    if st.toggle("Preview the prompts", key="explain_preview"):
        with elements.errors_shown():
            _preview(src, model, neurons, formats, explainer, settings, scorer)
    if st.button("Run", type="primary", key="explain_run"):
        with elements.errors_shown():
            _start(db, model, neurons, formats, explainer, settings, scorer)
            st.rerun()
    _try_explanation(src, model, neurons[0])


with elements.errors_shown(), queries.database() as db:
    src = queries.source(db)
    models = list(queries.summary(src)["models"])
    if not models:  # said before signing in: there is nothing to explain either way
        st.info("No neurons in the database yet. Collect some with `python -m core collect` (see the home page).")
        st.stop()
    rater = signin.sign_in(db, "Explaining spends API credit or compute: sign in as an admin.")
    if rater is None:
        st.stop()
    if not rater.is_admin:
        st.error(f"{render.escape_markdown(rater.name)} is a rater, not an admin: only admins may explain neurons.")
        st.stop()
    registry = resources.job_registry()
    job_id = _job_id()
    snapshot = registry.get(job_id) if job_id else None
    if job_id and snapshot is None:
        st.info(f"Job {render.escape_markdown(job_id)} is unknown to this server (it may have restarted).")
        _forget_job()
    if snapshot is not None:
        with elements.errors_shown():
            _show(db, snapshot)
        if not snapshot.running and st.button("Dismiss this job", key="explain_dismiss"):
            _forget_job()
            st.rerun()
    listed = registry.jobs(dbmod.database_file(db))
    if listed:
        _job_list(listed)
    with elements.errors_shown():
        _form(db, src, models)
    if snapshot is not None and snapshot.running:
        # Poll: the job runs in its own thread and only the snapshot tells how far it has come.
        time.sleep(POLL_EVERY_S)
        st.rerun()
