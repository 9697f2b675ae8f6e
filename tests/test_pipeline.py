"""Simulate → score orchestration (core/pipeline.py), score storage (core/db.py) and the `simulate`, `score` and
`run` commands, with real SQLite, the fake OpenAI server and a tiny random chat model. Puzzles are in
test_puzzles.py."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import re
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from core import db as dbmod
from core import pipeline
from core.__main__ import main
from core.errors import InputError
from core.records import ActivationRecord, NeuronId, NeuronRecord, NeuronStats
from core.scoring import Scores
from core.simulate import SimulationResult

MODEL = "tiny-subject"
FAKE_EMBEDDER = "openai:text-embedding-3-small"
WORDS = [" the", " cat", " sat", " on", " mat", " Monday", " river", " red", " blue", ",", "."]


class Oracle:
    """A simulator handed the truth: it predicts each record's own activations."""

    name = "test:oracle"
    method = "oracle"

    def simulate(self, explanation: str, records: Sequence[ActivationRecord]) -> SimulationResult:
        return SimulationResult(self.name, self.method, tuple(tuple(r.activations) for r in records))


class Affine(Oracle):
    """The truth on another scale: perfect correlation, poor R² until calibrated."""

    name = "test:affine"

    def simulate(self, explanation: str, records: Sequence[ActivationRecord]) -> SimulationResult:
        return SimulationResult(
            self.name, self.method, tuple(tuple(0.1 * a + 4 for a in r.activations) for r in records)
        )


class Constant(Oracle):
    name = "test:constant"

    def simulate(self, explanation: str, records: Sequence[ActivationRecord]) -> SimulationResult:
        return SimulationResult(self.name, self.method, tuple((5.0,) * len(r.tokens) for r in records))


class Broken(Oracle):
    """Predicts one value too few for every record: the pipeline must refuse to score it."""

    name = "test:broken"

    def simulate(self, explanation: str, records: Sequence[ActivationRecord]) -> SimulationResult:
        return SimulationResult(self.name, self.method, tuple((1.0,) * (len(r.tokens) - 1) for r in records))


def _record(rng: random.Random, peak: float) -> ActivationRecord:
    tokens = tuple(rng.choice(WORDS) for _ in range(8))
    activations = tuple(peak if t == " cat" else rng.random() * 0.1 for t in tokens)
    return ActivationRecord(tokens, activations)


def _neuron(layer: int, index: int, seed: int) -> NeuronRecord:
    rng = random.Random(seed)
    top = tuple(sorted((_record(rng, 5.0 - i * 0.1) for i in range(20)), key=lambda r: -r.max_activation))
    randoms = tuple(_record(rng, 1.0) for _ in range(15))
    stats = NeuronStats(mean=0.1, variance=0.5, max=5.0, quantiles={0.5: 0.5, 0.9: 2.0, 0.99: 4.0, 0.999: 4.9})
    return NeuronRecord(model=MODEL, neuron=NeuronId(layer, index), top=top, random=randoms, stats=stats)


@pytest.fixture
def stored(db):
    """Two neurons with records and explanations (two formats each, one reference explanation)."""
    dbmod.write_neurons(db, MODEL, [_neuron(0, 1, seed=1), _neuron(0, 2, seed=2)], source="test")
    ids = {}
    for index in (1, 2):
        for format_name in ("original", "summary"):
            ids[(index, format_name)] = dbmod.insert_explanation(
                db,
                model=MODEL,
                layer=0,
                neuron=index,
                format=format_name,
                explainer="openai:writer",
                explanation=f"the word cat ({format_name})",
                input_tokens=100 if format_name == "original" else 40,
                output_tokens=8,
            )
    dbmod.insert_explanation(
        db, model=MODEL, layer=0, neuron=1, format="original", explainer="gpt-4", source="reference",
        explanation="mentions of the word cat",
    )  # fmt: skip
    return ids


