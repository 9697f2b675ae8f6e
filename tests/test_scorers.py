"""The detection, fuzzing and embedding scorers (core/scorers, docs/METHOD.md §10) end to end: detection and fuzzing
against the local fake OpenAI server (its logprobs answers appended in tests/fake_openai.py), with malformed lists
and missing logprobs; embedding on the real bundled MiniLM; the `score --scorer` command and what it stores."""

from __future__ import annotations

import collections
import json
import math
import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from core import db as dbmod
from core import pipeline, tokens
from core.__main__ import main
from core.activations import CollectOptions, collect
from core.db.scores import scorer_score_rows
from core.llm import ApiOptions, LocalModelOptions
from core.models import DEFAULT_MODEL_NAME
from core.records import NeuronId, NeuronRecord
from core.scorers import ScorerOptions, auroc, balanced_accuracy, get_scorer
from core.scorers.classifier import (
    AnswerUnreadable,
    build_messages,
    excerpt_text,
    load_prompt,
    parse_answer,
    probabilities,
)
from core.simulate import SimulatorOptions
from tests import tiny_models
from tests.fake_openai import TEST_API_KEY, LogprobsFakeOpenAIServer, chat_logprobs_content

OPTIONS = CollectOptions(max_tokens=1600, excerpt_len=16, top_k=20, random_k=15, batch_size=7, seed=3)
SCORING = ScorerOptions(activating_quantile=0.9, n_activating=6, n_non_activating=6)
SCORER_FLAGS = ["--activating-quantile", "0.9", "--activating", "6", "--non-activating", "6"]
LAYER = 2
# A server that is never asked: scorers built only to show their excerpts and prompts (no key needed, it is not OpenAI).
UNUSED = SimulatorOptions(api=ApiOptions(base_url="http://127.0.0.1:9/v1"))
NEURONS = [NeuronId(LAYER, i) for i in range(3)]


# --- Fixtures: a tiny collected model with explanations, a fake server with logprobs ----------------------------------


@pytest.fixture(scope="module")
def collected(tmp_path_factory) -> tuple[str, Path]:
    """A tiny GPT-2 collected (layer 2, with the scorers' excerpts) into a database file; tests copy the file."""
    folder = tmp_path_factory.mktemp("scorers")
    model = tiny_models.build("gpt2", folder / "gpt2")
    corpus = folder / "corpus.txt"
    corpus.write_text(tiny_models.TEXT * 4)
    path = folder / "collected.db"
    database = dbmod.connect(path)
    collect(database, str(model), [LAYER], str(corpus), OPTIONS)
    for neuron in NEURONS:
        for fmt, text in (("summary", "water and rivers"), ("original", "numbers and dates")):
            dbmod.insert_explanation(database, model=str(model), layer=neuron.layer, neuron=neuron.index, format=fmt,
                                     explainer="openai:x", explanation=text, status="ok")  # fmt: skip
    database.conn.close()
    return str(model), path


@pytest.fixture
def scored_db(collected, tmp_path: Path) -> tuple[str, Path, Any]:
    model, path = collected
    copy = tmp_path / "scores.db"
    shutil.copy(path, copy)
    database = dbmod.connect(copy)
    yield model, copy, database
    database.conn.close()


@pytest.fixture
def logprob_server(monkeypatch: pytest.MonkeyPatch):
    from core import config

    with LogprobsFakeOpenAIServer() as server:
        monkeypatch.setenv(config.ENV_API_BASE, server.base_url)
        monkeypatch.setenv(config.ENV_API_KEY, TEST_API_KEY)
        yield server


def excerpt_lines(request: dict[str, Any]) -> list[str]:
    """The excerpts of the target batch, as shown: the last user message's `Excerpt k: …` lines."""
    user = [m for m in request["messages"] if m["role"] == "user"][-1]["content"]
    return re.findall(r"^Excerpt \d+: (.*)$", user, re.MULTILINE)


