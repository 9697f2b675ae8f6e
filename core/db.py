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
        conn.execute("COMMIT")
    except BaseException:
        # SQLite rolls back by itself on some errors (SQLITE_FULL, SQLITE_IOERR); a second ROLLBACK would
        # then hide the real error behind "no transaction is active".
        if conn.in_transaction:
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


# v2: which items were handed to which rater. It makes "never show an item twice" and "that item was not assigned
# to you" checkable, and lets concurrent raters reserve items so that none is filled past its wanted count.
_SCHEMA_V2_ASSIGNMENTS = """
CREATE TABLE assignments (
    item_id INTEGER NOT NULL REFERENCES items(id),
    rater_id INTEGER NOT NULL REFERENCES raters(id),
    assigned_at TEXT NOT NULL,
    PRIMARY KEY (item_id, rater_id)
) WITHOUT ROWID;
CREATE INDEX assignments_rater ON assignments (rater_id);
INSERT INTO assignments (item_id, rater_id, assigned_at) SELECT item_id, rater_id, created_at FROM ratings
"""


def _migration_2(conn: sqlite3.Connection) -> None:
    _execute_script(conn, _SCHEMA_V2_ASSIGNMENTS)


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_migration_1, _migration_2]
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


_RUN_KEYS = ("model", "corpus", "excerpt_len", "max_tokens", "top_k", "random_k", "seed")


def find_run(db: sqlite_utils.Database, params: dict[str, Any]) -> int | None:
    """The id of the run with these collection parameters, if one was started."""
    where = " AND ".join(f"{k} = ?" for k in _RUN_KEYS)
    row = db.conn.execute(f"SELECT id FROM runs WHERE {where}", [params[k] for k in _RUN_KEYS]).fetchone()
    return row[0] if row else None


def _run_id(conn: sqlite3.Connection, params: dict[str, Any]) -> int:
    where = " AND ".join(f"{k} = ?" for k in _RUN_KEYS)
    row = conn.execute(f"SELECT id FROM runs WHERE {where}", [params[k] for k in _RUN_KEYS]).fetchone()
    if row:
        return row[0]
    columns = (*_RUN_KEYS, "revision", "params", "created_at")
    values = [*(params[k] for k in _RUN_KEYS), params.get("revision"), _json(params), now()]
    marks = ", ".join("?" * len(columns))
    return conn.execute(f"INSERT INTO runs ({', '.join(columns)}) VALUES ({marks})", values).lastrowid


def finished_layers(db: sqlite_utils.Database, run_id: int) -> set[int]:
    return {row[0] for row in db.conn.execute("SELECT layer FROM run_layers WHERE run_id = ?", [run_id])}


def _upsert_excerpts(conn: sqlite3.Connection, token_lists: Iterable[Sequence[str]]) -> list[int]:
    """Insert excerpts once (content-addressed) and return their ids in input order."""
    token_tuples = [tuple(t) for t in token_lists]
    # Many neurons share an excerpt: hash and encode each distinct one once.
    encoded = {tokens: _json(list(tokens)) for tokens in dict.fromkeys(token_tuples)}
    hashes = {tokens: hashlib.sha1(text.encode()).hexdigest() for tokens, text in encoded.items()}
    conn.executemany(
        "INSERT OR IGNORE INTO excerpts (hash, tokens) VALUES (?, ?)",
        [(hashes[tokens], text) for tokens, text in encoded.items()],
    )
    ids: dict[str, int] = {}
    unique = list(hashes.values())
    for start in range(0, len(unique), 500):
        chunk = unique[start : start + 500]
        marks = ",".join("?" * len(chunk))
        ids.update(conn.execute(f"SELECT hash, id FROM excerpts WHERE hash IN ({marks})", chunk).fetchall())
    return [ids[hashes[tokens]] for tokens in token_tuples]


def _blob(values: Sequence[float] | np.ndarray) -> bytes:
    return np.asarray(values, dtype="<f4").tobytes()


def _unblob(blob: bytes) -> tuple[float, ...]:
    return tuple(np.frombuffer(blob, dtype="<f4").tolist())


