"""Import OpenAI's public GPT-2 XL neuron data (docs/METHOD.md §6): NeuronRecord JSON and scored explanations.

Records land in the same tables as collected ones, so the paper's neurons can be browsed, explained and scored
without a GPU. Explanations are stored as reference explanations (source `reference`) with OpenAI's score.
OpenAI's activations were computed with an approximate GELU; they are imported as published.
"""

from __future__ import annotations

import csv
import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any

import sqlite_utils
from pydantic import BeforeValidator, ConfigDict, Field, StringConstraints

from core import config
from core import db as dbmod
from core.datafiles import DataModel, parse
from core.db.explanations import InsertReport
from core.errors import InputError
from core.records import NeuronId, NeuronRecord, NeuronStats, records_from_json

OPENAI_MODEL = "gpt2-xl"
OPENAI_EXPLAINER = "openai:gpt-4"
RECORDS_URL = (
    "https://openaipublic.blob.core.windows.net/neuron-explainer/data/collated-activations/{layer}/{neuron}.json"
)
EXPLANATIONS_URL = (
    "https://openaipublic.blob.core.windows.net/neuron-explainer/data/explanations/{layer}/{neuron}.jsonl"
)


def _read(source: str | Path) -> str:
    text = str(source)
    if text.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(text, timeout=60) as response:
                return response.read().decode("utf-8")
        except (urllib.error.URLError, TimeoutError) as exc:
            raise InputError(f"cannot fetch {text} ({exc}); offline? download the file and pass its path") from exc
    path = Path(text)
    if not path.is_file():
        raise InputError(f"{path} not found")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path} is not UTF-8 text; is it a NeuronRecord .json or explanation .jsonl file?") from None


def _neuron_from_path(source: str | Path) -> NeuronId | None:
    match = re.search(r"(\d+)/(\d+)\.jsonl?$", str(source))
    return NeuronId(int(match.group(1)), int(match.group(2))) if match else None


def _quantiles(boundaries: Any) -> dict[float, float]:
    # OpenAI's files list the boundaries of their sampling quantiles; with one extra value at either end (the
    # minimum, the maximum) we keep the inner ones, which are the 0.5/0.9/0.99/0.999 boundaries.
    if not isinstance(boundaries, list) or not all(isinstance(v, int | float) for v in boundaries):
        return {}
    values = [float(v) for v in boundaries]
    extra = len(values) - len(config.QUANTILES)
    if extra == 1:
        values = values[1:]
    elif extra == 2:
        values = values[1:-1]
    elif extra != 0:
        return {}
    return dict(zip(config.QUANTILES, values, strict=True))


# OpenAI's files carry more than we read (dataclass_name, skewness, random_sample_by_quantile, other scores): their
# models ignore unknown keys, as the hand-written reader before them did.
_OPENAI_FILE = ConfigDict(extra="ignore")
Index = Annotated[int, Field(strict=True, ge=0)]  # no booleans, no 3.0
Statistic = Annotated[float, Field(strict=True, allow_inf_nan=False)]  # a finite number, not a numeric string


class OpenAINeuronId(DataModel):
    """OpenAI's `{"layer_index": L, "neuron_index": N}`."""

    model_config = _OPENAI_FILE

    layer_index: Index
    neuron_index: Index


def _partial_neuron_id(value: Any) -> Any:
    # A neuron_id that is not an object with both indices is absent: the neuron is then read from the path.
    if not isinstance(value, dict) or not {"layer_index", "neuron_index"} <= value.keys():
        return None
    return value


MaybeNeuronId = Annotated[OpenAINeuronId | None, BeforeValidator(_partial_neuron_id)]


class OpenAINeuronRecord(DataModel):
    """One NeuronRecord JSON document of OpenAI's collated activations (docs/METHOD.md §6); the records themselves
    are read by core.records."""

    model_config = _OPENAI_FILE

    neuron_id: MaybeNeuronId = None
    most_positive_activation_records: Any
    random_sample: Any = None
    mean: Statistic | None = None
    variance: Statistic | None = None
    quantile_boundaries: Any = None


def _neuron(neuron_id: OpenAINeuronId | None) -> NeuronId | None:
    return NeuronId(neuron_id.layer_index, neuron_id.neuron_index) if neuron_id is not None else None


