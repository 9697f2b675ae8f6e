"""The only module with SQL: schema, versioned migrations and queries (STYLE.md habit 4).

Every connection runs in WAL mode with a busy timeout, so that many readers and concurrent raters
can share one file. Writes that must be all-or-nothing run inside `transaction(db)`.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import sqlite_utils

from core import config
from core.errors import InputError, NotFoundError, WorkbenchError
from core.records import ActivationRecord, NeuronId, NeuronRecord, NeuronStats

BUSY_TIMEOUT_MS = 30_000


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def connect(path: str | Path | None = None) -> sqlite_utils.Database:
    """Open (and create or migrate) the database at `path`, $EVAL_DB or evaluations.db."""
    path = config.db_path(path)
    if path.exists() and path.is_dir():
        raise InputError(f"database path {path} is a directory; pass a file path with --db or EVAL_DB")
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise InputError(f"{path} is not a usable SQLite database ({exc}); move it away or pass another --db") from exc
    db = sqlite_utils.Database(conn)
    migrate(db)
    return db


@contextmanager
def transaction(db: sqlite_utils.Database) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE … COMMIT, rolled back on any error, so no half-written state is ever visible."""
    conn = db.conn
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    else:
        try:
            conn.execute("COMMIT")
        except sqlite3.Error:
            conn.execute("ROLLBACK")
            raise


# ---------------------------------------------------------------------------------------------------------------
# Schema and migrations. Append a function to MIGRATIONS to change the schema; never edit a released one.
# ---------------------------------------------------------------------------------------------------------------

