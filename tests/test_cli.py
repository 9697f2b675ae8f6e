"""The command line (core/cli/) as a user meets it: stored neurons read by `prompt` and `simulate`, the
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
        assert shown["input_tokens_cl100k"] > 0 and shown["tokenizer"] == "cl100k_base"
    code = main(["prompt", "--format", "summary", "--neuron", "0:9", "--model", MODEL, "--db", neurons_db])
    err = capsys.readouterr().err
    assert (
        code == 2
        and err.startswith("error: neuron 0:9 of 'cli-subject' is not in the database")
        and err.count("\n") == 1
    )


def test_simulate_a_stored_neuron_on_a_split(neurons_db: str, tiny_chat_model: Path, capsys) -> None:
    argv = ["simulate", "--explanation", "the word cat", "--neuron", "0:2", "--model", MODEL, "--db", neurons_db]
    argv += ["--simulator", f"hf:{tiny_chat_model}", "--simulator-device", "cpu", "--json"]
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
    argv = ["score", "--model", MODEL, "--db", neurons_db, "--simulator", f"hf:{tiny_chat_model}"]
    argv += ["--simulator-device", "cpu"]
    assert main([*argv, "--reference", "none"]) == 0
    out = capsys.readouterr().out
    assert "4 scored, 0 already scored, 0 failed (of 4)" in out
    assert "explainer openai:w, source generated (generated (settings not recorded)); scores by hf:" in out
    assert "all_at_once: the paper's all-at-once method; 95% bootstrap CIs over neurons" in out
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


# --- explanations and the neuron view ----------------------------------------------------------------------------


def test_explanations_lists_sources_tokens_and_scores_and_show_prints_one(
    neurons_db: str, openai_env, tmp_path: Path, capsys
) -> None:
    database = dbmod.connect(neurons_db)
    explain.explain_neurons(database, MODEL, [NeuronId(0, 1)], ["original", "summary"], "openai:gpt-4o-mini")
    paper = tmp_path / "paper.csv"
    paper.write_text("layer,neuron,summary\n0,1,words from the paper\n0,2,more paper words\n")
    explain.import_explanations_csv(database, paper, "gpt-4", MODEL)
    generated = dbmod.list_explanations(database, MODEL)
    summary_id = next(r["id"] for r in generated if r["format"] == "summary" and r["explainer"] != "gpt-4")
    dbmod.save_similarity(database, summary_id, "openai", "reference text", "minilm", 0.5)
    database["scores"].insert(
        {"explanation_id": summary_id, "simulator": "hf:tiny", "method": "all_at_once", "split": "valid",
         "score": 0.25, "status": "ok", "created_at": "x"}
    )  # fmt: skip
    database.conn.close()
    base = ["explanations", "--db", neurons_db, "--model", MODEL]
    assert main([*base, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert len(listed) == 4
    assert {e["source"] for e in listed if e["explainer"] == "gpt-4"} == {f"file:{_sha(paper)[:12]}"}
    assert {e["origin"] for e in listed if e["explainer"] == "gpt-4"} == {"paper.csv"}
    assert {e["source"][:4] for e in listed if e["explainer"] == "openai:gpt-4o-mini"} == {"run:"}
    scored = next(e for e in listed if e["id"] == summary_id)
    assert [(s["label"], s["value"]) for s in scored["scores"]] == [
        ("hf:tiny·all_at_once (valid)", 0.25), ("similarity·minilm (openai)", 0.5)
    ]  # fmt: skip
    assert scored["tokens"]["input_tokens_server"] > 0 and scored["tokens"]["output_tokens"] > 0
    assert main([*base, "--explainers", "gpt-4", "--neurons", "0:2"]) == 0
    out = capsys.readouterr().out
    assert "0:2  summary  gpt-4  file:" in out and "more paper words" in out and "scores: none" in out
    assert "1 explanation(s) in 1 set(s)" in out
    assert main(["explanations", "show", str(summary_id), "--db", neurons_db]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["id"] == summary_id and shown["status"] == "ok" and shown["arm"].startswith("summary@openai:")
    assert shown["tokens"]["input_tokens_cl100k"] > 0 and shown["tokens"]["input_tokens_server"] > 0
    assert shown["counted_by"].startswith("api:") and len(shown["scores"]) == 2
    assert main(["explanations", "show", "9999", "--db", neurons_db]) == 2
    assert capsys.readouterr().err.strip() == "error: no explanation with id 9999"


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_neuron_text_view_marks_the_peak_wraps_and_takes_layer_colon_index(neurons_db: str, capsys) -> None:
    base = ["neuron", "--db", neurons_db, "--model", MODEL]
    assert main([*base, "--neuron", "0:1", "--width", "30"]) == 0
    out = capsys.readouterr().out
    excerpts = out.split("top 0 (max", 1)[1].split("top 1 (max", 1)[0].splitlines()[1:]
    assert excerpts and all(len(line) <= 30 for line in excerpts)
    assert "".join(line.strip() for line in excerpts).count("⟦") == 1 and "⟦ cat⟧" in "".join(excerpts)
    assert main([*base, "--layer", "0", "--neuron", "1", "--width", "30"]) == 0
    assert capsys.readouterr().out == out
    assert main([*base, "--neuron", "1"]) == 2
    assert "--neuron LAYER:INDEX" in capsys.readouterr().err
    assert main([*base, "--layer", "1", "--neuron", "0:1"]) == 2
    assert "different layers" in capsys.readouterr().err


def test_a_missing_database_is_refused_by_reading_commands_and_announced_by_creating_ones(
    tmp_path: Path, capsys
) -> None:
    missing = tmp_path / "typo.db"
    for argv in (
        ["neuron", "--neuron", "0:1"],
        ["explanations"],
        ["study", "list"],
        ["study", "show", "S"],
        ["rater", "list"],
        ["score", "--simulator", "hf:x"],
    ):
        assert main([*argv, "--db", str(missing)]) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"no database at {missing}" in err, argv
        assert not missing.exists(), argv
    paper = tmp_path / "paper.csv"
    paper.write_text("layer,neuron,summary\n0,1,words\n")
    assert main(["import-explanations", str(paper), "--explainer", "gpt-4", "--db", str(missing)]) == 0
    assert f"created a new database at {missing}" in capsys.readouterr().err
    assert main(["import-explanations", str(paper), "--explainer", "gpt-4", "--db", str(missing)]) == 0
    assert "created" not in capsys.readouterr().err


def test_each_model_has_its_own_device_flag() -> None:
    argv = ["--neurons", "0:1", "--explainer", "hf:chat", "--simulator", "hf:sim", "--device", "cuda:0",
            "--explainer-device", "cpu", "--simulator-device", "cuda:1", "--simulator-dtype", "float16"]  # fmt: skip
    params = _parsed("run", *argv)
    assert params["collect_options"].device == "cuda:0"  # the subject model, when `run` collects its layers
    assert params["explain_options"].local.device == "cpu"
    simulator = params["simulator_options"].local
    assert (simulator.device, simulator.dtype) == ("cuda:1", "float16")
    assert _parsed("puzzles", "--explainer", "hf:chat", "--explainer-device", "cpu")[
        "explain_options"
    ].local.device == ("cpu")
    # One --device no longer feeds every model: the commands without a subject model do not take it.
    for command in (["simulate", "--explanation", "x", "--records", "r.json"], ["score"]):
        with pytest.raises(SystemExit) as info:
            main([*command, "--simulator", "hf:sim", "--device", "cpu"])
        assert info.value.code == 2


def _parsed(name: str, *argv: str) -> dict:
    """The parameters command `name` receives for `argv`, options objects built, without running it."""
    from core.cli import cli

    command = cli.commands[name]
    return command.make_context(name, list(argv)).params


def test_options_objects_take_their_flags_and_keep_defaults() -> None:
    from core.activations import CollectOptions
    from core.explain import ExplainOptions
    from core.llm import ApiOptions, Sampling
    from core.prompts import Cutoff, FormatOptions
    from core.scorers import ScorerOptions
    from core.simulate import SimulatorOptions

    collect = _parsed("collect", "--max-tokens", "5000", "--top-k", "7", "--device-map", "auto")["collect_options"]
    assert collect == CollectOptions(max_tokens=5000, top_k=7, device_map="auto")
    assert _parsed("run", "--neurons", "0:1", "--explainer", "e", "--simulator", "s", "--collect-tokens", "900",
                   "--max-tokens", "30")["collect_options"] == CollectOptions(max_tokens=900)  # fmt: skip
    explain = _parsed("explain", "--neurons", "0:1", "--explainer", "hf:x")["explain_options"]
    assert explain == ExplainOptions()  # the paper's settings unless flags say otherwise
    argv = ["--neurons", "0:1", "--explainer", "hf:x", "--temperature", "0", "--seed", "3", "--cutoff-mode", "relative",
            "--merge-spans", "--no-cache", "--concurrency", "2", "--timeout", "9", "--samples", "2"]  # fmt: skip
    explain = _parsed("explain", *argv)["explain_options"]
    assert explain.sampling == Sampling(temperature=0, seed=3) and explain.samples == 2 and not explain.use_cache
    assert explain.cutoff == Cutoff("relative", 0.5) and explain.format_options == FormatOptions(merge_spans=True)
    assert explain.api == ApiOptions(timeout_s=9, concurrency=2)
    assert _parsed("puzzles", "--explainer", "none")["explain_options"].cutoff is None  # the puzzles' own cutoff
    simulate = _parsed("simulate", "--explanation", "x", "--records", "r.json", "--simulator", "hf:s")
    assert simulate["simulator_options"] == SimulatorOptions()
    scoring = _parsed("score", "--simulator", "openai:s", "--simulator-concurrency", "32", "--simulator-timeout", "5")
    assert scoring["simulator_options"].api == ApiOptions(concurrency=32, timeout_s=5)
    # In `run`, --concurrency is the explainer's and --simulator-concurrency the simulator's.
    both = _parsed("run", "--neurons", "0:1", "--explainer", "e", "--simulator", "s", "--concurrency", "8",
                   "--simulator-concurrency", "16")  # fmt: skip
    assert (both["explain_options"].api.concurrency, both["simulator_options"].api.concurrency) == (8, 16)
    score = _parsed("score", "--scorer", "detection", "--activating", "4", "--activating-quantile", "0.9")
    assert score["scorer_options"] == ScorerOptions(activating_quantile=0.9, n_activating=4)
    assert _parsed("prompt", "--format", "summary", "--records", "r.json", "--distinct-lists")["format_options"] == (
        FormatOptions(distinct_lists=True)
    )


def test_neuron_selection_is_one_of_two_flags(tmp_path: Path, capsys) -> None:
    from core.records import NeuronId

    assert _parsed("score", "--neurons", "3:17,3:42")["selected_neurons"] == [NeuronId(3, 17), NeuronId(3, 42)]
    assert _parsed("score")["selected_neurons"] is None
    path = tmp_path / "neurons.csv"
    path.write_text("Layer,Neuron\n1,2\n")
    assert _parsed("score", "--neuron-file", str(path))["selected_neurons"] == [NeuronId(1, 2)]
    for argv in (["explain", "--explainer", "x"], ["score", "--neurons", "0:1", "--neuron-file", str(path)]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
    err = capsys.readouterr().err
    assert "one of --neurons, --neuron-file is required" in err and "--neuron-file cannot be used with --neurons" in err
    assert main(["score", "--neurons", "0:x"]) == 2  # a bad neuron is ours to explain, in one line
    assert capsys.readouterr().err.count("\n") == 1


def test_help_is_quick_names_the_program_and_loads_no_model_library() -> None:
    import subprocess
    import sys

    code = "import sys; from core.cli import main\ntry: main(['--help'])\nexcept SystemExit as e: assert e.code == 0\n"
    code += "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'a model library was loaded'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Usage: python -m core [OPTIONS] COMMAND" in done.stdout and "import-ratings" in done.stdout
    venv_script = Path(sys.executable).parent / "neuron-workbench"
    if venv_script.exists():
        done = subprocess.run([str(venv_script), "study", "--help"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "Usage: neuron-workbench study [OPTIONS] COMMAND" in done.stdout, done.stderr


def test_import_openai_takes_several_explanation_files_after_one_flag() -> None:
    params = _parsed("import-openai", "r.json", "--explanations", "a.jsonl", "b.csv", "--model", "m", "s.json")
    assert params["explanations"] == ("a.jsonl", "b.csv") and params["sources"] == ("r.json", "s.json")
    assert _parsed("import-openai", "--explanations")["explanations"] == ()