def write_neurons(
    db: sqlite_utils.Database,
    model: str,
    neurons: Sequence[NeuronRecord],
    source: str,
    run: dict[str, Any] | None = None,
    run_totals: tuple[int, int] | None = None,
    finished_layer: tuple[int, float] | None = None,
) -> None:
    """Replace the stored records and stats of these neurons, all in one transaction.

    With `run` (collection parameters) the neurons are filed under that run, created if new, and with
    `finished_layer=(layer, seconds)` the layer is marked finished in the same transaction, so that a killed
    process never leaves a layer that looks done but is half written.
    """
    with transaction(db) as conn:
        run_id = _run_id(conn, run) if run is not None else None
        if run_id is not None and run_totals is not None:
            conn.execute("UPDATE runs SET n_excerpts = ?, n_tokens = ? WHERE id = ?", [*run_totals, run_id])
        excerpt_tokens = [r.tokens for n in neurons for r in (*n.top, *n.random)]
        excerpt_ids = iter(_upsert_excerpts(conn, excerpt_tokens))
        record_rows = []
        for record in neurons:
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
                    *(record.stats.quantiles.get(level) for level in config.QUANTILES),
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
            if run_id is None:
                raise ValueError("finished_layer needs run")
            layer, seconds = finished_layer
            conn.execute(
                "INSERT OR REPLACE INTO run_layers (run_id, layer, n_neurons, seconds, finished_at)"
                " VALUES (?, ?, ?, ?, ?)",
                [run_id, layer, len(neurons), seconds, now()],
            )


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
    return db.conn.execute("SELECT COUNT(*) FROM neurons WHERE model = ? AND layer = ?", [model, layer]).fetchone()[0]


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


_EXPLANATION_DEFAULTS = {"status": "ok", "source": "generated", "sample": 0}


def _insert_explanation_row(conn: sqlite3.Connection, fields: dict[str, Any], created_at: str) -> int:
    unknown = set(fields) - set(EXPLANATION_FIELDS)
    if unknown:
        raise ValueError(f"unknown explanation fields: {sorted(unknown)}")
    row = {"status": "ok", **fields, "created_at": created_at}
    for key in ("params", "prompt"):
        if row.get(key) is not None and not isinstance(row[key], str):
            row[key] = _json(row[key])
    existing = None
    if row.get("job_key") is not None:
        existing = conn.execute(
            "SELECT id, explanation FROM explanations WHERE job_key = ?", [row["job_key"]]
        ).fetchone()
    if existing is None:
        sql = f"INSERT INTO explanations ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})"
        return conn.execute(sql, list(row.values())).lastrowid
    # A rerun of the same job updates its row in place: study items and scores keep pointing at it. Scores of a
    # text that changed no longer describe it, so they go.
    explanation_id, old_text = existing
    if old_text != row.get("explanation"):
        conn.execute("DELETE FROM scores WHERE explanation_id = ?", [explanation_id])
        conn.execute("DELETE FROM similarities WHERE explanation_id = ?", [explanation_id])
    columns = [c for c in EXPLANATION_FIELDS if c != "job_key"] + ["created_at"]
    conn.execute(
        f"UPDATE explanations SET {', '.join(f'{c} = ?' for c in columns)} WHERE id = ?",
        [row.get(c, _EXPLANATION_DEFAULTS.get(c)) for c in columns] + [explanation_id],
    )
    return explanation_id


def insert_explanation(db: sqlite_utils.Database, **fields: Any) -> int:
    """Store one explanation (or one failed attempt); JSON-able `params` and `prompt` are serialised here.

    With a `job_key`, a rerun of the same job replaces the earlier row instead of adding a second one.
    """
    with transaction(db) as conn:
        return _insert_explanation_row(conn, fields, now())


def insert_explanations(db: sqlite_utils.Database, rows: Sequence[dict[str, Any]]) -> int:
    """Store many explanations in one transaction (all or nothing); returns how many."""
    created_at = now()
    with transaction(db) as conn:
        for fields in rows:
            _insert_explanation_row(conn, fields, created_at)
    return len(rows)


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


def explanation_statuses(db: sqlite_utils.Database, job_keys: Sequence[str]) -> dict[str, str]:
    """job_key → status of the stored explanation, for the keys that have one (resuming a job list)."""
    statuses: dict[str, str] = {}
    keys = list(dict.fromkeys(job_keys))
    for start in range(0, len(keys), 500):
        chunk = keys[start : start + 500]
        marks = ",".join("?" * len(chunk))
        statuses.update(
            db.conn.execute(f"SELECT job_key, status FROM explanations WHERE job_key IN ({marks})", chunk).fetchall()
        )
    return statuses


def explanations_by_job(db: sqlite_utils.Database, job_keys: Sequence[str]) -> list[dict[str, Any]]:
    """The stored explanations with these job keys, in the order of `job_keys` (missing ones left out)."""
    found: dict[str, dict[str, Any]] = {}
    keys = list(dict.fromkeys(job_keys))
    for start in range(0, len(keys), 500):
        chunk = keys[start : start + 500]
        marks = ",".join("?" * len(chunk))
        cursor = db.conn.execute(f"SELECT * FROM explanations WHERE job_key IN ({marks})", chunk)
        columns = [d[0] for d in cursor.description]
        for row in cursor.fetchall():
            decoded = _decode_explanation(dict(zip(columns, row, strict=True)))
            found[decoded["job_key"]] = decoded
    return [found[key] for key in keys if key in found]