_SCHEMA_V1 = """
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    model TEXT NOT NULL,
    revision TEXT,
    corpus TEXT NOT NULL,
    excerpt_len INTEGER NOT NULL,
    max_tokens INTEGER NOT NULL,
    top_k INTEGER NOT NULL,
    random_k INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    n_excerpts INTEGER,
    n_tokens INTEGER,
    params TEXT NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (model, corpus, excerpt_len, max_tokens, top_k, random_k, seed)
);
CREATE TABLE run_layers (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    layer INTEGER NOT NULL,
    n_neurons INTEGER NOT NULL,
    seconds REAL,
    finished_at TEXT NOT NULL,
    PRIMARY KEY (run_id, layer)
);
CREATE TABLE excerpts (
    id INTEGER PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    tokens TEXT NOT NULL
);
CREATE TABLE neurons (
    id INTEGER PRIMARY KEY,
    model TEXT NOT NULL,
    layer INTEGER NOT NULL,
    neuron INTEGER NOT NULL,
    run_id INTEGER REFERENCES runs(id),
    source TEXT NOT NULL,
    mean REAL, variance REAL, max REAL,
    q50 REAL, q90 REAL, q99 REAL, q999 REAL,
    UNIQUE (model, layer, neuron)
);
CREATE TABLE records (
    neuron_id INTEGER NOT NULL REFERENCES neurons(id) ON DELETE CASCADE,
    kind TEXT NOT NULL CHECK (kind IN ('top', 'random')),
    rank INTEGER NOT NULL,
    excerpt_id INTEGER NOT NULL REFERENCES excerpts(id),
    max_activation REAL NOT NULL,
    activations BLOB NOT NULL,
    PRIMARY KEY (neuron_id, kind, rank)
) WITHOUT ROWID;
CREATE TABLE explanations (
    id INTEGER PRIMARY KEY,
    model TEXT NOT NULL,
    layer INTEGER NOT NULL,
    neuron INTEGER NOT NULL,
    format TEXT NOT NULL,
    explainer TEXT NOT NULL,
    source TEXT NOT NULL DEFAULT 'generated',
    params TEXT,
    prompt TEXT,
    completion TEXT,
    explanation TEXT,
    cutoff_mode TEXT,
    cutoff REAL,
    sample INTEGER NOT NULL DEFAULT 0,
    input_tokens INTEGER,
    output_tokens INTEGER,
    tokenizer TEXT,
    latency_s REAL,
    status TEXT NOT NULL,
    error TEXT,
    reference_score REAL,
    job_key TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX explanations_neuron ON explanations (model, layer, neuron);
CREATE UNIQUE INDEX explanations_job ON explanations (job_key) WHERE job_key IS NOT NULL;
CREATE TABLE llm_cache (
    key TEXT PRIMARY KEY,
    backend TEXT NOT NULL,
    model TEXT NOT NULL,
    request TEXT NOT NULL,
    response TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE scores (
    id INTEGER PRIMARY KEY,
    explanation_id INTEGER NOT NULL REFERENCES explanations(id),
    simulator TEXT NOT NULL,
    method TEXT NOT NULL,
    split TEXT NOT NULL,
    calibrated INTEGER NOT NULL DEFAULT 0,
    score REAL,
    rsquared REAL,
    absdev REAL,
    per_excerpt TEXT,
    predictions TEXT,
    status TEXT NOT NULL,
    error TEXT,
    seconds REAL,
    created_at TEXT NOT NULL,
    UNIQUE (explanation_id, simulator, method, split, calibrated)
);
CREATE TABLE similarities (
    id INTEGER PRIMARY KEY,
    explanation_id INTEGER NOT NULL REFERENCES explanations(id),
    reference_kind TEXT NOT NULL,
    reference TEXT NOT NULL,
    embedder TEXT NOT NULL,
    cosine REAL,
    created_at TEXT NOT NULL,
    UNIQUE (explanation_id, reference, embedder)
);
CREATE TABLE studies (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    instructions TEXT NOT NULL DEFAULT '',
    model TEXT NOT NULL,
    arms TEXT NOT NULL,
    neurons TEXT NOT NULL,
    ratings_per_item INTEGER NOT NULL,
    allow_tie INTEGER NOT NULL DEFAULT 1,
    allow_both_bad INTEGER NOT NULL DEFAULT 1,
    overlap_share REAL NOT NULL DEFAULT 0.2,
    gold_share REAL NOT NULL DEFAULT 0.0,
    seed INTEGER NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE items (
    id INTEGER PRIMARY KEY,
    study_id INTEGER NOT NULL REFERENCES studies(id),
    position INTEGER NOT NULL,
    model TEXT NOT NULL,
    layer INTEGER NOT NULL,
    neuron INTEGER NOT NULL,
    left_explanation_id INTEGER REFERENCES explanations(id),
    right_explanation_id INTEGER REFERENCES explanations(id),
    left_arm TEXT NOT NULL,
    right_arm TEXT NOT NULL,
    left_text TEXT NOT NULL,
    right_text TEXT NOT NULL,
    is_gold INTEGER NOT NULL DEFAULT 0,
    gold_choice TEXT
);
CREATE INDEX items_study ON items (study_id);
CREATE TABLE raters (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    code_hash TEXT NOT NULL,
    salt TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('rater', 'admin')),
    created_at TEXT NOT NULL
);
CREATE TABLE ratings (
    id INTEGER PRIMARY KEY,
    item_id INTEGER NOT NULL REFERENCES items(id),
    rater_id INTEGER NOT NULL REFERENCES raters(id),
    choice TEXT NOT NULL CHECK (choice IN ('left', 'right', 'tie', 'both_bad')),
    winner_arm TEXT,
    confidence INTEGER CHECK (confidence IS NULL OR confidence BETWEEN 1 AND 5),
    comment TEXT,
    seconds REAL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (item_id, rater_id)
);
CREATE TABLE rating_audit (
    id INTEGER PRIMARY KEY,
    rating_id INTEGER NOT NULL,
    item_id INTEGER NOT NULL,
    rater_id INTEGER NOT NULL,
    choice TEXT NOT NULL,
    winner_arm TEXT,
    confidence INTEGER,
    comment TEXT,
    seconds REAL,
    recorded_at TEXT NOT NULL,
    replaced_at TEXT NOT NULL
);
"""


def _execute_script(conn: sqlite3.Connection, script: str) -> None:
    # executescript() would COMMIT the surrounding transaction, so run statements one by one.
    for statement in script.split(";\n"):
        if statement.strip():
            conn.execute(statement)


