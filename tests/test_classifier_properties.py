"""Exact values and boundaries of the detection and fuzzing scorers' scoring side (core/scorers/classifier.py) that
tests/test_scorers.py leaves open: how `ClassifierScorer.score` turns answers into the balanced accuracy, the AUC,
per-excerpt predictions, notes, tokens and errors (failed and unreadable calls, missing logprobs, one-class and
uncollected neurons); the per-neuron shuffle; reading answers (words in any case, numbered lines, runs of digits,
the refusal message); P(1) from top logprobs (prefixes, alternatives skipped, summed, undecodable bytes); excerpt text
and few-shot messages. The LLM is a stand-in that answers each excerpt by its name, so every expected value is
computed by hand or by sklearn. Pure and fast: no server, no model, no database."""

from __future__ import annotations

import hashlib
import math
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from core.errors import InputError, LLMError
from core.records import ActivationRecord, NeuronId, NeuronRecord, NeuronStats, ScoringRecords
from core.scorers.base import ExcerptPrediction, MissingExcerpts, ScorerOptions, ScoringExcerpt, classified_excerpts
from core.scorers.classifier import (
    AnswerUnreadable,
    ClassifierPrompt,
    ClassifierScorer,
    PromptExample,
    Reply,
    build_messages,
    classifier_calls,
    excerpt_text,
    load_prompt,
    parse_answer,
    probabilities,
)

# --- A neuron whose excerpts are named, and an LLM that answers by name -----------------------------------------------

THRESHOLD = 1.0


def neuron(activating: int, quiet: int, scoring: bool = True) -> NeuronRecord:
    """Activating excerpts `a0`… (max 5 + i, level 0.5 + i/100) and quiet ones `q0`… (max 0); no top records, so
    nothing is in the train split. Each excerpt's text is `aN x` or `qN x`."""
    quantile = tuple(ActivationRecord((f" a{i}", " x"), (5.0 + i, 0.0)) for i in range(activating))
    levels = tuple(0.5 + i / 100 for i in range(activating))
    non = tuple(ActivationRecord((f" q{i}", " x"), (0.0, -0.5)) for i in range(quiet))
    records = ScoringRecords(quantile, levels, non) if scoring else None
    return NeuronRecord("m", NeuronId(0, 1), (), (), NeuronStats(0.0, 1.0, 9.0, {}), records)


def options(per_call: int = 3, seed: int = 0) -> ScorerOptions:
    return ScorerOptions(activating_threshold=THRESHOLD, n_activating=10, n_non_activating=10,
                         excerpts_per_call=per_call, seed=seed)  # fmt: skip


def shown_names(messages: Sequence[dict[str, Any]]) -> list[str]:
    """The excerpt names of a call's target batch (its last user message), in the order shown."""
    return re.findall(r"^Excerpt \d+: ([aq]\d+) x$", messages[-1]["content"], re.MULTILINE)


def logprob_items(text: str, chance: Sequence[float]) -> list[dict[str, Any]]:
    """Chat logprobs for `text`: each 0/1 its own token with alternatives "1" (P = chance[k]) and "0" (the rest),
    every run between them one token with only itself."""
    items, values = [], iter(chance)
    for piece in re.findall(r"[01]|[^01]+", text):
        top = [{"token": piece, "logprob": 0.0}]
        if piece in "01":
            p = next(values)
            top = [{"token": "1", "logprob": math.log(p)}, {"token": "0", "logprob": math.log(1 - p)}]
        items.append({"token": piece, "logprob": top[0]["logprob"], "bytes": list(piece.encode()), "top_logprobs": top})
    return items


def values_reply(values: Sequence[int], chance: Sequence[float] | None, tokens=(10, 2)) -> Reply:
    text = "[" + ", ".join(map(str, values)) + "]"
    return Reply(text, logprob_items(text, chance) if chance is not None else None, *tokens)


