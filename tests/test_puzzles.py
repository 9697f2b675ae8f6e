"""Neuron puzzles: our own file, the reference file by path, malformed files, the two reports, and running them
(explain, store, score) through the library and the `puzzles` command (docs/METHOD.md §4)."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pytest

from core import db as dbmod
from core import puzzles, similarity
from core.__main__ import main
from core.cli.output import format_puzzle_report
from core.errors import InputError
from core.puzzles import load_puzzles, puzzle_model_name, run_puzzles
from core.records import ActivationRecord
from core.simulate import SimulationResult

FAKE_EMBEDDER = "openai:text-embedding-3-small"


@pytest.fixture(scope="module")
def ours() -> list[puzzles.Puzzle]:
    return puzzles.load_puzzles()


def test_our_puzzles_load_with_three_decoys_each(ours):
    assert len(ours) >= 12
    assert len({p.name for p in ours}) == len(ours)
    for puzzle in ours:
        assert len(puzzle.decoys) == 3, puzzle.name
        assert puzzle.explanation not in puzzle.decoys
        assert puzzle.candidates == (puzzle.explanation, *puzzle.decoys)
        assert len(puzzle.records) >= 5, puzzle.name
        values = [a for r in puzzle.records for a in r.activations]
        assert all(0 <= a <= 10 for a in values)
        assert max(values) == 10, puzzle.name
        # Each puzzle has sentences where nothing fires, so a decoy that fires there is caught out.
        assert any(r.max_activation == 0 for r in puzzle.records), puzzle.name
        # GPT-2 style tokens: words after the first carry their leading space.
        assert any(t.startswith(" ") for r in puzzle.records for t in r.tokens)


def test_our_puzzles_are_not_the_reference_puzzles(ours, reference_dir):
    reference = puzzles.load_puzzles(reference_dir / "openai_puzzles.json")
    reference_texts = {p.explanation for p in reference} | {d for p in reference for d in p.decoys}
    reference_sentences = {r.tokens for p in reference for r in p.records}
    for puzzle in ours:
        assert not set(puzzle.candidates) & reference_texts, puzzle.name
        assert not {r.tokens for r in puzzle.records} & reference_sentences, puzzle.name


def test_reference_puzzles_load_by_path(reference_dir):
    reference = puzzles.load_puzzles(reference_dir / "openai_puzzles.json")
    assert len(reference) == 19
    for puzzle in reference:
        assert len(puzzle.decoys) in (3, 4)
        assert any(a > 0 for r in puzzle.records for a in r.activations)


def _write(tmp_path, data) -> str:
    path = tmp_path / "puzzles.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def _good() -> dict:
    return {
        "name": "digits",
        "explanation": "numbers written as digits",
        "false_explanations": ["punctuation", "the word and", "dates"],
        "sentences": [["I", " have", [" 3", 10], " cats", "."], ["None", " here", "."]],
    }


def test_a_small_file_in_either_layout_loads(tmp_path):
    (from_mapping,) = puzzles.load_puzzles(_write(tmp_path, {"digits": _good()}))
    (from_list,) = puzzles.load_puzzles(_write(tmp_path, [_good()]))
    assert from_mapping == from_list
    assert from_mapping.records[0].tokens == ("I", " have", " 3", " cats", ".")
    assert from_mapping.records[0].activations == (0.0, 0.0, 10.0, 0.0, 0.0)
    assert from_mapping.decoys == ("punctuation", "the word and", "dates")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"explanation": ""}, r"puzzle 'digits'\.explanation: expected a non-empty string"),
        ({"false_explanations": []}, r"puzzle 'digits'\.false_explanations: expected a non-empty list"),
        ({"false_explanations": ["ok", 3]}, r"puzzle 'digits'\.false_explanations\[1\]"),
        ({"false_explanations": ["numbers written as digits"]}, "also listed as a decoy"),
        ({"sentences": "I have 3 cats"}, r"puzzle 'digits'\.sentences: expected a non-empty list"),
        ({"sentences": [["a", [" b", "high"]]]}, r"puzzle 'digits'\.sentences\[0\]\[1\]: a token is a string or"),
        ({"sentences": [["a", [" b"]]]}, r"sentences\[0\]\[1\]"),
        ({"sentences": [["a", [" b", True]]]}, r"sentences\[0\]\[1\]"),
        ({"sentences": [[]]}, r"puzzle 'digits'\.sentences\[0\]: expected a non-empty list of tokens"),
        ({"name": 7}, r"'digits'\.name: expected a non-empty string"),
    ],
)
def test_malformed_puzzles_name_the_puzzle_and_field(tmp_path, change, message):
    with pytest.raises(InputError, match=message):
        puzzles.load_puzzles(_write(tmp_path, {"digits": {**_good(), **change}}))


def test_malformed_files(tmp_path):
    with pytest.raises(InputError, match="not valid JSON"):
        puzzles.load_puzzles(_write(tmp_path, '{"digits": '))
    with pytest.raises(InputError, match="does not exist"):
        puzzles.load_puzzles(tmp_path / "missing.json")
    with pytest.raises(InputError, match="holds no puzzles"):
        puzzles.load_puzzles(_write(tmp_path, {}))
    with pytest.raises(InputError, match="expected an object mapping puzzle names"):
        puzzles.load_puzzles(_write(tmp_path, '"digits"'))
    with pytest.raises(InputError, match="key 'numbers' holds a puzzle named 'digits'"):
        puzzles.load_puzzles(_write(tmp_path, {"numbers": _good()}))
    with pytest.raises(InputError, match="'digits' appears twice"):
        puzzles.load_puzzles(_write(tmp_path, [_good(), _good()]))


# --- reports -----------------------------------------------------------------------------------------------------


TRUTHS = {"colours": "colour words", "digits": "numbers written as digits", "caps": "capitalised words"}


def test_simulator_sanity_counts_strict_truth_wins():
    scores = {
        "colours": {"colour words": 0.8, "fruit": 0.3, "nouns": None},  # a None decoy never wins
        "digits": {"numbers written as digits": 0.4, "dates": 0.4, "years": 0.1},  # a tie is not a win
        "caps": {"capitalised words": None, "names": 0.1, "acronyms": float("nan")},  # a None truth never wins
    }
    result = puzzles.simulator_sanity(scores, TRUTHS)
    assert (result["n"], result["truth_wins"]) == (3, 1)
    assert result["rate"] == pytest.approx(1 / 3)
    colours, digits, caps = (result["per_puzzle"][name] for name in ("colours", "digits", "caps"))
    assert colours == {"truth_score": 0.8, "best_decoy": "fruit", "best_decoy_score": 0.3, "truth_wins": True}
    assert digits["truth_wins"] is False and digits["best_decoy"] == "dates"
    assert caps == {"truth_score": None, "best_decoy": "names", "best_decoy_score": 0.1, "truth_wins": False}


def test_simulator_sanity_truth_wins_when_every_decoy_is_undefined():
    result = puzzles.simulator_sanity({"caps": {"capitalised words": -0.2, "names": None}}, TRUTHS)
    assert result["truth_wins"] == 1
    assert result["per_puzzle"]["caps"]["best_decoy"] is None
    assert puzzles.simulator_sanity({}, TRUTHS) == {"n": 0, "truth_wins": 0, "rate": None, "per_puzzle": {}}


def test_simulator_sanity_errors():
    with pytest.raises(InputError, match="'shapes', which has no true explanation"):
        puzzles.simulator_sanity({"shapes": {"a": 1.0}}, TRUTHS)
    with pytest.raises(InputError, match="true explanation 'colour words' was not scored"):
        puzzles.simulator_sanity({"colours": {"fruit": 0.2}}, TRUTHS)
    with pytest.raises(InputError, match="no decoy was scored"):
        puzzles.simulator_sanity({"colours": {"colour words": 0.2}}, TRUTHS)


def test_explainer_report_means_per_explainer_and_format():
    rows = [
        {"explainer": "openai:a", "format": "summary", "puzzle": "digits", "similarity": 0.9},
        {"explainer": "openai:a", "format": "summary", "puzzle": "caps", "similarity": 0.7},
        {"explainer": "openai:a", "format": "original", "puzzle": "caps", "similarity": None},
        {"explainer": "hf:b", "format": "summary", "puzzle": "caps", "similarity": 0.5},
    ]
    report = puzzles.explainer_report(rows)
    assert list(report.columns) == ["explainer", "format", "n", "mean_similarity"]
    by_key = {(r.explainer, r.format): (r.n, r.mean_similarity) for r in report.itertuples()}
    assert by_key[("openai:a", "summary")] == (2, pytest.approx(0.8))
    assert by_key[("openai:a", "original")][0] == 0
    assert math.isnan(by_key[("openai:a", "original")][1])
    assert by_key[("hf:b", "summary")] == (1, pytest.approx(0.5))
    assert puzzles.explainer_report(pd.DataFrame(rows)).equals(report)
    assert puzzles.explainer_report([]).empty
    with pytest.raises(InputError, match="similarity"):
        puzzles.explainer_report([{"explainer": "x", "format": "y"}])


def test_explainer_report_from_real_similarities(ours):
    """An explainer that paraphrases the truth beats one that writes the decoys, under the local embedder."""
    by_name = {p.name: p for p in ours}
    chosen = ["animals", "weekdays", "fruit", "body_parts"]
    paraphrases = {
        "animals": "animal names like dog or fox",
        "weekdays": "names of days such as Monday or Friday",
        "fruit": "fruits, for example apples and bananas",
        "body_parts": "words for parts of the body like hand or knee",
    }
    generated = [("close", name, paraphrases[name]) for name in chosen]
    generated += [("decoy", name, by_name[name].decoys[0]) for name in chosen]
    pairs = puzzles.truth_pairs(ours, [(name, text) for _, name, text in generated])
    values = similarity.similarities(pairs, "minilm")
    rows = [
        {"explainer": explainer, "format": "summary", "similarity": value}
        for (explainer, _, _), value in zip(generated, values, strict=True)
    ]
    report = puzzles.explainer_report(rows).set_index("explainer")
    assert report.loc["close", "n"] == report.loc["decoy", "n"] == 4
    assert report.loc["close", "mean_similarity"] > report.loc["decoy", "mean_similarity"] + 0.1
    assert all(math.isfinite(v) for v in values)
    with pytest.raises(InputError, match="no puzzle named 'shapes'"):
        puzzles.truth_pairs(ours, [("shapes", "triangles")])


# --- running puzzles: explain, store, score ----------------------------------------------------------------------


class TruthSeer:
    """Predicts the true activations for a puzzle's true explanation and noise for any other text."""

    name = "test:truth-seer"
    method = "oracle"

    def __init__(self, truths: dict[str, tuple[ActivationRecord, ...]]) -> None:
        self.truths = truths  # true explanation → its puzzle's records (one puzzle's truth is another's decoy)

    def simulate(self, explanation: str, records: Sequence[ActivationRecord]) -> SimulationResult:
        if self.truths.get(explanation) == tuple(records):
            return SimulationResult(self.name, self.method, tuple(tuple(r.activations) for r in records))
        rng = random.Random(explanation)
        return SimulationResult(self.name, self.method, tuple(tuple(rng.random() for _ in r.tokens) for r in records))


