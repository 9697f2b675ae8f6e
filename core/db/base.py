"""Connections, transactions, the schema and its versioned migrations."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence, Sized
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import sqlite_utils

from core import config
from core.errors import InputError, NotFoundError, WorkbenchError

BUSY_TIMEOUT_MS = 30_000
# The `source` of the neurons and explanations of core.puzzles: synthetic neurons with a known truth, which are not
# a model's data and stay out of model listings, counts and search.
PUZZLE_SOURCE = "puzzle"

_T = TypeVar("_T")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def connect(path: str | Path | None = None, create: bool = True) -> sqlite_utils.Database:
    """Open (and create or migrate) the database at `path`, $EVAL_DB or evaluations.db. With `create=False` a
    missing file is a NotFoundError instead of a new empty database (for commands that only read)."""
    path = config.db_path(path)
    if path.exists() and path.is_dir():
        raise InputError(f"database path {path} is a directory; pass a file path with --db or EVAL_DB")
    if not create and not path.exists():
        raise NotFoundError(
            f"no database at {path}; check --db (or ${config.ENV_DB}). Commands that only read never create one: "
            "`python -m core collect` or an import does"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(
            f"cannot create the folder {path.parent} for the database {path} ({exc.strerror or exc}); pass another --db"
        ) from None
    conn = None
    try:
        conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        # The version is read before any pragma that writes (WAL mode does): a newer database stays untouched.
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version <= SCHEMA_VERSION:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
    except sqlite3.DatabaseError as exc:
        if conn is not None:
            conn.close()
        raise database_error(path, exc) from exc
    if version > SCHEMA_VERSION:
        conn.close()
        raise _newer_schema(version)
    db = sqlite_utils.Database(conn)
    migrate(db)
    return db


def database_error(path: Path, exc: sqlite3.Error) -> WorkbenchError:
    """The error to show for a SQLite error on the database file `path`: what is wrong with the file, and what to do."""
    message = str(exc)
    if "readonly" in message or "read-only" in message or "unable to open" in message:
        folder = path.parent
        if path.exists() and not os.access(path, os.W_OK):
            return InputError(
                f"the database {path} is read-only: it cannot be written ({message}); make the file writable or"
                " pass another --db"
            )
        if not os.access(folder, os.W_OK):
            return InputError(
                f"the folder {folder} of the database {path} is read-only: SQLite cannot write its files there"
                f" ({message}); make the folder writable or pass another --db"
            )
        return InputError(
            f"the database {path} cannot be opened for writing ({message}); check its permissions or pass another --db"
        )
    if "malformed" in message:
        return InputError(f"the database {path} is damaged ({message}); restore it from a backup, or pass another --db")
    if "not a database" in message:
        return InputError(f"{path} is not a usable SQLite database ({message}); move it away or pass another --db")
    return WorkbenchError(f"the database {path} failed: {message}")


def _newer_schema(version: int) -> WorkbenchError:
    return WorkbenchError(
        f"the database is at schema version {version}, newer than this code ({SCHEMA_VERSION}); update the code"
    )


@contextmanager
def transaction(db: sqlite_utils.Database) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE … COMMIT, rolled back on any error, so no half-written state is ever visible.

    Every write of core.db runs inside one. sqlite-utils' own writes (`insert_all`, `delete_where`…) nest in it as
    savepoints. It is not `db.atomic()`, whose deferred BEGIN takes the write lock only at the first write: a
    transaction that read first then fails with "database is locked" at once, whatever the busy timeout."""
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
    # executescript() would COMMIT the surrounding transaction, so run statements one by one; a statement ends
    # where SQLite says it is complete, so that a trigger's body (which holds semicolons) stays whole.
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            conn.execute(statement)
            statement = ""
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


