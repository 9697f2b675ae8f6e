"""Queries for browsing and searching in the app."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlite_utils

from core.db.base import PUZZLE_SOURCE
from core.db.studies import in_open_study
from core.records import NeuronId

# Tables whose newest rowid moves with every insert the dashboard shows.
_VERSIONED_TABLES = (
    "runs", "excerpts", "neurons", "explanations", "scores", "similarities", "studies", "items", "raters", "ratings",
    "rating_audit",
)  # fmt: skip
_RECORD_TABLES = ("runs", "excerpts", "neurons")


def data_version(db: sqlite_utils.Database) -> tuple[Any, ...]:
    """A cheap value that changes after any committed write: the newest rowid of each table and the size and
    modification time of the database file and its write-ahead log. The app keys its query caches on it, so a
    write by the CLI or another session shows up on the next rerun."""
    parts: list[Any] = [_max_rowid(db, table) for table in _VERSIONED_TABLES]
    # Updates in place (a re-collected neuron, a changed rating) keep their rowids but always touch the files. An
    # empty or missing log counts as no log: SQLite creates it on open and deletes it on close without a write.
    file = database_file(db)
    for path in (Path(file), Path(f"{file}-wal")) if file else ():
        try:
            stat = path.stat()
        except OSError:
            stat = None
        parts += [stat.st_mtime_ns, stat.st_size] if stat is not None and stat.st_size else [None, None]
    return tuple(parts)


def records_version(db: sqlite_utils.Database) -> tuple[Any, ...]:
    """A cheap value that changes when neurons, their records or stats are written (collection, import), and not
    when anything else is: ratings, explanations and scores leave cached neuron records valid.

    A collection or import adds runs, excerpts or neurons rows or finishes a layer. Not seen: a stored neuron
    rewritten outside a collection run with the very same excerpts but other activations (an edited puzzle file
    run again); callers that cache on this value should also let entries expire."""
    finished = db.execute("SELECT MAX(finished_at), COUNT(*) FROM run_layers").fetchone()
    return (*(_max_rowid(db, table) for table in _RECORD_TABLES), *finished)


def _max_rowid(db: sqlite_utils.Database, table: str) -> int:
    return db.execute(f"SELECT COALESCE(MAX(rowid), 0) FROM {table}").fetchone()[0]


def database_file(db: sqlite_utils.Database) -> str:
    """The file behind a connection ("" for an in-memory database)."""
    return next((row[2] for row in db.execute("PRAGMA database_list") if row[1] == "main"), "")


def neuron_indices(db: sqlite_utils.Database, model: str, layer: int) -> list[int]:
    """The stored neuron indices of one layer, ascending."""
    query = "SELECT neuron FROM neurons WHERE model = ? AND layer = ? ORDER BY neuron"
    return [row[0] for row in db.execute(query, [model, layer])]


def neuron_overview(
    db: sqlite_utils.Database,
    model: str,
    layer: int | None = None,
    simulator: str | None = None,
    *,
    hide_blinded: bool = False,
) -> list[dict[str, Any]]:
    """Per stored neuron of a model (optionally one layer): layer, neuron, max activation, number of ok
    explanations, and the best ok valid-split score of its explanations (under `simulator` when given, else any;
    None when unscored). With `hide_blinded`, neurons of open studies show no explanations and no score."""
    # The blinded test guards each per-neuron subquery from outside, in a CASE, where SQLite builds the set of
    # blinded neurons once per query (as a bare column it is rebuilt for every row: 270 ms against 6 ms).
    hidden = in_open_study("n") if hide_blinded else "0"
    score_filter = " AND s.simulator = ?" if simulator is not None else ""
    clauses = ["n.model = ?"]
    args: list[Any] = [model]
    if layer is not None:
        clauses.append("n.layer = ?")
        args.append(layer)
    query = (
        "SELECT n.layer, n.neuron, n.max AS max_activation,"
        f" CASE WHEN {hidden} THEN 0 ELSE (SELECT COUNT(*) FROM explanations e WHERE e.model = n.model"
        "  AND e.layer = n.layer AND e.neuron = n.neuron AND e.status = 'ok') END AS n_explanations,"
        f" CASE WHEN {hidden} THEN NULL ELSE (SELECT MAX(s.score) FROM scores s JOIN explanations e"
        "  ON e.id = s.explanation_id WHERE e.model = n.model AND e.layer = n.layer AND e.neuron = n.neuron"
        f"  AND s.split = 'valid' AND s.status = 'ok' AND s.score IS NOT NULL{score_filter}) END AS best_score"
        f" FROM neurons n WHERE {' AND '.join(clauses)} ORDER BY n.layer, n.neuron"
    )
    return list(db.query(query, [*([simulator] if simulator is not None else []), *args]))


def score_simulators(db: sqlite_utils.Database) -> list[str]:
    """The simulators that have at least one ok score."""
    return [row[0] for row in db.execute("SELECT DISTINCT simulator FROM scores WHERE status = 'ok' ORDER BY 1")]


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def search_explanations(
    db: sqlite_utils.Database, text: str, model: str | None = None, limit: int = 200, *, hide_blinded: bool = False
) -> list[dict[str, Any]]:
    """Ok explanations containing `text` (case-insensitive for ASCII, `%` and `_` taken literally), newest first:
    id, model, layer, neuron, format, explainer, explanation. With `hide_blinded`, none of a neuron in an open
    study."""
    clauses = ["status = 'ok'", f"source != '{PUZZLE_SOURCE}'", "explanation LIKE ? ESCAPE '\\'"]
    if hide_blinded:
        clauses.append(f"NOT {in_open_study('explanations')}")
    args: list[Any] = [_like_pattern(text.strip())]
    if model is not None:
        clauses.append("model = ?")
        args.append(model)
    query = (
        "SELECT id, model, layer, neuron, format, explainer, explanation FROM explanations"
        f" WHERE {' AND '.join(clauses)} ORDER BY id DESC LIMIT ?"
    )
    return list(db.query(query, [*args, int(limit)]))


def last_explanation_id(db: sqlite_utils.Database) -> int:
    return db.execute("SELECT COALESCE(MAX(id), 0) FROM explanations").fetchone()[0]


def explanations_after(db: sqlite_utils.Database, after_id: int, model: str | None = None) -> list[dict[str, Any]]:
    """Explanations stored after the one with id `after_id` (any status), oldest first: what a running job wrote.
    Without prompt, completion and params, so that polling it while a job runs stays cheap."""
    clauses = ["id > ?"]
    args: list[Any] = [after_id]
    if model is not None:
        clauses.append("model = ?")
        args.append(model)
    columns = (
        "id, model, layer, neuron, format, explainer, sample, status, input_tokens, output_tokens, tokenizer,"
        " explanation, error"
    )
    query = f"SELECT {columns} FROM explanations WHERE {' AND '.join(clauses)} ORDER BY id"
    return list(db.query(query, args))


def explanation_costs(
    db: sqlite_utils.Database, model: str | None = None, *, hide_blinded: bool = False
) -> list[dict[str, Any]]:
    """Model, format, explainer, input/output tokens and what counted them (`tokenizer`), and source, sample and
    params (JSON text, for core.provenance) of every ok explanation (docs/METHOD.md §4, token cost); with
    `hide_blinded`, none of a neuron in an open study."""
    where, args = ("WHERE status = 'ok' AND model = ?", [model]) if model is not None else ("WHERE status = 'ok'", [])
    where += f" AND source != '{PUZZLE_SOURCE}'"  # puzzles are not a model (core.puzzles)
    where += f" AND NOT {in_open_study('explanations')}" if hide_blinded else ""
    columns = "model, format, explainer, input_tokens, output_tokens, tokenizer, source, sample, params"
    query = f"SELECT {columns} FROM explanations {where} ORDER BY id"
    return list(db.query(query, args))


def similarities_for_neuron(db: sqlite_utils.Database, model: str, neuron: NeuronId) -> list[dict[str, Any]]:
    """Every stored similarity of the explanations of one neuron: explanation_id, reference_kind, embedder, cosine."""
    return list(
        db.query(
            "SELECT m.explanation_id, m.reference_kind, m.embedder, m.cosine FROM similarities m"
            " JOIN explanations e ON e.id = m.explanation_id WHERE e.model = ? AND e.layer = ? AND e.neuron = ?"
            " ORDER BY m.explanation_id, m.reference_kind, m.embedder",
            [model, neuron.layer, neuron.index],
        )
    )