# ---------------------------------------------------------------------------------------------------------------
# LLM response cache
# ---------------------------------------------------------------------------------------------------------------


def cache_get(db: sqlite_utils.Database, key: str) -> dict[str, Any] | None:
    """The cached response (decoded JSON) stored under `key`, or None."""
    row = db.conn.execute("SELECT response FROM llm_cache WHERE key = ?", [key]).fetchone()
    return json.loads(row[0]) if row else None


def cache_put(
    db: sqlite_utils.Database, key: str, backend: str, model: str, request: Any, response: dict[str, Any]
) -> None:
    """Store (or replace) one successful LLM response. `request` must hold no secrets: it is stored as given."""
    with transaction(db) as conn:
        conn.execute(
            "INSERT OR REPLACE INTO llm_cache (key, backend, model, request, response, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [key, backend, model, _json(request), _json(response), now()],
        )


def cache_delete(db: sqlite_utils.Database, key: str) -> None:
    """Forget one cached LLM response (no error when there is none)."""
    with transaction(db) as conn:
        conn.execute("DELETE FROM llm_cache WHERE key = ?", [key])


# ---------------------------------------------------------------------------------------------------------------
# Scores and similarities
# ---------------------------------------------------------------------------------------------------------------

SCORE_STATUSES = ("ok", "failed")


def _finite(value: Any) -> float | None:
    """A float, or None for missing, NaN and infinities (SPEC.md §4: store NaN as missing, never as 0)."""
    if value is None or isinstance(value, bool):
        return None
    number = float(value)
    return number if np.isfinite(number) else None


