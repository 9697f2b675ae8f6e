"""Published per-neuron scores imported beside the scores computed here (docs/METHOD.md §5).

Lee et al. published one simulation score per neuron and format (their `test_neurons_results_score.csv` layout:
an index column, layer, neuron, then Original, Summary, Highlight, HighlightSummary, AVHS). A score belongs to an
explanation, so each one is attached to the stored ok explanation of the same model, neuron, format and explainer
(imported with `import-explanations` first) and stored with method "imported" and the file it came from, never
mixed with scores simulated here.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from core import db as dbmod
from core.errors import InputError, NotFoundError
from core.explain import IMPORT_COLUMNS
from core.simulate import IMPORTED_METHOD
from core.values import finite_or_none

EXPECTED_COLUMNS = "layer, neuron and one or more of Original, Summary, Highlight, HighlightSummary, AVHS"


@dataclass(frozen=True)
class PublishedScore:
    """One cell of a published score table."""

    row: int  # 1-based data row of the file
    column: str
    layer: int
    neuron: int
    format: str
    score: float


@dataclass(frozen=True)
class ScoreImportReport:
    """What one import did: scores written, cells without a stored explanation, cells with several candidates."""

    path: str
    model: str
    explainer: str
    simulator: str
    written: int
    unmatched: tuple[str, ...]
    ambiguous: tuple[str, ...]
    means: dict[str, tuple[float, int]]  # format → (mean published score, neurons), in registry order

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "means": {k: {"mean": m, "n": n} for k, (m, n) in self.means.items()}}


def _key(name: str) -> str:
    return "".join(ch for ch in str(name).lower() if ch.isalnum())


def _integer(value: str, what: str, where: str) -> int:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or not number.is_integer() or number < 0:
        raise InputError(f"{where}: {what} {value[:40]!r} is not a non-negative integer")
    return int(number)


def read_score_table(path: str | Path) -> tuple[list[PublishedScore], bytes]:
    """The score cells of a published table (empty cells skipped) and the file's bytes; InputError naming the
    file, row and column of anything that is not a score."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {path} ({exc.strerror or exc}); give the path of a CSV of scores") from None
    try:
        frame = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, encoding="utf-8")
    except (ValueError, OverflowError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path} is not a readable CSV ({message}); expected columns {EXPECTED_COLUMNS}") from None
    columns = {_key(c): c for c in frame.columns}
    formats = {fmt: columns[key] for key, fmt in IMPORT_COLUMNS.items() if key in columns}
    if "layer" not in columns or "neuron" not in columns or not formats:
        found = ", ".join(map(str, frame.columns)) or "none"
        raise InputError(f"{path} lacks the columns {EXPECTED_COLUMNS} (found: {found})")
    cells = []
    for position, record in enumerate(frame.to_dict("records"), start=1):
        where = f"{path.name}, row {position}"
        layer = _integer(record[columns["layer"]], "layer", where)
        neuron = _integer(record[columns["neuron"]], "neuron", where)
        for format_name, column in formats.items():
            raw = str(record[column]).strip()
            if not raw:
                continue
            try:
                score = float(raw)
            except ValueError:
                shown = raw if len(raw) <= 40 else f"{raw[:40]}…"
                raise InputError(
                    f"{where}, column {column}: {shown!r} is not a score; a table of explanations is imported with "
                    "`python -m core import-explanations`"
                ) from None
            if not math.isfinite(score) or not -1.0 <= score <= 1.0:
                raise InputError(f"{where}, column {column}: {raw} is not a correlation between -1 and 1")
            cells.append(PublishedScore(position, column, layer, neuron, format_name, score))
    if not cells:
        raise InputError(f"{path} holds no scores: every format cell is empty")
    return cells, data


def format_means(scores: Sequence[float | None], formats: Sequence[str]) -> dict[str, tuple[float, int]]:
    """Mean score and count per format, in the order formats first appear; undefined scores left out."""
    grouped: dict[str, list[float]] = {}
    for format_name, score in zip(formats, scores, strict=True):
        value = finite_or_none(score)
        if value is not None:
            grouped.setdefault(format_name, []).append(value)
    return {name: (sum(values) / len(values), len(values)) for name, values in grouped.items()}