def _migration_1(conn: sqlite3.Connection) -> None:
    _execute_script(conn, _SCHEMA_V1)


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_migration_1]
SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(db: sqlite_utils.Database) -> int:
    return db.conn.execute("PRAGMA user_version").fetchone()[0]


def migrate(db: sqlite_utils.Database) -> None:
    """Apply pending migrations, each in its own transaction with the version bump."""
    version = schema_version(db)
    if version > SCHEMA_VERSION:
        raise WorkbenchError(
            f"the database is at schema version {version}, newer than this code ({SCHEMA_VERSION}); update the code"
        )
    for number in range(version + 1, SCHEMA_VERSION + 1):
        with transaction(db) as conn:
            if schema_version(db) >= number:  # another process migrated while we waited for the lock
                continue
            MIGRATIONS[number - 1](conn)
            conn.execute(f"PRAGMA user_version = {number}")


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


# ---------------------------------------------------------------------------------------------------------------
# Collection runs, excerpts, neurons and records
# ---------------------------------------------------------------------------------------------------------------


def find_or_create_run(db: sqlite_utils.Database, params: dict[str, Any]) -> int:
    """The run with these collection parameters, created if new. Identical params resume the same run."""
    keys = ("model", "corpus", "excerpt_len", "max_tokens", "top_k", "random_k", "seed")
    where = " AND ".join(f"{k} = ?" for k in keys)
    row = db.conn.execute(f"SELECT id FROM runs WHERE {where}", [params[k] for k in keys]).fetchone()
    if row:
        return row[0]
    with transaction(db) as conn:
        cursor = conn.execute(
            "INSERT INTO runs (model, revision, corpus, excerpt_len, max_tokens, top_k, random_k, seed, params,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [*(params[k] for k in keys[:1]), params.get("revision"), *(params[k] for k in keys[1:]), _json(params), now()],
        )
        return cursor.lastrowid


def finished_layers(db: sqlite_utils.Database, run_id: int) -> set[int]:
    return {row[0] for row in db.conn.execute("SELECT layer FROM run_layers WHERE run_id = ?", [run_id])}


def excerpt_hash(tokens: Sequence[str]) -> str:
    return hashlib.sha1(_json(list(tokens)).encode()).hexdigest()


def _upsert_excerpts(conn: sqlite3.Connection, token_lists: Iterable[Sequence[str]]) -> list[int]:
    """Insert excerpts once (content-addressed) and return their ids in input order."""
    token_lists = [list(t) for t in token_lists]
    hashes = [excerpt_hash(t) for t in token_lists]
    conn.executemany(
        "INSERT OR IGNORE INTO excerpts (hash, tokens) VALUES (?, ?)",
        [(h, _json(t)) for h, t in zip(hashes, token_lists, strict=True)],
    )
    ids: dict[str, int] = {}
    unique = list(dict.fromkeys(hashes))
    for start in range(0, len(unique), 500):
        chunk = unique[start : start + 500]
        marks = ",".join("?" * len(chunk))
        ids.update(conn.execute(f"SELECT hash, id FROM excerpts WHERE hash IN ({marks})", chunk).fetchall())
    return [ids[h] for h in hashes]


def _blob(values: Sequence[float] | np.ndarray) -> bytes:
    return np.asarray(values, dtype="<f4").tobytes()


def _unblob(blob: bytes) -> tuple[float, ...]:
    return tuple(np.frombuffer(blob, dtype="<f4").tolist())