def _clean_json(value: Any) -> Any:
    """Nested lists/dicts with NaN and infinities turned into None, so the JSON stays valid."""
    if isinstance(value, dict):
        return {k: _clean_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean_json(v) for v in value]
    if isinstance(value, float | np.floating):
        return _finite(value)
    return value


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
) -> int:
    """Store (or replace) the score of one explanation under one simulator, method, split and calibration.

    `scores` is a core.scoring.Scores (score, rsquared, absdev, per_excerpt) or None for a failed simulation.
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
        _finite(getattr(scores, "score", None)),
        _finite(getattr(scores, "rsquared", None)),
        _finite(getattr(scores, "absdev", None)),
        None if per_excerpt is None else _json(_clean_json([dict(item) for item in per_excerpt])),
        None if predictions is None else _json(_clean_json([list(p) for p in predictions])),
        status,
        error,
        seconds,
        now(),
    ]
    with transaction(db) as conn:
        return conn.execute(
            "INSERT INTO scores (explanation_id, simulator, method, split, calibrated, score, rsquared, absdev,"
            " per_excerpt, predictions, status, error, seconds, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (explanation_id, simulator, method, split, calibrated) DO UPDATE SET"
            " score = excluded.score, rsquared = excluded.rsquared, absdev = excluded.absdev,"
            " per_excerpt = excluded.per_excerpt, predictions = excluded.predictions, status = excluded.status,"
            " error = excluded.error, seconds = excluded.seconds, created_at = excluded.created_at"
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
    with transaction(db) as conn:
        return conn.execute(
            "INSERT INTO similarities (explanation_id, reference_kind, reference, embedder, cosine, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (explanation_id, reference, embedder) DO UPDATE SET"
            " reference_kind = excluded.reference_kind, cosine = excluded.cosine, created_at = excluded.created_at"
            " RETURNING id",
            [explanation_id, reference_kind, reference, embedder, _finite(cosine), now()],
        ).fetchone()[0]


def scored_explanation_ids(
    db: sqlite_utils.Database, simulator: str, method: str, split: str, calibrated: bool, status: str = "ok"
) -> set[int]:
    """Ids of explanations that already have a score with this status under this simulator, method and split."""
    return {
        row[0]
        for row in db.conn.execute(
            "SELECT explanation_id FROM scores WHERE simulator = ? AND method = ? AND split = ? AND calibrated = ?"
            " AND status = ?",
            [simulator, method, split, int(bool(calibrated)), status],
        )
    }


def stored_similarities(
    db: sqlite_utils.Database, explanation_ids: Iterable[int], embedder: str
) -> dict[tuple[int, str], float | None]:
    """(explanation id, reference text) → cosine of the similarities already stored under `embedder`."""
    ids = sorted(set(explanation_ids))
    found: dict[tuple[int, str], float | None] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        for explanation_id, reference, cosine in db.conn.execute(
            "SELECT explanation_id, reference, cosine FROM similarities WHERE embedder = ?"
            f" AND explanation_id IN ({', '.join('?' * len(chunk))})",
            [embedder, *chunk],
        ):
            found[(explanation_id, reference)] = cosine
    return found


def reference_explanations(db: sqlite_utils.Database, model: str) -> dict[NeuronId, str]:
    """The imported reference explanation of each neuron of a model (source 'reference'; the newest if several)."""
    rows = db.conn.execute(
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
    cursor = db.conn.execute(
        "SELECT s.id, s.explanation_id, e.format, e.explainer, e.source, e.sample, e.explanation, s.simulator,"
        " s.method, s.split, s.calibrated, s.score, s.rsquared, s.absdev, s.per_excerpt, s.predictions, s.status,"
        " s.error, s.seconds, s.created_at"
        " FROM scores s JOIN explanations e ON e.id = s.explanation_id"
        " WHERE e.model = ? AND e.layer = ? AND e.neuron = ?"
        " ORDER BY e.id DESC, s.simulator, s.method, s.split, s.calibrated",
        [model, neuron.layer, neuron.index],
    )
    return [_decode_score(row) for row in _fetch_dicts(cursor)]


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
) -> list[dict[str, Any]]:
    """One row per (ok explanation, score), ready for a DataFrame: model, neuron ("layer:index"), layer, index,
    format, explainer, source, sample, explanation, input/output tokens, simulator, method, split, calibrated,
    score, rsquared, absdev, status, error, seconds, and similarity (mean cosine to the references of
    `reference_kind` under `embedder`; None when there is none).

    Score filters apply to the join, so with `include_unscored` an explanation without a matching score still
    appears once with simulator None (it counts for similarity and token cost). Every scored row names its
    simulator and method: callers must never average scores of different simulators together.
    """
    join, join_args = "", []
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
    cursor = db.conn.execute(
        "SELECT e.id AS explanation_id, e.model, e.layer || ':' || e.neuron AS neuron, e.layer, e.neuron AS 'index',"
        " e.format, e.explainer, e.source, e.sample, e.explanation, e.input_tokens, e.output_tokens,"
        " s.simulator, s.method, s.split, s.calibrated, s.score, s.rsquared, s.absdev, s.status, s.error,"
        " s.seconds,"
        f" (SELECT AVG(m.cosine) FROM similarities m WHERE m.explanation_id = e.id{similar}) AS similarity"
        f" FROM explanations e LEFT JOIN scores s ON s.explanation_id = e.id{join}"
        f" WHERE {' AND '.join(where)}"
        " ORDER BY e.model, e.layer, e.neuron, e.format, e.id, s.simulator, s.method, s.split, s.calibrated",
        [*similar_args, *join_args, *where_args],
    )
    rows = _fetch_dicts(cursor)
    for row in rows:
        if row["calibrated"] is not None:
            row["calibrated"] = bool(row["calibrated"])
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Studies, items, raters and ratings
# ---------------------------------------------------------------------------------------------------------------


def _fetch_dicts(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    columns = [d[0] for d in cursor.description]
    return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]


# The choices the ratings table's CHECK allows; `left` is the explanation shown first.
RATING_CHOICES = ("left", "right", "tie", "both_bad")
STUDY_FIELDS = (
    "name", "instructions", "model", "arms", "neurons", "ratings_per_item", "allow_tie", "allow_both_bad",
    "overlap_share", "gold_share", "seed",
)  # fmt: skip
ITEM_FIELDS = (
    "position", "model", "layer", "neuron", "left_explanation_id", "right_explanation_id", "left_arm", "right_arm",
    "left_text", "right_text", "is_gold", "gold_choice",
)  # fmt: skip


def insert_study(db: sqlite_utils.Database, study: dict[str, Any], items: Sequence[dict[str, Any]]) -> int:
    """Store a study (arms and neurons as lists) with its items in one transaction; InputError if the name is taken."""
    row = {key: study[key] for key in STUDY_FIELDS}
    row["arms"], row["neurons"] = _json(list(study["arms"])), _json(list(study["neurons"]))
    row["created_at"] = now()
    with transaction(db) as conn:
        if conn.execute("SELECT 1 FROM studies WHERE name = ?", [row["name"]]).fetchone():
            raise InputError(f"a study named {row['name']!r} already exists; choose another --name")
        study_id = conn.execute(
            f"INSERT INTO studies ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", list(row.values())
        ).lastrowid
        conn.executemany(
            f"INSERT INTO items (study_id, {', '.join(ITEM_FIELDS)}) VALUES (?, {', '.join('?' * len(ITEM_FIELDS))})",
            [[study_id, *(item[key] for key in ITEM_FIELDS)] for item in items],
        )
    return study_id


def _decode_study(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "arms": json.loads(row["arms"]), "neurons": json.loads(row["neurons"])}


def get_study(db: sqlite_utils.Database, name: str) -> dict[str, Any]:
    """The study row by name; NotFoundError lists the studies there are."""
    rows = _fetch_dicts(db.conn.execute("SELECT * FROM studies WHERE name = ?", [name]))
    if not rows:
        names = [row[0] for row in db.conn.execute("SELECT name FROM studies ORDER BY name")]
        known = ", ".join(names) or "none yet: create one with `python -m core study create`"
        raise NotFoundError(f"no study named {name!r} (studies: {known})")
    return _decode_study(rows[0])


def list_studies(db: sqlite_utils.Database) -> list[dict[str, Any]]:
    """Every study, oldest first, with its numbers of items and ratings."""
    rows = _fetch_dicts(
        db.conn.execute(
            "SELECT s.*, (SELECT COUNT(*) FROM items i WHERE i.study_id = s.id) AS n_items,"
            " (SELECT COUNT(*) FROM ratings r JOIN items i ON i.id = r.item_id WHERE i.study_id = s.id) AS n_ratings"
            " FROM studies s ORDER BY s.id"
        )
    )
    return [_decode_study(row) for row in rows]


def list_items(db: sqlite_utils.Database, study_id: int) -> list[dict[str, Any]]:
    """A study's items by position (unblinded: arms, explanation formats and explainers), each with its current
    number of ratings."""
    return _fetch_dicts(
        db.conn.execute(
            "SELECT i.*, (SELECT COUNT(*) FROM ratings r WHERE r.item_id = i.id) AS n_ratings,"
            " le.format AS left_format, le.explainer AS left_explainer,"
            " re.format AS right_format, re.explainer AS right_explainer"
            " FROM items i LEFT JOIN explanations le ON le.id = i.left_explanation_id"
            " LEFT JOIN explanations re ON re.id = i.right_explanation_id"
            " WHERE i.study_id = ? ORDER BY i.position",
            [study_id],
        )
    )


def get_item(db: sqlite_utils.Database, item_id: int) -> dict[str, Any] | None:
    rows = _fetch_dicts(db.conn.execute("SELECT * FROM items WHERE id = ?", [item_id]))
    return rows[0] if rows else None


def explanation_models(db: sqlite_utils.Database, neurons: Sequence[NeuronId]) -> list[str]:
    """The models that have at least one ok explanation for any of these neurons."""
    models: set[str] = set()
    for start in range(0, len(neurons), 400):
        chunk = neurons[start : start + 400]
        values = ", ".join("(?, ?)" for _ in chunk)
        models.update(
            row[0]
            for row in db.conn.execute(
                f"SELECT DISTINCT model FROM explanations WHERE status = 'ok' AND (layer, neuron) IN (VALUES {values})",
                [number for neuron in chunk for number in (neuron.layer, neuron.index)],
            )
        )
    return sorted(models)


def insert_rater(db: sqlite_utils.Database, name: str, code_hash: str, salt: str, role: str) -> int:
    """Store a rater with an already hashed access code; InputError if the name is taken."""
    with transaction(db) as conn:
        if conn.execute("SELECT 1 FROM raters WHERE name = ?", [name]).fetchone():
            raise InputError(f"a rater named {name!r} already exists; choose another name")
        return conn.execute(
            "INSERT INTO raters (name, code_hash, salt, role, created_at) VALUES (?, ?, ?, ?, ?)",
            [name, code_hash, salt, role, now()],
        ).lastrowid


def get_rater(db: sqlite_utils.Database, name: str) -> dict[str, Any] | None:
    """The rater's row, code hash and salt included: for authentication only, never for display or export."""
    rows = _fetch_dicts(db.conn.execute("SELECT * FROM raters WHERE name = ?", [name]))
    return rows[0] if rows else None


