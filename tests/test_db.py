"""The database module: migrations, transactions, excerpts stored once, explanations rerun in place."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest

from core import db as dbmod
from core.__main__ import main
from core.db.explanations import InsertReport
from core.db.neurons import layers_without_scoring_records
from core.errors import InputError, NotFoundError, WorkbenchError
from core.records import ActivationRecord, NeuronId, NeuronRecord, NeuronStats, ScoringRecords
from core.scoring import Scores


def neuron(layer: int, index: int, tokens=("a", " b")) -> NeuronRecord:
    record = ActivationRecord(tokens, (0.5, 1.5))
    stats = NeuronStats(0.1, 0.2, 1.5, {0.5: 0.4, 0.9: 1.0, 0.99: 1.4, 0.999: 1.5})
    return NeuronRecord("m", NeuronId(layer, index), (record, record), (record,), stats)


def test_new_database_is_at_the_latest_schema(db):
    assert dbmod.schema_version(db) == dbmod.SCHEMA_VERSION
    tables = set(db.table_names())
    expected = {"neurons", "excerpts", "records", "explanations", "scores", "studies", "items", "raters", "ratings"}
    assert expected <= tables
    assert db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_newer_schema_is_refused(db_path):
    dbmod.connect(db_path).conn.execute(f"PRAGMA user_version = {dbmod.SCHEMA_VERSION + 1}")
    with pytest.raises(WorkbenchError, match="newer than this code"):
        dbmod.connect(db_path)


def test_newer_schema_is_refused_before_anything_is_written(db_path):
    conn = sqlite3.connect(db_path)
    conn.execute("CREATE TABLE future (x)")
    conn.execute(f"PRAGMA user_version = {dbmod.SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    before = db_path.read_bytes()
    with pytest.raises(WorkbenchError, match="newer than this code"):
        dbmod.connect(db_path)
    assert db_path.read_bytes() == before
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.close()


def test_corrupt_file_is_one_clear_error(tmp_path):
    path = tmp_path / "corrupt.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(InputError, match="not a usable SQLite database"):
        dbmod.connect(path)


def test_transaction_rolls_back_on_error(db):
    with pytest.raises(RuntimeError), dbmod.transaction(db) as conn:
        conn.execute("INSERT INTO excerpts (hash, tokens) VALUES ('h', '[]')")
        raise RuntimeError("boom")
    assert db.conn.execute("SELECT COUNT(*) FROM excerpts").fetchone()[0] == 0


def test_sqlite_utils_writes_inside_a_transaction_roll_back_with_it(db):
    """core.db writes through sqlite-utils inside `transaction`: its writes must nest there, never commit early."""
    with pytest.raises(RuntimeError), dbmod.transaction(db):
        db.table("excerpts").insert_all([{"hash": "h", "tokens": "[]"}], ignore=True)
        db.table("llm_cache").insert(
            {"key": "k", "backend": "b", "model": "m", "request": "{}", "response": "{}", "created_at": "t"},
            replace=True,
        )
        db.table("sign_in_failures").delete_where()
        raise RuntimeError("boom")
    assert (db.table("excerpts").count, db.table("llm_cache").count, db.conn.in_transaction) == (0, 0, False)
    with pytest.raises(ValueError, match="finished_layer needs run"):
        dbmod.write_neurons(db, "m", [neuron(0, 0)], source="test", finished_layer=(0, 1.0))
    assert [db.table(table).count for table in ("excerpts", "neurons", "records")] == [0, 0, 0]


def test_excerpts_are_stored_once_and_neurons_round_trip(db):
    dbmod.write_neurons(db, "m", [neuron(0, 0), neuron(0, 1)], source="test")
    assert db.conn.execute("SELECT COUNT(*) FROM excerpts").fetchone()[0] == 1
    assert dbmod.get_neuron(db, "m", NeuronId(0, 1)) == neuron(0, 1)
    dbmod.write_neurons(db, "m", [neuron(0, 1, tokens=("c", "d"))], source="test")  # replaces, never duplicates
    assert dbmod.get_neuron(db, "m", NeuronId(0, 1)).top[0].tokens == ("c", "d")
    assert db.conn.execute("SELECT COUNT(*) FROM records").fetchone()[0] == 6


def test_scorers_excerpts_round_trip_and_a_database_without_their_table_still_takes_neurons(db, caplog):
    scoring = ScoringRecords(
        quantile=(ActivationRecord(("q", "r"), (0.25, 0.75)),), levels=(0.5,),
        non_activating=(ActivationRecord(("n",), (0.0,)),), bottom=(ActivationRecord(("b",), (-1.0,)),),
    )  # fmt: skip
    with_scoring = replace(neuron(0, 0), scoring=scoring)
    dbmod.write_neurons(db, "m", [with_scoring], source="test")
    assert dbmod.get_neuron(db, "m", NeuronId(0, 0)) == with_scoring
    dbmod.write_neurons(db, "m", [with_scoring], source="test")  # rewritten, not doubled
    assert db.table("scoring_records").count == 3
    # A database made by a development build of schema v3 has no scoring_records table.
    db.conn.execute("DROP TABLE scoring_records")
    dbmod.write_neurons(db, "m", [with_scoring, neuron(1, 0)], source="test")
    assert "no scoring_records table" in caplog.text
    assert dbmod.get_neuron(db, "m", NeuronId(0, 0)) == neuron(0, 0)
    assert layers_without_scoring_records(db, "m") == [0, 1]


def test_missing_neuron_says_what_is_there(db):
    with pytest.raises(NotFoundError, match="no neurons of model 'm'"):
        dbmod.get_neuron(db, "m", NeuronId(0, 0))
    dbmod.write_neurons(db, "m", [neuron(2, 0)], source="test")
    with pytest.raises(NotFoundError, match=r"collected layers: 2 \(1 neurons\)"):
        dbmod.get_neuron(db, "m", NeuronId(5, 0))


def test_an_empty_database_names_its_file_so_a_mistyped_db_path_shows(db, db_path):
    with pytest.raises(NotFoundError, match=f"in {db_path}, which holds none yet") as raised:
        dbmod.get_neuron(db, "m", NeuronId(0, 0))
    assert "--db / $EVAL_DB" in str(raised.value)


def test_other_layer_sources_name_what_fills_a_layer_besides_one_run(db):
    run = {"model": "m", "corpus": "c", "excerpt_len": 2, "max_tokens": 10, "top_k": 2, "random_k": 1, "seed": 0}
    dbmod.write_neurons(db, "m", [neuron(0, 0), neuron(0, 1)], source="collected", run=run)
    dbmod.write_neurons(db, "m", [neuron(1, 0)], source="openai")
    run_id = dbmod.find_run(db, run)
    assert dbmod.other_layer_sources(db, "m", [0], run_id) == []
    [collected] = dbmod.other_layer_sources(db, "m", [0], None)
    assert (collected["layer"], collected["n_neurons"], collected["corpus"], collected["max_tokens"]) == (0, 2, "c", 10)
    [imported] = dbmod.other_layer_sources(db, "m", [1, 2], run_id)
    assert (imported["layer"], imported["source"], imported["corpus"]) == (1, "openai", None)
    assert dbmod.other_layer_sources(db, "other", [0, 1], None) == []


def test_an_ok_explanation_is_never_rewritten_and_a_failed_one_is_retried_in_place(db):
    """Study items and scores point at an ok row: a rerun of its job keeps it as it is (foreign keys, text)."""
    fields = {"model": "m", "layer": 0, "neuron": 1, "format": "summary", "explainer": "x", "job_key": "job"}
    first = dbmod.insert_explanation(db, explanation="numbers", **fields)
    dbmod.save_score(db, first, "hf:sim", "all_at_once", "valid", False, Scores(0.5, 0.1, 0.2, ()), [[1.0]], "ok")
    assert dbmod.insert_explanation(db, explanation="numbers", **fields) == first
    assert dbmod.insert_explanation(db, explanation="dates", **fields) == first
    assert dbmod.get_explanation(db, first)["explanation"] == "numbers"
    assert db.conn.execute("SELECT COUNT(*) FROM scores").fetchone()[0] == 1
    failed = {**fields, "job_key": "failed job"}
    retried = dbmod.insert_explanation(db, status="failed", error="timeout", **failed)
    assert dbmod.insert_explanation(db, explanation="dates", **failed) == retried
    row = dbmod.get_explanation(db, retried)
    assert (row["explanation"], row["status"]) == ("dates", "ok")
    assert len(dbmod.list_explanations(db, status=None)) == 2


def test_insert_explanations_reports_what_was_written_and_what_was_there(db):
    fields = {"model": "m", "layer": 0, "neuron": 1, "format": "summary", "explainer": "x"}
    rows = [{**fields, "explanation": "numbers", "job_key": "a"}, {**fields, "explanation": "dates", "job_key": "b"}]
    assert dbmod.insert_explanations(db, rows) == InsertReport(written=2, unchanged=0)
    changed = [{**rows[0], "explanation": "years"}, {**fields, "explanation": "rivers", "job_key": "c"}]
    assert dbmod.insert_explanations(db, changed) == InsertReport(written=1, unchanged=1)
    texts = sorted(row["explanation"] for row in dbmod.list_explanations(db))
    assert texts == ["dates", "numbers", "rivers"]


def test_a_job_twice_in_one_call_meets_its_first_row_as_stored(db):
    fields = {"model": "m", "layer": 0, "neuron": 1, "format": "summary", "explainer": "x"}
    rows = [
        {**fields, "job_key": "a", "status": "failed", "error": "timeout"},
        {**fields, "job_key": "b", "explanation": "numbers"},
        {**fields, "job_key": "a", "status": "failed", "error": "rate limit"},  # retries the failed row in place
        {**fields, "job_key": "a", "explanation": "dates"},  # … and again
        {**fields, "job_key": "b", "explanation": "years"},  # an ok row stays
        {**fields, "job_key": "a", "explanation": "rivers"},  # ok by now: stays "dates"
        {**fields, "explanation": "no job"},
    ]
    assert dbmod.insert_explanations(db, rows) == InsertReport(written=5, unchanged=2)
    stored = {row["job_key"]: row for row in dbmod.list_explanations(db, status=None)}
    assert {key: (row["explanation"], row["status"], row["error"]) for key, row in stored.items()} == {
        "a": ("dates", "ok", None), "b": ("numbers", "ok", None), None: ("no job", "ok", None),
    }  # fmt: skip
    assert [row["id"] for row in dbmod.list_explanations(db, status=None)] == [3, 2, 1]
    assert {row["source"] for row in stored.values()} == {"generated"}  # the schema's default, as for one row


def test_summary_counts(db):
    dbmod.write_neurons(db, "m", [neuron(0, 0), neuron(1, 0)], source="test")
    summary = dbmod.summary(db)
    assert summary["models"] == {"m": [{"layer": 0, "neurons": 1}, {"layer": 1, "neurons": 1}]}
    assert summary["counts"]["neurons"] == 2


# --- the database file as the user may hand it over: damaged, read-only ----------------------------------------


def run_cli(capsys, *args: str) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().err


def import_args(tmp_path, db_path) -> list[str]:
    table = tmp_path / "table.csv"
    table.write_text("Layer,Neuron,Summary\n0,1,rivers.\n0,2,dates.\n", encoding="utf-8")
    return ["import-explanations", str(table), "--explainer", "gpt-4", "--db", str(db_path)]


def test_a_damaged_page_is_one_line_asking_for_a_backup(db_path, tmp_path, capsys):
    db = dbmod.connect(db_path)
    fields = {"model": "m", "layer": 0, "format": "summary", "explainer": "gpt-4", "source": "imported"}
    dbmod.insert_explanations(db, [{**fields, "neuron": i, "explanation": f"text {i} " * 40} for i in range(400)])
    db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.conn.close()
    data = bytearray(db_path.read_bytes())
    page = 4096
    assert len(data) > 20 * page
    data[8 * page :] = bytes(range(256)) * ((len(data) - 8 * page) // 256)  # a valid header, garbage further on
    db_path.write_bytes(bytes(data))
    code, err = run_cli(capsys, *import_args(tmp_path, db_path))
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert str(db_path) in err and "damaged" in err and "backup" in err


@contextmanager
def read_only(path: Path) -> Iterator[None]:
    """Make a file or folder read-only for this process: chmod, or for root (whom chmod does not stop) chattr +i."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(mode & ~0o222)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
        pytest.skip("running as root, and chattr +i is not available here to make a file read-only")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_a_read_only_database_file_is_one_line_saying_so(db_path, tmp_path, capsys):
    dbmod.connect(db_path).conn.close()
    args = import_args(tmp_path, db_path)
    with read_only(db_path):
        code, err = run_cli(capsys, *args)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"the database {db_path} is read-only" in err and "move it away" not in err


