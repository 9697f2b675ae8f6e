"""Migrations: every older schema version (empty, v1, v2…) migrates to exactly a fresh database's schema, keeps its
rows, and two processes migrating one new file at once run each migration once.

Older databases are built here with the released migration scripts themselves (core.db.MIGRATIONS), as the code of
that version made them; the pinned digests below make sure those scripts never change once released.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest
import sqlite_utils

from core import db as dbmod
from core.records import NeuronId

# sha256 of the schema (sqlite_master) each released version leaves: a released migration is never edited; a schema
# change is a new migration. Add the digest of a new version here when it is released.
RELEASED_SCHEMAS = {
    1: "f461932d186431747b034998be86232be26450b369da1a9d36e0f2cbe80e0ab4",
    2: "1383086423ceb61f9db013f549bf90a82e20e3a8ada8dd7ce09152372f66e0de",
    3: "831a5f8727cdac30e56716881963cfce218f130fe9d79106e33ab641667d9a59",
}

# Rows valid at each version, written right after that version's migration when an older database is built.
_BLOB = np.asarray([0.5, 1.5], dtype="<f4").tobytes()
ROWS_AT_VERSION: dict[int, dict[str, list[dict]]] = {
    1: {
        "runs": [
            {"id": 1, "model": "m", "revision": None, "corpus": "c", "excerpt_len": 2, "max_tokens": 10, "top_k": 1,
             "random_k": 1, "seed": 0, "n_excerpts": 2, "n_tokens": 4, "params": "{}", "created_at": "t0"},
        ],
        "run_layers": [{"run_id": 1, "layer": 0, "n_neurons": 2, "seconds": 1.5, "finished_at": "t1"}],
        "excerpts": [{"id": 1, "hash": "h1", "tokens": '["a", " b"]'}, {"id": 2, "hash": "h2", "tokens": '["c", "d"]'}],
        "neurons": [
            {"id": 1, "model": "m", "layer": 0, "neuron": 0, "run_id": 1, "source": "collected", "mean": 0.1,
             "variance": 0.2, "max": 1.5, "q50": 0.4, "q90": 1.0, "q99": 1.4, "q999": 1.5},
            {"id": 2, "model": "m", "layer": 0, "neuron": 1, "run_id": 1, "source": "collected", "mean": 0.1,
             "variance": 0.2, "max": 1.5, "q50": None, "q90": None, "q99": None, "q999": None},
        ],
        "records": [
            {"neuron_id": 1, "kind": "top", "rank": 0, "excerpt_id": 1, "max_activation": 1.5, "activations": _BLOB},
            {"neuron_id": 1, "kind": "random", "rank": 0, "excerpt_id": 2, "max_activation": 1.5,
             "activations": _BLOB},
            {"neuron_id": 2, "kind": "top", "rank": 0, "excerpt_id": 2, "max_activation": 1.5, "activations": _BLOB},
        ],
        "explanations": [
            {"id": 1, "model": "m", "layer": 0, "neuron": 0, "format": "summary", "explainer": "openai:x",
             "source": "generated", "params": '{"a": 1}', "prompt": '"p"', "completion": "numbers",
             "explanation": "numbers", "sample": 0, "status": "ok", "job_key": "j1", "created_at": "t2"},
            {"id": 2, "model": "m", "layer": 0, "neuron": 0, "format": "original", "explainer": "openai:x",
             "source": "generated", "explanation": "dates", "sample": 0, "status": "ok", "created_at": "t2"},
            {"id": 3, "model": "m", "layer": 0, "neuron": 1, "format": "summary", "explainer": "openai:x",
             "source": "generated", "sample": 0, "status": "failed", "error": "timeout", "job_key": "j3",
             "created_at": "t2"},
        ],
        "llm_cache": [
            {"key": "k", "backend": "openai", "model": "x", "request": "{}", "response": '{"text": "numbers"}',
             "created_at": "t2"},
        ],
        "scores": [
            {"id": 1, "explanation_id": 1, "simulator": "hf:sim", "method": "all_at_once", "split": "valid",
             "calibrated": 0, "score": 0.5, "rsquared": 0.1, "absdev": 0.2, "per_excerpt": "[]",
             "predictions": "[[1.0]]", "status": "ok", "seconds": 1.0, "created_at": "t3"},
        ],
        "similarities": [
            {"id": 1, "explanation_id": 1, "reference_kind": "reference", "reference": "digits", "embedder": "e",
             "cosine": 0.7, "created_at": "t3"},
        ],
        "studies": [
            {"id": 1, "name": "S", "instructions": "", "model": "m", "arms": '["summary", "original"]',
             "neurons": '["0:0"]', "ratings_per_item": 2, "seed": 0, "created_at": "t4"},
        ],
        "items": [
            {"id": 1, "study_id": 1, "position": 0, "model": "m", "layer": 0, "neuron": 0,
             "left_explanation_id": 1, "right_explanation_id": 2, "left_arm": "summary", "right_arm": "original",
             "left_text": "numbers", "right_text": "dates", "is_gold": 0},
        ],
        "raters": [
            {"id": 1, "name": "ann", "code_hash": "h", "salt": "s", "role": "rater", "created_at": "t4"},
            {"id": 2, "name": "root", "code_hash": "h", "salt": "s", "role": "admin", "created_at": "t4"},
        ],
        "ratings": [
            {"id": 1, "item_id": 1, "rater_id": 1, "choice": "left", "winner_arm": "summary", "confidence": 3,
             "seconds": 12.0, "created_at": "t5", "updated_at": "t6"},
        ],
        "rating_audit": [
            {"id": 1, "rating_id": 1, "item_id": 1, "rater_id": 1, "choice": "right", "winner_arm": "original",
             "confidence": 2, "seconds": 5.0, "recorded_at": "t5", "replaced_at": "t6"},
        ],
    },
    2: {"assignments": [{"item_id": 1, "rater_id": 2, "assigned_at": "t7"}]},
    3: {
        "study_raters": [{"study_id": 1, "rater_id": 2, "assigned_at": "t8"}],
        "sign_in_failures": [{"scope": "name", "key": "ann", "failures": 1, "last_failed_at": "t8"}],
        "study_plans": [{"study_id": 1, "plan": "{}", "sha256": "0" * 64, "created_at": "t8"}],
        "scoring_records": [
            {"neuron_id": 1, "kind": "quantile", "rank": 0, "excerpt_id": 2, "max_activation": 1.0, "level": 0.5,
             "activations": _BLOB},
        ],
        "demo_rows": [{"kind": "explanation", "row_id": 2, "created_at": "t8"}],
    },
}  # fmt: skip

OLDER_VERSIONS = range(dbmod.SCHEMA_VERSION)  # 0 is a new, empty file


def schema(conn: sqlite3.Connection) -> list[tuple[str, str, str, str | None]]:
    """The tables, indexes and triggers as SQLite stores them (automatic indexes included, with no SQL)."""
    return conn.execute(
        "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE type IN ('table', 'index', 'trigger')"
        " ORDER BY type, name"
    ).fetchall()


def schema_digest(conn: sqlite3.Connection) -> str:
    return hashlib.sha256(repr(schema(conn)).encode()).hexdigest()


def build_at(path: Path, version: int) -> None:
    """A database file at schema `version`, made by the released migrations, with the rows each version could hold."""
    conn = sqlite3.connect(path, isolation_level=None)
    database = sqlite_utils.Database(conn)
    for number in range(1, version + 1):
        dbmod.MIGRATIONS[number - 1](conn)
        conn.execute(f"PRAGMA user_version = {number}")
        for table, rows in ROWS_AT_VERSION[number].items():
            database.table(table).insert_all(rows)
    conn.close()


def table_rows(conn: sqlite3.Connection) -> dict[str, list[tuple]]:
    """Every row of every table, in rowid (or primary key) order."""
    tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    return {table: conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2, 3").fetchall() for table in tables}


@pytest.fixture
def fresh_schema(tmp_path: Path) -> list[tuple[str, str, str, str | None]]:
    database = dbmod.connect(tmp_path / "fresh.db")
    yield schema(database.conn)
    database.conn.close()


def test_released_schemas_never_change(tmp_path: Path) -> None:
    assert set(RELEASED_SCHEMAS) == set(range(1, dbmod.SCHEMA_VERSION + 1)), "pin the digest of each new version"
    for version, digest in RELEASED_SCHEMAS.items():
        path = tmp_path / f"v{version}.db"
        build_at(path, version)
        conn = sqlite3.connect(path)
        assert schema_digest(conn) == digest, (
            f"the schema of released version {version} changed: never edit a released migration, add a new one"
        )
        conn.close()


@pytest.mark.parametrize("version", OLDER_VERSIONS)
def test_an_older_database_migrates_to_the_schema_of_a_fresh_one(tmp_path: Path, version: int, fresh_schema) -> None:
    path = tmp_path / f"v{version}.db"
    build_at(path, version)
    migrated = dbmod.connect(path)
    assert dbmod.schema_version(migrated) == dbmod.SCHEMA_VERSION
    assert schema(migrated.conn) == fresh_schema
    assert migrated.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    migrated.conn.close()


@pytest.mark.parametrize("version", [v for v in OLDER_VERSIONS if v > 0])
def test_an_older_database_keeps_every_row(tmp_path: Path, version: int) -> None:
    path = tmp_path / f"v{version}.db"
    build_at(path, version)
    conn = sqlite3.connect(path)
    before = {}
    for table, rows in table_rows(conn).items():
        before[table] = ([row[1] for row in conn.execute(f"PRAGMA table_info({table})")], rows)
    conn.close()
    migrated = dbmod.connect(path)
    for table, (columns, rows) in before.items():
        kept = migrated.conn.execute(f"SELECT {', '.join(columns)} FROM {table} ORDER BY 1, 2, 3").fetchall()
        assert kept == rows, table
    # … and reads back through the public API.
    neuron = dbmod.get_neuron(migrated, "m", NeuronId(0, 0))
    assert (neuron.top[0].tokens, neuron.top[0].activations, neuron.random[0].tokens) == (("a", " b"), (0.5, 1.5),
                                                                                          ("c", "d"))  # fmt: skip
    assert dbmod.get_explanation(migrated, 1)["params"] == {"a": 1}
    assert dbmod.explanation_statuses(migrated, ["j1", "j3"]) == {"j1": "ok", "j3": "failed"}
    assert dbmod.cache_get(migrated, "k") == {"text": "numbers"}
    [score] = dbmod.scores_for_neuron(migrated, "m", NeuronId(0, 0))
    assert (score["score"], score["predictions"]) == (0.5, [[1.0]])
    [rating] = dbmod.study_ratings(migrated, 1)
    assert (rating["rater"], rating["choice"], rating["left_arm"], rating["revisions"]) == ("ann", "left", "summary", 1)
    migrated.conn.close()


@pytest.mark.parametrize("version", [v for v in OLDER_VERSIONS if v > 0])
def test_each_migration_fills_what_it_adds(tmp_path: Path, version: int) -> None:
    """What v2 and v3 derive from the rows before them: the ratings' assignments, every rater on every study, the
    one layout every rating had."""
    path = tmp_path / f"v{version}.db"
    build_at(path, version)
    migrated = dbmod.connect(path)
    assignments = migrated.conn.execute("SELECT item_id, rater_id, left_arm FROM assignments ORDER BY 1, 2").fetchall()
    if version < 2:
        assert assignments == [(1, 1, "summary")]  # v2: the rated item was assigned to its rater
    else:
        assert assignments == [(1, 1, "summary"), (1, 2, "summary")]  # v2's rows keep their item's layout
    if version < 3:
        assert dbmod.rater_study_ids(migrated, 1) == [1]  # a rater before v3 keeps every study
        assert dbmod.rater_study_ids(migrated, 2) == []  # an admin is assigned none
        assert dbmod.get_study(migrated, "S")["state"] == "open"
        assert dbmod.get_rating(migrated, 1, 1)["shown_left"] == "summary"
        assert migrated.conn.execute("SELECT DISTINCT scorer FROM scores").fetchall() == [("simulation",)]
    with pytest.raises(sqlite3.IntegrityError, match="immutable"):  # v3's triggers hold on migrated rows
        migrated.conn.execute("UPDATE explanations SET explanation = 'x' WHERE id = 1")
    migrated.conn.close()


def raw_database(path: Path) -> sqlite_utils.Database:
    """A connection as core.db.connect opens one, without migrating: what a second process holds before it does."""
    conn = sqlite3.connect(path, timeout=dbmod.BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    return sqlite_utils.Database(conn)


def test_a_migration_another_process_ran_while_we_waited_for_the_lock_is_not_run_again(tmp_path, fresh_schema):
    path = tmp_path / "new.db"
    first, second = raw_database(path), raw_database(path)
    ran_first: list[BaseException | None] = []

    def first_migrates_meanwhile(statement: str) -> None:
        # `second` has read the version (0) and is about to take the write lock: `first` migrates the whole file now.
        if statement.startswith("BEGIN IMMEDIATE") and not ran_first:
            try:
                dbmod.migrate(first)
                ran_first.append(None)
            except BaseException as exc:  # a trace callback's exceptions are swallowed: keep it for the assert
                ran_first.append(exc)

    second.conn.set_trace_callback(first_migrates_meanwhile)
    dbmod.migrate(second)  # without the check under the lock: "table runs already exists"
    second.conn.set_trace_callback(None)
    assert ran_first == [None]
    for database in (first, second):
        assert dbmod.schema_version(database) == dbmod.SCHEMA_VERSION
        assert schema(database.conn) == fresh_schema
        database.conn.close()


def test_processes_opening_one_new_file_at_once_all_get_a_migrated_database(tmp_path, fresh_schema):
    path = tmp_path / "new.db"
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def open_it() -> None:
        try:
            start.wait()
            dbmod.connect(path).conn.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    database = dbmod.connect(path)
    assert dbmod.schema_version(database) == dbmod.SCHEMA_VERSION
    assert schema(database.conn) == fresh_schema
    database.conn.close()