def list_raters(db: sqlite_utils.Database) -> list[dict[str, Any]]:
    """Every rater's id, name, role and creation time (no secrets)."""
    return _fetch_dicts(db.conn.execute("SELECT id, name, role, created_at FROM raters ORDER BY id"))


def assignment_state(
    db: sqlite_utils.Database, study_id: int, rater_id: int, reserved_since: str
) -> dict[str, list[dict[str, Any]]]:
    """What an assignment decision reads. `items`: id, position, is_gold and `filled` (ratings plus other raters'
    unrated assignments made since `reserved_since`). `assigned`: this rater's items in order, with `rated`."""
    items = _fetch_dicts(
        db.conn.execute(
            "SELECT i.id, i.position, i.is_gold, (SELECT COUNT(*) FROM ratings r WHERE r.item_id = i.id)"
            " + (SELECT COUNT(*) FROM assignments a WHERE a.item_id = i.id AND a.rater_id != ? AND a.assigned_at >= ?"
            "    AND NOT EXISTS (SELECT 1 FROM ratings r WHERE r.item_id = a.item_id AND r.rater_id = a.rater_id))"
            " AS filled FROM items i WHERE i.study_id = ? ORDER BY i.position",
            [rater_id, reserved_since, study_id],
        )
    )
    assigned = _fetch_dicts(
        db.conn.execute(
            "SELECT a.item_id, a.assigned_at,"
            " EXISTS (SELECT 1 FROM ratings r WHERE r.item_id = a.item_id AND r.rater_id = a.rater_id) AS rated"
            " FROM assignments a JOIN items i ON i.id = a.item_id WHERE i.study_id = ? AND a.rater_id = ?"
            " ORDER BY a.assigned_at, a.item_id",
            [study_id, rater_id],
        )
    )
    return {"items": items, "assigned": assigned}


