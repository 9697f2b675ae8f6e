"""The command line (core/__main__.py) as a user meets it: stored neurons read by `prompt` and `simulate`, the
per-format table at the end of `score`, and exit statuses that tell scripts about failures."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from core import db as dbmod
from core import explain, prompts
from core.__main__ import main
from core.records import ActivationRecord, NeuronId, NeuronRecord, NeuronStats

MODEL = "cli-subject"
WORDS = [" the", " cat", " sat", " on", " mat", " river", " red", ",", "."]


def _neuron(index: int, seed: int) -> NeuronRecord:
    """A neuron with docs/METHOD.md §1's 20 top and 15 random records that fires on " cat"."""
    rng = random.Random(seed)

    def record(peak: float) -> ActivationRecord:
        tokens = tuple(rng.choice(WORDS) for _ in range(8))
        return ActivationRecord(tokens, tuple(peak if t == " cat" else rng.random() * 0.1 for t in tokens))

    top = tuple(sorted((record(2 + rng.random() * 3) for _ in range(20)), key=lambda r: -r.max_activation))
    random_records = tuple(record(0.5) for _ in range(15))
    stats = NeuronStats(0.2, 0.5, top[0].max_activation, {0.5: 1.0, 0.9: 2.0, 0.99: 3.0, 0.999: 4.0})
    return NeuronRecord(MODEL, NeuronId(0, index), top, random_records, stats)


@pytest.fixture
def neurons_db(db_path: Path) -> str:
    database = dbmod.connect(db_path)
    dbmod.write_neurons(database, MODEL, [_neuron(1, 1), _neuron(2, 2)], source="test")
    database.conn.close()
    return str(db_path)


def test_prompt_for_a_stored_neuron_is_exactly_what_explain_sends(neurons_db: str, openai_env, capsys) -> None:
    database = dbmod.connect(neurons_db)
    explain.explain_neurons(database, MODEL, [NeuronId(0, 1)], list(prompts.FORMATS), "openai:gpt-4o-mini")
    sent = {row["format"]: row["prompt"] for row in dbmod.list_explanations(database, MODEL)}
    assert set(sent) == set(prompts.FORMATS)
    for format_name in prompts.FORMATS:
        code = main(["prompt", "--format", format_name, "--neuron", "0:1", "--model", MODEL, "--db", neurons_db])
        shown = json.loads(capsys.readouterr().out)
        assert code == 0 and shown["messages"] == sent[format_name], format_name
        assert shown["input_tokens"] > 0
    code = main(["prompt", "--format", "summary", "--neuron", "0:9", "--model", MODEL, "--db", neurons_db])
    err = capsys.readouterr().err
    assert (
        code == 2
        and err.startswith("error: neuron 0:9 of 'cli-subject' is not in the database")
        and err.count("\n") == 1
    )


def test_simulate_a_stored_neuron_on_a_split(neurons_db: str, tiny_chat_model: Path, capsys) -> None:
    argv = ["simulate", "--explanation", "the word cat", "--neuron", "0:2", "--model", MODEL, "--db", neurons_db]
    argv += ["--simulator", f"hf:{tiny_chat_model}", "--device", "cpu", "--json"]
    assert main([*argv, "--split", "test"]) == 0
    result = json.loads(capsys.readouterr().out)
    expected = _neuron(2, 2).split("test")
    assert [len(p) for p in result["predictions"]] == [len(r.tokens) for r in expected]
    assert result["status"] == "ok" and result["score"] is not None


def test_score_ends_with_a_per_format_table_per_explainer(neurons_db: str, tiny_chat_model: Path, capsys) -> None:
    database = dbmod.connect(neurons_db)
    for index in (1, 2):
        for format_name, text in (("original", "the word cat"), ("summary", "rivers and colors")):
            dbmod.insert_explanation(
                database, model=MODEL, layer=0, neuron=index, format=format_name, explainer="openai:w", explanation=text
            )
    argv = ["score", "--model", MODEL, "--db", neurons_db, "--simulator", f"hf:{tiny_chat_model}", "--device", "cpu"]
    assert main([*argv, "--reference", "none"]) == 0
    out = capsys.readouterr().out
    assert "4 scored, 0 already scored, 0 failed (of 4)" in out
    assert "explainer openai:w; 95% bootstrap CIs over neurons" in out
    table = out.split("explainer openai:w", 1)[1].splitlines()
    assert table[1].split()[:3] == ["format", "n", "mean_score"]
    assert [line.split()[:2] for line in table[2:4]] == [["original", "2"], ["summary", "2"]]
    assert "paired difference from the baseline format" in out


def test_puzzles_exit_1_when_simulations_fail(db_path: Path, openai_env, tmp_path: Path, capsys) -> None:
    puzzles = {
        "cats": {
            "name": "cats",
            "explanation": "the word cat",
            "false_explanations": ["rivers"],
            "sentences": [[" the", [" cat", 9], " sat"], [" a", " red", [" cat", 10]]],
        }
    }
    path = tmp_path / "puzzles.json"
    path.write_text(json.dumps(puzzles))
    argv = ["puzzles", "--db", str(db_path), "--explainer", "none", "--puzzles", str(path)]
    # The fake server's chat answers are prose, not token<TAB>activation lines: every simulation fails.
    assert main([*argv, "--simulator", "openai:fake", "--method", "chat_parse"]) == 1
    assert "simulations failed in 1 puzzle(s)" in capsys.readouterr().out