# v3: what keeps a study blind and its data fixed.
# - A study is open or closed; while open, its neurons' explanations and scores are shown to admins only.
# - Raters are assigned to studies and see only those; admins rate only where a study allows it.
# - Failed sign-ins are counted per name and per client, so that throttling survives a new browser tab.
# - An ok explanation is immutable: items and scores point at it, so its text and identity never change.
# - Left and right are drawn per rater and item (assignments.left_arm) and kept with every rating (shown_left);
#   what was there before v3 keeps its item's one layout.
# - A study's analysis plan is stored once, before its first rating, and never changes (study_plans).
# - A score names where it came from when it was not computed here (`source`: the file of imported published
#   scores, method 'imported').
# - A score names its scorer (simulation, detection, fuzzing, embedding: docs/METHOD.md §10) with its settings, the
#   scorer's input and output tokens and, for the classifiers, the AUC; the scorers' excerpts per neuron are in
#   scoring_records (a neuron collected before them has none).
# - What `demo` created is listed in demo_rows, so that `demo --remove` deletes exactly that; an ok explanation by a
#   `baseline:` explainer may be deleted when no study item or score outside the demo points at it.
# Raters who existed before v3 keep every study they could rate.
_SCHEMA_V3_TRUST = """
ALTER TABLE studies ADD COLUMN state TEXT NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'closed'));
ALTER TABLE studies ADD COLUMN allow_admin_ratings INTEGER NOT NULL DEFAULT 0;
CREATE TABLE study_raters (
    study_id INTEGER NOT NULL REFERENCES studies(id),
    rater_id INTEGER NOT NULL REFERENCES raters(id),
    assigned_at TEXT NOT NULL,
    PRIMARY KEY (study_id, rater_id)
) WITHOUT ROWID;
CREATE INDEX study_raters_rater ON study_raters (rater_id);
INSERT INTO study_raters (study_id, rater_id, assigned_at)
    SELECT s.id, r.id, r.created_at FROM studies s CROSS JOIN raters r WHERE r.role = 'rater';
CREATE TABLE sign_in_failures (
    scope TEXT NOT NULL CHECK (scope IN ('name', 'client')),
    key TEXT NOT NULL,
    failures INTEGER NOT NULL,
    last_failed_at TEXT NOT NULL,
    PRIMARY KEY (scope, key)
) WITHOUT ROWID;
CREATE TRIGGER explanations_immutable BEFORE UPDATE ON explanations
WHEN OLD.status = 'ok' AND (
    NEW.explanation IS NOT OLD.explanation OR NEW.format IS NOT OLD.format OR NEW.explainer IS NOT OLD.explainer
    OR NEW.model IS NOT OLD.model OR NEW.layer IS NOT OLD.layer OR NEW.neuron IS NOT OLD.neuron
    OR NEW.source IS NOT OLD.source OR NEW.status IS NOT OLD.status OR NEW.prompt IS NOT OLD.prompt
)
BEGIN
    SELECT RAISE(ABORT, 'explanation rows are immutable once written');
END;
ALTER TABLE assignments ADD COLUMN left_arm TEXT;
UPDATE assignments SET left_arm = (SELECT i.left_arm FROM items i WHERE i.id = assignments.item_id);
ALTER TABLE ratings ADD COLUMN shown_left TEXT;
UPDATE ratings SET shown_left = (SELECT i.left_arm FROM items i WHERE i.id = ratings.item_id);
ALTER TABLE rating_audit ADD COLUMN shown_left TEXT;
CREATE TRIGGER explanations_undeletable BEFORE DELETE ON explanations
WHEN OLD.status = 'ok'
BEGIN
    SELECT RAISE(ABORT, 'explanation rows are immutable once written');
END;
ALTER TABLE scores ADD COLUMN source TEXT;
ALTER TABLE scores ADD COLUMN raw_score REAL;
ALTER TABLE scores ADD COLUMN no_value_count INTEGER;
CREATE TABLE study_plans (
    study_id INTEGER PRIMARY KEY REFERENCES studies(id),
    plan TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TRIGGER study_plans_frozen BEFORE UPDATE ON study_plans
BEGIN
    SELECT RAISE(ABORT, 'a study plan is frozen once stored');
END;
CREATE TRIGGER study_plans_kept BEFORE DELETE ON study_plans
BEGIN
    SELECT RAISE(ABORT, 'a study plan is frozen once stored');
END;
ALTER TABLE scores ADD COLUMN scorer TEXT NOT NULL DEFAULT 'simulation';
ALTER TABLE scores ADD COLUMN settings TEXT;
ALTER TABLE scores ADD COLUMN input_tokens INTEGER;
ALTER TABLE scores ADD COLUMN output_tokens INTEGER;
ALTER TABLE scores ADD COLUMN auc REAL;
CREATE TABLE scoring_records (
    neuron_id INTEGER NOT NULL REFERENCES neurons(id) ON DELETE CASCADE,
    kind TEXT NOT NULL CHECK (kind IN ('quantile', 'non_activating', 'bottom')),
    rank INTEGER NOT NULL,
    excerpt_id INTEGER NOT NULL REFERENCES excerpts(id),
    max_activation REAL NOT NULL,
    level REAL,
    activations BLOB NOT NULL,
    PRIMARY KEY (neuron_id, kind, rank)
) WITHOUT ROWID;
CREATE TABLE demo_rows (
    kind TEXT NOT NULL CHECK (kind IN ('explanation', 'score', 'study', 'rater')),
    row_id INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (kind, row_id)
) WITHOUT ROWID;
DROP TRIGGER explanations_undeletable;
CREATE TRIGGER explanations_undeletable BEFORE DELETE ON explanations
WHEN OLD.status = 'ok' AND NOT (
    substr(OLD.explainer, 1, 9) = 'baseline:'
    AND NOT EXISTS (
        SELECT 1 FROM items i WHERE (i.left_explanation_id = OLD.id OR i.right_explanation_id = OLD.id)
        AND i.study_id NOT IN (SELECT row_id FROM demo_rows WHERE kind = 'study')
    )
    AND NOT EXISTS (
        SELECT 1 FROM scores s WHERE s.explanation_id = OLD.id
        AND s.id NOT IN (SELECT row_id FROM demo_rows WHERE kind = 'score')
    )
)
BEGIN
    SELECT RAISE(ABORT, 'explanation rows are immutable once written');
END;
"""


