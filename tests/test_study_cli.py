"""The human-evaluation commands of `python -m core`: study, rater, export and import-ratings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core import db as dbmod
from core import export, human_eval
from core.__main__ import main
from tests.simulated_study import MODEL, explain_neurons

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def explained(db_path: Path) -> str:
    """A database file with explanations of neurons 0:0 … 0:5 under two formats."""
    database = dbmod.connect(db_path)
    explain_neurons(database, 6)
    database.conn.close()
    return str(db_path)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def create(capsys, db: str, *extra: str) -> dict:
    code, out, err = run(
        capsys, "study", "create", "--db", db, "--name", "S", "--arms", "summary,original",
        "--neurons", "0:0,0:1,0:2,0:3,0:4,0:5,9:9", "--ratings-per-item", "2", "--seed", "7", *extra,
    )  # fmt: skip
    assert code == 0, err
    return {"result": json.loads(out), "stderr": err}


def test_study_create_refuses_an_ambiguous_arm_and_study_show_names_each_arms_source(capsys, explained, tmp_path):
    database = dbmod.connect(explained)
    for n in range(6):  # a second explainer's summaries of the same neurons
        dbmod.insert_explanation(
            database, model=MODEL, layer=0, neuron=n, format="summary", explainer="openai:gpt-4o-mini",
            explanation=f"generated words {n}",
        )  # fmt: skip
    database.conn.close()
    code, out, err = run(
        capsys, "study", "create", "--db", explained, "--name", "S", "--arms", "summary,original",
        "--neurons", "0:0,0:1",
    )  # fmt: skip
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert "summary@gpt-4#imported" in err and "summary@openai:gpt-4o-mini#generated" in err and "--arms" in err
    neuron_file = tmp_path / "neurons.csv"
    neuron_file.write_text("layer,neuron\n0,0\n0,1\n0,2\n")
    code, out, err = run(
        capsys, "study", "create", "--db", explained, "--name", "S", "--arms", "summary@openai:gpt-4o-mini,original",
        "--neuron-file", str(neuron_file), "--seed", "3",
    )  # fmt: skip
    assert code == 0, err
    created = json.loads(out)
    assert created["n_items"] == 3 and created["study"]["neurons"] == ["0:0", "0:1", "0:2"]
    assert "arm summary@openai:gpt-4o-mini: 3 explanation(s) by openai:gpt-4o-mini from generated" in err
    code, out, _ = run(capsys, "study", "show", "S", "--db", explained)
    shown = json.loads(out)
    assert code == 0 and shown["name"] == "S" and shown["n_items"] == 3
    assert shown["arm_sources"] == created["arm_sources"]
    assert [(a["arm"], a["explainer"], a["source"], a["n_explanations"]) for a in shown["arm_sources"]] == [
        ("summary@openai:gpt-4o-mini", "openai:gpt-4o-mini", "generated", 3),
        ("original", "gpt-4", "imported", 3),
    ]


def test_study_create_items_and_status(capsys, explained) -> None:
    created = create(capsys, explained)
    assert created["result"]["n_items"] == 6
    assert created["result"]["study"]["model"] == MODEL
    assert created["result"]["study"]["seed"] == 7
    assert "warning: skipped 9:9: no summary explanation" in created["stderr"]
    code, out, _ = run(capsys, "study", "items", "S", "--json", "--db", explained)
    items = json.loads(out)
    assert code == 0 and len(items) == 6
    assert {"item_id", "neuron", "left_arm", "right_arm"} <= set(items[0])
    assert {item["left_arm"] for item in items} == {"summary", "original"}
    code, out, _ = run(capsys, "study", "items", "S", "--db", explained)
    assert code == 0 and len(out.strip().splitlines()) == 6
    code, out, _ = run(capsys, "study", "status", "S", "--db", explained)
    status = json.loads(out)
    assert (status["n_items"], status["wanted_ratings"], status["n_ratings"]) == (6, 12, 0)
    code, out, _ = run(capsys, "study", "list", "--db", explained)
    assert [row["name"] for row in json.loads(out)] == ["S"]


def test_rater_add_and_list_never_print_codes(capsys, explained) -> None:
    code, out, _ = run(capsys, "rater", "add", "--name", "alice", "--code", "SECRET-1", "--db", explained)
    assert code == 0 and json.loads(out) == {"id": 1, "name": "alice", "role": "rater"}
    code, out, _ = run(capsys, "rater", "add", "--name", "root", "--code", "SECRET-2", "--admin", "--db", explained)
    assert json.loads(out)["role"] == "admin"
    code, out, _ = run(capsys, "rater", "list", "--db", explained)
    assert "SECRET" not in out and "hash" not in out and "salt" not in out
    code, _, err = run(capsys, "rater", "add", "--name", "alice", "--code", "OTHER-01", "--db", explained)
    assert code == 2 and "error: a rater named 'alice' already exists" in err


def test_import_ratings_then_export_in_every_format(capsys, explained, tmp_path: Path) -> None:
    create(capsys, explained)
    run(capsys, "rater", "add", "--name", "alice", "--code", "SECRET-1", "--db", explained)
    _, out, _ = run(capsys, "study", "items", "S", "--json", "--db", explained)
    items = json.loads(out)
    rows = [f"{item['item_id']},alice,{'left' if item['left_arm'] == 'summary' else 'right'},5" for item in items]
    header = "item_id,rater,choice,confidence\n"
    bad_path = tmp_path / "outside-with-errors.csv"
    bad_path.write_text(header + "\n".join(rows) + "\n99999,alice,left,\n1,alice,up,\n")
    code, _, err = run(capsys, "import-ratings", "--study", "S", str(bad_path), "--db", explained)
    assert code == 2  # all or nothing: two bad rows, so none is written
    assert "line 8: item 99999 is not part of study 'S'" in err
    assert "line 9: choice 'up' is not allowed" in err
    assert dbmod.connect(explained)["ratings"].count == 0
    csv_path = tmp_path / "outside.csv"
    csv_path.write_text(header + "\n".join(rows) + "\n")
    code, out, err = run(capsys, "import-ratings", "--study", "S", str(csv_path), "--json", "--db", explained)
    assert code == 0, err
    assert json.loads(out)["written"] == 6
    for fmt in ("csv", "json", "parquet"):
        target = tmp_path / f"export-{fmt}"
        code, out, err = run(capsys, "export", "--study", "S", "--format", fmt, "--out", str(target), "--db", explained)
        assert code == 0, err
        files = [Path(path) for path in json.loads(out)["files"]]
        assert all(path.is_file() for path in files)
        summary = export.load_export(target).summary
        assert (summary["wins"], summary["win_rate"], summary["n_ratings"]) == ({"summary": 6, "original": 0}, 1.0, 6)
        assert summary["binomial_p"] == pytest.approx(2 / 64)
        assert "SECRET" not in "".join(path.read_bytes().decode("latin-1") for path in files)
    code, out, _ = run(capsys, "study", "summary", "S", "--db", explained)
    assert json.loads(out)["left_win_rate"] == json.loads(out)["position_bias"]["rate"]


def test_purge_needs_the_admin_code(capsys, explained, tmp_path: Path) -> None:
    create(capsys, explained)
    run(capsys, "rater", "add", "--name", "root", "--code", "ROOT-CODE", "--admin", "--db", explained)
    run(capsys, "rater", "add", "--name", "ann", "--code", "ANN-CODE", "--db", explained)
    run(capsys, "rater", "assign", "--name", "ann", "--studies", "S", "--db", explained)
    database = dbmod.connect(explained)
    item = human_eval.next_item(database, "S", "ann")
    human_eval.submit_rating(database, "S", "ann", item.item_id, "tie")
    argv = ["study", "purge", "S", "--admin", "root", "--out", str(tmp_path / "saved.json"), "--db", explained]
    code, _, err = run(capsys, *argv, "--code", "WRONG-CODE")
    assert code == 2 and "wrong access code" in err
    assert database["ratings"].count == 1
    code, out, _ = run(capsys, *argv, "--code", "ROOT-CODE")
    assert code == 0 and json.loads(out)["deleted"] == 1
    assert database["ratings"].count == 0
    assert len(export.load_export(tmp_path / "saved.json").ratings) == 1


def test_errors_are_one_line_and_exit_2(capsys, explained) -> None:
    code, _, err = run(capsys, "study", "status", "Nope", "--db", explained)
    assert code == 2 and err.strip().startswith("error: no study named 'Nope'") and err.count("\n") == 1
    code, _, err = run(capsys, "export", "--study", "Nope", "--db", explained)
    assert code == 2 and "no study named 'Nope'" in err
    code, _, err = run(
        capsys, "study", "create", "--db", explained, "--name", "T", "--arms", "summary", "--neurons", "0:1"
    )
    assert code == 2 and "at least two different arms" in err


def test_python_dash_m_core_runs_the_study_commands(explained) -> None:
    env = {**os.environ, "EVAL_DB": explained}
    command = [sys.executable, "-m", "core", "study", "create", "--name", "Sub", "--arms", "summary,original"]
    result = subprocess.run(
        [*command, "--neurons", "0:0,0:1", "--ratings-per-item", "4", "--seed", "7"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["n_items"] == 2


def test_an_access_code_without_a_terminal_is_read_from_stdin_or_is_one_clear_error(
    capsys, explained, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import io

    monkeypatch.delenv("EVAL_ADMIN_CODE", raising=False)
    for stdin in (None, io.StringIO(""), io.StringIO("\n")):  # closed (`<&-`), `< /dev/null`, an empty line
        monkeypatch.setattr(sys, "stdin", stdin)
        code, _, err = run(capsys, "rater", "add", "--name", "carol", "--db", explained)
        assert code == 2 and err.startswith("error: no access code given: pass --code CODE") and err.count("\n") == 1
    monkeypatch.setattr(sys, "stdin", io.StringIO("carol-CODE\n"))
    code, out, err = run(capsys, "rater", "add", "--name", "carol", "--admin", "--db", explained)
    assert code == 0 and json.loads(out)["name"] == "carol" and "carol-CODE" not in out + err
    create(capsys, explained)
    argv = ["study", "purge", "S", "--admin", "carol", "--out", str(tmp_path / "saved.json"), "--db", explained]
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert run(capsys, *argv)[0] == 2
    monkeypatch.setattr(sys, "stdin", io.StringIO("carol-CODE\n"))
    assert run(capsys, *argv)[0] == 0
    result = subprocess.run(
        [sys.executable, "-m", "core", "rater", "add", "--name", "dave", "--db", explained],
        cwd=REPO_ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2 and result.stderr.startswith("error: no access code given")
    assert "Traceback" not in result.stderr


def test_rater_remove_keeps_past_ratings_attributed_and_reset_code_gives_access_again(capsys, explained) -> None:
    from core import raters
    from core.errors import InputError

    create(capsys, explained)
    database = dbmod.connect(explained)
    raters.add_rater(database, "ann", "ann-access-code")
    human_eval.assign_studies(database, "ann", ["S"])
    item = human_eval.next_item(database, "S", "ann")
    human_eval.submit_rating(database, "S", "ann", item.item_id, "left")
    code, out, _ = run(capsys, "rater", "remove", "--name", "ann", "--db", explained)
    assert code == 0 and json.loads(out) == {"name": "ann", "removed": True, "studies_unassigned": 1}
    with pytest.raises(InputError, match="unknown rater name or wrong access code"):
        raters.authenticate(database, "ann", "ann-access-code")
    assert human_eval.studies_for_rater(database, "ann") == []
    ratings = export.study_data(database, "S").ratings
    assert list(ratings["rater"]) == ["ann"] and list(ratings["choice"]) == ["left"]  # kept, and still theirs
    code, out, _ = run(capsys, "rater", "list", "--db", explained)
    assert [(row["name"], row["removed"]) for row in json.loads(out)] == [("ann", True)]
    code, out, err = run(capsys, "rater", "reset-code", "--name", "ann", "--code", "new-access-code", "--db", explained)
    assert code == 0 and json.loads(out)["code_reset"] is True and "--code puts the access code" in err
    assert raters.authenticate(database, "ann", "new-access-code").name == "ann"
    with pytest.raises(InputError):
        raters.authenticate(database, "ann", "ann-access-code")
    code, _, err = run(capsys, "rater", "remove", "--name", "nobody", "--db", explained)
    assert code == 2 and "no rater named 'nobody'" in err