# What the stand-in LLM answers for each excerpt: its 0/1 and its P(1). Three of four activating and four of six quiet
# excerpts right: TPR 3/4, TNR 4/6.
ANSWERS = {
    "a0": (1, 0.9), "a1": (1, 0.6), "a2": (0, 0.3), "a3": (1, 0.8),
    "q0": (0, 0.1), "q1": (1, 0.7), "q2": (0, 0.2), "q3": (0, 0.4), "q4": (0, 0.05), "q5": (1, 0.65),
}  # fmt: skip
LABELS = {name: int(name[0] == "a") for name in ANSWERS}


@dataclass
class StandInLLM:
    """A ClassifierLLM whose `reply(number, names)` answers call `number` showing excerpts `names`; records calls."""

    reply: Callable[[int, list[str]], Reply | LLMError]
    name: str = "stand-in:model"
    top_logprobs: int | None = None
    asked: list[tuple[list[list[str]], int]] = field(default_factory=list)
    forgotten: list[tuple[list[str], int]] = field(default_factory=list)
    extra_replies: int = 0  # below 0: that many replies short
    read: Callable[[Sequence[dict[str, Any]]], list[str]] = shown_names

    def ask(self, requests: Sequence[list[dict[str, Any]]], max_tokens: int) -> list[Reply | LLMError]:
        shown = [self.read(messages) for messages in requests]
        self.asked.append((shown, max_tokens))
        replies = [self.reply(number, names) for number, names in enumerate(shown)]
        return (
            replies[: len(replies) + self.extra_replies]
            if self.extra_replies < 0
            else replies + replies[: self.extra_replies]
        )

    def forget(self, messages: list[dict[str, Any]], max_tokens: int) -> None:
        self.forgotten.append((shown_names(messages), max_tokens))


def answering(with_chance: bool = True, tokens: Callable[[int], tuple] = lambda n: (10 * (n + 1), n + 1)):
    def reply(number: int, names: list[str]) -> Reply:
        chance = [ANSWERS[name][1] for name in names] if with_chance else None
        return values_reply([ANSWERS[name][0] for name in names], chance, tokens(number))

    return reply


def detection(llm: StandInLLM, per_call: int = 3, seed: int = 0) -> ClassifierScorer:
    return ClassifierScorer("detection", llm, options(per_call, seed))


NAMES = ["a3", "a2", "a1", "a0", "q0", "q1", "q2", "q3", "q4", "q5"]  # the excerpts' order: activating by max, quiet


def calls_of(llm: StandInLLM) -> dict[str, int]:
    """Which call showed each excerpt, as the LLM saw them."""
    ((shown, _),) = llm.asked
    return {name: number for number, names in enumerate(shown) for name in names}


def timed(scorer: ClassifierScorer, record: NeuronRecord):
    before = time.perf_counter()
    result = scorer.score("names", record)
    return result, time.perf_counter() - before


# --- The score: answers aggregated per excerpt --------------------------------------------------------------------


def test_score_is_the_balanced_accuracy_and_auc_of_every_answer():
    llm = StandInLLM(answering(), top_logprobs=4)
    result, elapsed = timed(detection(llm), neuron(4, 6))
    labels = [LABELS[n] for n in NAMES]
    assert result.status == "ok" and result.ok and result.error is None and result.notes == ()
    assert (result.scorer, result.model, result.method) == ("detection", "stand-in:model", "balanced_accuracy")
    assert result.score == pytest.approx((3 / 4 + 4 / 6) / 2)
    assert result.score == pytest.approx(balanced_accuracy_score(labels, [ANSWERS[n][0] for n in NAMES]))
    # AUC by hand: of the 4 × 6 pairs, the activating P(1)s 0.9, 0.8, 0.6, 0.3 outrank 6, 6, 4 and 3 quiet ones.
    assert result.auc == pytest.approx(19 / 24)
    assert result.auc == pytest.approx(roc_auc_score(labels, [ANSWERS[n][1] for n in NAMES]))
    # Four calls of 3, 3, 3 and 1 excerpts; tokens summed over all of them; 4 per excerpt + 16 to answer in.
    ((shown, max_tokens),) = llm.asked
    assert [len(names) for names in shown] == [3, 3, 3, 1] and max_tokens == 4 * 3 + 16
    assert (result.input_tokens, result.output_tokens) == (10 + 20 + 30 + 40, 1 + 2 + 3 + 4)
    assert llm.forgotten == []
    assert 0 < result.seconds <= elapsed