def _score_row(db, explanation_id: int, simulator: str) -> dict:
    rows = [r for r in dbmod.score_rows(db, MODEL, simulator) if r["explanation_id"] == explanation_id]
    assert len(rows) == 1
    return rows[0]


# --- one explanation ---------------------------------------------------------------------------------------------


def test_an_oracle_scores_one_and_a_constant_scores_missing(db, stored) -> None:
    oracle = pipeline.score_explanations(db, MODEL, Oracle(), reference="none")
    assert (oracle.ok, oracle.failed, oracle.total) == (5, 0, 5)  # the reference explanation is scored too
    row = _score_row(db, stored[(1, "original")], "test:oracle")
    assert row["score"] == pytest.approx(1.0) and row["rsquared"] == pytest.approx(1.0)
    assert row["method"] == "oracle" and row["split"] == "valid" and row["calibrated"] is False
    constant = pipeline.score_explanations(db, MODEL, Constant(), reference="none")
    assert constant.ok == 5
    raw = db.conn.execute(
        "SELECT score, status FROM scores WHERE simulator = 'test:constant' AND explanation_id = ?",
        [stored[(1, "summary")]],
    ).fetchone()
    assert raw == (None, "ok")  # undefined correlation: NULL, never 0


def test_stored_predictions_and_per_excerpt_scores(db, stored) -> None:
    pipeline.score_explanations(db, MODEL, Oracle(), reference="none")
    rows = [r for r in dbmod.scores_for_neuron(db, MODEL, NeuronId(0, 2)) if r["simulator"] == "test:oracle"]
    assert {r["format"] for r in rows} == {"original", "summary"}
    valid = _neuron(0, 2, seed=2).split("valid")
    assert [len(p) for p in rows[0]["predictions"]] == [len(r.tokens) for r in valid]
    flat = [v for p in rows[0]["predictions"] for v in p]
    assert flat == pytest.approx([a for r in valid for a in r.activations], rel=1e-6)
    assert len(rows[0]["per_excerpt"]) == 10 and rows[0]["per_excerpt"][0]["index"] == 0


def test_misaligned_predictions_are_stored_as_failed_and_retried(db, stored) -> None:
    report = pipeline.score_explanations(db, MODEL, Broken(), formats=["summary"], reference="none")
    assert (report.ok, report.failed) == (0, 2) and "misaligned" in report.errors[0]
    row = db.conn.execute(
        "SELECT score, predictions, status, error FROM scores WHERE simulator = 'test:broken'"
    ).fetchone()
    assert row[0] is None and row[1] is None and row[2] == "failed" and "record 0" in row[3]
    again = pipeline.score_explanations(db, MODEL, Broken(), formats=["summary"], reference="none")
    assert (again.skipped, again.failed) == (0, 2)  # failed ones are retried, never counted as done


def test_score_resumes_and_keeps_simulators_apart(db, stored) -> None:
    first = pipeline.score_explanations(db, MODEL, Oracle(), neurons=[NeuronId(0, 1)], reference="none")
    assert (first.ok, first.skipped, first.total) == (3, 0, 3)
    second = pipeline.score_explanations(db, MODEL, Oracle(), reference="none")
    assert (second.ok, second.skipped) == (2, 3)
    pipeline.score_explanations(db, MODEL, Constant(), reference="none")
    rows = dbmod.score_rows(db, MODEL, include_unscored=False)
    assert {(r["simulator"], r["method"]) for r in rows} == {("test:oracle", "oracle"), ("test:constant", "oracle")}
    assert len(dbmod.score_rows(db, MODEL, "test:oracle", include_unscored=False)) == 5
    assert db.conn.execute("SELECT COUNT(*) FROM scores").fetchone()[0] == 10  # no duplicate rows on resume