def _in_registry_order(means: Mapping[str, tuple[float, int]]) -> dict[str, tuple[float, int]]:
    from core.prompts import FORMATS

    order = [*FORMATS, *sorted(set(means) - set(FORMATS))]
    return {name: means[name] for name in order if name in means}


def import_scores_csv(
    db: Any, path: str | Path, explainer: str, simulator: str, model: str = "gpt2-xl"
) -> ScoreImportReport:
    """Attach the published scores of `path` to the stored ok explanations of `model` by `explainer`, as method
    'imported' under `simulator`, the file named in each row. Imported explanations (source 'imported') win over
    generated ones; among several, the newest, reported as ambiguous. NotFoundError when nothing matches."""
    path = Path(path)
    if not explainer or not explainer.strip():
        raise InputError("name the explainer whose explanations these scores rate, e.g. --explainer gpt-3.5-turbo")
    if not simulator or not simulator.strip():
        raise InputError("name the simulator that produced these scores, e.g. --simulator gpt-3.5-turbo-instruct")
    explainer, simulator = explainer.strip(), simulator.strip()
    cells, data = read_score_table(path)
    candidates: dict[tuple[int, int, str], list[dict[str, Any]]] = {}
    for row in dbmod.ok_explanations_of(db, model, explainer):
        if (row.get("explanation") or "").strip():
            candidates.setdefault((row["layer"], row["neuron"], row["format"]), []).append(row)
    matched, unmatched, ambiguous = [], [], []
    for cell in cells:
        found = candidates.get((cell.layer, cell.neuron, cell.format), [])
        if not found:
            unmatched.append(f"{cell.layer}:{cell.neuron} {cell.format}")
            continue
        imported = [r for r in found if r.get("source") == "imported"] or found
        if len(imported) > 1:
            ambiguous.append(f"{cell.layer}:{cell.neuron} {cell.format}")
        matched.append((cell, max(imported, key=lambda r: r["id"])))
    if not matched:
        raise NotFoundError(
            f"none of the {len(cells)} scores in {path} matches a stored explanation of {model} by {explainer}: "
            f"import the explanations they score first, with `python -m core import-explanations FILE --explainer "
            f"{explainer} --model {model}` (for test_neurons_results_score.csv, FILE is test_neurons_results.csv)"
        )
    digest = hashlib.sha256(data).hexdigest()
    for cell, explanation in matched:
        source = {
            "file": path.name,
            "path": str(path.resolve()),
            "sha256": digest,
            "row": cell.row,
            "column": cell.column,
        }
        dbmod.save_imported_score(db, explanation["id"], simulator, cell.score, json.dumps(source, sort_keys=True))
    means = format_means([c.score for c, _ in matched], [c.format for c, _ in matched])
    return ScoreImportReport(
        path=str(path),
        model=model,
        explainer=explainer,
        simulator=simulator,
        written=len(matched),
        unmatched=tuple(unmatched),
        ambiguous=tuple(ambiguous),
        means=_in_registry_order(means),
    )


def published_means(rows: pd.DataFrame) -> pd.DataFrame:
    """Per imported simulator and format: the mean published score and its neurons, from score rows (as
    db.score_rows gives them) of method 'imported'; empty when there are none. For tables next to local scores."""
    columns = ["simulator", "format", "n", "mean_score"]
    if rows.empty or "method" not in rows:
        return pd.DataFrame(columns=columns)
    imported = rows[(rows["method"] == IMPORTED_METHOD) & rows["score"].notna()]
    table = []
    for simulator, group in imported.groupby("simulator", sort=True):
        # One value per neuron and format (a neuron scored twice under one format counts once, averaged).
        per_neuron = group.groupby(["format", "neuron"], sort=False)["score"].mean().reset_index()
        means = format_means(per_neuron["score"].astype(float).tolist(), per_neuron["format"].tolist())
        for format_name, (mean, n) in _in_registry_order(means).items():
            table.append({"simulator": simulator, "format": format_name, "n": n, "mean_score": mean})
    return pd.DataFrame(table, columns=columns)