def test_per_excerpt_predictions_keep_each_excerpts_place():
    llm = StandInLLM(answering())
    result = detection(llm).score("names", neuron(4, 6))
    call = calls_of(llm)
    expected = [
        ExcerptPrediction(
            index=i,
            kind="activating" if n[0] == "a" else "non_activating",
            label=LABELS[n],
            max_activation=5.0 + int(n[1]) if n[0] == "a" else 0.0,
            level=0.5 + int(n[1]) / 100 if n[0] == "a" else None,
            prediction=ANSWERS[n][0],
            call=call[n],
        )
        for i, n in enumerate(NAMES)
    ]
    assert [replace(p, probability=None) for p in result.per_excerpt] == expected
    assert [p.probability for p in result.per_excerpt] == pytest.approx([ANSWERS[n][1] for n in NAMES])


@pytest.mark.parametrize(
    ("answer", "score", "auc"),
    [(LABELS.get, 1.0, 1.0), (lambda name: 1 - LABELS[name], 0.0, 0.0), (lambda name: 1, 0.5, 0.5),
     (lambda name: int(name in ("a0", "q0")), (1 / 4 + 5 / 6) / 2, (0.5 + 5 + 3 * 5 * 0.5) / 24)],
)  # fmt: skip
def test_perfect_inverted_and_constant_answers(answer, score, auc):
    # P(1) 0.8 for a 1 and 0.2 for a 0, so the AUC ranks exactly as the answers do (ties count half).
    llm = StandInLLM(lambda n, names: values_reply([answer(m) for m in names], [0.2 + 0.6 * answer(m) for m in names]))
    result = detection(llm).score("names", neuron(4, 6))
    assert result.ok and result.score == pytest.approx(score) and result.auc == pytest.approx(auc)


def fuzzing_texts(messages: Sequence[dict[str, Any]]) -> list[str]:
    return re.findall(r"^Excerpt \d+: (.*)$", messages[-1]["content"], re.MULTILINE)


@pytest.mark.parametrize(
    ("says", "expected"),
    [(lambda text: int(text.startswith("[ a")), 1.0), (lambda text: int("[ x]" in text), 0.0), (lambda text: 0, 0.5)],
)
def test_fuzzing_scores_whether_each_highlight_is_right(says, expected):
    # An activating excerpt's truly activating token is its name (` a0` above the threshold, ` x` not); a wrongly
    # highlighted one has ` x` in brackets instead (4 // 2 of them). The LLM sees only the text.
    llm = StandInLLM(lambda n, shown: values_reply([says(t) for t in shown], None), read=fuzzing_texts)
    result = ClassifierScorer("fuzzing", llm, options(per_call=3)).score("names", neuron(4, 0))
    shown = sorted(llm.asked[0][0][0] + llm.asked[0][0][1])
    assert [t for t in shown if t.startswith("[")] == [f"[ a{i}] x" for i in range(4) if f"a{i}[ x]" not in shown]
    assert sum(t.endswith("[ x]") for t in shown) == 2 and len(shown) == 4
    assert sorted(p.kind for p in result.per_excerpt) == ["random_highlight"] * 2 + ["true_highlight"] * 2
    assert result.ok and result.score == expected


@pytest.mark.parametrize("per_call", [1, 2, 5, 10])
def test_max_tokens_follow_the_batch_size(per_call):
    llm = StandInLLM(answering())
    assert detection(llm, per_call).score("names", neuron(4, 6)).ok
    ((shown, max_tokens),) = llm.asked
    assert max_tokens == 4 * per_call + 16 and len(shown) == math.ceil(10 / per_call)


