"""The offline demo of the whole loop (`python -m core demo`, the Home page's button): on a database with collected
neurons and no LLM, it makes two honest non-LLM baseline explanations of 20 neurons, scores them with the embedding
scorer, and opens a small blinded study between the two baselines with a demo rater. `remove_demo` deletes exactly
what it created (core.db.demo).

The baselines (docs/METHOD.md §10), from the records an explainer would see (the train split), with the same cutoff
as the explanation prompts (the neuron's 0.99 quantile of per-excerpt maxima):
- `baseline:top-tokens`: the most frequent tokens above the cutoff, as in OpenAI's token look-up baseline;
- `baseline:top-tokens-in-context`: each of those tokens with its neighbours in its strongest occurrence.
They are stored as format `baseline`, so that nothing of the demo is ever pooled with a prompt format.
"""

from __future__ import annotations

import random
import secrets
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import sqlite_utils

from core import db as dbmod
from core.db import demo as demo_queries
from core.db import neurons as neuron_queries
from core.errors import InputError, NotFoundError
from core.records import ActivationRecord, NeuronId, NeuronRecord
from core.values import to_jsonable

if TYPE_CHECKING:
    from core.scorers import ScorerOptions

BASELINE_FORMAT = "baseline"
TOP_TOKENS = "baseline:top-tokens"
IN_CONTEXT = "baseline:top-tokens-in-context"
BASELINES = (TOP_TOKENS, IN_CONTEXT)
STUDY = "demo-baselines"
RATER = "demo-rater"
DEFAULT_NEURONS = 20
TOKENS_NAMED = 3
CUTOFF_QUANTILE = 0.99


# --- The baselines (pure functions) --------------------------------------------------------------------------------


def _cutoff(record: NeuronRecord) -> float:
    level = record.stats.quantiles.get(CUTOFF_QUANTILE)
    if level is None:  # an imported neuron without quantiles: half the largest activation shown
        return 0.5 * max((max(r.activations, default=0.0) for r in record.split("train")), default=0.0)
    return float(level)


def _occurrences(records: Sequence[ActivationRecord], cutoff: float) -> list[tuple[str, float, int, int]]:
    """(normalised token, activation, record, position) of every token above the cutoff."""
    found = []
    for number, record in enumerate(records):
        for position, (token, value) in enumerate(zip(record.tokens, record.activations, strict=True)):
            text = token.strip()
            if value > cutoff and text:
                found.append((text.lower(), value, number, position))
    if not found:  # nothing above the cutoff: the strongest token of each record
        for number, record in enumerate(records):
            peak = max(range(len(record.activations)), key=record.activations.__getitem__, default=None)
            if peak is not None and record.tokens[peak].strip():
                found.append((record.tokens[peak].strip().lower(), record.activations[peak], number, peak))
    return found


def _top(occurrences: list[tuple[str, float, int, int]]) -> list[str]:
    counts = Counter(token for token, *_ in occurrences)
    strongest: dict[str, float] = {}
    for token, value, *_ in occurrences:
        strongest[token] = max(value, strongest.get(token, float("-inf")))
    return sorted(counts, key=lambda t: (-counts[t], -strongest[t], t))[:TOKENS_NAMED]


def _quoted(items: Sequence[str]) -> str:
    quoted = [f'"{item}"' for item in items]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


def top_tokens_explanation(record: NeuronRecord) -> str:
    """The most frequent tokens above the cutoff in the train records, most frequent first."""
    top = _top(_occurrences(record.split("train"), _cutoff(record)))
    if not top:
        raise InputError(f"neuron {record.neuron} has no train records to make a baseline explanation from")
    return f"the token{'s' if len(top) > 1 else ''} {_quoted(top)}"


def top_tokens_in_context_explanation(record: NeuronRecord) -> str:
    """Each of the top tokens in the three-token window of its strongest occurrence."""
    records = record.split("train")
    occurrences = _occurrences(records, _cutoff(record))
    top = _top(occurrences)
    if not top:
        raise InputError(f"neuron {record.neuron} has no train records to make a baseline explanation from")
    parts = []
    for token in top:
        _, _, number, position = max((o for o in occurrences if o[0] == token), key=lambda o: o[1])
        window = "".join(records[number].tokens[max(0, position - 1) : position + 2]).strip()
        parts.append(f'"{token}" as in "{" ".join(window.split())}"')
    return "; ".join(parts)


