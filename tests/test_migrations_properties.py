"""core/db/base.py beyond the migrations' schemas (tests/test_migrations.py): the runner's transactions (one per
pending migration, none for an up-to-date file, the version re-read under the lock), what `connect` sets on every
connection, the errors it gives for bad paths and files, and the small helpers. Fast: tiny files in tmp_path."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlite_utils

from core import db as dbmod
from core.db import base
from core.errors import InputError, NotFoundError, WorkbenchError


def traced(database: sqlite_utils.Database) -> list[str]:
    statements: list[str] = []
    database.conn.set_trace_callback(statements.append)
    return statements


def at_version(path: Path, version: int) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    for number in range(1, version + 1):
        base.MIGRATIONS[number - 1](conn)
        conn.execute(f"PRAGMA user_version = {number}")
    conn.close()


def raw(path: Path) -> sqlite_utils.Database:
    return sqlite_utils.Database(sqlite3.connect(path, isolation_level=None, check_same_thread=False))


# --- the migration runner ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", range(base.SCHEMA_VERSION + 1))
def test_one_write_transaction_per_pending_migration_and_none_when_up_to_date(tmp_path: Path, version: int):
    path = tmp_path / "db.sqlite"
    at_version(path, version)
    database = raw(path)
    statements = traced(database)
    base.migrate(database)
    # An up-to-date file is only read: no write lock is taken (a reader never waits on writers or fails read-only).
    assert sum(s.startswith("BEGIN IMMEDIATE") for s in statements) == base.SCHEMA_VERSION - version
    assert [s for s in statements if s.startswith("PRAGMA user_version =")] == [
        f"PRAGMA user_version = {n}" for n in range(version + 1, base.SCHEMA_VERSION + 1)
    ]
    assert base.schema_version(database) == base.SCHEMA_VERSION
    database.conn.close()


def test_a_partly_done_migration_by_another_process_is_continued(tmp_path: Path):
    # We read version 0; while we wait for the lock, another process runs migration 1 only: we run 2 and 3.
    path = tmp_path / "new.db"
    ours, other = raw(path), raw(path)
    done: list[int] = []

    def other_runs_the_first_migration(statement: str) -> None:
        if statement.startswith("BEGIN IMMEDIATE") and not done:
            done.append(1)
            with base.transaction(other) as conn:
                base.MIGRATIONS[0](conn)
                conn.execute("PRAGMA user_version = 1")

    ours.conn.set_trace_callback(other_runs_the_first_migration)
    base.migrate(ours)
    ours.conn.set_trace_callback(None)
    assert done == [1]
    assert base.schema_version(ours) == base.SCHEMA_VERSION
    assert "study_plans" in ours.table_names() and "assignments" in ours.table_names()
    for database in (ours, other):
        database.conn.close()


def test_a_newer_schema_is_refused_with_its_version(tmp_path: Path):
    path = tmp_path / "newer.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {base.SCHEMA_VERSION + 7}")
    conn.close()
    message = f"schema version {base.SCHEMA_VERSION + 7}, newer than this code \\({base.SCHEMA_VERSION}\\)"
    database = raw(path)
    with pytest.raises(WorkbenchError, match=message):
        base.migrate(database)
    database.conn.close()
    with pytest.raises(WorkbenchError, match=message):
        dbmod.connect(path)
    # The newer file is left as it was: no WAL switch.
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.close()


def test_schema_version_reads_user_version(tmp_path: Path):
    path = tmp_path / "v.db"
    at_version(path, 2)
    database = raw(path)
    assert base.schema_version(database) == 2
    database.conn.close()


# --- what connect sets -------------------------------------------------------------------------------------------


def test_every_connection_gets_its_pragmas_even_on_an_up_to_date_file(tmp_path: Path):
    path = tmp_path / "db.sqlite"
    dbmod.connect(path).conn.close()  # created and migrated
    database = dbmod.connect(path)  # already at SCHEMA_VERSION
    conn = database.conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == base.BUSY_TIMEOUT_MS
    assert conn.isolation_level is None
    # Autocommit: a write outside `transaction` is visible to another connection at once.
    conn.execute("INSERT INTO excerpts (hash, tokens) VALUES ('h', '[]')")
    other = sqlite3.connect(path)
    assert other.execute("SELECT hash FROM excerpts").fetchall() == [("h",)]
    other.close()
    # Usable from another thread (Streamlit runs a session's code in its own threads).
    seen: list[object] = []
    thread = threading.Thread(target=lambda: seen.append(conn.execute("SELECT count(*) FROM excerpts").fetchone()))
    thread.start()
    thread.join()
    assert seen == [(1,)]
    conn.close()


def test_connect_creates_missing_folders(tmp_path: Path):
    path = tmp_path / "a" / "b" / "c.db"
    database = dbmod.connect(path)
    assert path.exists() and base.schema_version(database) == base.SCHEMA_VERSION
    database.conn.close()


def test_connect_without_create(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "missing.db"
    with pytest.raises(NotFoundError, match=r"no database at .*missing\.db; check --db \(or \$EVAL_DB\)\. .*"
                                            r"`python -m core collect` or an import does$"):  # fmt: skip
        dbmod.connect(path, create=False)
    assert not path.exists()
    dbmod.connect(path).conn.close()
    database = dbmod.connect(path, create=False)  # an existing file opens
    assert base.schema_version(database) == base.SCHEMA_VERSION
    database.conn.close()


def test_connect_refuses_a_directory_and_an_uncreatable_folder(tmp_path: Path):
    with pytest.raises(InputError, match=r"^database path .* is a directory; pass a file path with --db or EVAL_DB$"):
        dbmod.connect(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError, match=r"^cannot create the folder .*file/sub for the database .*x\.db "
                                         r"\((Not a directory|File exists)\); pass another --db$"):  # fmt: skip
        dbmod.connect(blocker / "sub" / "x.db")


def test_a_file_that_is_not_a_database_is_named_and_its_connection_closed(tmp_path: Path, monkeypatch):
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite at all, just some text that is long enough" * 20)
    opened: list[sqlite3.Connection] = []
    real_connect = sqlite3.connect

    def recording_connect(*args, **kwargs):
        conn = real_connect(*args, **kwargs)
        opened.append(conn)
        return conn

    monkeypatch.setattr(base.sqlite3, "connect", recording_connect)
    with pytest.raises(InputError, match=rf"^{path} is not a usable SQLite database \(file is not a database\)"):
        dbmod.connect(path)
    [conn] = opened
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        conn.execute("SELECT 1")


def test_a_failure_to_open_is_reported_as_the_database_error(tmp_path: Path, monkeypatch):
    def failing_connect(*args, **kwargs):
        raise sqlite3.OperationalError("unable to open database file")

    monkeypatch.setattr(base.sqlite3, "connect", failing_connect)
    with pytest.raises(InputError, match="cannot be opened for writing"):
        dbmod.connect(tmp_path / "x.db")


# --- database_error ------------------------------------------------------------------------------------------


def test_database_error_messages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "d.db"

    def error(message: str) -> WorkbenchError:
        return base.database_error(path, sqlite3.OperationalError(message))

    # Writable file and folder: "cannot be opened for writing".
    path.write_text("")
    for message in ("attempt to write a readonly database", "read-only file", "unable to open database file"):
        found = error(message)
        assert type(found) is InputError
        assert str(found) == (f"the database {path} cannot be opened for writing ({message}); check its permissions "
                              "or pass another --db")  # fmt: skip
    # A read-only file (os.access says so; tests may run as root, who may write anything).
    writable = {str(tmp_path): True, str(path): False}
    monkeypatch.setattr(base.os, "access", lambda where, mode: writable[str(where)] if mode == base.os.W_OK else True)
    assert str(error("attempt to write a readonly database")) == (
        f"the database {path} is read-only: it cannot be written (attempt to write a readonly database); make the file "
        "writable or pass another --db"
    )
    # A read-only folder, the file itself writable or missing.
    writable = {str(tmp_path): False, str(path): True}
    expected = (f"the folder {tmp_path} of the database {path} is read-only: SQLite cannot write its files there "
                "(unable to open database file); make the folder writable or pass another --db")  # fmt: skip
    assert str(error("unable to open database file")) == expected
    assert type(error("unable to open database file")) is InputError
    path.unlink()
    writable = {str(tmp_path): False}
    assert str(error("unable to open database file")) == expected  # a missing file is not "read-only"
    monkeypatch.undo()
    damaged = error("database disk image is malformed")
    assert type(damaged) is InputError
    assert str(damaged) == (f"the database {path} is damaged (database disk image is malformed); restore it from a "
                            "backup, or pass another --db")  # fmt: skip
    junk = error("file is not a database")
    assert type(junk) is InputError
    assert str(junk) == (
        f"{path} is not a usable SQLite database (file is not a database); move it away or pass another --db"
    )
    other = error("disk I/O error")
    assert type(other) is WorkbenchError
    assert str(other) == f"the database {path} failed: disk I/O error"


# --- helpers -------------------------------------------------------------------------------------------------------


def test_now_is_utc_iso_with_milliseconds():
    before = datetime.now(UTC)
    stamp = base.now()
    after = datetime.now(UTC)
    parsed = datetime.fromisoformat(stamp)
    assert parsed.utcoffset() == timedelta(0) and stamp.endswith("+00:00")
    assert len(stamp.split(".")[1]) == len("123+00:00")  # milliseconds, no more
    assert before - timedelta(milliseconds=1) <= parsed <= after


def test_json_is_sorted_and_keeps_unicode():
    assert base._json({"b": 1, "a": "é", "c": [None, True]}) == '{"a": "é", "b": 1, "c": [null, true]}'


def test_newer_schema_message():
    error = base._newer_schema(9)
    assert type(error) is WorkbenchError
    assert str(error) == (
        f"the database is at schema version 9, newer than this code ({base.SCHEMA_VERSION}); update the code"
    )


def test_last_id(tmp_path: Path):
    database = sqlite_utils.Database(memory=True)
    table = database.table("t")
    with pytest.raises(WorkbenchError, match=r"^no row was written to t$"):
        base._last_id(table)
    table.insert({"x": 1})
    table.insert({"x": 2})
    assert base._last_id(table) == 2


def test_marks_and_chunks():
    assert base._marks([1, 2, 3]) == "?, ?, ?"
    assert base._marks([7]) == "?"
    values = list(range(1203))
    chunks = list(base._chunks(values))
    assert [len(c) for c in chunks] == [500, 500, 203] and [x for c in chunks for x in c] == values
    assert [list(c) for c in base._chunks([1, 2, 3, 4, 5], 2)] == [[1, 2], [3, 4], [5]]
    assert list(base._chunks([], 3)) == []
