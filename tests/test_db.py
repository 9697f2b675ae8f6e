"""The database module: migrations, transactions, excerpts stored once, explanations rerun in place."""

from __future__ import annotations

import sqlite3

import pytest

from core import db as dbmod
from core.errors import InputError, NotFoundError, WorkbenchError
from core.records import ActivationRecord, NeuronId, NeuronRecord, NeuronStats
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


def test_each_migration_applies_on_top_of_the_previous(db_path):
    conn = sqlite3.connect(db_path)
    dbmod.MIGRATIONS[0](conn)
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    database = dbmod.connect(db_path)
    assert dbmod.schema_version(database) == dbmod.SCHEMA_VERSION


def test_newer_schema_is_refused(db_path):
    dbmod.connect(db_path).conn.execute(f"PRAGMA user_version = {dbmod.SCHEMA_VERSION + 1}")
    with pytest.raises(WorkbenchError, match="newer than this code"):
        dbmod.connect(db_path)


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


def test_excerpts_are_stored_once_and_neurons_round_trip(db):
    dbmod.write_neurons(db, "m", [neuron(0, 0), neuron(0, 1)], source="test")
    assert db.conn.execute("SELECT COUNT(*) FROM excerpts").fetchone()[0] == 1
    assert dbmod.get_neuron(db, "m", NeuronId(0, 1)) == neuron(0, 1)
    dbmod.write_neurons(db, "m", [neuron(0, 1, tokens=("c", "d"))], source="test")  # replaces, never duplicates
    assert dbmod.get_neuron(db, "m", NeuronId(0, 1)).top[0].tokens == ("c", "d")
    assert db.conn.execute("SELECT COUNT(*) FROM records").fetchone()[0] == 6


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


def test_rerun_of_a_job_updates_in_place(db):
    """A scored explanation, or one used in a study, must survive a rerun of its job (foreign keys)."""
    fields = {"model": "m", "layer": 0, "neuron": 1, "format": "summary", "explainer": "x", "job_key": "job"}
    first = dbmod.insert_explanation(db, explanation="numbers", **fields)
    dbmod.save_score(db, first, "hf:sim", "all_at_once", "valid", False, Scores(0.5, 0.1, 0.2, ()), [[1.0]], "ok")
    same = dbmod.insert_explanation(db, explanation="numbers", **fields)
    assert same == first and db.conn.execute("SELECT COUNT(*) FROM scores").fetchone()[0] == 1
    changed = dbmod.insert_explanation(db, explanation="dates", **fields)
    assert changed == first
    assert dbmod.get_explanation(db, first)["explanation"] == "dates"
    assert db.conn.execute("SELECT COUNT(*) FROM scores").fetchone()[0] == 0  # a stale score is dropped


def test_summary_counts(db):
    dbmod.write_neurons(db, "m", [neuron(0, 0), neuron(1, 0)], source="test")
    summary = dbmod.summary(db)
    assert summary["models"] == {"m": [{"layer": 0, "neurons": 1}, {"layer": 1, "neurons": 1}]}
    assert summary["counts"]["neurons"] == 2