def test_a_database_in_a_read_only_folder_is_one_line_saying_so(tmp_path, capsys):
    folder = tmp_path / "locked"
    folder.mkdir()
    existing = folder / "existing.db"
    dbmod.connect(existing).conn.close()  # WAL mode: SQLite must create its -wal and -shm files next to it
    args = import_args(tmp_path, existing)
    with read_only(folder):
        code, err = run_cli(capsys, *args)
        assert code == 2 and len(err.strip().splitlines()) == 1
        assert f"the folder {folder} of the database {existing} is read-only" in err and "move it away" not in err
        code, err = run_cli(capsys, *import_args(tmp_path, folder / "new.db"))
        assert code == 2 and len(err.strip().splitlines()) == 1
        assert f"the folder {folder} of the database {folder / 'new.db'} is read-only" in err


# --- collection's spill folder lives next to the database, and a killed run's is removed by the next ------------


@pytest.fixture
def collect_command(tmp_path) -> tuple[list[str], dict[str, str], Callable[[], list[Path]]]:
    """A `collect` subprocess that runs for a few seconds, its environment, and a finder for spill folders anywhere
    it could have put them (its TMPDIR and the database's folder)."""
    from tests import tiny_models

    model_path = tiny_models.build("gpt2", tmp_path / "gpt2")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(tiny_models.TEXT * 4, encoding="utf-8")
    db_file = tmp_path / "data" / "collect.db"
    temp = tmp_path / "tmp"
    temp.mkdir()
    args = [sys.executable, "-m", "core", "collect", "--db", str(db_file), "--model", str(model_path),
            "--corpus", str(corpus), "--layers", "0,1,2", "--max-tokens", "4000", "--excerpt-len", "16",
            "--top-k", "6", "--random-k", "5", "--batch-size", "4", "--device", "cpu"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "TMPDIR": str(temp)}

    def spill_folders() -> list[Path]:
        folders = [temp, db_file.parent]
        return [path for folder in folders if folder.is_dir() for path in folder.iterdir() if path.is_dir()]

    return args, env, spill_folders


def start_and_wait_for_spill(args, env, spill_folders) -> subprocess.Popen:
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not spill_folders() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert spill_folders(), f"the collection ended before its pass began: {process.communicate()[1]}"
    time.sleep(0.2)  # into the pass
    return process


def test_a_collection_killed_with_sigkill_leaves_its_spill_folder_to_the_next_run(collect_command, capsys):
    args, env, spill_folders = collect_command
    process = start_and_wait_for_spill(args, env, spill_folders)
    process.kill()
    process.communicate(timeout=60)
    [left] = spill_folders()
    assert left.parent.name == "data" and left.name.startswith(f"collect.db-collect-{process.pid}-")
    # The rerun resumes the same run (the batch size is no part of it), in this process to save a start-up.
    assert main([*args[3:], "--batch-size", "64"]) == 0
    assert "collected layers 0,1,2" in capsys.readouterr().out
    assert spill_folders() == []


def test_a_collection_stopped_with_sigterm_cleans_up_and_says_how_to_resume(collect_command):
    args, env, spill_folders = collect_command
    process = start_and_wait_for_spill(args, env, spill_folders)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "interrupted: finished work is saved; rerun the same command to resume" in err
    assert spill_folders() == []