def _migration_3(conn: sqlite3.Connection) -> None:
    _execute_script(conn, _SCHEMA_V3_TRUST)


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_migration_1, _migration_2, _migration_3]
SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(db: sqlite_utils.Database) -> int:
    return db.execute("PRAGMA user_version").fetchone()[0]


def migrate(db: sqlite_utils.Database) -> None:
    """Apply pending migrations, each in its own transaction with the version bump."""
    version = schema_version(db)
    if version > SCHEMA_VERSION:
        raise _newer_schema(version)
    for number in range(version + 1, SCHEMA_VERSION + 1):
        with transaction(db) as conn:
            # Read again under the write lock: another process opening the same new file may have run this
            # migration while we waited for the lock, and a migration must never run twice.
            if schema_version(db) >= number:
                continue
            MIGRATIONS[number - 1](conn)
            conn.execute(f"PRAGMA user_version = {number}")


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _marks(values: Sized) -> str:
    """The `?, ?, …` placeholders of an `IN (…)` list of `values`."""
    return ", ".join("?" * len(values))


def _last_id(table: sqlite_utils.db.Table) -> int:
    """The id (rowid) of the row that `table.insert(…)` just wrote."""
    if table.last_rowid is None:
        raise WorkbenchError(f"no row was written to {table.name}")
    return table.last_rowid


def _chunks(values: Sequence[_T], size: int = 500) -> Iterator[Sequence[_T]]:
    """`values` in slices of `size`, so that an `IN (…)` list stays under SQLite's limit of bound parameters."""
    return (values[start : start + size] for start in range(0, len(values), size))