def truthful(scorer, records: list[NeuronRecord]):
    """A chat handler that knows the labels of every batch these neurons' scoring shows: it answers correctly. (A
    batch, not an excerpt, is the key: one excerpt can be activating for one neuron and not for another.)"""
    labels = {}
    for record in records:
        excerpts = scorer.excerpts(record)
        for indices, _ in scorer.messages("any", record):
            labels[tuple(excerpt_text(excerpts[i]) for i in indices)] = [excerpts[i].label for i in indices]

    def answer(request: dict[str, Any]) -> str:
        return "[" + ", ".join(map(str, labels[tuple(excerpt_lines(request))])) + "]"

    return answer


# --- Reading answers (pure) -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        "[1, 0, 1]",
        "```json\n[1,0,1]\n```",
        '["1", "0", "1"]',
        "[true, false, true]",
        "Sure! Here is my answer: [0, 1] was a draft; final: [1, 0, 1]",
        "Excerpt 1: 1\nExcerpt 2: no\nExcerpt 3: yes",
        "1) 1\n2) 0\n3) 1",
        "Excerpt 0: 1\nExcerpt 1: 0\nExcerpt 2: 1",  # numbered from 0
        "1 0 1",
        "101",
    ],
)
def test_answers_in_many_shapes_are_read(answer: str) -> None:
    parsed = parse_answer(answer, 3)
    assert [p.value for p in parsed] == [1, 0, 1]
    assert all(answer[p.start].lower() in "01tfyn" for p in parsed)


@pytest.mark.parametrize("answer", ["", "I cannot tell.", "[1, 0", "[1, 0]", "[1, 0, 1, 1]", "1 0", "2, 0, 1", None])
def test_answers_that_do_not_hold_one_value_per_excerpt_are_refused(answer) -> None:
    with pytest.raises(AnswerUnreadable):
        parse_answer(answer, 3)


@pytest.mark.parametrize(
    "answer",
    ["Excerpt 1: 1\nExcerpt 2: 0\nExcerpt 3: 1", "1: 1, 2: 0, 3: 0", "[Excerpt 1: 1, Excerpt 2: 0, Excerpt 3: 1]",
     "Excerpt 1: yes\nExcerpt 2: no\nExcerpt 4: no"],
)  # fmt: skip
def test_numbered_answers_a_line_short_are_refused_not_shifted(answer: str) -> None:
    # The excerpt number "1" once passed for a value: three answers and the label made four, each answer read as
    # the excerpt before its own.
    with pytest.raises(AnswerUnreadable, match="does not hold one 0 or 1 for each of the 4 excerpts"):
        parse_answer(answer, 4)


def test_probabilities_come_from_the_top_logprobs_of_each_value() -> None:
    answer = "[1, 0, 1]"
    parsed = parse_answer(answer, 3)
    chance = probabilities(answer, chat_logprobs_content(answer, confidence=0.8), parsed)
    assert chance == pytest.approx([0.8, 0.2, 0.8])
    assert probabilities(answer, None, parsed) == [None, None, None]
    wrong_text = chat_logprobs_content("[0, 0, 1]")
    assert probabilities(answer, wrong_text, parsed) == [None, None, None]  # logprobs of another text: unusable
    bare = [{k: v for k, v in item.items() if k != "top_logprobs"} for item in chat_logprobs_content(answer)]
    assert probabilities(answer, bare, parsed) == [None, None, None]


def test_metrics() -> None:
    assert balanced_accuracy([1, 1, 0, 0], [1, 0, 0, 0]) == pytest.approx(0.75)
    assert balanced_accuracy([1, 1, 0, 0], [1, None, 0, None]) == 1.0
    assert balanced_accuracy([1, 1], [1, 1]) is None
    assert auroc([1, 0, 1, 0], [0.9, 0.1, 0.5, 0.5]) == pytest.approx(0.875)
    assert auroc([1, 0], [0.9, None]) is None


# --- The prompts: pinned, replaceable, and cheap ----------------------------------------------------------------------