def test_calibration_changes_rsquared_but_not_correlation(db, stored) -> None:
    pipeline.score_explanations(db, MODEL, Affine(), formats=["original"], reference="none")
    pipeline.score_explanations(db, MODEL, Affine(), formats=["original"], calibrate=True, reference="none")
    plain = _score_row_for(db, stored[(1, "original")], calibrated=False)
    calibrated = _score_row_for(db, stored[(1, "original")], calibrated=True)
    assert plain["score"] == pytest.approx(calibrated["score"]) == pytest.approx(1.0)
    assert plain["rsquared"] < 0.5 and calibrated["rsquared"] == pytest.approx(1.0)


class SplitAware(Oracle):
    """The truth times `calibration_factor` on the calibration records given, the truth itself elsewhere."""

    name = "test:split-aware"

    def __init__(self, calibration_records: Sequence[ActivationRecord], calibration_factor: float) -> None:
        self.calibration_tokens = {r.tokens for r in calibration_records}
        self.factor = calibration_factor

    def simulate(self, explanation: str, records: Sequence[ActivationRecord]) -> SimulationResult:
        predictions = tuple(
            tuple((self.factor if r.tokens in self.calibration_tokens else 1.0) * a for a in r.activations)
            for r in records
        )
        return SimulationResult(self.name, self.method, predictions)


def test_calibration_is_fitted_on_the_calibration_split_and_applied_to_the_valid_one(db, stored) -> None:
    neuron = dbmod.get_neuron(db, MODEL, NeuronId(0, 1))
    # Predicting 2·y on the calibration split fits y ≈ 0.5·EV there; on valid (EV = y) that gives R² = 1 − 0.25.
    simulator = SplitAware(neuron.split("calibration"), 2.0)
    report = pipeline.score_explanations(
        db, MODEL, simulator, neurons=[NeuronId(0, 1)], formats=["original"], calibrate=True, reference="none"
    )
    assert (report.ok, report.warnings) == (2, ())  # the generated and the reference explanation
    row = next(
        r
        for r in dbmod.score_rows(db, MODEL, simulator.name, calibrated=True, include_unscored=False)
        if r["explanation_id"] == stored[(1, "original")]
    )
    assert row["score"] == pytest.approx(1.0) and row["rsquared"] == pytest.approx(0.75)
    outcome = pipeline.simulate_and_score(simulator, "x", neuron.split("valid"), neuron.split("calibration"))
    assert outcome.calibration == (pytest.approx(0.5), pytest.approx(0.0, abs=1e-9))
    flat = [v for p in outcome.predictions for v in p]
    assert flat == pytest.approx([0.5 * a for r in neuron.split("valid") for a in r.activations])


def test_a_negative_calibration_slope_flips_the_correlation_as_openai_does(db, stored) -> None:
    neuron = dbmod.get_neuron(db, MODEL, NeuronId(0, 1))
    simulator = SplitAware(neuron.split("calibration"), -1.0)
    valid = neuron.split("valid")
    plain = pipeline.simulate_and_score(simulator, "x", valid)
    calibrated = pipeline.simulate_and_score(simulator, "x", valid, neuron.split("calibration"))
    assert calibrated.calibration[0] == pytest.approx(-1.0)
    assert plain.scores.score == pytest.approx(1.0)
    # OpenAI reports the calibrated correlation: −raw under a negative slope; the raw one is kept beside it.
    assert calibrated.scores.score == pytest.approx(-1.0) and calibrated.scores.raw_score == pytest.approx(1.0)
    assert calibrated.scores.rsquared == pytest.approx(-3.0)  # ŷ = −y: 1 − mean((2y)²)/mean(y²)
    assert [e["score"] for e in calibrated.scores.per_excerpt] == [-e["score"] for e in plain.scores.per_excerpt]
    assert [e["raw_score"] for e in calibrated.scores.per_excerpt] == [e["score"] for e in plain.scores.per_excerpt]