def write_neurons(
    db: sqlite_utils.Database,
    model: str,
    neurons: Sequence[NeuronRecord],
    source: str,
    run_id: int | None = None,
    finished_layer: tuple[int, float] | None = None,
) -> None:
    """Replace the stored records and stats of these neurons in one transaction.

    With `finished_layer=(layer, seconds)` the layer is also marked finished for `run_id`, atomically, so that a
    killed process never leaves a layer that looks done but is half written.
    """
    with transaction(db) as conn:
        excerpt_tokens = [r.tokens for n in neurons for r in (*n.top, *n.random)]
        excerpt_ids = iter(_upsert_excerpts(conn, excerpt_tokens))
        record_rows = []
        for record in neurons:
            q = record.stats.quantiles
            conn.execute(
                "DELETE FROM records WHERE neuron_id IN"
                " (SELECT id FROM neurons WHERE model = ? AND layer = ? AND neuron = ?)",
                [model, record.neuron.layer, record.neuron.index],
            )
            neuron_id = conn.execute(
                "INSERT INTO neurons (model, layer, neuron, run_id, source, mean, variance, max, q50, q90, q99, q999)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (model, layer, neuron) DO UPDATE SET run_id = excluded.run_id,"
                " source = excluded.source, mean = excluded.mean, variance = excluded.variance, max = excluded.max,"
                " q50 = excluded.q50, q90 = excluded.q90, q99 = excluded.q99, q999 = excluded.q999"
                " RETURNING id",
                [
                    model,
                    record.neuron.layer,
                    record.neuron.index,
                    run_id,
                    source,
                    record.stats.mean,
                    record.stats.variance,
                    record.stats.max,
                    *(q.get(level) for level in config.QUANTILES),
                ],
            ).fetchone()[0]
            for kind, records in (("top", record.top), ("random", record.random)):
                for rank, rec in enumerate(records):
                    record_rows.append(
                        (neuron_id, kind, rank, next(excerpt_ids), rec.max_activation, _blob(rec.activations))
                    )
        conn.executemany(
            "INSERT INTO records (neuron_id, kind, rank, excerpt_id, max_activation, activations)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            record_rows,
        )
        if finished_layer is not None:
            layer, seconds = finished_layer
            conn.execute(
                "INSERT OR REPLACE INTO run_layers (run_id, layer, n_neurons, seconds, finished_at) VALUES (?, ?, ?, ?, ?)",
                [run_id, layer, len(neurons), seconds, now()],
            )


def finish_run(db: sqlite_utils.Database, run_id: int, n_excerpts: int, n_tokens: int) -> None:
    with transaction(db) as conn:
        conn.execute("UPDATE runs SET n_excerpts = ?, n_tokens = ? WHERE id = ?", [n_excerpts, n_tokens, run_id])


def get_neuron(db: sqlite_utils.Database, model: str, neuron: NeuronId) -> NeuronRecord:
    """The stored records and stats of one neuron; NotFoundError names what is there instead."""
    row = db.conn.execute(
        "SELECT id, mean, variance, max, q50, q90, q99, q999 FROM neurons WHERE model = ? AND layer = ? AND neuron = ?",
        [model, neuron.layer, neuron.index],
    ).fetchone()
    if row is None:
        layers = list_layers(db, model)
        if not layers:
            known = ", ".join(list_models(db)) or "none yet: run `python -m core collect`"
            raise NotFoundError(f"no neurons of model {model!r} in the database (models: {known})")
        raise NotFoundError(
            f"neuron {neuron} of {model!r} is not in the database; collected layers: "
            + ", ".join(f"{layer} ({count} neurons)" for layer, count in layers)
        )
    neuron_id, mean, variance, max_value, *quantiles = row
    top: list[ActivationRecord] = []
    random: list[ActivationRecord] = []
    for kind, tokens, blob in db.conn.execute(
        "SELECT r.kind, e.tokens, r.activations FROM records r JOIN excerpts e ON e.id = r.excerpt_id"
        " WHERE r.neuron_id = ? ORDER BY r.kind, r.rank",
        [neuron_id],
    ):
        (top if kind == "top" else random).append(ActivationRecord(tuple(json.loads(tokens)), _unblob(blob)))
    stats = NeuronStats(
        mean=mean,
        variance=variance,
        max=max_value,
        quantiles={q: v for q, v in zip(config.QUANTILES, quantiles, strict=True) if v is not None},
    )
    return NeuronRecord(model=model, neuron=neuron, top=tuple(top), random=tuple(random), stats=stats)


def list_models(db: sqlite_utils.Database) -> list[str]:
    return [row[0] for row in db.conn.execute("SELECT DISTINCT model FROM neurons ORDER BY model")]