def assign_item(
    db: sqlite_utils.Database,
    study_id: int,
    rater_id: int,
    reserved_since: str,
    choose: Callable[[dict[str, list[dict[str, Any]]]], int | None],
) -> int | None:
    """Read the assignment state, let `choose` pick an item and record it as assigned, all under one write lock,
    so that two raters asking at the same time see each other's reservations."""
    with transaction(db) as conn:
        item_id = choose(assignment_state(db, study_id, rater_id, reserved_since))
        if item_id is not None:
            conn.execute(
                "INSERT OR IGNORE INTO assignments (item_id, rater_id, assigned_at) VALUES (?, ?, ?)",
                [item_id, rater_id, now()],
            )
        return item_id


def is_assigned(db: sqlite_utils.Database, item_id: int, rater_id: int) -> bool:
    query = "SELECT 1 FROM assignments WHERE item_id = ? AND rater_id = ?"
    return db.conn.execute(query, [item_id, rater_id]).fetchone() is not None


def get_rating(db: sqlite_utils.Database, item_id: int, rater_id: int) -> dict[str, Any] | None:
    query = "SELECT * FROM ratings WHERE item_id = ? AND rater_id = ?"
    rows = _fetch_dicts(db.conn.execute(query, [item_id, rater_id]))
    return rows[0] if rows else None


RATING_VALUES = ("choice", "confidence", "comment", "seconds")


def write_rating(
    db: sqlite_utils.Database,
    study_id: int,
    item_id: int,
    rater_id: int,
    rating: dict[str, Any],
    require_assignment: bool = True,
) -> tuple[int, bool]:
    """Insert or update the one rating of (rater, item) in one write transaction, mapping left/right to the item's
    arm as `winner_arm`. A resubmission keeps the replaced values in rating_audit. Returns (rating id, replaced)."""
    with transaction(db) as conn:
        item = conn.execute("SELECT study_id, left_arm, right_arm FROM items WHERE id = ?", [item_id]).fetchone()
        if item is None or item[0] != study_id:
            study = conn.execute("SELECT name FROM studies WHERE id = ?", [study_id]).fetchone()
            raise InputError(
                f"item {item_id} is not part of study {study[0] if study else study_id!r}; "
                "list its items with `python -m core study items`"
            )
        assigned = conn.execute(
            "SELECT 1 FROM assignments WHERE item_id = ? AND rater_id = ?", [item_id, rater_id]
        ).fetchone()
        if require_assignment and assigned is None:
            raise InputError(f"item {item_id} was not assigned to this rater; rate the item you were shown")
        values = [rating.get(key) for key in RATING_VALUES]
        winner_arm = {"left": item[1], "right": item[2]}.get(rating["choice"])
        stamp = now()
        old = conn.execute(
            "SELECT id, choice, winner_arm, confidence, comment, seconds, updated_at FROM ratings"
            " WHERE item_id = ? AND rater_id = ?",
            [item_id, rater_id],
        ).fetchone()
        if old is None:
            rating_id = conn.execute(
                "INSERT INTO ratings (item_id, rater_id, choice, confidence, comment, seconds, winner_arm, created_at,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [item_id, rater_id, *values, winner_arm, stamp, stamp],
            ).lastrowid
            conn.execute(
                "INSERT OR IGNORE INTO assignments (item_id, rater_id, assigned_at) VALUES (?, ?, ?)",
                [item_id, rater_id, stamp],
            )
            return rating_id, False
        conn.execute(
            "INSERT INTO rating_audit (rating_id, item_id, rater_id, choice, winner_arm, confidence, comment, seconds,"
            " recorded_at, replaced_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [old[0], item_id, rater_id, *old[1:], stamp],
        )
        conn.execute(
            "UPDATE ratings SET choice = ?, confidence = ?, comment = ?, seconds = ?, winner_arm = ?, updated_at = ?"
            " WHERE id = ?",
            [*values, winner_arm, stamp, old[0]],
        )
        return old[0], True