def test_a_failed_call_leaves_only_its_excerpts_out():
    answer = answering()
    llm = StandInLLM(lambda number, names: LLMError("timed out") if number == 0 else answer(number, names))
    result = detection(llm).score("names", neuron(4, 6))
    call = calls_of(llm)
    kept = [n for n in NAMES if call[n] != 0]
    assert [p.prediction for p in result.per_excerpt] == [ANSWERS[n][0] if call[n] else None for n in NAMES]
    assert [p.call for p in result.per_excerpt] == [call[n] for n in NAMES]  # still says where it was shown
    assert result.ok and result.error is None
    assert result.score == pytest.approx(
        balanced_accuracy_score([LABELS[n] for n in kept], [ANSWERS[n][0] for n in kept])
    )
    # The AUC needs every excerpt; the failed call's tokens are unknown and not counted.
    assert result.auc is None
    assert result.notes == (
        "call 0: timed out",
        "no AUC: it needs an answer for every excerpt",
        "3 of 10 excerpts had no readable answer and are left out",
    )
    assert (result.input_tokens, result.output_tokens) == (20 + 30 + 40, 2 + 3 + 4)


def test_an_unreadable_call_is_noted_forgotten_and_its_tokens_counted():
    answer = answering(with_chance=False)
    llm = StandInLLM(lambda n, names: Reply("I cannot tell", None, 7, 3) if n == 1 else answer(n, names))
    result = detection(llm).score("names", neuron(4, 6))
    call = calls_of(llm)
    assert llm.forgotten == [(llm.asked[0][0][1], 4 * 3 + 16)]  # call 1's chat, asked again next run
    assert [p.prediction for p in result.per_excerpt] == [None if call[n] == 1 else ANSWERS[n][0] for n in NAMES]
    assert result.notes == (
        "call 1: the answer 'I cannot tell' does not hold one 0 or 1 for each of the 3 excerpts",
        "the server returned no logprobs: no AUC",
        "3 of 10 excerpts had no readable answer and are left out",
    )
    assert (result.input_tokens, result.output_tokens) == (10 + 7 + 30 + 40, 1 + 3 + 3 + 4)


def test_nothing_readable_fails_with_every_note_as_the_error():
    llm = StandInLLM(lambda number, names: Reply("unsure" if number % 2 else "maybe", None, 1, 1))
    result, elapsed = timed(detection(llm), neuron(4, 6))
    assert result.status == "failed" and not result.ok and result.score is None and result.auc is None
    assert result.notes == (
        "call 0: the answer 'maybe' does not hold one 0 or 1 for each of the 3 excerpts",
        "call 1: the answer 'unsure' does not hold one 0 or 1 for each of the 3 excerpts",
        "call 2: the answer 'maybe' does not hold one 0 or 1 for each of the 3 excerpts",
        "call 3: the answer 'unsure' does not hold one 0 or 1 for each of the 1 excerpts",
        "10 of 10 excerpts had no readable answer and are left out",
    )
    assert result.error == "; ".join(result.notes)
    assert (result.scorer, result.model, result.method) == ("detection", "stand-in:model", "balanced_accuracy")
    assert (result.input_tokens, result.output_tokens) == (4, 4)
    assert len(llm.forgotten) == 4 and all(max_tokens == 28 for _, max_tokens in llm.forgotten)
    assert 0 < result.seconds <= elapsed


def test_logprob_notes():
    # Every reply with logprobs: an AUC and no note.
    assert detection(StandInLLM(answering())).score("names", neuron(4, 6)).notes == ()
    # One reply without: no AUC, said once.
    answer = answering()
    partial = StandInLLM(lambda n, names: replace(answer(n, names), logprobs=None) if n == 2 else answer(n, names))
    result = detection(partial).score("names", neuron(4, 6))
    assert result.auc is None and result.ok
    assert result.notes == ("logprobs were missing for some answers: no AUC",)
    # None at all, every call answered: the server sent none.
    result = detection(StandInLLM(answering(with_chance=False))).score("names", neuron(4, 6))
    assert result.auc is None and result.notes == ("the server returned no logprobs: no AUC",)
    # None at all, and a call failed: both are said.
    bare = answering(with_chance=False)
    failing = StandInLLM(lambda n, names: LLMError("refused") if n == 3 else bare(n, names))
    result = detection(failing).score("names", neuron(4, 6))
    assert result.notes == (
        "call 3: refused",
        "the server returned no logprobs: no AUC",
        "1 of 10 excerpts had no readable answer and are left out",
    )
    # Logprobs sent, but not for the tokens of the values read: they do not spell the answers.
    unrelated = [{"token": "ok", "logprob": 0.0, "top_logprobs": []}]
    misspelt = StandInLLM(lambda n, names: replace(bare(n, names), logprobs=unrelated))
    result = detection(misspelt).score("names", neuron(4, 6))
    assert result.auc is None and result.notes == ("the logprobs did not spell the answers: no AUC",)


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        ([(0, 0), (7, 5), (0, 0), (1, 0)], (8, 5)),  # zeros are counted as zeros
        ([(3, 1), (None, 2), (3, 1), (3, 1)], (None, None)),  # one unknown count: neither total is known
        ([(3, 1), (3, 1), (3, None), (3, 1)], (None, None)),
        ([(None, None)] * 4, (None, None)),
    ],
)
def test_tokens_are_summed_only_when_every_reply_counts_them(tokens, expected):
    result = detection(StandInLLM(answering(tokens=lambda n: tokens[n]))).score("names", neuron(4, 6))
    assert result.ok and (result.input_tokens, result.output_tokens) == expected