def list_layers(db: sqlite_utils.Database, model: str) -> list[tuple[int, int]]:
    """(layer, number of neurons) for a model, by layer."""
    return db.conn.execute(
        "SELECT layer, COUNT(*) FROM neurons WHERE model = ? GROUP BY layer ORDER BY layer", [model]
    ).fetchall()


def layer_neuron_count(db: sqlite_utils.Database, model: str, layer: int) -> int:
    return db.conn.execute(
        "SELECT COUNT(*) FROM neurons WHERE model = ? AND layer = ?", [model, layer]
    ).fetchone()[0]


def summary(db: sqlite_utils.Database) -> dict[str, Any]:
    """What is in the database: per model, its layers and neuron counts; totals of everything else."""
    models = {
        model: [{"layer": layer, "neurons": count} for layer, count in list_layers(db, model)]
        for model in list_models(db)
    }
    counts = {
        table: db.conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
        for table in ("neurons", "explanations", "scores", "studies", "ratings", "raters")
    }
    return {"models": models, "counts": counts}


# ---------------------------------------------------------------------------------------------------------------
# Explanations
# ---------------------------------------------------------------------------------------------------------------

EXPLANATION_FIELDS = (
    "model", "layer", "neuron", "format", "explainer", "source", "params", "prompt", "completion", "explanation",
    "cutoff_mode", "cutoff", "sample", "input_tokens", "output_tokens", "tokenizer", "latency_s", "status", "error",
    "reference_score", "job_key",
)  # fmt: skip


def insert_explanation(db: sqlite_utils.Database, **fields: Any) -> int:
    """Store one explanation (or one failed attempt). JSON-able `params` and `prompt` are serialised here.

    With a `job_key`, a rerun of the same job replaces the earlier row instead of adding a second one.
    """
    unknown = set(fields) - set(EXPLANATION_FIELDS)
    if unknown:
        raise ValueError(f"unknown explanation fields: {sorted(unknown)}")
    row = dict(fields)
    for key in ("params", "prompt"):
        if key in row and not isinstance(row[key], str | None):
            row[key] = _json(row[key])
    row.setdefault("status", "ok")
    row["created_at"] = now()
    columns = ", ".join(row)
    marks = ", ".join("?" * len(row))
    with transaction(db) as conn:
        if row.get("job_key") is not None:
            conn.execute("DELETE FROM explanations WHERE job_key = ?", [row["job_key"]])
        return conn.execute(f"INSERT INTO explanations ({columns}) VALUES ({marks})", list(row.values())).lastrowid


def get_explanation(db: sqlite_utils.Database, explanation_id: int) -> dict[str, Any]:
    row = db.conn.execute("SELECT * FROM explanations WHERE id = ?", [explanation_id]).fetchone()
    if row is None:
        raise NotFoundError(f"no explanation with id {explanation_id}")
    columns = [d[0] for d in db.conn.execute("SELECT * FROM explanations LIMIT 0").description]
    return _decode_explanation(dict(zip(columns, row, strict=True)))


def _decode_explanation(row: dict[str, Any]) -> dict[str, Any]:
    for key in ("params", "prompt"):
        if row.get(key):
            row[key] = json.loads(row[key])
    return row


def list_explanations(
    db: sqlite_utils.Database,
    model: str | None = None,
    neuron: NeuronId | None = None,
    status: str | None = "ok",
) -> list[dict[str, Any]]:
    """Explanations, newest first, optionally of one model and neuron, by status (None for all)."""
    clauses, args = [], []
    if model is not None:
        clauses.append("model = ?")
        args.append(model)
    if neuron is not None:
        clauses += ["layer = ?", "neuron = ?"]
        args += [neuron.layer, neuron.index]
    if status is not None:
        clauses.append("status = ?")
        args.append(status)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    cursor = db.conn.execute(f"SELECT * FROM explanations {where} ORDER BY id DESC", args)
    columns = [d[0] for d in cursor.description]
    return [_decode_explanation(dict(zip(columns, row, strict=True))) for row in cursor.fetchall()]


# ---------------------------------------------------------------------------------------------------------------
# LLM response cache
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# Scores and similarities
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# Studies, items, raters and ratings
# ---------------------------------------------------------------------------------------------------------------