def parse_neuron_record(text: str, source: str, model: str = OPENAI_MODEL) -> NeuronRecord:
    """One OpenAI NeuronRecord JSON document → our NeuronRecord; errors name the file and field."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno}); is the file complete?") from exc
    if not isinstance(data, dict):
        raise InputError(f"{source}: expected a NeuronRecord object")
    document = parse(OpenAINeuronRecord, data, source)
    neuron = _neuron(document.neuron_id) or _neuron_from_path(source)
    if neuron is None:
        raise InputError(f"{source}: missing neuron_id.layer_index / neuron_index")
    top = records_from_json(document.most_positive_activation_records, f"{source}: most_positive_activation_records")
    random = records_from_json(document.random_sample or [], f"{source}: random_sample")
    if not top:
        raise InputError(f"{source}: most_positive_activation_records is empty")
    top.sort(key=lambda r: r.max_activation, reverse=True)
    stats = NeuronStats(
        mean=document.mean or 0.0,
        variance=document.variance or 0.0,
        max=max(r.max_activation for r in top),
        quantiles=_quantiles(document.quantile_boundaries),
    )
    return NeuronRecord(model=model, neuron=neuron, top=tuple(top), random=tuple(random), stats=stats)


def import_neuron_records(
    db: sqlite_utils.Database, sources: Iterable[str | Path], model: str = OPENAI_MODEL
) -> list[NeuronId]:
    """Read every source first, then write all of them in one transaction: a bad file writes nothing."""
    records = [parse_neuron_record(_read(source), str(source), model) for source in _expand(sources, ".json")]
    if not records:
        raise InputError("no NeuronRecord files given")
    dbmod.write_neurons(db, model, records, source="openai")
    return [r.neuron for r in records]


def _expand(sources: Iterable[str | Path], suffix: str) -> Iterator[str | Path]:
    for source in sources:
        path = Path(str(source))
        if not str(source).startswith(("http://", "https://")) and path.is_dir():
            found = sorted(path.rglob(f"*{suffix}"))
            if not found:
                raise InputError(f"folder {path} holds no {suffix} files")
            yield from found
        else:
            yield source


class OpenAIScoredExplanation(DataModel):
    """One scored explanation of OpenAI's explanation files: its text and, when scored, its simulation's
    correlation score."""

    model_config = _OPENAI_FILE

    explanation: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
    scored_simulation: Any = None

    @property
    def score(self) -> Any:
        simulation = self.scored_simulation
        return simulation.get("ev_correlation_score") if isinstance(simulation, dict) else None


class OpenAIExplanations(DataModel):
    """One line of OpenAI's explanation JSONL: a neuron (else read from the path) and its scored explanations."""

    model_config = _OPENAI_FILE

    neuron_id: MaybeNeuronId = None
    scored_explanations: list[OpenAIScoredExplanation]


def parse_explanations(text: str, source: str) -> list[dict[str, Any]]:
    """OpenAI explanation JSONL (or a `layer,neuron,score,explanation` CSV) → rows for `insert_explanations`."""
    if source.endswith(".csv"):
        return _parse_explanation_csv(text, source)
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{source}:{number}: not valid JSON ({exc.msg})") from exc
        if not isinstance(data, dict):
            raise InputError(f"{source}:{number}: expected an object with neuron_id and scored_explanations")
        entry = parse(OpenAIExplanations, data, f"{source}:{number}")
        neuron = _neuron(entry.neuron_id) or _neuron_from_path(source)
        if neuron is None:
            raise InputError(f"{source}:{number}: no neuron_id, and the path is not <layer>/<neuron>.jsonl")
        rows += [_reference_row(neuron, scored.explanation, scored.score) for scored in entry.scored_explanations]
    return rows


def _parse_explanation_csv(text: str, source: str) -> list[dict[str, Any]]:
    reader = csv.DictReader(text.splitlines())
    columns = {c.lower(): c for c in reader.fieldnames or []}
    missing = {"layer", "neuron", "explanation"} - columns.keys()
    if missing:
        raise InputError(f"{source}: missing column(s) {', '.join(sorted(missing))}")
    rows = []
    for number, row in enumerate(reader, 2):
        try:
            neuron = NeuronId(int(row[columns["layer"]]), int(row[columns["neuron"]]))
            score = float(row[columns["score"]]) if "score" in columns and row[columns["score"]] else None
        except (TypeError, ValueError) as exc:
            raise InputError(f"{source}:{number}: layer, neuron and score must be numbers") from exc
        rows.append(_reference_row(neuron, row[columns["explanation"]], score))
    return rows


def _reference_row(neuron: NeuronId, explanation: str, score: float | None) -> dict[str, Any]:
    return {
        "layer": neuron.layer,
        "neuron": neuron.index,
        "explanation": explanation.strip(),
        "reference_score": score,
    }


def import_explanations(
    db: sqlite_utils.Database,
    sources: Iterable[str | Path],
    model: str = OPENAI_MODEL,
    explainer: str = OPENAI_EXPLAINER,
) -> InsertReport:
    """Store OpenAI's explanations as reference explanations (format `original`); all or nothing. A text already
    stored is left as it is (reported as unchanged)."""
    rows = []
    for source in _expand(sources, ".jsonl"):
        rows += parse_explanations(_read(source), str(source))
    if not rows:
        raise InputError("no explanations found in the given files")
    for sample, row in enumerate(rows):
        row.update(
            model=model,
            format="original",
            explainer=explainer,
            source="reference",
            status="ok",
            job_key=f"reference|{model}|{explainer}|{row['layer']}:{row['neuron']}|{row['explanation']}",
            sample=sample,
        )
    return dbmod.insert_explanations(db, rows)
