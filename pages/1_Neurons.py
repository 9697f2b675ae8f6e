"""Neurons: pick a neuron (or find one by its explanations), then read its excerpts, statistics and explanations.

Deep links: ?model=…&layer=…&neuron=… opens a neuron; the address follows the selection.
"""

from __future__ import annotations

import streamlit as st

from core import render
from core.records import NeuronId
from ui import charts, elements, nav, queries, resources, tables

nav.sidebar("Neurons")
st.title("Neurons")

MODEL, LAYER, NEURON = "neurons_model", "neurons_layer", "neurons_neuron"
FILTER, MIN_SCORE, SIMULATOR = "neurons_filter", "neurons_min_score", "neurons_simulator"
REQUESTED = "neurons_requested"  # a neuron asked for by a link or a search result, checked once it is picked
HIDDEN = (
    "This neuron is part of a study that is still running, so its explanations and scores are hidden to keep "
    "the raters blind. Admins who sign in (on the Results page) see them; everyone can once the study is closed."
)
LEGEND = (
    "Background: activation, on one scale for all excerpts of this neuron (warm = positive, blue = negative). "
    "Hover a token for its exact value. · is a space, ⏎ a new line, ⇥ a tab."
)


def _from_link() -> None:
    """On a session's first run, take the selection from the address (?model=…&layer=…&neuron=…)."""
    if MODEL in st.session_state:
        return
    params = st.query_params
    if "model" in params:
        st.session_state[MODEL] = params["model"]
    for key, name in ((LAYER, "layer"), (NEURON, "neuron")):
        if params.get(name, "").strip().isdigit():
            st.session_state[key] = int(params[name])
    if {"model", "layer", "neuron"} <= set(params):
        st.session_state[REQUESTED] = f"{params['model']} · {params['layer']}:{params['neuron']}"


def _keep_valid(key: str, options: list) -> None:
    """A remembered choice that is no longer offered (another model, a filter) falls back to the first option."""
    if st.session_state.get(key) not in options:
        st.session_state[key] = options[0]


def _open(target: str) -> None:
    """Open the neuron picked among the search results (runs before the page, so the pickers can follow)."""
    chosen = st.session_state.get(target)
    if chosen:
        model, _, neuron = chosen.rpartition(" · ")
        neuron_id = NeuronId.parse(neuron)
        st.session_state.update({MODEL: model, LAYER: neuron_id.layer, NEURON: neuron_id.index, FILTER: False})
        st.session_state[REQUESTED] = chosen


def _search(src: queries.Source) -> None:
    with st.expander("Find neurons by explanation text"):
        text = st.text_input("Explanations containing", key="neurons_search", placeholder="e.g. numbers")
        if not text.strip():
            return
        found = queries.search(src, text)
        if queries.hidden_count(src):
            st.caption("Explanations of neurons in open studies are left out of the search while those studies run.")
        if found.empty:
            st.info("No explanation contains that text.")
            return
        st.dataframe(found, hide_index=True, width="stretch", column_config=tables.EXPLANATION_TABLE_CONFIG)
        targets = list(dict.fromkeys(f"{row.model} · {row.layer}:{row.neuron}" for row in found.itertuples()))
        st.selectbox("Open", targets, index=None, key="neurons_open", on_change=_open, args=("neurons_open",))