def test_detection_prompt_is_pinned(collected) -> None:
    model, path = collected
    database = dbmod.connect(path)
    record = dbmod.get_neuron(database, model, NEURONS[0])
    database.conn.close()
    scorer = get_scorer("detection", "openai:unused", options=SCORING, simulator_options=UNUSED)
    ((_, messages), *_rest) = scorer.messages("water and rivers", record)
    system, example_user, example_answer, target = messages
    assert system["content"].startswith("We are studying the neurons of a neural network.")
    assert example_user["content"] == (
        "Explanation: names of days of the week\n\n"
        "Excerpt 1: The meeting moved from Monday to Thursday because of the holiday.\n"
        "Excerpt 2: Add the flour and stir until the batter is smooth.\n"
        "Excerpt 3: We are open every day except Sunday.\n"
        "Excerpt 4: The river rose through the night and flooded the road."
    )
    assert example_answer == {"role": "assistant", "content": "[1, 0, 1, 0]"}
    lines = target["content"].split("\n")
    assert lines[:2] == ["Explanation: water and rivers", ""] and len(lines) == 2 + SCORING.excerpts_per_call
    assert all(line.startswith(f"Excerpt {n}: ") for n, line in enumerate(lines[2:], start=1))


def test_a_prompt_file_replaces_the_bundled_one(tmp_path: Path) -> None:
    path = tmp_path / "prompt.json"
    path.write_text(json.dumps({"system": "Say 0 or 1.", "examples": []}))
    prompt = load_prompt("detection", path)
    assert build_messages(prompt, "cats", ["a cat"]) == [
        {"role": "system", "content": "Say 0 or 1."},
        {"role": "user", "content": "Explanation: cats\n\nExcerpt 1: a cat"},
    ]
    path.write_text(json.dumps({"system": "x", "examples": [{"explanation": "e", "excerpts": ["a"], "answer": [2]}]}))
    with pytest.raises(Exception, match=r"answer: expected one 0 or 1 per excerpt"):
        load_prompt("detection", path)


# --- Detection and fuzzing against the fake server --------------------------------------------------------------------