def study_ratings(db: sqlite_utils.Database, study_id: int) -> list[dict[str, Any]]:
    """Every rating of a study joined with its item, rater name and the explanations' format and explainer, in
    rating order. Rater secrets are never selected."""
    return _fetch_dicts(
        db.conn.execute(
            "SELECT r.id AS rating_id, r.item_id, i.position, i.model, i.layer, i.neuron, r.rater_id,"
            " ra.name AS rater, r.choice, r.winner_arm, i.left_arm, i.right_arm, i.is_gold, i.gold_choice,"
            " r.confidence, r.seconds, r.comment, r.created_at, r.updated_at,"
            " (SELECT COUNT(*) FROM rating_audit au WHERE au.rating_id = r.id) AS revisions,"
            " i.left_explanation_id, i.right_explanation_id, le.format AS left_format, le.explainer AS left_explainer,"
            " re.format AS right_format, re.explainer AS right_explainer, i.left_text, i.right_text"
            " FROM ratings r JOIN items i ON i.id = r.item_id JOIN raters ra ON ra.id = r.rater_id"
            " LEFT JOIN explanations le ON le.id = i.left_explanation_id"
            " LEFT JOIN explanations re ON re.id = i.right_explanation_id"
            " WHERE i.study_id = ? ORDER BY r.id",
            [study_id],
        )
    )


def study_assignment_counts(db: sqlite_utils.Database, study_id: int) -> dict[int, int]:
    """Per rater id, how many items of the study were handed to them."""
    query = (
        "SELECT a.rater_id, COUNT(*) FROM assignments a JOIN items i ON i.id = a.item_id"
        " WHERE i.study_id = ? GROUP BY a.rater_id"
    )
    return dict(db.conn.execute(query, [study_id]).fetchall())


def delete_study_ratings(db: sqlite_utils.Database, study_id: int) -> int:
    """Delete a study's ratings, their audit rows and assignments; returns the number of ratings deleted.

    Only the admin export-then-purge calls this, inside the transaction that wrote the export, so that nothing
    rated in between is lost.
    """
    if not db.conn.in_transaction:
        raise WorkbenchError("ratings are deleted only by the admin export-then-purge, inside its transaction")
    in_study = "item_id IN (SELECT id FROM items WHERE study_id = ?)"
    db.conn.execute(f"DELETE FROM rating_audit WHERE {in_study}", [study_id])
    deleted = db.conn.execute(f"DELETE FROM ratings WHERE {in_study}", [study_id]).rowcount
    db.conn.execute(f"DELETE FROM assignments WHERE {in_study}", [study_id])
    return deleted


def scores_for_explanations(
    db: sqlite_utils.Database, explanation_ids: Iterable[int], simulator: str | None = None
) -> tuple[str | None, dict[int, float]]:
    """Simulation scores of these explanations under ONE simulator: (simulator, {explanation id: score}).

    Per explanation: its most recent ok, non-missing score on the valid split (SPEC.md §4). Without `simulator`,
    the one that scored the most of these explanations (ties: by name). Scores of simulators are never mixed.
    """
    ids = sorted({int(i) for i in explanation_ids if i is not None})
    rows: list[tuple[int, str, float]] = []
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        rows += db.conn.execute(
            "SELECT explanation_id, simulator, score FROM scores WHERE split = 'valid' AND status = 'ok'"
            f" AND score IS NOT NULL AND explanation_id IN ({', '.join('?' * len(chunk))})"
            " ORDER BY created_at, id",
            chunk,
        ).fetchall()
    if simulator is None:
        counts: dict[str, set[int]] = {}
        for explanation_id, name, _ in rows:
            counts.setdefault(name, set()).add(explanation_id)
        if not counts:
            return None, {}
        simulator = min(counts, key=lambda name: (-len(counts[name]), name))
    # Rows are oldest first, so later ones overwrite: the most recent score wins.
    scores = {explanation_id: score for explanation_id, name, score in rows if name == simulator}
    return simulator, {k: v for k, v in scores.items() if v == v}


# ---------------------------------------------------------------------------------------------------------------
# Dashboard queries (browsing and search)
# ---------------------------------------------------------------------------------------------------------------

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
    finished = db.conn.execute("SELECT MAX(finished_at), COUNT(*) FROM run_layers").fetchone()
    return (*(_max_rowid(db, table) for table in _RECORD_TABLES), *finished)


def _max_rowid(db: sqlite_utils.Database, table: str) -> int:
    return db.conn.execute(f"SELECT COALESCE(MAX(rowid), 0) FROM {table}").fetchone()[0]


def database_file(db: sqlite_utils.Database) -> str:
    """The file behind a connection ("" for an in-memory database)."""
    return next((row[2] for row in db.conn.execute("PRAGMA database_list") if row[1] == "main"), "")


def neuron_indices(db: sqlite_utils.Database, model: str, layer: int) -> list[int]:
    """The stored neuron indices of one layer, ascending."""
    query = "SELECT neuron FROM neurons WHERE model = ? AND layer = ? ORDER BY neuron"
    return [row[0] for row in db.conn.execute(query, [model, layer])]