def test_puzzles_report_similarity_per_format_and_simulator_sanity(db, openai_env) -> None:
    puzzles = load_puzzles()
    simulator = TruthSeer({p.explanation: p.records for p in puzzles})
    report = run_puzzles(db, "openai:gpt-4o-mini", ["summary", "highlight"], simulator, embedder=FAKE_EMBEDDER)
    assert report.sanity["n"] == len(puzzles) and report.sanity["rate"] == 1.0
    table = report.explainers.set_index("format")
    assert set(table.index) == {"summary", "highlight"} and (table["n"] == len(puzzles)).all()
    assert ((table["mean_similarity"] > -1) & (table["mean_similarity"] <= 1)).all()
    stored = dbmod.list_explanations(db, puzzle_model_name(None))
    assert len(stored) == 2 * len(puzzles) and {r["source"] for r in stored} == {"puzzle"}
    # The puzzles are not a model: not in the Home counts, the model pickers or the search.
    assert dbmod.list_models(db) == [] and dbmod.list_models(db, include_puzzles=True) == ["puzzles:bundled"]
    summary = dbmod.summary(db)
    assert summary["models"] == {} and summary["counts"]["neurons"] == summary["counts"]["explanations"] == 0
    assert dbmod.search_explanations(db, stored[0]["explanation"][:6]) == []
    assert dbmod.explanation_costs(db) == []
    requests = len(openai_env.requests)
    again = run_puzzles(db, "openai:gpt-4o-mini", ["summary", "highlight"], None, embedder=FAKE_EMBEDDER)
    assert len(openai_env.requests) == requests and not again.sanity  # resumed: no new explanations or embeddings
    text = format_puzzle_report(report)
    assert "similarity" in text and "out-scores" in text


def test_puzzles_command_simulator_only(db_path: Path, tiny_chat_model: Path, tmp_path: Path, capsys) -> None:
    puzzles = {
        "cats": {
            "name": "cats",
            "explanation": "the word cat",
            "false_explanations": ["rivers", "the color red"],
            "sentences": [[" the", [" cat", 9], " sat"], [" a", " red", [" cat", 10]]],
        }
    }
    path = tmp_path / "puzzles.json"
    path.write_text(json.dumps(puzzles))
    args = ["puzzles", "--db", str(db_path), "--explainer", "none", "--simulator", f"hf:{tiny_chat_model}"]
    assert main([*args, "--puzzles", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["sanity"]["n"] == 1 and report["explainers"] == [] and report["method"] == "all_at_once"
    assert set(report["sanity"]["per_puzzle"]["cats"]) >= {"truth_score", "best_decoy", "truth_wins"}
    assert main(["puzzles", "--db", str(db_path), "--explainer", "none"]) == 2
    assert "give --simulator" in capsys.readouterr().err