def test_detection_end_to_end_with_logprobs(scored_db, logprob_server, capsys) -> None:
    model, path, database = scored_db
    records = [dbmod.get_neuron(database, model, n) for n in NEURONS]
    scorer = get_scorer("detection", "openai:fake-model", options=SCORING)
    logprob_server.chat_handler = truthful(scorer, records)
    args = ["score", "--db", str(path), "--model", model, "--scorer", "detection", "--simulator", "openai:fake-model",
            *SCORER_FLAGS, "--json"]  # fmt: skip
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["ok"], report["failed"], report["skipped"], report["simulator"]) == (
        6, 0, 0, "detection:openai:fake-model")  # fmt: skip
    rows = report["rows"]
    assert len(rows) == 6 and {row["scorer"] for row in rows} == {"detection"}
    for row in rows:
        assert (row["model"], row["method"], row["status"]) == ("openai:fake-model", "balanced_accuracy", "ok")
        assert row["score"] == 1.0 and row["auc"] == 1.0
        excerpts = row["per_excerpt"]
        # Up to 6 activating and 6 non-activating: the tiny corpus repeats itself, so a neuron may have fewer.
        assert 8 <= len(excerpts) <= 12 and {e["label"] for e in excerpts} == {0, 1}
        assert all(e["prediction"] == e["label"] and math.isclose(e["probability"], 0.9 if e["label"] else 0.1)
                   for e in excerpts)  # fmt: skip
        calls = -(-len(excerpts) // 5)
        assert {e["call"] for e in excerpts} == set(range(calls))  # 5 per call
        assert row["settings"]["activating_quantile"] == 0.9 and row["settings"]["top_logprobs"] == 5
        # Tokens as the server's usage counts them (words + 1 per answer), summed over the neuron's three calls.
        assert row["scorer_input_tokens"] > 0 and row["scorer_output_tokens"] == len(excerpts) + calls
    chat = [body for route, body in logprob_server.calls if route == "/v1/chat/completions"]
    assert len(chat) == sum(-(-len(row["per_excerpt"]) // 5) for row in rows)
    # Shuffled batches mix both kinds; every request asked for logprobs at temperature 0.
    assert all(body["logprobs"] is True and body["top_logprobs"] == 5 and body["temperature"] == 0 for body in chat)
    # A rerun scores only what is missing: nothing here, and no request is made.
    before = len(logprob_server.calls)
    assert main(args) == 0
    again = json.loads(capsys.readouterr().out)
    assert (again["ok"], again["skipped"]) == (0, 6) and len(logprob_server.calls) == before
    # Other settings score again, in place.
    four = get_scorer("detection", "openai:fake-model", options=replace(SCORING, excerpts_per_call=4))
    logprob_server.chat_handler = truthful(four, records)
    assert main([*args[:-1], "--excerpts-per-call", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["replaced"] == 6


def test_detection_reads_malformed_lists_and_lives_without_logprobs(scored_db, logprob_server) -> None:
    model, _, database = scored_db
    record = dbmod.get_neuron(database, model, NEURONS[0])
    scorer = get_scorer(
        "detection",
        "openai:fake-model",
        options=SCORING,
        simulator_options=SimulatorOptions(api=ApiOptions(concurrency=1)),
        db=database,
    )
    right = truthful(scorer, [record])
    answers = iter(["I am not sure. [1, 0"])  # the first call unreadable, the others readable in another shape

    def handler(request: dict[str, Any]) -> str:
        planned = next(answers, None)
        if planned is not None:
            return planned
        values = re.findall(r"\d", right(request))
        return "\n".join(f"Excerpt {n}: {'yes' if v == '1' else 'no'}" for n, v in enumerate(values, start=1))

    logprob_server.chat_handler = handler
    logprob_server.logprobs_mode = "none"
    result = scorer.score("water", record)
    read = [p for p in result.per_excerpt if p.prediction is not None]
    shown = len(result.per_excerpt)
    assert result.ok and result.score == 1.0 and len(read) == shown - 5 and all(p.prediction == p.label for p in read)
    assert f"5 of {shown} excerpts had no readable answer and are left out" in result.notes
    assert any(note.startswith("call 0: the answer 'I am not sure. [1, 0'") for note in result.notes)
    # A server that ignores logprobs: no AUC, and the notes say why.
    assert result.auc is None and "the server returned no logprobs: no AUC" in result.notes
    # Unreadable answers are not cached, so the next run asks again; the readable ones are.
    assert database.conn.execute("SELECT COUNT(*) FROM llm_cache").fetchone()[0] == 2
    again = scorer.score("water", record)
    assert len(logprob_server.calls) == 4 and again.score == 1.0
    assert all(p.prediction is not None for p in again.per_excerpt)


def test_detection_fails_cleanly_when_nothing_is_readable(scored_db, logprob_server) -> None:
    model, _, database = scored_db
    logprob_server.chat_handler = lambda request: "Maybe."
    scorer = get_scorer("detection", "openai:fake-model", options=SCORING, db=database)
    report = pipeline.score_with_scorer(database, model, scorer, neurons=[NEURONS[0]])
    assert (report.ok, report.failed) == (0, 2) and "does not hold one 0 or 1" in report.errors[0]
    (row, *_) = report.rows
    assert row["status"] == "failed" and row["score"] is None


def test_a_server_answering_garbage_fails_the_call_with_one_line(scored_db, logprob_server) -> None:
    model, _, database = scored_db
    logprob_server.inject(*["malformed_json"] * 40)
    twice = SimulatorOptions(api=ApiOptions(max_attempts=2))
    scorer = get_scorer(
        "detection", "openai:fake-model", options=SCORING, simulator_options=twice, db=database, use_cache=False
    )
    report = pipeline.score_with_scorer(database, model, scorer, neurons=[NEURONS[0]])
    # An answer that arrives but cannot be read fails its calls and its rows, recorded; the run itself goes on.
    assert report.ok == 0 and report.failed >= 1
    assert any("not valid JSON" in error for error in report.errors), report.errors


def test_fuzzing_end_to_end(scored_db, logprob_server) -> None:
    model, _, database = scored_db
    records = [dbmod.get_neuron(database, model, n) for n in NEURONS]
    scorer = get_scorer("fuzzing", "openai:fake-model", options=SCORING, db=database)
    excerpts = scorer.excerpts(records[0])
    kinds = collections.Counter(e.kind for e in excerpts)
    assert kinds["true_highlight"] >= kinds["random_highlight"] >= 1 and len(excerpts) <= SCORING.n_activating
    threshold = records[0].stats.quantiles[0.9]
    for excerpt in excerpts:  # as many marks either way; true marks are the tokens above the threshold
        truly = [a > threshold for a in excerpt.record.activations]
        assert sum(excerpt.marked) == sum(truly)
        assert (list(excerpt.marked) == truly) == (excerpt.kind == "true_highlight")
        assert "[" in excerpt_text(excerpt)
    logprob_server.chat_handler = truthful(scorer, records)
    report = pipeline.score_with_scorer(database, model, scorer)
    assert (report.ok, report.failed, report.scorer, report.simulator) == (6, 0, "fuzzing", "fuzzing:openai:fake-model")
    assert all(row["score"] == 1.0 and row["auc"] == 1.0 for row in report.rows)
    system = logprob_server.requests[-1]["messages"][0]["content"]
    assert "marked in square brackets" in system


def test_scorers_never_share_a_mean(scored_db, logprob_server) -> None:
    """Each scorer's rows carry their own simulator and method: no query keyed by them can pool two scorers."""
    model, _, database = scored_db
    (explanation_id, *_) = [row["id"] for row in dbmod.list_explanations(database, model, NEURONS[0])]
    dbmod.save_imported_score(database, explanation_id, "openai:fake-model", 0.3, "paper.csv")
    record = dbmod.get_neuron(database, model, NEURONS[0])
    scorer = get_scorer("detection", "openai:fake-model", options=SCORING, db=database)
    logprob_server.chat_handler = truthful(scorer, [record])
    pipeline.score_with_scorer(database, model, scorer, neurons=[NEURONS[0]])
    kinds = dbmod.automated_scores_for_explanations(database, [explanation_id])
    assert {name for _, name in kinds} >= {
        "openai:fake-model·imported",
        "detection:openai:fake-model·balanced_accuracy",
    }
    assert dbmod.scores_for_explanations(database, [explanation_id], "openai:fake-model")[1] == {explanation_id: 0.3}
    rows = scorer_score_rows(database, [explanation_id])
    assert {(r["scorer"], r["model"]) for r in rows} == {("simulation", "openai:fake-model"),
                                                         ("detection", "openai:fake-model")}  # fmt: skip


# --- Embedding on the real MiniLM -------------------------------------------------------------------------------------


def test_embedding_scorer_scores_and_skips_layers_without_excerpts(scored_db, capsys) -> None:
    model, path, database = scored_db
    # A layer stored without the scorers' excerpts, as collected before they existed.
    old = dbmod.get_neuron(database, model, NEURONS[0])
    dbmod.write_neurons(database, model, [NeuronRecord(model, NeuronId(0, 0), old.top, old.random, old.stats)], "x")
    dbmod.insert_explanation(database, model=model, layer=0, neuron=0, format="summary", explainer="openai:x",
                             explanation="water", status="ok")  # fmt: skip
    args = ["score", "--db", str(path), "--model", model, "--scorer", "embedding", *SCORER_FLAGS]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "embedding by minilm (auroc): 6 scored" in captured.out
    assert "layer 0 of" in captured.err and "--layers 0 --replace" in captured.err and "only simulation" in captured.err
    rows = scorer_score_rows(database, [r["id"] for r in dbmod.list_explanations(database, model)], scorer="embedding")
    assert len(rows) == 6 and all(0 <= row["score"] <= 1 and row["auc"] is None for row in rows)
    assert all(8 <= len(row["per_excerpt"]) <= 12 and "similarity" in row["per_excerpt"][0] for row in rows)
    with pytest.raises(SystemExit):
        main(["score", "--db", str(path), "--model", model, "--scorer", "nonsense"])
    assert main(["score", "--db", str(path), "--model", model, "--scorer", "embedding", "--simulator", "openai:m"]) == 2


@pytest.fixture(scope="module")
def minilm_db(tmp_path_factory):
    """The bundled model's layer 0 over 20k tokens of the default corpus (about 10 s on 2 cores)."""
    path = tmp_path_factory.mktemp("minilm") / "minilm.db"
    database = dbmod.connect(path)
    collect(database, "default", [0], "default", CollectOptions(max_tokens=20_000))
    yield database
    database.conn.close()


def _token_like(database, count: int) -> list[tuple[str, NeuronRecord]]:
    """Neurons whose top excerpts peak on one alphabetic token (at least 16 of 20), each with a different token."""
    found: dict[str, NeuronRecord] = {}
    for index in dbmod.neuron_indices(database, DEFAULT_MODEL_NAME, 0):
        record = dbmod.get_neuron(database, DEFAULT_MODEL_NAME, NeuronId(0, index))
        peaks = [r.tokens[r.activations.index(r.max_activation)].strip().lower() for r in record.top]
        token, times = collections.Counter(peaks).most_common(1)[0]
        if times >= 16 and len(token) >= 3 and token.isalpha() and token not in found:
            found[token] = record
        if len(found) == count:
            break
    return list(found.items())


def test_embedding_prefers_a_neurons_own_token(minilm_db) -> None:
    neurons = _token_like(minilm_db, 12)
    assert len(neurons) == 12
    scorer = get_scorer("embedding", options=ScorerOptions(activating_quantile=0.9))
    own, other = [], []
    for number, (token, record) in enumerate(neurons):
        someone_else = neurons[(number + 1) % len(neurons)][0]
        own.append(scorer.score(f'the word "{token}"', record).score)
        other.append(scorer.score(f'the word "{someone_else}"', record).score)
    wins = sum(a > b for a, b in zip(own, other, strict=True))
    assert sum(own) / len(own) > sum(other) / len(other) + 0.05 and wins >= 7, (own, other)


def test_a_detection_call_costs_well_under_delphis(minilm_db) -> None:
    """Five 64-token excerpts of the bundled model per call: under 600 cl100k tokens (delphi: about 800)."""
    (_, record), *_ = _token_like(minilm_db, 1)
    options = ScorerOptions(activating_quantile=0.9)
    scorer = get_scorer("detection", "openai:unused", options=options, simulator_options=UNUSED)
    costs = [tokens.prompt_cost(messages, tokens.CL100K) for _, messages in scorer.messages("the word x", record)]
    full = [cost for cost in costs if cost.per_neuron > 200]  # calls with 5 excerpts
    assert full and all(cost.total < 600 for cost in full) and costs[0].fixed < 200, costs


def test_detection_with_a_local_chat_model(scored_db, tiny_chat_model: Path) -> None:
    """An `hf:` model answers as text only: its (random) answers are read or refused, tokens counted, no AUC."""
    model, _, database = scored_db
    on_cpu = SimulatorOptions(local=LocalModelOptions(device="cpu"))
    scorer = get_scorer("detection", f"hf:{tiny_chat_model}", options=SCORING, simulator_options=on_cpu, db=database)
    report = pipeline.score_with_scorer(database, model, scorer, neurons=[NEURONS[0]], formats=["summary"])
    (row,) = report.rows
    assert row["scorer"] == "detection" and row["model"] == f"hf:{tiny_chat_model}" and row["auc"] is None
    assert row["scorer_input_tokens"] > 0 and row["scorer_output_tokens"] > 0
    assert row["status"] == "ok" or "does not hold one 0 or 1" in row["error"]