def neuron_overview(
    db: sqlite_utils.Database, model: str, layer: int | None = None, simulator: str | None = None
) -> list[dict[str, Any]]:
    """Per stored neuron of a model (optionally one layer): layer, neuron, max activation, number of ok
    explanations, and the best ok valid-split score of its explanations (under `simulator` when given, else any;
    None when unscored)."""
    score_filter = " AND s.simulator = ?" if simulator is not None else ""
    clauses, args = ["n.model = ?"], [model]
    if layer is not None:
        clauses.append("n.layer = ?")
        args.append(layer)
    query = (
        "SELECT n.layer, n.neuron, n.max AS max_activation,"
        " (SELECT COUNT(*) FROM explanations e WHERE e.model = n.model AND e.layer = n.layer"
        "  AND e.neuron = n.neuron AND e.status = 'ok') AS n_explanations,"
        " (SELECT MAX(s.score) FROM scores s JOIN explanations e ON e.id = s.explanation_id"
        "  WHERE e.model = n.model AND e.layer = n.layer AND e.neuron = n.neuron AND s.split = 'valid'"
        f"  AND s.status = 'ok' AND s.score IS NOT NULL{score_filter}) AS best_score"
        f" FROM neurons n WHERE {' AND '.join(clauses)} ORDER BY n.layer, n.neuron"
    )
    return _fetch_dicts(db.conn.execute(query, [*([simulator] if simulator is not None else []), *args]))


def score_simulators(db: sqlite_utils.Database) -> list[str]:
    """The simulators that have at least one ok score."""
    return [row[0] for row in db.conn.execute("SELECT DISTINCT simulator FROM scores WHERE status = 'ok' ORDER BY 1")]


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def search_explanations(
    db: sqlite_utils.Database, text: str, model: str | None = None, limit: int = 200
) -> list[dict[str, Any]]:
    """Ok explanations containing `text` (case-insensitive for ASCII, `%` and `_` taken literally), newest first:
    id, model, layer, neuron, format, explainer, explanation."""
    clauses = ["status = 'ok'", "explanation LIKE ? ESCAPE '\\'"]
    args: list[Any] = [_like_pattern(text.strip())]
    if model is not None:
        clauses.append("model = ?")
        args.append(model)
    query = (
        "SELECT id, model, layer, neuron, format, explainer, explanation FROM explanations"
        f" WHERE {' AND '.join(clauses)} ORDER BY id DESC LIMIT ?"
    )
    return _fetch_dicts(db.conn.execute(query, [*args, int(limit)]))


def last_explanation_id(db: sqlite_utils.Database) -> int:
    return db.conn.execute("SELECT COALESCE(MAX(id), 0) FROM explanations").fetchone()[0]


def explanations_after(db: sqlite_utils.Database, after_id: int, model: str | None = None) -> list[dict[str, Any]]:
    """Explanations stored after the one with id `after_id` (any status), oldest first: what a running job wrote.
    Without prompt, completion and params, so that polling it while a job runs stays cheap."""
    clauses, args = ["id > ?"], [after_id]
    if model is not None:
        clauses.append("model = ?")
        args.append(model)
    columns = (
        "id, model, layer, neuron, format, explainer, sample, status, input_tokens, output_tokens, explanation, error"
    )
    query = f"SELECT {columns} FROM explanations WHERE {' AND '.join(clauses)} ORDER BY id"
    return _fetch_dicts(db.conn.execute(query, args))


def explanation_costs(db: sqlite_utils.Database, model: str | None = None) -> list[dict[str, Any]]:
    """Model, format, explainer and input/output tokens of every ok explanation (SPEC.md §4, token cost)."""
    where, args = ("WHERE status = 'ok' AND model = ?", [model]) if model is not None else ("WHERE status = 'ok'", [])
    query = f"SELECT model, format, explainer, input_tokens, output_tokens FROM explanations {where} ORDER BY id"
    return _fetch_dicts(db.conn.execute(query, args))


def similarities_for_neuron(db: sqlite_utils.Database, model: str, neuron: NeuronId) -> list[dict[str, Any]]:
    """Every stored similarity of the explanations of one neuron: explanation_id, reference_kind, embedder, cosine."""
    return _fetch_dicts(
        db.conn.execute(
            "SELECT m.explanation_id, m.reference_kind, m.embedder, m.cosine FROM similarities m"
            " JOIN explanations e ON e.id = m.explanation_id WHERE e.model = ? AND e.layer = ? AND e.neuron = ?"
            " ORDER BY m.explanation_id, m.reference_kind, m.embedder",
            [model, neuron.layer, neuron.index],
        )
    )