def test_the_flipped_score_its_raw_correlation_and_the_no_value_count_are_stored(db, stored) -> None:
    neuron = dbmod.get_neuron(db, MODEL, NeuronId(0, 1))

    class Flipping(SplitAware):
        def simulate(self, explanation: str, records: Sequence[ActivationRecord]) -> SimulationResult:
            result = super().simulate(explanation, records)
            return dataclasses.replace(result, no_value_count=3)

    simulator = Flipping(neuron.split("calibration"), -1.0)
    pipeline.score_explanations(
        db, MODEL, simulator, neurons=[NeuronId(0, 1)], formats=["original"], calibrate=True, reference="none"
    )
    rows = db.conn.execute("SELECT score, raw_score, no_value_count FROM scores WHERE calibrated = 1").fetchall()
    assert rows and all(row[0] == pytest.approx(-1.0) and row[1] == pytest.approx(1.0) and row[2] == 3 for row in rows)


def test_short_splits_are_scored_with_a_warning_and_empty_ones_fail(db) -> None:
    full = _neuron(0, 5, seed=5)
    short = NeuronRecord(MODEL, NeuronId(0, 6), full.top[:10], full.random[:5], full.stats)
    empty = NeuronRecord(MODEL, NeuronId(0, 7), full.top[:2], (), full.stats)
    dbmod.write_neurons(db, MODEL, [short, empty], source="test")
    for index in (6, 7):
        dbmod.insert_explanation(
            db, model=MODEL, layer=0, neuron=index, format="summary", explainer="openai:writer", explanation="cats"
        )
    report = pipeline.score_explanations(db, MODEL, Oracle(), reference="none")
    assert (report.ok, report.failed) == (1, 1)
    assert report.errors == ("neuron 0:7 has no records in the valid split",)
    assert report.warnings[0].startswith("neuron 0:6: the valid split holds 4 of 10 records (10 top and 5 random")
    assert "at least 20 and 15" in report.warnings[0] and list(report.to_json()["warnings"]) == [report.warnings[0]]
    calibrated = pipeline.score_explanations(db, MODEL, Oracle(), neurons=[NeuronId(0, 6)], calibrate=True)
    assert any("the calibration split holds 5 of 10" in w for w in calibrated.warnings)


def test_scores_for_explanations_never_mix_methods_of_one_simulator(db, stored) -> None:
    ids = [stored[(1, "original")], stored[(1, "summary")], stored[(2, "original")]]
    for explanation_id, method, score in [(ids[0], "chat_parse", 0.1), (ids[1], "chat_parse", 0.2)]:
        dbmod.save_score(db, explanation_id, "openai:m", method, "valid", False, Scores(score, 0, 0, ()), None, "ok")
    dbmod.save_score(db, ids[2], "openai:m", "chat_logprobs", "valid", False, Scores(0.9, 0, 0, ()), None, "ok")
    assert dbmod.scores_for_explanations(db, ids) == ("openai:m", {ids[0]: 0.1, ids[1]: 0.2})
    assert dbmod.scores_for_explanations(db, ids, "openai:m", "chat_logprobs") == ("openai:m", {ids[2]: 0.9})
    assert dbmod.scores_for_explanations(db, ids, "openai:other") == ("openai:other", {})


def _score_row_for(db, explanation_id: int, calibrated: bool) -> dict:
    rows = dbmod.score_rows(db, MODEL, "test:affine", calibrated=calibrated, include_unscored=False)
    return next(r for r in rows if r["explanation_id"] == explanation_id)


def test_similarity_to_the_reference_explanation(db, stored, openai_env) -> None:
    report = pipeline.score_explanations(db, MODEL, Oracle(), embedder=FAKE_EMBEDDER)
    assert report.similarities == 2  # neuron 0:1 has a reference; its two generated explanations are compared
    rows = {r["explanation_id"]: r for r in dbmod.score_rows(db, MODEL, "test:oracle", reference_kind="openai")}
    assert 0 < rows[stored[(1, "original")]]["similarity"] <= 1
    assert rows[stored[(2, "original")]]["similarity"] is None
    assert pipeline.score_explanations(db, MODEL, Oracle(), embedder=FAKE_EMBEDDER).similarities == 0  # resumed