def _pick(src: queries.Source, models: list[str]) -> tuple[str, NeuronId] | None:
    """The sidebar pickers; None (and a message saying why) when no neuron of the layer passes the score filter."""
    with st.sidebar:
        _keep_valid(MODEL, models)
        model = st.selectbox("Model", models, key=MODEL)
        layer_numbers = [layer for layer, _ in queries.layers(src, model)]
        _keep_valid(LAYER, layer_numbers)
        layer = st.selectbox("Layer", layer_numbers, key=LAYER)
        simulators = queries.simulators(src)
        filtering = st.checkbox(
            "Only scored neurons",
            key=FILTER,
            disabled=not simulators,
            help="List only neurons with a scored explanation, by their best score"
            if simulators
            else "No explanation has a score yet",
        )
        if filtering:
            simulator = st.selectbox("Simulator", simulators, key=SIMULATOR)
            # From -1 up: switching the filter on first lists every scored neuron, whatever the simulator's range.
            min_score = st.slider("Best score at least", -1.0, 1.0, -1.0, 0.05, key=MIN_SCORE)
            scored = queries.overview(src, model, layer, simulator)
            table = tables.filter_by_score(scored, min_score)
        else:
            table = queries.overview(src, model, layer)
    if table.empty:
        st.info(tables.filter_message(scored, min_score, layer) if filtering else f"Layer {layer} has no neurons.")
        return None
    with st.sidebar:
        indices = [int(i) for i in table["neuron"]]
        scores = dict(zip(indices, table["best_score"].astype(float), strict=True))
        _keep_valid(NEURON, indices)
        index = st.selectbox(
            "Neuron",
            indices,
            key=NEURON,
            format_func=lambda i: elements.neuron_label(i, scores[i]),
        )
        st.caption(f"{len(indices)} neurons listed")
    picked = NeuronId(layer, int(index))
    requested = st.session_state.pop(REQUESTED, None)
    if requested is not None and requested != f"{model} · {picked}":
        st.warning(render.escape_markdown(f"{requested} has no stored excerpts; showing {model} · {picked}."))
    return model, picked


def _explanations(src: queries.Source, model: str, neuron_id: NeuronId, record) -> None:
    if queries.hidden(src, model, neuron_id):
        st.info(HIDDEN)
        return
    rows = queries.explanations(src, model, neuron_id)
    scores = queries.neuron_scores(src, model, neuron_id)
    if not rows:
        st.info("No explanations yet: explain this neuron on the Explain page or with `python -m core explain`.")
        return
    table = tables.explanation_table(rows, scores, queries.neuron_similarities(src, model, neuron_id))
    st.dataframe(table, hide_index=True, width="stretch", column_config=tables.explanation_table_config(table))
    simulated = tables.simulations(scores)
    if not simulated:
        st.caption("No explanation of this neuron has a stored simulation yet.")
        return
    st.markdown("**Simulated against real activations**")
    chosen = st.selectbox("Simulation", range(len(simulated)), format_func=lambda i: simulated[i].label)
    simulation = simulated[chosen]
    records = record.split(simulation.split)
    st.html(render.styled(render.text_html(simulation.explanation)))
    if len(records) != len(simulation.predictions):
        st.warning(
            f"The stored simulation has {len(simulation.predictions)} excerpts but the neuron now has "
            f"{len(records)} in the {simulation.split} split (were its records collected again?)."
        )
        return
    scale = render.default_scale(record.top)
    predicted_scale = scale if simulation.calibrated else render.SIMULATION_SCALE
    tidy = render.spacing_lost(record.top + record.random)
    parts = []
    for number, (excerpt, predictions) in enumerate(zip(records, simulation.predictions, strict=True), start=1):
        if len(predictions) != len(excerpt.tokens):
            st.warning(f"Excerpt {number}: the stored prediction does not match its tokens; not shown.")
            continue
        parts.append(render.label_html(f"excerpt {number}"))
        parts.append(render.comparison_html(excerpt, predictions, scale, predicted_scale, tidy))
    st.html(render.styled(*parts))
    st.plotly_chart(charts.simulation_scatter(records, simulation.predictions), width="stretch")


