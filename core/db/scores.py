"""Simulation scores and explanation similarities.

A score or similarity is stored (or replaced) with one hand-written `INSERT … ON CONFLICT … DO UPDATE … RETURNING
id`: it keeps the row's id, sets exactly the columns a rescore changes, and hands the id back (see core.db)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import sqlite_utils

from core.db.base import _chunks, _json, _marks, now, transaction
from core.db.studies import in_open_study
from core.records import NeuronId
from core.values import finite_or_none, to_jsonable

SCORE_STATUSES = ("ok", "failed")


def save_score(
    db: sqlite_utils.Database,
    explanation_id: int,
    simulator: str,
    method: str,
    split: str,
    calibrated: bool,
    scores: Any,
    predictions: Sequence[Sequence[float]] | None,
    status: str,
    error: str | None = None,
    seconds: float | None = None,
    no_value_count: int | None = None,
    input_tokens: int | None = None,
    output_tokens: int | None = None,
) -> int:
    """Store (or replace) the score of one explanation under one simulator, method, split and calibration.

    `scores` is a core.scoring.Scores (score, rsquared, absdev, per_excerpt, raw_score when calibrated) or None for
    a failed simulation. `no_value_count`: predictions read as 0 because no value was among the top logprobs.
    `input_tokens`/`output_tokens`: the simulator's requests, as the server counted them (None: not reported).
    """
    if status not in SCORE_STATUSES:
        raise ValueError(f"score status {status!r} is not one of {SCORE_STATUSES}")
    per_excerpt = getattr(scores, "per_excerpt", None)
    row = [
        explanation_id,
        simulator,
        method,
        split,
        int(bool(calibrated)),
        finite_or_none(getattr(scores, "score", None)),
        finite_or_none(getattr(scores, "rsquared", None)),
        finite_or_none(getattr(scores, "absdev", None)),
        None if per_excerpt is None else _json(to_jsonable([dict(item) for item in per_excerpt])),
        None if predictions is None else _json(to_jsonable([list(p) for p in predictions])),
        status,
        error,
        seconds,
        now(),
        finite_or_none(getattr(scores, "raw_score", None)),
        no_value_count,
    ]
    # A development build of schema v3 lacks the token columns (see _require_scorer_columns): tokens go unrecorded.
    tokens = _scorer_columns(db)
    if tokens:
        row += [input_tokens, output_tokens]
    with transaction(db):
        return db.execute(
            "INSERT INTO scores (explanation_id, simulator, method, split, calibrated, score, rsquared, absdev,"
            " per_excerpt, predictions, status, error, seconds, created_at, raw_score, no_value_count"
            f"{', input_tokens, output_tokens' if tokens else ''}) VALUES ({', '.join('?' * len(row))})"
            " ON CONFLICT (explanation_id, simulator, method, split, calibrated) DO UPDATE SET"
            " score = excluded.score, rsquared = excluded.rsquared, absdev = excluded.absdev,"
            " per_excerpt = excluded.per_excerpt, predictions = excluded.predictions, status = excluded.status,"
            " error = excluded.error, seconds = excluded.seconds, created_at = excluded.created_at,"
            " raw_score = excluded.raw_score, no_value_count = excluded.no_value_count"
            f"{', input_tokens = excluded.input_tokens, output_tokens = excluded.output_tokens' if tokens else ''}"
            " RETURNING id",
            row,
        ).fetchone()[0]


def save_similarity(
    db: sqlite_utils.Database,
    explanation_id: int,
    reference_kind: str,
    reference: str,
    embedder: str,
    cosine: float | None,
) -> int:
    """Store (or replace) the cosine similarity of an explanation to a reference text under one embedder."""
    with transaction(db):
        return db.execute(
            "INSERT INTO similarities (explanation_id, reference_kind, reference, embedder, cosine, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (explanation_id, reference, embedder) DO UPDATE SET"
            " reference_kind = excluded.reference_kind, cosine = excluded.cosine, created_at = excluded.created_at"
            " RETURNING id",
            [explanation_id, reference_kind, reference, embedder, finite_or_none(cosine), now()],
        ).fetchone()[0]


def scored_explanation_ids(
    db: sqlite_utils.Database, simulator: str, method: str, split: str, calibrated: bool, status: str = "ok"
) -> set[int]:
    """Ids of explanations that already have a score with this status under this simulator, method and split."""
    return {
        row[0]
        for row in db.execute(
            "SELECT explanation_id FROM scores WHERE simulator = ? AND method = ? AND split = ? AND calibrated = ?"
            " AND status = ?",
            [simulator, method, split, int(bool(calibrated)), status],
        )
    }


def stored_similarities(
    db: sqlite_utils.Database, explanation_ids: Iterable[int], embedder: str
) -> dict[tuple[int, str], float | None]:
    """(explanation id, reference text) → cosine of the similarities already stored under `embedder`."""
    found: dict[tuple[int, str], float | None] = {}
    for chunk in _chunks(sorted(set(explanation_ids))):
        for explanation_id, reference, cosine in db.execute(
            "SELECT explanation_id, reference, cosine FROM similarities WHERE embedder = ?"
            f" AND explanation_id IN ({_marks(chunk)})",
            [embedder, *chunk],
        ):
            found[(explanation_id, reference)] = cosine
    return found


def reference_explanations(db: sqlite_utils.Database, model: str) -> dict[NeuronId, str]:
    """The imported reference explanation of each neuron of a model (source 'reference'; the newest if several)."""
    rows = db.execute(
        "SELECT layer, neuron, explanation FROM explanations WHERE model = ? AND source = 'reference'"
        " AND status = 'ok' AND explanation IS NOT NULL AND TRIM(explanation) != '' ORDER BY id",
        [model],
    ).fetchall()
    return {NeuronId(layer, index): text for layer, index, text in rows}


def _decode_score(row: dict[str, Any]) -> dict[str, Any]:
    for key in ("per_excerpt", "predictions"):
        if row.get(key):
            row[key] = json.loads(row[key])
    if "calibrated" in row and row["calibrated"] is not None:
        row["calibrated"] = bool(row["calibrated"])
    return row


def scores_for_neuron(db: sqlite_utils.Database, model: str, neuron: NeuronId) -> list[dict[str, Any]]:
    """Every stored score of the explanations of one neuron, newest explanation first, with the explanation's
    format, explainer, text and source, and per-excerpt scores and predictions decoded from JSON."""
    rows = db.query(
        "SELECT s.id, s.explanation_id, e.format, e.explainer, e.source, e.sample, e.explanation, s.simulator,"
        " s.method, s.split, s.calibrated, s.score, s.rsquared, s.absdev, s.per_excerpt, s.predictions, s.status,"
        " s.error, s.seconds, s.created_at"
        " FROM scores s JOIN explanations e ON e.id = s.explanation_id"
        " WHERE e.model = ? AND e.layer = ? AND e.neuron = ?"
        " ORDER BY e.id DESC, s.simulator, s.method, s.split, s.calibrated",
        [model, neuron.layer, neuron.index],
    )
    return [_decode_score(row) for row in rows]


def score_rows(
    db: sqlite_utils.Database,
    model: str | None = None,
    simulator: str | None = None,
    *,
    method: str | None = None,
    split: str | None = None,
    calibrated: bool | None = None,
    reference_kind: str | None = None,
    embedder: str | None = None,
    include_unscored: bool = True,
    hide_blinded: bool = False,
) -> list[dict[str, Any]]:
    """One row per (ok explanation, score), ready for a DataFrame: model, neuron ("layer:index"), layer, index,
    format, explainer, source, sample, params (JSON text, for core.provenance), explanation, input/output tokens and
    what counted them (`tokenizer`), simulator, method, split, calibrated,
    score, rsquared, absdev, status, error, seconds, and similarity (mean cosine to the references of
    `reference_kind` under `embedder`; None when there is none).

    Score filters apply to the join, so with `include_unscored` an explanation without a matching score still
    appears once with simulator None (it counts for similarity and token cost). Every scored row names its
    simulator and method: callers must never average scores of different simulators together.
    """
    join = ""
    join_args: list[Any] = []
    for column, value in (("simulator", simulator), ("method", method), ("split", split)):
        if value is not None:
            join += f" AND s.{column} = ?"
            join_args.append(value)
    if calibrated is not None:
        join += " AND s.calibrated = ?"
        join_args.append(int(bool(calibrated)))
    similar, similar_args = "", []
    if reference_kind is not None:
        similar += " AND m.reference_kind = ?"
        similar_args.append(reference_kind)
    if embedder is not None:
        similar += " AND m.embedder = ?"
        similar_args.append(embedder)
    where, where_args = ["e.status = 'ok'"], []
    if model is not None:
        where.append("e.model = ?")
        where_args.append(model)
    if not include_unscored:
        where.append("s.id IS NOT NULL")
    if hide_blinded:  # for visitors: nothing of a neuron in an open study
        where.append(f"NOT {in_open_study('e')}")
    scorer_tokens = (
        "s.input_tokens AS scorer_input_tokens, s.output_tokens AS scorer_output_tokens"
        if _scorer_columns(db)
        else "NULL AS scorer_input_tokens, NULL AS scorer_output_tokens"
    )
    query = (
        "SELECT e.id AS explanation_id, e.model, e.layer || ':' || e.neuron AS neuron, e.layer, e.neuron AS 'index',"
        " e.format, e.explainer, e.source, e.sample, e.params, e.explanation, e.input_tokens, e.output_tokens,"
        " e.tokenizer, s.simulator, s.method, s.split, s.calibrated, s.score, s.rsquared, s.absdev, s.status, s.error,"
        f" s.seconds, {scorer_tokens},"
        f" (SELECT AVG(m.cosine) FROM similarities m WHERE m.explanation_id = e.id{similar}) AS similarity"
        f" FROM explanations e LEFT JOIN scores s ON s.explanation_id = e.id{join}"
        f" WHERE {' AND '.join(where)}"
        " ORDER BY e.model, e.layer, e.neuron, e.format, e.id, s.simulator, s.method, s.split, s.calibrated"
    )
    rows = list(db.query(query, [*similar_args, *join_args, *where_args]))
    for row in rows:
        if row["calibrated"] is not None:
            row["calibrated"] = bool(row["calibrated"])
    return rows


def scores_for_explanations(
    db: sqlite_utils.Database,
    explanation_ids: Iterable[int],
    simulator: str | None = None,
    method: str | None = None,
) -> tuple[str | None, dict[int, float]]:
    """Simulation scores of these explanations under ONE simulator and method: (simulator, {explanation id: score}).

    Per explanation: its most recent ok, non-missing score on the valid split (docs/METHOD.md §4). Without `simulator`
    (or `method`), the simulator (and its method) that scored the most of these explanations (ties: by name).
    Scores of simulators, or of one simulator's methods (chat_logprobs vs chat_parse), are never mixed.
    """
    rows: list[tuple[int, str, str, float]] = []
    for chunk in _chunks(sorted({int(i) for i in explanation_ids if i is not None})):
        rows += db.execute(
            "SELECT explanation_id, simulator, method, score FROM scores WHERE split = 'valid' AND status = 'ok'"
            f" AND score IS NOT NULL AND explanation_id IN ({_marks(chunk)})"
            " ORDER BY created_at, id",
            chunk,
        ).fetchall()
    counts: dict[tuple[str, str], set[int]] = {}
    for explanation_id, name, used, _ in rows:
        if (simulator is None or name == simulator) and (method is None or used == method):
            counts.setdefault((name, used), set()).add(explanation_id)
    if not counts:
        return simulator, {}
    chosen = min(counts, key=lambda pair: (-len(counts[pair]), pair))
    # Rows are oldest first, so later ones overwrite: the most recent score wins.
    scores = {explanation_id: score for explanation_id, *pair, score in rows if tuple(pair) == chosen}
    return chosen[0], {k: v for k, v in scores.items() if v == v}


def automated_scores_for_explanations(
    db: sqlite_utils.Database, explanation_ids: Iterable[int]
) -> dict[tuple[str, str], dict[int, float]]:
    """Every automated score kind of these explanations, each kept apart: ("score", "<simulator>·<method>") →
    {explanation id: its ok, uncalibrated score on the valid split} and ("similarity", "<embedder>") →
    {explanation id: mean cosine to its references under that embedder}. Missing values are left out."""
    found: dict[tuple[str, str], dict[int, float]] = {}
    for chunk in _chunks(sorted({int(i) for i in explanation_ids if i is not None})):
        marks = _marks(chunk)
        for explanation_id, simulator, method, score in db.execute(
            "SELECT explanation_id, simulator, method, score FROM scores WHERE split = 'valid' AND calibrated = 0"
            f" AND status = 'ok' AND score IS NOT NULL AND explanation_id IN ({marks})"
            " ORDER BY simulator, method, explanation_id",
            chunk,
        ):
            found.setdefault(("score", f"{simulator}·{method}"), {})[explanation_id] = score
        for explanation_id, embedder, cosine in db.execute(
            "SELECT explanation_id, embedder, AVG(cosine) FROM similarities WHERE cosine IS NOT NULL"
            f" AND explanation_id IN ({marks}) GROUP BY explanation_id, embedder ORDER BY embedder, explanation_id",
            chunk,
        ):
            found.setdefault(("similarity", embedder), {})[explanation_id] = cosine
    return dict(sorted(found.items()))


def save_imported_score(
    db: sqlite_utils.Database,
    explanation_id: int,
    simulator: str,
    score: float | None,
    source: str,
    split: str = "valid",
) -> int:
    """Store (or replace) a published score of an explanation, kept apart from scores computed here: method
    'imported', uncalibrated, no predictions, and `source` naming the file it came from (docs/METHOD.md §5)."""
    if "source" not in db.table("scores").columns_dict:
        from core.errors import WorkbenchError

        raise WorkbenchError(
            "this database's scores table predates imported scores (no source column); import into a new database "
            "file with --db"
        )
    with transaction(db):
        return db.execute(
            "INSERT INTO scores (explanation_id, simulator, method, split, calibrated, score, status, source,"
            " created_at) VALUES (?, ?, 'imported', ?, 0, ?, 'ok', ?, ?)"
            " ON CONFLICT (explanation_id, simulator, method, split, calibrated) DO UPDATE SET"
            " score = excluded.score, source = excluded.source, status = 'ok', created_at = excluded.created_at"
            " RETURNING id",
            [explanation_id, simulator, split, finite_or_none(score), source, now()],
        ).fetchone()[0]


# --- Scores of the other scorers: detection, fuzzing, embedding (docs/METHOD.md §10) -----------------------------


def _scorer_columns(db: sqlite_utils.Database) -> bool:
    return "scorer" in db.table("scores").columns_dict


def _require_scorer_columns(db: sqlite_utils.Database) -> None:
    if not _scorer_columns(db):
        from core.errors import WorkbenchError

        raise WorkbenchError(
            "this database's scores table predates the detection, fuzzing and embedding scorers (a development "
            "build of schema v3); score into a new database file with --db"
        )


def save_scorer_score(
    db: sqlite_utils.Database,
    explanation_id: int,
    *,
    scorer: str,
    simulator: str,
    method: str,
    status: str,
    score: float | None = None,
    auc: float | None = None,
    per_excerpt: Sequence[dict[str, Any]] | None = None,
    settings: dict[str, Any] | None = None,
    error: str | None = None,
    seconds: float | None = None,
    input_tokens: int | None = None,
    output_tokens: int | None = None,
    split: str = "valid",
) -> int:
    """Store (or replace) one explanation's score under a scorer other than simulation: `simulator` is
    `<scorer>:<model>` and `method` the scorer's metric (core.scorers), so its scores never share a mean with
    another scorer's; per-excerpt predictions go to `per_excerpt`, never to `predictions` (which holds simulated
    activations)."""
    if status not in SCORE_STATUSES:
        raise ValueError(f"score status {status!r} is not one of {SCORE_STATUSES}")
    _require_scorer_columns(db)
    row = [
        explanation_id, simulator, method, split, finite_or_none(score),
        None if per_excerpt is None else _json(to_jsonable([dict(item) for item in per_excerpt])),
        status, error, seconds, now(), scorer, None if settings is None else _json(to_jsonable(settings)),
        input_tokens, output_tokens, finite_or_none(auc),
    ]  # fmt: skip
    with transaction(db):
        return db.execute(
            "INSERT INTO scores (explanation_id, simulator, method, split, calibrated, score, per_excerpt, status,"
            " error, seconds, created_at, scorer, settings, input_tokens, output_tokens, auc)"
            " VALUES (?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (explanation_id, simulator, method, split, calibrated) DO UPDATE SET"
            " score = excluded.score, per_excerpt = excluded.per_excerpt, predictions = NULL, status = excluded.status,"
            " error = excluded.error, seconds = excluded.seconds, created_at = excluded.created_at,"
            " scorer = excluded.scorer, settings = excluded.settings, input_tokens = excluded.input_tokens,"
            " output_tokens = excluded.output_tokens, auc = excluded.auc, rsquared = NULL, absdev = NULL"
            " RETURNING id",
            row,
        ).fetchone()[0]


def scorer_settings_of(
    db: sqlite_utils.Database, simulator: str, method: str, split: str = "valid"
) -> dict[int, tuple[str, str | None]]:
    """explanation id → (status, settings JSON text) of its stored score under this scorer·model and method."""
    _require_scorer_columns(db)
    return {
        explanation_id: (status, settings)
        for explanation_id, status, settings in db.execute(
            "SELECT explanation_id, status, settings FROM scores WHERE simulator = ? AND method = ? AND split = ?"
            " AND calibrated = 0",
            [simulator, method, split],
        )
    }


def scorer_score_rows(
    db: sqlite_utils.Database,
    explanation_ids: Iterable[int],
    *,
    scorer: str | None = None,
    simulator: str | None = None,
    method: str | None = None,
) -> list[dict[str, Any]]:
    """The stored scores of these explanations, one row each: explanation_id, neuron ("layer:index"), format,
    explainer, scorer, model (the scorer's model: the simulator for simulation), method, split, calibrated, score,
    auc, status, error, settings and per_excerpt (decoded), input/output tokens of the scorer, seconds. With
    `scorer`/`simulator`/`method`, only those."""
    ids = sorted({int(i) for i in explanation_ids if i is not None})
    has_scorer = _scorer_columns(db)
    extra = "s.scorer, s.settings, s.input_tokens AS scorer_input_tokens, s.output_tokens AS scorer_output_tokens," \
        " s.auc" if has_scorer else "'simulation' AS scorer, NULL AS settings, NULL AS scorer_input_tokens," \
        " NULL AS scorer_output_tokens, NULL AS auc"  # fmt: skip
    filters, args = "", []
    for column, value in (("scorer", scorer), ("simulator", simulator), ("method", method)):
        if value is not None:
            if column == "scorer" and not has_scorer:
                if value != "simulation":
                    return []
                continue
            filters += f" AND s.{column} = ?"
            args.append(value)
    rows: list[dict[str, Any]] = []
    for chunk in _chunks(ids):
        rows += db.query(
            "SELECT s.explanation_id, e.model AS subject_model, e.layer || ':' || e.neuron AS neuron, e.format,"
            " e.explainer, s.simulator, s.method, s.split, s.calibrated, s.score, s.status, s.error, s.seconds,"
            f" {extra},"
            " s.per_excerpt, s.created_at FROM scores s JOIN explanations e ON e.id = s.explanation_id"
            f" WHERE s.explanation_id IN ({_marks(chunk)}){filters}"
            " ORDER BY e.layer, e.neuron, e.format, s.explanation_id, s.simulator, s.method",
            [*chunk, *args],
        )
    for row in rows:
        row["calibrated"] = bool(row["calibrated"])
        prefix = f"{row['scorer']}:"
        simulator_name = str(row["simulator"])
        row["model"] = simulator_name[len(prefix) :] if simulator_name.startswith(prefix) else simulator_name
        for key in ("settings", "per_excerpt"):
            if row.get(key):
                row[key] = json.loads(row[key])
    return rows


def score_id(db: sqlite_utils.Database, explanation_id: int, simulator: str, method: str, split: str = "valid") -> int:
    """The id of the uncalibrated score of an explanation under one simulator (or scorer·model) and method."""
    row = db.execute(
        "SELECT id FROM scores WHERE explanation_id = ? AND simulator = ? AND method = ? AND split = ?"
        " AND calibrated = 0",
        [explanation_id, simulator, method, split],
    ).fetchone()
    if row is None:
        from core.errors import NotFoundError

        raise NotFoundError(f"explanation {explanation_id} has no {simulator} · {method} score")
    return int(row[0])