@pytest.mark.parametrize("extra", [-1, 1])
def test_an_llm_answering_the_wrong_number_of_calls_is_an_error(extra):
    llm = StandInLLM(answering(), extra_replies=extra)
    with pytest.raises(ValueError, match="zip"):
        detection(llm).score("names", neuron(4, 6))


def test_one_class_neurons_fail_before_asking_with_both_counts():
    llm = StandInLLM(answering())
    start = time.perf_counter()
    only_activating = detection(llm).score("names", neuron(3, 0))
    elapsed = time.perf_counter() - start
    only_quiet = detection(llm).score("names", neuron(0, 4))
    tail = " above/below the activating threshold; lower --activating-quantile or collect more text"
    for result, counts in ((only_activating, (3, 0)), (only_quiet, (0, 4))):
        assert (result.scorer, result.model, result.method, result.status) == (
            "detection", "stand-in:model", "balanced_accuracy", "failed",
        )  # fmt: skip
        assert result.error == f"neuron 0:1 has {counts[0]} excerpts of one kind and {counts[1]} of the other" + tail
        assert result.score is None and result.per_excerpt == () and result.notes == ()
    assert 0 < only_activating.seconds <= elapsed
    # Fuzzing with one activating excerpt: it is highlighted truly (label 1), so one kind only.
    fuzzing = ClassifierScorer("fuzzing", llm, options()).score("names", neuron(1, 4))
    assert fuzzing.error == "neuron 0:1 has 1 excerpts of one kind and 0 of the other" + tail
    assert fuzzing.scorer == "fuzzing" and llm.asked == []


@pytest.mark.parametrize("kind", ["detection", "fuzzing"])
def test_a_neuron_without_scoring_excerpts_fails_with_the_reason(kind):
    llm = StandInLLM(answering())
    record = neuron(4, 6, scoring=False)
    with pytest.raises(MissingExcerpts) as missing:
        classified_excerpts(record, options())
    result = ClassifierScorer(kind, llm, options()).score("names", record)
    assert (result.scorer, result.model, result.method, result.status) == (
        kind, "stand-in:model", "balanced_accuracy", "failed",
    )  # fmt: skip
    assert result.error == str(missing.value) and "collected without the scorers' excerpts" in result.error
    assert result.score is None and result.per_excerpt == () and llm.asked == []


# --- The scorer's settings and prompt -----------------------------------------------------------------------------


def test_only_detection_and_fuzzing_are_classifier_scorers():
    with pytest.raises(InputError, match=r"^'embedding' is not a classifier scorer; choose one of detection, fuzzing$"):
        ClassifierScorer("embedding", StandInLLM(answering()))


def test_a_given_prompt_is_kept_and_the_bundled_one_fills_in():
    own = ClassifierPrompt("Say 0 or 1.", (), "mine.json")
    assert ClassifierScorer("detection", StandInLLM(answering()), prompt=own).prompt is own
    for kind in ("detection", "fuzzing"):
        assert ClassifierScorer(kind, StandInLLM(answering())).prompt == load_prompt(kind)