def _neuron_view(src: queries.Source, model: str, neuron_id: NeuronId) -> None:
    record = queries.neuron(src, model, neuron_id)
    st.query_params.update({"model": model, "layer": str(neuron_id.layer), "neuron": str(neuron_id.index)})
    st.subheader(render.escape_markdown(f"{model} · neuron {neuron_id}"))
    stats = record.stats
    figures: list[tuple[str, float | None, str | None]] = [
        ("max", stats.max, None),
        ("mean", stats.mean, None),
        ("variance", stats.variance, None),
    ]
    figures += [
        (f"q{level:g}", value, f"The {level:g} quantile of the per-excerpt maximum over the whole corpus")
        for level, value in sorted(stats.quantiles.items())
    ]
    elements.metric_row(
        [(label, "–" if value is None else f"{value:.3g}", help_text) for label, value, help_text in figures]
    )
    scale = render.default_scale(record.top)
    tidy = render.spacing_lost(record.top + record.random)
    top, random, distribution, explanations, own = st.tabs(
        ["Top excerpts", "Random excerpts", "Activations", "Explanations", "Try your own text"]
    )
    with top:
        st.caption(LEGEND)
        labels = [f"#{rank} · max {render.exact_value(r.max_activation)}" for rank, r in enumerate(record.top, 1)]
        if record.top:
            st.html(render.styled(render.records_html(record.top, scale, labels, tidy)))
    with random:
        st.caption(LEGEND)
        labels = [f"random #{rank}" for rank in range(1, len(record.random) + 1)]
        if record.random:
            st.html(render.styled(render.records_html(record.random, scale, labels, tidy)))
    with distribution:
        st.caption(
            "Token activations in the stored excerpts. Dotted lines: the neuron's quantile boundaries of the "
            "per-excerpt maximum over the whole corpus."
        )
        st.plotly_chart(charts.activation_histogram(record), width="stretch")
        st.dataframe(tables.stats_table(record), hide_index=True, width="content")
    with explanations:
        _explanations(src, model, neuron_id, record)
    with own:
        _own_text(model, neuron_id, record, scale, tidy)


def _own_text(model: str, neuron_id: NeuronId, record, scale: float, tidy: bool) -> None:
    """Try your own text: the neuron's activations on any text, coloured on the scale of its stored excerpts."""
    from core.records import MAX_TEXT_TOKENS  # not core.activations: browsing loads no model library

    st.caption(
        f"The model runs on your text exactly as on a collected excerpt (up to {MAX_TEXT_TOKENS} tokens). " + LEGEND
    )
    with st.form("own_text"):
        text = st.text_area("Text", key="neurons_own_text", height=120, placeholder="Type or paste any text")
        submitted = st.form_submit_button("Run the model")
    if not submitted or not text.strip():
        return
    with st.spinner("Running the model…"):
        result, dropped = resources.own_text(model, neuron_id, text)
    if dropped:
        st.warning(
            f"Your text is {len(result.tokens) + dropped} tokens long; only the first {len(result.tokens)} were "
            f"run (the cap is {MAX_TEXT_TOKENS} tokens)."
        )
    label = f"your text · max {render.exact_value(result.max_activation)}"
    st.html(render.styled(render.records_html([result], scale, [label], tidy)))
    stats = record.stats
    cutoff = stats.quantiles.get(0.99)
    where = "" if cutoff is None else (
        " — above this neuron's 0.99 quantile, so it counts as activating"
        if result.max_activation > cutoff
        else " — below this neuron's 0.99 quantile"
    )  # fmt: skip
    st.caption(
        f"For reference, over the corpus: max {render.exact_value(stats.max)}, 0.99 quantile of the per-excerpt max "
        f"{'–' if cutoff is None else render.exact_value(cutoff)}. Your text's max: "
        f"{render.exact_value(result.max_activation)}{where}. Colours use the scale of the stored top excerpts."
    )


with elements.errors_shown(), queries.database() as db:
    src = queries.source(db)
    models = list(queries.summary(src)["models"])
    if not models:
        st.info("No neurons in the database yet. Collect some with `python -m core collect` (see the home page).")
        st.stop()
    _from_link()
    _search(src)
    picked = _pick(src, models)
    if picked is not None:
        _neuron_view(src, *picked)