def test_save_score_turns_nan_into_null(db, stored) -> None:
    scores = Scores(score=math.nan, rsquared=0.5, absdev=math.inf, per_excerpt=({"index": 0, "score": math.nan},))
    explanation_id = stored[(2, "summary")]
    dbmod.save_score(db, explanation_id, "s", "m", "valid", False, scores, [[1.0, math.nan]], "ok", None, 0.1)
    dbmod.save_score(db, explanation_id, "s", "m", "valid", False, scores, [[2.0, math.nan]], "ok", None, 0.2)
    row = db.conn.execute("SELECT score, rsquared, absdev, per_excerpt, predictions, seconds FROM scores").fetchone()
    assert row[:3] == (None, 0.5, None) and json.loads(row[3]) == [{"index": 0, "score": None}]
    assert json.loads(row[4]) == [[2.0, None]] and row[5] == 0.2  # the second save replaced the first
    dbmod.save_similarity(db, explanation_id, "openai", "ref", "minilm", math.nan)
    assert db.conn.execute("SELECT cosine FROM similarities").fetchone() == (None,)


def test_simulate_text_reports_a_failure_with_its_reason() -> None:
    records = [ActivationRecord((" a", " b"), (0.0, 1.0))]
    assert pipeline.simulate_text("x", records, Oracle()).score == pytest.approx(1.0)
    failed = pipeline.simulate_text("x", records, Broken())
    assert failed.status == "failed" and failed.predictions is None and failed.score is None
    assert "misaligned" in failed.error and failed.to_json()["error"] == failed.error
    with pytest.raises(InputError):
        pipeline.simulate_text("x", [], Oracle())


# --- the commands, end to end --------------------------------------------------------------------------------------