def test_settings_name_the_model_options_prompt_and_logprobs():
    scorer = ClassifierScorer("fuzzing", StandInLLM(answering(), top_logprobs=3), options(4, seed=2))
    assert scorer.settings() == {
        "model": "stand-in:model", "activating_quantile": 0.99, "activating_threshold": THRESHOLD,
        "n_activating": 10, "n_non_activating": 10, "excerpts_per_call": 4, "seed": 2, "prompt": "bundled",
        "top_logprobs": 3,
    }  # fmt: skip
    own = ClassifierPrompt("x", (), "mine.json")
    assert ClassifierScorer("detection", StandInLLM(answering()), prompt=own).settings()["prompt"] == "mine.json"


# --- The per-neuron shuffle -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_calls_show_the_excerpts_in_the_neurons_seeded_order(seed):
    record = neuron(4, 6)
    digest = hashlib.sha256(f"{seed}|m|0:1".encode()).digest()
    order = list(range(10))
    random.Random(int.from_bytes(digest[:8], "little")).shuffle(order)
    calls = classifier_calls("detection", load_prompt("detection"), options(3, seed), "names", record)
    assert [index for indices, _ in calls for index in indices] == order
    assert [shown_names(messages) for _, messages in calls] == [
        [NAMES[i] for i in order[start : start + 3]] for start in range(0, 10, 3)
    ]
    llm = StandInLLM(answering())
    detection(llm, 3, seed).score("names", record)
    assert [name for names in llm.asked[0][0] for name in names] == [NAMES[i] for i in order]


# --- Excerpt text and messages --------------------------------------------------------------------------------------


def test_fuzzing_text_brackets_each_marked_token_and_escapes_the_rest():
    record = ActivationRecord((" a", " [b]", " c", " d\\"), (0.0, 2.0, 0.0, 3.0))
    excerpt = ScoringExcerpt(record, 1, "true_highlight", None, (False, True, False, True))
    assert excerpt_text(excerpt) == "a[ \\[b\\]] c[ d\\\\]"
    assert excerpt_text(replace(excerpt, marked=None)) == "a [b] c d\\"
    assert excerpt_text(replace(excerpt, marked=(False,) * 4)) == "a \\[b\\] c d\\\\"


@pytest.mark.parametrize("marked", [(True,) * 3, (True,) * 5])
def test_a_highlight_that_does_not_fit_the_tokens_is_refused(marked):
    excerpt = ScoringExcerpt(ActivationRecord(("a", "b", "c", "d"), (0, 1, 0, 1)), 1, "true_highlight", None, marked)
    with pytest.raises(ValueError):
        excerpt_text(excerpt)


def test_few_shot_examples_are_user_and_assistant_turns():
    prompt = ClassifierPrompt("sys", (PromptExample("days ", ("Monday", "soup"), (1, 0)),), "x")
    assert build_messages(prompt, " rivers", ["a river"]) == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "Explanation: days\n\nExcerpt 1: Monday\nExcerpt 2: soup"},
        {"role": "assistant", "content": "[1, 0]"},
        {"role": "user", "content": "Explanation: rivers\n\nExcerpt 1: a river"},
    ]


# --- Reading answers --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "values"),
    [("[YES, No, TRUE]", [1, 0, 1]), ("[False, true, NO]", [0, 1, 0]), ("YES NO yes", [1, 0, 1])],
)
def test_words_are_read_in_any_case(answer, values):
    assert [p.value for p in parse_answer(answer, 3)] == values


def test_numbered_lines_keep_the_first_value_of_each_number_in_range():
    # A repeated number keeps its first value; numbers outside 1..count are ignored, not counted.
    parsed = parse_answer("Excerpt 1: 1\nExcerpt 1: 0\nExcerpt 2: 0", 2)
    assert [(p.value, p.start) for p in parsed] == [(1, 11), (0, 37)]
    parsed = parse_answer("Excerpt 1: 1\nExcerpt 2: 0\nExcerpt 5: 1", 2)
    assert [(p.value, p.start) for p in parsed] == [(1, 11), (0, 24)]
    with pytest.raises(AnswerUnreadable):
        parse_answer("Excerpt 0: 1\nExcerpt 3: 0", 2)


