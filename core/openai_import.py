"""Import OpenAI's public GPT-2 XL neuron data (docs/METHOD.md §6): NeuronRecord JSON and scored explanations.

Records land in the same tables as collected ones, so the paper's neurons can be browsed, explained and scored
without a GPU. Explanations are stored as reference explanations (source `reference`) with OpenAI's score.
OpenAI's activations were computed with an approximate GELU; they are imported as published.
"""

from __future__ import annotations

import csv
import json
import math
import re
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import sqlite_utils

from core import config
from core import db as dbmod
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


def _neuron_id(value: Any, where: str) -> NeuronId | None:
    """OpenAI's `{"layer_index": L, "neuron_index": N}`, or None when absent; non-integers name the field."""
    if not isinstance(value, dict) or not {"layer_index", "neuron_index"} <= value.keys():
        return None
    parts = [value["layer_index"], value["neuron_index"]]
    if not all(isinstance(part, int) and not isinstance(part, bool) and part >= 0 for part in parts):
        raise InputError(f"{where}: neuron_id {value} must hold non-negative integers layer_index and neuron_index")
    return NeuronId(*parts)


def _number(value: Any, where: str) -> float:
    """An optional statistic: missing is 0.0, anything else must be a finite number."""
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InputError(f"{where}: expected a number, got {value!r}")
    return float(value)


def parse_neuron_record(text: str, source: str, model: str = OPENAI_MODEL) -> NeuronRecord:
    """One OpenAI NeuronRecord JSON document → our NeuronRecord; errors name the file and field."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno}); is the file complete?") from exc
    if not isinstance(data, dict):
        raise InputError(f"{source}: expected a NeuronRecord object")
    neuron = _neuron_id(data.get("neuron_id"), source) or _neuron_from_path(source)
    if neuron is None:
        raise InputError(f"{source}: missing neuron_id.layer_index / neuron_index")
    if "most_positive_activation_records" not in data:
        raise InputError(f"{source}: missing most_positive_activation_records")
    top = records_from_json(data["most_positive_activation_records"], f"{source}: most_positive_activation_records")
    random = records_from_json(data.get("random_sample") or [], f"{source}: random_sample")
    if not top:
        raise InputError(f"{source}: most_positive_activation_records is empty")
    top.sort(key=lambda r: r.max_activation, reverse=True)
    stats = NeuronStats(
        mean=_number(data.get("mean"), f"{source}: mean"),
        variance=_number(data.get("variance"), f"{source}: variance"),
        max=max(r.max_activation for r in top),
        quantiles=_quantiles(data.get("quantile_boundaries")),
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
        neuron_id = data.get("neuron_id")
        neuron = _neuron_id(neuron_id, f"{source}:{number}") or _neuron_from_path(source)
        if neuron is None:
            raise InputError(f"{source}:{number}: no neuron_id, and the path is not <layer>/<neuron>.jsonl")
        scored = data.get("scored_explanations")
        if not isinstance(scored, list):
            raise InputError(f"{source}:{number}: missing scored_explanations list")
        for item in scored:
            explanation = item.get("explanation") if isinstance(item, dict) else None
            if not isinstance(explanation, str) or not explanation.strip():
                raise InputError(f"{source}:{number}: a scored explanation has no explanation text")
            simulation = item.get("scored_simulation") or {}
            score = simulation.get("ev_correlation_score") if isinstance(simulation, dict) else None
            rows.append(_reference_row(neuron, explanation, score))
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