def test_simulate_command_with_a_local_model(tiny_chat_model: Path, tmp_path: Path, capsys) -> None:
    records = {"records": [{"tokens": [" the", " cat", "\n", "日本"], "activations": [0, 3.5, 0, 1]}]}
    path = tmp_path / "records.json"
    path.write_text(json.dumps(records))
    code = main(
        ["simulate", "--explanation", "cats", "--records", str(path), "--simulator", f"hf:{tiny_chat_model}", "--json"]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["status"] == "ok" and out["method"] == "all_at_once"
    assert [len(p) for p in out["predictions"]] == [4] and all(0 <= v <= 10 for v in out["predictions"][0])
    assert {"score", "rsquared", "absdev"} <= set(out) and out["calibrated"] is False
    text_args = ["simulate", "--explanation", "cats", "--records", str(path), "--simulator", f"hf:{tiny_chat_model}"]
    assert main(text_args) == 0
    text = capsys.readouterr().out
    assert "R² " in text and text.count("(uncalibrated)") == 2 and "score --calibrate" in text


def test_loading_a_model_prints_no_progress_bar(tiny_chat_model: Path, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    path = tmp_path / "records.json"
    path.write_text(json.dumps({"records": [{"tokens": [" the", " cat"], "activations": [0, 3.5]}]}))
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    argv = [sys.executable, "-m", "core", "simulate", "--explanation", "cats", "--records", str(path),
            "--simulator", f"hf:{tiny_chat_model}", "--simulator-device", "cpu"]  # fmt: skip
    repo_root = Path(__file__).resolve().parent.parent
    done = subprocess.run(argv, cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Loading weights" not in done.stderr and "%|" not in done.stderr
    assert done.stdout.startswith("score ")


def test_simulate_command_reports_a_garbled_chat_answer(openai_env, tmp_path: Path, capsys) -> None:
    openai_env.chat_handler = lambda request: "no idea"
    path = tmp_path / "records.json"
    path.write_text(json.dumps({"records": [{"tokens": [" a"], "activations": [1.0]}]}))
    args = [
        "simulate",
        "--explanation",
        "x",
        "--records",
        str(path),
        "--simulator",
        "openai:m",
        "--method",
        "chat_parse",
    ]
    assert main(args) == 1
    assert "simulation failed" in capsys.readouterr().err


def test_score_command_with_a_local_simulator(db_path: Path, db, stored, tiny_chat_model: Path, capsys) -> None:
    args = ["score", "--db", str(db_path), "--model", MODEL, "--simulator", f"hf:{tiny_chat_model}"]
    assert main([*args, "--formats", "summary", "--reference", "none", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["ok"], report["method"], report["total"]) == (2, "all_at_once", 2)
    # The per-format table, per explanation set, as `run --json` prints it.
    (table,) = report["tables"]
    assert (table["simulator"], table["method"]) == (f"hf:{tiny_chat_model}", "all_at_once")
    assert {"explainer", "source", "origin", "differences"} <= set(table)
    assert [(row["format"], row["n"]) for row in table["summary"]] == [("summary", 2)]
    assert main([*args, "--reference", "none"]) == 0
    assert "2 already scored" in capsys.readouterr().out


def test_run_end_to_end_explains_scores_and_summarises(
    db_path: Path, db, tiny_chat_model: Path, openai_env, capsys
) -> None:
    dbmod.write_neurons(db, MODEL, [_neuron(0, index, seed=index) for index in range(1, 4)], source="test")
    dbmod.insert_explanation(
        db, model=MODEL, layer=0, neuron=1, format="original", explainer="gpt-4", source="reference",
        explanation="the word cat",
    )  # fmt: skip
    args = [
        "run", "--db", str(db_path), "--model", MODEL, "--neurons", "0:1,0:2,0:3", "--formats", "original,summary",
        "--explainer", "openai:gpt-4o-mini", "--simulator", f"hf:{tiny_chat_model}", "--embedder", FAKE_EMBEDDER,
    ]  # fmt: skip
    assert main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["explain"]["ok"] == 6 and report["score"]["ok"] == 6 and report["collected_layers"] == []
    summary = {row["format"]: row for row in report["summary"]}
    assert list(summary) == ["original", "summary"] and summary["original"]["n"] == 3
    assert summary["original"]["mean_input_tokens_server"] > summary["summary"]["mean_input_tokens_server"]
    assert summary["original"]["n_similarity"] == 1  # only neuron 0:1 has a reference explanation
    assert report["differences"][0]["format"] == "summary" and report["differences"][0]["baseline"] == "original"
    assert report["differences"][0]["n"] == 3
    # A rerun does no new work and prints the table.
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "mean_score" in out and "paired difference" in out and f"hf:{tiny_chat_model}" in out
    counts = db.conn.execute("SELECT COUNT(*) FROM explanations WHERE source = 'generated'").fetchone()
    assert counts == (6,) and db.conn.execute("SELECT COUNT(*) FROM scores").fetchone() == (6,)


def test_run_collects_missing_layers_of_a_subject_model(db, tmp_path: Path, openai_env) -> None:
    from core.activations import CollectOptions
    from tests import tiny_models

    subject = tiny_models.build("gpt2", tmp_path / "gpt2")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(tiny_models.TEXT * 4)
    neurons = [NeuronId(1, 3), NeuronId(1, 7)]
    options = CollectOptions(max_tokens=1600, excerpt_len=16, top_k=20, random_k=15, batch_size=16)
    report = pipeline.run_pipeline(
        db, str(subject), neurons, ["original", "highlight"], "openai:gpt-4o-mini", Oracle(),
        corpus=str(corpus), collect_options=options, reference="none",
    )  # fmt: skip
    assert report.collected_layers == (1,) and report.explain.ok == 4 and report.score.ok == 4
    summary = report.summary.set_index("format")
    assert summary.loc["original", "n"] == 2 and summary.loc["original", "mean_score"] == pytest.approx(1.0)
    again = pipeline.run_pipeline(
        db, str(subject), neurons, ["original", "highlight"], "openai:gpt-4o-mini", Oracle(),
        corpus=str(corpus), collect_options=options, reference="none",
    )  # fmt: skip
    assert again.collected_layers == () and again.explain.skipped == 4 and again.score.skipped == 4
    with pytest.raises(InputError, match="not in model"):
        pipeline.run_pipeline(
            db, str(subject), [NeuronId(1, 10_000)], ["original"], "openai:gpt-4o-mini", Oracle(),
            corpus=str(corpus), collect_options=options, reference="none",
        )  # fmt: skip


# --- the other scorers next to simulation (core/scorers, docs/METHOD.md §10) ---------------------------------------


def test_neurons_without_the_scorers_excerpts_are_scored_by_simulation_only(db_path: Path, db, stored, capsys) -> None:
    from core.db.scores import scorer_score_rows
    from core.scorers import get_scorer

    report = pipeline.score_explanations(db, MODEL, Oracle(), reference="none")
    assert report.ok == 5  # the reference explanation too
    rows = scorer_score_rows(db, report.explanation_ids)
    assert {(row["scorer"], row["model"], row["method"]) for row in rows} == {("simulation", "test:oracle", "oracle")}
    embedding = pipeline.score_with_scorer(db, MODEL, get_scorer("embedding"))
    assert (embedding.ok, embedding.failed, embedding.no_excerpts) == (0, 0, ("0:1", "0:2"))
    (warning,) = embedding.warnings
    assert "layer 0 of tiny-subject was collected without the scorers' excerpts" in warning and "--replace" in warning
    assert main(["score", "--db", str(db_path), "--model", MODEL, "--scorer", "embedding", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["no_excerpts"] == ["0:1", "0:2"] and "only simulation" in captured.err
    assert main(["score", "--db", str(db_path), "--model", MODEL]) == 2
    assert "needs --simulator" in capsys.readouterr().err


def _answer_with_token_lengths(request: dict) -> str:
    """A chat simulation answer: every `token<TAB>unknown` line of the target excerpt back with a value."""
    from core import simulate

    content = request["messages"][-1]["content"]
    excerpt = content[content.index(simulate.START) :]
    return re.sub(
        rf"^(.*)\t{simulate.UNKNOWN}$", lambda m: f"{m.group(1)}\t{len(m.group(1)) % 11}", excerpt, flags=re.M
    )


def test_an_api_simulator_scores_explanations_at_once_within_its_concurrency(db, stored, openai_env) -> None:
    """With --concurrency C, requests of different explanations overlap (more than one explanation's records are in
    flight at once) but never more than C; the stored scores are those of one explanation at a time."""
    from core.llm import ApiOptions
    from core.simulate import SimulatorOptions

    in_flight, peak, latency, lock = [0], [0], [0.1], threading.Lock()

    def counted(request: dict) -> str:
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        try:
            time.sleep(latency[0])
            return _answer_with_token_lengths(request)
        finally:
            with lock:
                in_flight[0] -= 1

    openai_env.chat_handler = counted
    per_explanation = len(dbmod.get_neuron(db, MODEL, NeuronId(0, 1)).split("valid"))
    concurrency = 2 * per_explanation  # a peak above one explanation's records comes only from overlapping ones
    options = SimulatorOptions(api=ApiOptions(concurrency=concurrency))
    report = pipeline.score_explanations(
        db, MODEL, "openai:sim", method="chat_parse", simulator_options=options, reference="none"
    )
    assert (report.ok, report.failed) == (len(stored) + 1, 0)  # and the reference explanation
    assert per_explanation < peak[0] <= concurrency
    # The same scores, one request at a time, under another simulator name so that nothing is skipped.
    peak[0], latency[0] = 0, 0.005
    one = SimulatorOptions(api=ApiOptions(concurrency=1))
    pipeline.score_explanations(
        db, MODEL, "openai:sim-serial", method="chat_parse", simulator_options=one, reference="none"
    )
    assert peak[0] == 1
    for explanation_id in stored.values():
        parallel = _score_row(db, explanation_id, "openai:sim")["score"]
        serial = _score_row(db, explanation_id, "openai:sim-serial")["score"]
        assert parallel == pytest.approx(serial) and parallel is not None


def test_simulation_scores_record_the_tokens_the_server_counted(db, stored, openai_env) -> None:
    """Each score stores its simulator's tokens as the server's usage counted them, summed over the explanation's
    requests; a server that reports no usage leaves them unknown, never 0."""
    from tests.fake_openai import fake_completion_tokens, fake_prompt_tokens

    openai_env.chat_handler = _answer_with_token_lengths
    pipeline.score_explanations(db, MODEL, "openai:sim", method="chat_parse", reference="none")
    chats = [body for route, body in openai_env.calls if route == "/v1/chat/completions"]
    rows = [r for r in dbmod.score_rows(db, MODEL, "openai:sim") if r["status"] == "ok"]
    assert len(rows) == len(stored) + 1
    assert sum(r["scorer_input_tokens"] for r in rows) == sum(fake_prompt_tokens(b["messages"]) for b in chats)
    answers = [_answer_with_token_lengths(body) for body in chats]
    assert sum(r["scorer_output_tokens"] for r in rows) == sum(fake_completion_tokens(a) for a in answers)
    openai_env.chat_usage = False
    pipeline.score_explanations(db, MODEL, "openai:quiet", method="chat_parse", reference="none")
    quiet = dbmod.score_rows(db, MODEL, "openai:quiet")
    assert quiet and all(r["scorer_input_tokens"] is None and r["scorer_output_tokens"] is None for r in quiet)


def test_the_score_command_prints_what_explaining_and_scoring_cost(
    db_path: Path, db, stored, openai_env, tmp_path: Path, monkeypatch, capsys
) -> None:
    """`score` ends with the cost per explanation and format: the simulator's recorded tokens added to the
    explainer's, in dollars from the price list."""
    from core import config

    monkeypatch.setenv(config.ENV_PRICES, str(tmp_path / "prices.toml"))
    (tmp_path / "prices.toml").write_text(
        "[models.writer]\ninput_per_million = 10\noutput_per_million = 20\n"
        "[models.judge]\ninput_per_million = 1\noutput_per_million = 2\n"
    )
    openai_env.chat_handler = _answer_with_token_lengths
    args = ["score", "--db", str(db_path), "--model", MODEL, "--simulator", "openai:judge", "--method", "chat_parse"]
    assert main([*args, "--formats", "summary", "--reference", "none"]) == 0
    out = capsys.readouterr().out
    assert f"dollars from {tmp_path / 'prices.toml'}" in out
    rows = [r for r in dbmod.score_rows(db, MODEL, "openai:judge") if r["format"] == "summary"]
    assert len(rows) == 2 and all(r["scorer_input_tokens"] for r in rows)
    dollars = [
        (r["input_tokens"] * 10 + r["output_tokens"] * 20 + r["scorer_input_tokens"] + 2 * r["scorer_output_tokens"])
        / 1e6
        for r in rows
    ]
    line = [line for line in out.splitlines() if line.startswith("summary")][-1]  # the cost table comes last
    assert f"${sum(dollars) / 2:.6f}" in line, (line, dollars)
    # Two neurons, one summary explanation each: the cost per neuron is their total over 2.
    assert f"in all ${sum(dollars):.4f} for 2 neuron(s): ${sum(dollars) / 2:.6f} per neuron" in out