def test_a_run_of_digits_gives_each_digit_its_own_offset():
    answer = "my answer: 0110."
    assert [(p.value, p.start) for p in parse_answer(answer, 4)] == [(0, 11), (1, 12), (1, 13), (0, 14)]


def test_refusals_say_what_the_answer_was():
    with pytest.raises(AnswerUnreadable, match=r"^the answer is empty$"):
        parse_answer("  \n", 2)
    long = "first line\nsecond line " + "x" * 100
    shown = ("first line second line " + "x" * 100)[:80]
    with pytest.raises(AnswerUnreadable) as refused:
        parse_answer(f"  {long}  ", 2)
    assert str(refused.value) == f"the answer {shown!r} does not hold one 0 or 1 for each of the 2 excerpts"
    assert len(shown) == 80


# --- P(1) from the top logprobs -------------------------------------------------------------------------------------


def item(token: str, alternatives: Sequence[tuple[str, float | None]], raw: bytes | None = None) -> dict[str, Any]:
    top = [{"token": t, "logprob": lp} for t, lp in alternatives]
    return {
        "token": token,
        "logprob": 0.0,
        "bytes": list(raw if raw is not None else token.encode()),
        "top_logprobs": top,
    }


def chance_of(answer: str, content: list[dict[str, Any]], count: int = 1) -> list[float | None]:
    return probabilities(answer, content, parse_answer(answer, count))


def test_the_value_token_may_carry_text_before_the_value():
    # "[1" holds the value after "[": alternatives are read after that prefix, and only those that start with it.
    content = [item("[1", [("[1", math.log(0.3)), ("[0", math.log(0.1)), ("1", math.log(0.5))]), item("]", [])]
    assert chance_of("[1]", content) == pytest.approx([0.75])  # 0.3 / (0.3 + 0.1); total 0.4, not 1


def test_masses_of_every_spelling_of_a_value_add_up():
    lp = math.log
    content = [item("[", []), item("1", [("1", lp(0.5)), (" yes", lp(0.2)), ("0", lp(0.2)), ("No", lp(0.05))]),
               item("]", [])]  # fmt: skip
    assert chance_of("[1]", content) == pytest.approx([0.7 / 0.95])
    words = [item("[", []), item("yes", [("Yes", lp(0.6)), ("NO", lp(0.3))]), item("]", [])]
    assert chance_of("[yes]", words) == pytest.approx([0.6 / 0.9])


def test_alternatives_without_a_logprob_or_the_prefix_are_skipped_not_the_rest():
    lp = math.log
    alternatives = [("0", None), ("x1", lp(0.4)), ("1", lp(0.3)), ("0", lp(0.1))]
    content = [item("[", []), item("1", alternatives), item("]", [])]
    assert chance_of("[1]", content) == pytest.approx([0.75])
    # "x1" does not start with the prefix "[": skipped, though what follows the prefix's length would read "1".
    content = [item("[1", [("x1", lp(0.4)), ("[1", lp(0.3)), ("[0", lp(0.3))]), item("]", [])]
    assert chance_of("[1]", content) == pytest.approx([0.5])


def test_logprobs_that_do_not_decode_give_no_probability_not_an_error():
    # Bytes that are not UTF-8 cannot spell the answer.
    content = [item("?", [], b"\xff"), item("[", []), item("1", [("1", 0.0)]), item("]", [])]
    assert chance_of("[1]", content) == [None]
    # A character split over two tokens: the value's token starts inside it, read with a replacement character.
    answer = "é [1]"
    content = [
        item("?", [], b"\xc3"),
        item("?", [("\ufffd [1", math.log(0.6)), ("\ufffd [0", math.log(0.2))], b"\xa9 [1"),
        item("]", []),
    ]
    assert chance_of(answer, content) == pytest.approx([0.75])


def test_a_run_of_digits_is_read_at_each_digits_token():
    answer = "0110"
    content = [
        item(ch, [("1", math.log(p)), ("0", math.log(1 - p))])
        for ch, p in zip(answer, [0.2, 0.7, 0.9, 0.4], strict=True)
    ]
    assert chance_of(answer, content, 4) == pytest.approx([0.2, 0.7, 0.9, 0.4])
