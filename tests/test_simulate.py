"""Simulators (core/simulate.py): slot alignment, prefix-cache reuse, "10" split across tokens, the echo endpoint and
the chat fallbacks, against tiny random models and the fake OpenAI server."""

from __future__ import annotations

import json
import math
import random
import re
import time
from typing import Any

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from core.errors import InputError, LLMError
from core.llm import RetryPolicy
from core.records import ActivationRecord
from core.simulate import (
    SIMULATORS,
    UNKNOWN,
    VALUE_STRINGS,
    ChatSimulator,
    CompletionsEchoSimulator,
    LocalAllAtOnceSimulator,
    SimulationResult,
    Simulator,
    check_alignment,
    completion_prompt,
    escape_token,
    expected_value,
    get_simulator,
    hidden_count,
    load_few_shot,
    parse_chat_answer,
    value_probabilities,
    value_tokens,
)
from tests.conftest import build_tiny_tokenizer
from tests.fake_openai import FakeOpenAIServer, _Handler

TRICKY = (" hello", "\n", "\t", "a\tb", "é", "日本", "10", "", "  ", "\r\n", "x\x00y")
NO_RETRY_WAIT = RetryPolicy(max_attempts=3, backoff_s=0.0, max_backoff_s=0.0)


def _records() -> list[ActivationRecord]:
    return [
        ActivationRecord(TRICKY, tuple(float(i % 3) for i in range(len(TRICKY)))),
        ActivationRecord(("The", " cat", " sat", " on", " the", " mat", "."), (0, 5, 0, 0, 0, 1, 0)),
        ActivationRecord((" Monday", ","), (3, 0)),
        ActivationRecord(tuple(f" w{i}" for i in range(20)), tuple(float(i % 4) for i in range(20))),
    ]