EXPLAINERS = {TOP_TOKENS: top_tokens_explanation, IN_CONTEXT: top_tokens_in_context_explanation}


# --- Making and removing the demo ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoReport:
    model: str
    layer: int
    neurons: tuple[str, ...]
    explanations: int
    scores: int
    study: str
    items: int
    rater: str
    rater_code: str
    warnings: tuple[str, ...] = ()
    next_steps: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return to_jsonable({f.name: getattr(self, f.name) for f in fields(self)})


def _demo_layer(db: sqlite_utils.Database, model: str, layer: int | None) -> int:
    layers = [number for number, _ in dbmod.list_layers(db, model)]
    if not layers:
        raise NotFoundError(
            f"no neurons of {model} in the database yet: collect them first with `python -m core collect --model "
            f"{'default' if model == 'all-MiniLM-L6-v2' else model}` (a minute or two on a laptop), then run the demo"
        )
    without = set(neuron_queries.layers_without_scoring_records(db, model))
    usable = [number for number in layers if number not in without]
    if layer is not None:
        if layer not in layers:
            raise InputError(f"layer {layer} of {model} is not collected; collected: {', '.join(map(str, layers))}")
        usable = [layer] if layer in usable else []
    if not usable:
        chosen = layer if layer is not None else layers[0]
        raise InputError(
            f"layer {chosen} of {model} was collected before the scorers' excerpts existed, so the embedding scorer "
            f"cannot score it: recollect it with `python -m core collect --model {model} --layers {chosen} --replace` "
            "and run the demo again"
        )
    return usable[len(usable) // 2]


def _pick_neurons(db: sqlite_utils.Database, model: str, layer: int, count: int, seed: int) -> list[NeuronId]:
    """`count` neurons of the layer without explanations and outside every open study, drawn with `seed`."""
    explained = {(row["layer"], row["neuron"]) for row in dbmod.list_explanations(db, model, status=None)}
    blinded = {neuron for name, neuron in dbmod.blinded_neurons(db) if name == model}
    free = [
        NeuronId(layer, index)
        for index in dbmod.neuron_indices(db, model, layer)
        if (layer, index) not in explained and NeuronId(layer, index) not in blinded
    ]
    if len(free) < 2:
        raise InputError(f"layer {layer} of {model} has {len(free)} neurons without explanations; the demo needs 2")
    return sorted(random.Random(seed).sample(free, min(count, len(free))))


def run_demo(
    db: sqlite_utils.Database,
    model: str | None = None,
    *,
    n_neurons: int = DEFAULT_NEURONS,
    layer: int | None = None,
    seed: int = 0,
    embedder: str = "minilm",
    scorer_options: ScorerOptions | None = None,
) -> DemoReport:
    """Make the demo (see the module docstring) on `model` (None: the bundled model if collected, else the first
    collected one); on any failure, remove what was made so far and re-raise."""
    from core import human_eval, pipeline, raters
    from core.db.scores import scorer_score_rows
    from core.models import resolve_model_name
    from core.scorers import get_scorer

    if not demo_queries.has_demo_table(db):
        raise InputError("this database predates the demo (a development build of schema v3); use a new --db")
    if any(demo_queries.demo_rows(db).values()):
        raise InputError(
            f"the demo is already in this database (study {STUDY}); remove it with `python -m core demo --remove`"
        )
    if n_neurons < 2:
        raise InputError(f"the demo needs at least 2 neurons, not {n_neurons}")
    if model is None:  # the Home page's button: the bundled model if collected, else the first collected one
        collected = dbmod.list_models(db)
        model = resolve_model_name(None) if resolve_model_name(None) in collected or not collected else collected[0]
    model = resolve_model_name(model)
    layer = _demo_layer(db, model, layer)
    neurons = _pick_neurons(db, model, layer, n_neurons, seed)
    if dbmod.get_rater(db, RATER) is not None:
        raise InputError(f"a rater named {RATER!r} already exists and is not the demo's; the demo creates its own")
    try:
        rows = []
        for neuron in neurons:
            record = dbmod.get_neuron(db, model, neuron)
            for explainer, explain in EXPLAINERS.items():
                rows.append((neuron, explainer, explain(record)))
        ids = []
        for neuron, explainer, text in rows:
            explanation_id = dbmod.insert_explanation(
                db, model=model, layer=neuron.layer, neuron=neuron.index, format=BASELINE_FORMAT, explainer=explainer,
                source="baseline", params={"baseline": {"name": explainer, "records": "train", "cutoff": "q0.99"}},
                explanation=text, status="ok", input_tokens=0, output_tokens=0,
            )  # fmt: skip
            ids.append(explanation_id)
            demo_queries.record_demo_rows(db, "explanation", [explanation_id])
        scorer = get_scorer("embedding", embedder, options=scorer_options)
        scored = pipeline.score_with_scorer(db, model, scorer, neurons=neurons, explainers=list(BASELINES))
        score_rows = scorer_score_rows(db, ids, simulator=f"embedding:{scorer.model}", method=scorer.method)
        demo_queries.record_demo_rows(db, "score", [_score_id(db, row) for row in score_rows])
        arms = ",".join(f"{BASELINE_FORMAT}@{explainer}" for explainer in BASELINES)
        created = human_eval.create_study(
            db, name=STUDY, arms=arms, neurons=[str(n) for n in neurons], ratings_per_item=1, seed=seed, model=model,
            instructions="A demo: which explanation describes the neuron's top excerpts better?",
        )  # fmt: skip
        demo_queries.record_demo_rows(db, "study", [created.study.id])
        code = secrets.token_urlsafe(9)
        rater = raters.add_rater(db, RATER, code)
        demo_queries.record_demo_rows(db, "rater", [rater.id])
        dbmod.assign_rater_studies(db, rater.id, [created.study.id])
    except BaseException:
        demo_queries.remove_demo_rows(db)
        raise
    warnings = [*scored.warnings, *(f"text tell: {tell.message}" for tell in created.tells)]
    warnings += [f"{row['neuron']}: {row['error']}" for row in score_rows if row["status"] != "ok"]
    steps = (
        "make run (it serves the app), then open http://localhost:8501",
        f"Rate: sign in as {RATER} with the code {code} and compare the two baselines, blind; while the study is "
        "open, the Neurons page hides its neurons' explanations from everyone but admins",
        f"python -m core study close {STUDY}, then Neurons: pick {model}, layer {layer}, neuron "
        f"{neurons[0].index}; the Explanations tab shows both baselines with their embedding scores "
        f"(embedding:{scorer.model} · auroc)",
        f"Results: per format, the embedding scores; the {STUDY} study's statistics need an admin "
        "(python -m core rater add --name admin --admin)",
        "python -m core demo --remove deletes exactly what the demo made",
    )
    return DemoReport(
        model=model, layer=layer, neurons=tuple(str(n) for n in neurons), explanations=len(ids),
        scores=sum(row["status"] == "ok" for row in score_rows), study=STUDY, items=created.n_items, rater=RATER,
        rater_code=code, warnings=tuple(warnings), next_steps=steps,
    )  # fmt: skip


def _score_id(db: sqlite_utils.Database, row: dict[str, Any]) -> int:
    from core.db.scores import score_id

    return score_id(db, row["explanation_id"], row["simulator"], row["method"])


def remove_demo(db: sqlite_utils.Database) -> dict[str, int]:
    """Delete exactly what the demo created (core.db.demo.remove_demo_rows); counts per kind."""
    return demo_queries.remove_demo_rows(db)


def demo_present(db: sqlite_utils.Database) -> bool:
    return any(demo_queries.demo_rows(db).values())


def offer_demo(db: sqlite_utils.Database) -> bool:
    """Whether the Home page offers the demo: the database has neurons but no explanations at all."""
    return demo_queries.has_demo_table(db) and demo_queries.explanation_count(db) == 0 and bool(dbmod.list_models(db))