def _model(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    # A large init spread makes the random model's value distributions differ from token to token, so equality
    # checks between code paths compare varied numbers rather than a flat ~5.
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        initializer_range=0.5,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def lm():
    tokenizer = build_tiny_tokenizer()
    return _model(len(tokenizer)), tokenizer


def _split_ten_tokenizer():
    """A byte-level BPE tokenizer whose vocabulary has single digits but no "10"."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    words = [
        "the", "cat", "sat", "on", "a", "mat", "unknown", "neuron", "activation", "explanation", "find",
        "tokens", "start", "end", "day", "words",
    ]  # fmt: skip
    lines = [f"{w} {words[(i * 5) % len(words)]}\t{i % 10}\n" for i, w in enumerate(words * 4)]
    lines += [f"{d} {d}{d}\t{d}" for d in "23456789"] * 5  # digits, but never a 1 followed by a 0
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(lines, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="</s>", pad_token="<pad>")


@pytest.fixture(scope="module")
def split_lm():
    tokenizer = _split_ten_tokenizer()
    return _model(len(tokenizer), seed=1), tokenizer


def _flat(result: SimulationResult) -> list[float]:
    assert result.ok, result.error
    return [v for row in result.predictions for v in row]


# --- expected values ---------------------------------------------------------------------------------------------


def test_expected_value_is_the_mean_over_values_renormalised() -> None:
    first = {"0": 0.2, "3": 0.1, "10": 0.1, "unknown": 0.5, " ": 0.1}
    probs = value_probabilities(first)
    assert probs[0] == 0.2 and probs[3] == 0.1 and probs[10] == 0.1 and sum(probs) == pytest.approx(0.4)
    assert expected_value(probs) == pytest.approx((0 * 0.2 + 3 * 0.1 + 10 * 0.1) / 0.4)
    assert expected_value(value_probabilities({"unknown": 1.0})) is None


def test_split_ten_moves_the_share_of_one_followed_by_zero_to_ten() -> None:
    # The tokenizer writes 10 as "1","0": P("1") = 0.4 is shared between the values 1 and 10 by P("0" | "1") = 0.25.
    first = {"0": 0.5, "1": 0.4, "7": 0.1}
    probs = value_probabilities(first, after_one={"0": 0.25, "\n": 0.7})
    assert probs[1] == pytest.approx(0.4 * 0.75)
    assert probs[10] == pytest.approx(0.4 * 0.25)
    total = 0.5 + 0.4 * 0.75 + 0.1 + 0.4 * 0.25
    assert expected_value(probs) == pytest.approx((1 * 0.4 * 0.75 + 7 * 0.1 + 10 * 0.4 * 0.25) / total)
    # Without the second step the same mass would all count as 1.
    assert expected_value(value_probabilities(first)) == pytest.approx((0.4 + 0.7) / 1.0)


# --- the prompt ----------------------------------------------------------------------------------------------------


def test_escaped_tokens_keep_one_line_per_token() -> None:
    for token in TRICKY:
        escaped = escape_token(token)
        assert "\t" not in escaped and "\n" not in escaped and "\r" not in escaped
    assert escape_token("a\tb") == "a\\tb" and escape_token("\n") == "\\n" and escape_token("日本") == "日本"


def test_completion_prompt_slots_point_at_unknown_after_each_tab() -> None:
    few_shot = load_few_shot()
    record = _records()[0]
    text, offsets = completion_prompt("words about cats", record, few_shot)
    assert len(offsets) == len(record.tokens)
    for token, offset in zip(record.tokens, offsets, strict=True):
        assert text[offset : offset + len(UNKNOWN)] == UNKNOWN
        line_start = text.rindex("\n", 0, offset) + 1
        assert text[line_start:offset] == escape_token(token) + "\t"
    # Tabs appear only as delimiters: one per value line of the few-shot examples and of the target.
    shown_lines = sum(len(r.tokens) for example in few_shot for r in example.records)
    assert text.count("\t") == shown_lines + len(record.tokens)
    assert text.count(f"\t{UNKNOWN}\n") == hidden_count(few_shot) + len(record.tokens)
    assert hidden_count(few_shot) > 0  # the bundled examples do show some activations as unknown


# --- local all-at-once ---------------------------------------------------------------------------------------------


def test_local_slots_are_exactly_after_each_token_and_tab(lm) -> None:
    model, tokenizer = lm
    simulator = LocalAllAtOnceSimulator(model, tokenizer)
    record = _records()[0]
    encoded = simulator.encode_excerpt(record)
    assert len(encoded.slots) == len(record.tokens)
    for token, slot in zip(record.tokens, encoded.slots, strict=True):
        # The text up to and including the slot ends with this token's line and its tab, and the slot is the last
        # position of that text: the next token the model predicts is the value.
        assert tokenizer.decode(list(encoded.ids[: slot + 1])).endswith("\n" + escape_token(token) + "\t")
    result = simulator.simulate("words about cats", _records())
    assert result.ok and result.method == "all_at_once" and isinstance(simulator, Simulator)
    assert [len(p) for p in result.predictions] == [len(r.tokens) for r in _records()]
    assert all(0.0 <= v <= 10.0 for v in _flat(result))


def test_prefix_cache_reuse_gives_the_same_predictions(lm) -> None:
    model, tokenizer = lm
    reused = _flat(LocalAllAtOnceSimulator(model, tokenizer).simulate("words about cats", _records()))
    fresh = _flat(
        LocalAllAtOnceSimulator(model, tokenizer, reuse_prefix=False).simulate("words about cats", _records())
    )
    assert torch.allclose(torch.tensor(reused), torch.tensor(fresh), atol=1e-4)
    assert max(reused) - min(reused) > 0.1  # the comparison is between varied values, not a constant


def test_batches_equal_one_by_one_and_the_shared_cache_is_not_mutated(lm) -> None:
    model, tokenizer = lm
    records = _records()
    batched = LocalAllAtOnceSimulator(model, tokenizer, batch_size=4)
    single = LocalAllAtOnceSimulator(model, tokenizer, batch_size=1)
    first = _flat(batched.simulate("words about cats", records))
    assert torch.allclose(
        torch.tensor(first), torch.tensor(_flat(single.simulate("words about cats", records))), atol=1e-4
    )
    one_at_a_time = [v for record in records for v in _flat(batched.simulate("words about cats", [record]))]
    assert torch.allclose(torch.tensor(first), torch.tensor(one_at_a_time), atol=1e-4)
    # Another neuron in between must leave the few-shot cache as it was.
    other = _flat(batched.simulate("numbers in code", records))
    assert other != first
    assert torch.allclose(torch.tensor(first), torch.tensor(_flat(batched.simulate("words about cats", records))))


def test_tokenizer_without_ten_gets_p10_from_the_position_after_one(split_lm) -> None:
    model, tokenizer = split_lm
    # No few-shot examples: a short prompt, so that attending to one position too many would show in the numbers.
    simulator = LocalAllAtOnceSimulator(model, tokenizer, batch_size=3, few_shot=())
    values = value_tokens(simulator.encode)
    assert values.ten_split and values.ten is None and "10" not in tokenizer.get_vocab()
    records = _records()[:3]
    explanation = "days of the week"
    result = simulator.simulate(explanation, records)
    no_reuse = LocalAllAtOnceSimulator(model, tokenizer, few_shot=(), reuse_prefix=False).simulate(explanation, records)
    assert torch.allclose(torch.tensor(_flat(result)), torch.tensor(_flat(no_reuse)), atol=1e-4)
    # By hand, with plain forward passes: the distribution after the tab, and the one after an appended "1".
    prefix = [*simulator.prefix_ids, *simulator.explanation_ids(explanation)]
    one, zero = values.digits[1], values.digits[0]
    for record, predicted in zip(records, result.predictions, strict=True):
        encoded = simulator.encode_excerpt(record)
        for slot, ev in zip(encoded.slots, predicted, strict=True):
            ids = prefix + list(encoded.ids[: slot + 1])
            with torch.no_grad():
                after_tab = model(torch.tensor([ids])).logits[0, -1].softmax(-1)
                after_one = model(torch.tensor([[*ids, one]])).logits[0, -1].softmax(-1)
            p = [float(after_tab[values.digits[v]]) for v in range(10)]
            q = float(after_one[zero])
            by_hand = [p[0], p[1] * (1 - q), *p[2:], p[1] * q]
            assert ev == pytest.approx(sum(v * w for v, w in enumerate(by_hand)) / sum(by_hand), abs=1e-4)


def test_get_simulator_loads_an_hf_model_from_disk(tiny_chat_model) -> None:
    simulator = get_simulator(f"hf:{tiny_chat_model}", device="cpu")
    assert simulator.name == f"hf:{tiny_chat_model}" and simulator.method == "all_at_once"
    result = simulator.simulate("cats", _records()[1:2])
    assert result.ok and len(result.predictions[0]) == 7
    with pytest.raises(InputError, match="does not run on hf"):
        get_simulator(f"hf:{tiny_chat_model}", method="chat_parse")
    with pytest.raises(InputError, match="hf:PATH or openai:MODEL"):
        get_simulator("gpt-4")
    assert set(SIMULATORS) == {"all_at_once", "completions_echo", "chat_logprobs", "chat_parse"}


def test_check_alignment_turns_a_wrong_shape_into_a_failure() -> None:
    records = _records()[1:3]
    good = SimulationResult("x", "m", ((0.0,) * 7, (1.0, 2.0)))
    assert check_alignment(good, records) is good
    short = SimulationResult("x", "m", ((0.0,) * 7, (1.0,)))
    failed = check_alignment(short, records)
    assert not failed.ok and "record 1" in failed.error and failed.predictions is None
    nan = check_alignment(SimulationResult("x", "m", ((math.nan,) * 7, (1.0, 2.0))), records)
    assert not nan.ok and "finite" in nan.error


# --- /completions with echoed logprobs (vLLM) ------------------------------------------------------------------------


def _echo_handler(store: dict[str, Any]):
    """Echo the prompt split at tabs and newlines, each piece with seeded random top logprobs over the values."""

    def handler(request: dict[str, Any]) -> dict[str, Any]:
        assert request["echo"] is True and request["max_tokens"] == 0 and request["logprobs"] >= 11
        text = request["prompt"]
        pieces = re.findall(r"[^\t\n]+|\t|\n", text)
        rng = random.Random(len(text))
        offsets, tops, position = [], [], 0
        for piece in pieces:
            offsets.append(position)
            position += len(piece)
            weights = {v: rng.random() ** 3 for v in [*VALUE_STRINGS, UNKNOWN, " the"]}
            total = sum(weights.values())
            tops.append({k: math.log(w / total) for k, w in weights.items()})
        tops[0] = None
        store[text] = (offsets, tops)
        logprobs = {"tokens": pieces, "token_logprobs": [None] + [-1.0] * (len(pieces) - 1)}
        logprobs |= {"top_logprobs": tops, "text_offset": offsets}
        choice = {"index": 0, "text": text, "finish_reason": "length", "logprobs": logprobs}
        return {
            "id": "cmpl-1",
            "object": "text_completion",
            "created": 0,
            "model": request["model"],
            "choices": [choice],
        }

    return handler


def test_echo_predictions_equal_evs_from_the_returned_logprobs(fake_openai) -> None:
    store: dict[str, Any] = {}
    fake_openai.completions_handler = _echo_handler(store)
    simulator = get_simulator("openai:served-model", method="completions_echo", base_url=fake_openai.base_url)
    records = _records()
    result = simulator.simulate("words about cats", records)
    assert result.ok, result.error
    assert result.simulator == "openai:served-model" and result.method == "completions_echo"
    for record, predicted in zip(records, result.predictions, strict=True):
        text, slot_offsets = completion_prompt("words about cats", record, load_few_shot())
        offsets, tops = store[text]
        by_hand = []
        for offset in slot_offsets:
            top = tops[offsets.index(offset)]
            weights = {int(k): math.exp(v) for k, v in top.items() if k in VALUE_STRINGS}
            by_hand.append(sum(v * w for v, w in weights.items()) / sum(weights.values()))
        assert list(predicted) == pytest.approx(by_hand)


def test_echo_from_a_tokenizer_that_merges_tab_and_word_fails_with_a_reason(fake_openai) -> None:
    # The fake's default tokenizer makes whitespace-led words: "\tunknown" is one token, so no slot can be read.
    simulator = get_simulator("openai:served-model", method="completions_echo", base_url=fake_openai.base_url)
    result = simulator.simulate("words about cats", _records()[1:2])
    assert not result.ok and result.predictions is None and "tab" in result.error


def test_echo_retries_rate_limits_and_stops_on_persistent_server_errors(fake_openai) -> None:
    fake_openai.completions_handler = _echo_handler({})
    simulator = get_simulator(
        "openai:served-model", method="completions_echo", base_url=fake_openai.base_url, retry=NO_RETRY_WAIT
    )
    fake_openai.inject("429")
    assert simulator.simulate("cats", _records()[1:2]).ok
    fake_openai.inject("500", "500", "500")
    with pytest.raises(LLMError, match="HTTP 500"):
        simulator.simulate("cats", _records()[1:2])
    fake_openai.inject("empty_choices")
    empty = simulator.simulate("cats", _records()[1:2])
    assert not empty.ok and "no choices" in empty.error


# --- chat fallbacks ------------------------------------------------------------------------------------------------


class _LogprobChatHandler(_Handler):
    """The fake's chat route, but `chat_handler` returns {"content", "logprobs"} so a test can supply logprobs."""

    def _chat(self, body: dict[str, Any], empty: bool) -> None:
        reply = self.fake.chat_handler(body)
        choice = {"index": 0, "message": {"role": "assistant", "content": reply["content"]}, "finish_reason": "stop"}
        choice["logprobs"] = reply.get("logprobs")
        response = {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"], "choices": [choice]}
        self._send_json(200, response)


class LogprobFakeServer(FakeOpenAIServer):
    def start(self) -> LogprobFakeServer:
        from http.server import ThreadingHTTPServer
        from threading import Thread

        server = self

        class Handler(_LogprobChatHandler):
            fake = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self


def _target_tokens(request: dict[str, Any]) -> list[str]:
    """The escaped tokens of the target excerpt, from the last user message."""
    content = request["messages"][-1]["content"]
    block = content[content.rindex("<start>\n") + len("<start>\n") : content.rindex("<end>")]
    return [line.rsplit("\t", 1)[0] for line in block.split("\n") if line]


def _alternatives(rng: random.Random, prefix: str = "") -> tuple[list[dict[str, Any]], dict[int, float]]:
    weights = {v: rng.random() ** 2 for v in range(11)}
    total = sum(weights.values()) * 1.25  # a fifth of the mass stays on non-value tokens
    top = [{"token": prefix + str(v), "logprob": math.log(w / total), "bytes": None} for v, w in weights.items()]
    top.append({"token": prefix + "x", "logprob": math.log(0.2), "bytes": None})
    return top, {v: w / total for v, w in weights.items()}


def test_chat_logprobs_reads_top_logprobs_at_every_number() -> None:
    truth: dict[str, list[float]] = {}

    def reply(request: dict[str, Any]) -> dict[str, Any]:
        assert request["logprobs"] is True and request["top_logprobs"] >= 11 and request["temperature"] == 0
        tokens = _target_tokens(request)
        rng = random.Random(len(tokens))
        content, evs = [], []

        def add(text: str, top: list | None = None) -> None:
            content.append({"token": text, "logprob": -0.1, "bytes": list(text.encode()), "top_logprobs": top or []})

        add("<start>\n")
        for i, token in enumerate(tokens):
            if i % 2:  # this tokenizer merges the tab with the number: alternatives share the "\t" prefix
                add(token)
                top, weights = _alternatives(rng, prefix="\t")
                add("\t" + str(max(weights, key=weights.get)), top)
            else:
                add(token + "\t")
                top, weights = _alternatives(rng)
                add(str(max(weights, key=weights.get)), top)
            add("\n")
            evs.append(sum(v * w for v, w in weights.items()) / sum(weights.values()))
        add("<end>")
        truth[json.dumps(tokens)] = evs
        return {"content": "".join(c["token"] for c in content), "logprobs": {"content": content}}

    with LogprobFakeServer() as server:
        server.chat_handler = reply
        simulator = get_simulator("openai:chat-model", base_url=server.base_url)
        assert simulator.method == "chat_logprobs"
        records = _records()
        result = simulator.simulate("words about cats", records)
    assert result.ok, result.error
    for record, predicted in zip(records, result.predictions, strict=True):
        expected = truth[json.dumps([escape_token(t) for t in record.tokens])]
        assert list(predicted) == pytest.approx(expected)


def test_chat_logprobs_combines_ten_written_as_one_then_zero() -> None:
    def reply(request: dict[str, Any]) -> dict[str, Any]:
        tokens = _target_tokens(request)
        content = [{"token": "<start>\n", "logprob": 0.0, "top_logprobs": []}]
        for token in tokens:
            content.append({"token": token + "\t", "logprob": 0.0, "top_logprobs": []})
            first = [{"token": "1", "logprob": math.log(0.6)}, {"token": "0", "logprob": math.log(0.4)}]
            content.append({"token": "1", "logprob": math.log(0.6), "top_logprobs": first})
            after = [{"token": "0", "logprob": math.log(0.75)}, {"token": "\n", "logprob": math.log(0.25)}]
            content.append({"token": "0", "logprob": math.log(0.75), "top_logprobs": after})
            content.append({"token": "\n", "logprob": 0.0, "top_logprobs": []})
        content.append({"token": "<end>", "logprob": 0.0, "top_logprobs": []})
        return {"content": "".join(c["token"] for c in content), "logprobs": {"content": content}}

    with LogprobFakeServer() as server:
        server.chat_handler = reply
        result = get_simulator("openai:chat-model", base_url=server.base_url).simulate("x", _records()[2:3])
    # P(0) = 0.4, P(1) = 0.6·0.25, P(10) = 0.6·0.75.
    assert list(result.predictions[0]) == pytest.approx([(1 * 0.15 + 10 * 0.45) / 1.0] * 2)


def test_chat_logprobs_without_logprobs_in_the_answer_fails(fake_openai) -> None:
    fake_openai.chat_handler = lambda request: "\n".join(f"{t}\t3" for t in _target_tokens(request))
    result = ChatSimulator("chat-model", base_url=fake_openai.base_url).simulate("cats", _records()[1:2])
    assert not result.ok and "chat_parse" in result.error


def test_chat_parse_reads_the_integers_the_model_writes(fake_openai) -> None:
    def reply(request: dict[str, Any]) -> str:
        assert "logprobs" not in request
        tokens = _target_tokens(request)
        return "<start>\n" + "".join(f"{t}\t{i % 11}\n" for i, t in enumerate(tokens)) + "<end>"

    fake_openai.chat_handler = reply
    simulator = get_simulator("openai:chat-model", method="chat_parse", base_url=fake_openai.base_url)
    records = _records()
    result = simulator.simulate("words about cats", records)
    assert result.ok, result.error
    assert [list(p) for p in result.predictions] == [[float(i % 11) for i in range(len(r.tokens))] for r in records]
    messages = fake_openai.requests[-1]["messages"]
    assert messages[0]["role"] == "system" and messages[-1]["role"] == "user"
    assert "words about cats" in messages[-1]["content"]


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("I think the neuron fires on cats.", "not of the form"),
        ("The\t3\n cat\tseven\n", "not an integer"),
        ("The\t3\n cat\t12\n", "not an integer"),
        ("The\t3\n dog\t5\n", "expected token"),
        ("The\t3\n", "1 lines for the 2 tokens"),
        ("", "empty"),
    ],
)
def test_garbled_chat_answers_fail_with_a_reason_never_zeros(fake_openai, answer: str, reason: str) -> None:
    fake_openai.chat_handler = lambda request: answer
    simulator = get_simulator("openai:chat-model", method="chat_parse", base_url=fake_openai.base_url)
    result = simulator.simulate("cats", [ActivationRecord(("The", " cat"), (0.0, 1.0))])
    assert not result.ok and result.status == "failed" and result.predictions is None
    assert reason in result.error and "record 0" in result.error
    with pytest.raises(Exception, match=reason):
        parse_chat_answer(answer, ["The", " cat"])


def test_parse_accepts_markers_fences_and_spaces_instead_of_a_tab() -> None:
    answer = "```\n<start>\nThe 3\n cat\t 10\n\n<end>\n```"
    assert [line.value for line in parse_chat_answer(answer, ["The", " cat"])] == [3, 10]


def test_endpoint_simulators_are_timed(fake_openai) -> None:
    fake_openai.completions_handler = _echo_handler({})
    simulator = CompletionsEchoSimulator("m", base_url=fake_openai.base_url)
    start = time.perf_counter()
    result = simulator.simulate("cats", _records()[1:3])
    assert result.ok and 0 < result.seconds <= time.perf_counter() - start
