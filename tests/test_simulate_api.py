"""The OpenAI-compatible simulators (core/simulate/api.py): the echo endpoint and the chat fallbacks, against the fake
OpenAI server."""

from __future__ import annotations

import json
import math
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from core.errors import InputError, LLMError
from core.llm import ApiOptions
from core.records import ActivationRecord
from core.simulate import (
    UNKNOWN,
    VALUE_STRINGS,
    SimulatorOptions,
    completion_prompt,
    escape_token,
    get_simulator,
    load_few_shot,
)
from core.simulate.api import (
    ChatSimulator,
    CompletionsEchoSimulator,
    parse_chat_answer,
    predictions_from_chat_logprobs,
    predictions_from_echo,
)
from tests.fake_openai import CUSTOM_SHAPED_KEY, FakeOpenAIServer, _Handler, everything_shown
from tests.simulation_records import sample_records


def at(server: FakeOpenAIServer, **options: Any) -> SimulatorOptions:
    """Simulator options for the fake server at its base URL (no key needed: it is not OpenAI's)."""
    api = {k: options.pop(k) for k in ("max_attempts", "concurrency") if k in options}
    return SimulatorOptions(api=ApiOptions(base_url=server.base_url, **api), **options)


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
    simulator = get_simulator("openai:served-model", "completions_echo", at(fake_openai))
    records = sample_records()
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


def _with_last_slots(handler, replacements: list[dict[str, float]]):
    """`handler`, with the top logprobs of the target's last slots (tab, then "unknown") replaced, in order."""

    def wrapped(request: dict[str, Any]) -> dict[str, Any]:
        response = handler(request)
        logprobs = response["choices"][0]["logprobs"]
        tokens, tops = logprobs["tokens"], logprobs["top_logprobs"]
        places = [i for i in range(1, len(tokens)) if tokens[i - 1] == "\t" and tokens[i] == UNKNOWN]
        for index, top in zip(places[-len(replacements) :], replacements, strict=True):
            tops[index] = top
        return response

    return wrapped


def test_echo_reads_only_bare_digits_and_a_slot_without_any_is_zero_as_openai_does(fake_openai) -> None:
    # docs/METHOD.md §3: " 7" (a digit after a space) is another token and is ignored, as in OpenAI's simulator; a
    # slot with no value "0".."10" among its top logprobs is read as EV 0 and counted.
    spaced = {" 7": math.log(0.8), "3": math.log(0.1), " the": math.log(0.1)}
    nothing = {" 7": math.log(0.6), UNKNOWN: math.log(0.3), " the": math.log(0.1)}
    fake_openai.completions_handler = _with_last_slots(_echo_handler({}), [spaced, nothing])
    record = ActivationRecord((" Monday", ",", " Tuesday"), (3.0, 0.0, 2.0))
    simulator = get_simulator("openai:served-model", "completions_echo", at(fake_openai))
    result = simulator.simulate("days", [record])
    assert result.ok, result.error
    assert list(result.predictions[0][1:]) == [3.0, 0.0]
    assert result.no_value_count == 1 and result.to_json()["no_value_count"] == 1
    # The failure path stays as an option.
    strict = CompletionsEchoSimulator("served-model", at(fake_openai, on_no_value="fail"))
    failed = strict.simulate("days", [record])
    assert not failed.ok and "token 3: no value 0..10 among the top logprobs" in failed.error
    with pytest.raises(InputError, match="on_no_value 'guess' is unknown"):
        at(fake_openai, on_no_value="guess")


def test_echo_reading_counts_missing_values() -> None:
    tokens = ["a", "\t", UNKNOWN, "\n", "b", "\t", UNKNOWN, "\n"]
    tops = [None, {"x": -1.0}, {"2": math.log(0.5), "4": math.log(0.5)}, {}, {}, {}, {" 9": -0.1}, {}]
    reading = predictions_from_echo({"tokens": tokens, "top_logprobs": tops}, n_slots=2, n_hidden=0)
    assert reading.predictions == [pytest.approx(3.0), 0.0] and reading.no_value_count == 1
    with pytest.raises(Exception, match="token 2: no value"):
        predictions_from_echo({"tokens": tokens, "top_logprobs": tops}, 2, 0, on_no_value="fail")


def test_chat_logprobs_without_a_value_among_the_alternatives_reads_zero() -> None:
    answer = "<start>\na\t3\nb\t5\n<end>"
    content = [
        {"token": "<start>\na\t", "logprob": 0.0, "top_logprobs": []},
        {"token": "3", "logprob": 0.0, "top_logprobs": [{"token": "3", "logprob": math.log(0.5)},
                                                        {"token": "4", "logprob": math.log(0.5)}]},
        {"token": "\nb\t", "logprob": 0.0, "top_logprobs": []},
        {"token": "5", "logprob": 0.0, "top_logprobs": [{"token": "x", "logprob": -0.1}]},
        {"token": "\n<end>", "logprob": 0.0, "top_logprobs": []},
    ]  # fmt: skip
    reading = predictions_from_chat_logprobs(answer, content, ["a", "b"])
    assert reading.predictions == [pytest.approx(3.5), 0.0] and reading.no_value_count == 1
    with pytest.raises(Exception, match="token 2: no value"):
        predictions_from_chat_logprobs(answer, content, ["a", "b"], on_no_value="fail")


def test_echo_from_a_tokenizer_that_merges_tab_and_word_fails_with_a_reason(fake_openai) -> None:
    # The fake's default tokenizer makes whitespace-led words: "\tunknown" is one token, so no slot can be read.
    simulator = get_simulator("openai:served-model", "completions_echo", at(fake_openai))
    result = simulator.simulate("words about cats", sample_records()[1:2])
    assert not result.ok and result.predictions is None and "tab" in result.error


def test_echo_retries_rate_limits_and_stops_on_persistent_server_errors(fake_openai) -> None:
    fake_openai.completions_handler = _echo_handler({})
    simulator = get_simulator("openai:served-model", "completions_echo", at(fake_openai, max_attempts=3))
    fake_openai.inject("429")
    assert simulator.simulate("cats", sample_records()[1:2]).ok
    fake_openai.inject("500", "500", "500")
    with pytest.raises(LLMError, match="HTTP 500 after 3 attempt"):
        simulator.simulate("cats", sample_records()[1:2])
    assert len(fake_openai.requests) == 5  # the client retried each, as the server's Retry-After-Ms said
    fake_openai.inject("empty_choices")
    empty = simulator.simulate("cats", sample_records()[1:2])
    assert not empty.ok and "no choices" in empty.error


def test_an_unreadable_answer_is_asked_for_again_then_fails_the_simulation(fake_openai) -> None:
    fake_openai.completions_handler = _echo_handler({})
    simulator = get_simulator("openai:served-model", "completions_echo", at(fake_openai, max_attempts=2))
    fake_openai.inject("malformed_json")
    assert simulator.simulate("cats", sample_records()[1:2]).ok  # the second answer was readable
    fake_openai.inject("malformed_json", "malformed_json")
    failed = simulator.simulate("cats", sample_records()[1:2])
    assert not failed.ok and "not valid JSON" in failed.error
    assert len(fake_openai.requests) == 4


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
        simulator = get_simulator("openai:chat-model", options=at(server))
        assert simulator.method == "chat_logprobs"
        records = sample_records()
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
        result = get_simulator("openai:chat-model", options=at(server)).simulate("x", sample_records()[2:3])
    # P(0) = 0.4, P(1) = 0.6·0.25, P(10) = 0.6·0.75.
    assert list(result.predictions[0]) == pytest.approx([(1 * 0.15 + 10 * 0.45) / 1.0] * 2)


def test_chat_logprobs_without_logprobs_in_the_answer_fails(fake_openai) -> None:
    fake_openai.chat_handler = lambda request: "\n".join(f"{t}\t3" for t in _target_tokens(request))
    result = ChatSimulator("chat-model", at(fake_openai)).simulate("cats", sample_records()[1:2])
    assert not result.ok and "chat_parse" in result.error


def test_chat_parse_reads_the_integers_the_model_writes(fake_openai) -> None:
    def reply(request: dict[str, Any]) -> str:
        assert "logprobs" not in request
        tokens = _target_tokens(request)
        return "<start>\n" + "".join(f"{t}\t{i % 11}\n" for i, t in enumerate(tokens)) + "<end>"

    fake_openai.chat_handler = reply
    simulator = get_simulator("openai:chat-model", "chat_parse", at(fake_openai))
    records = sample_records()
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
    simulator = get_simulator("openai:chat-model", "chat_parse", at(fake_openai))
    result = simulator.simulate("cats", [ActivationRecord(("The", " cat"), (0.0, 1.0))])
    assert not result.ok and result.status == "failed" and result.predictions is None
    assert reason in result.error and "record 0" in result.error
    with pytest.raises(Exception, match=reason):
        parse_chat_answer(answer, ["The", " cat"])


def test_empty_explanations_are_refused_before_any_request(fake_openai) -> None:
    simulator = get_simulator("openai:chat-model", "chat_parse", at(fake_openai))
    for text in ("", " \t\n", "...", " . "):
        with pytest.raises(InputError, match="is empty"):
            simulator.simulate(text, sample_records()[1:2])
    assert fake_openai.requests == []
    # Tabs and newlines in an explanation become spaces, so they cannot break the prompt's line layout.
    fake_openai.chat_handler = lambda request: "The\t3\n cat\t5"
    result = simulator.simulate("cats\tand\ndogs.", [ActivationRecord(("The", " cat"), (0.0, 1.0))])
    assert result.ok, result.error
    assert "find cats and dogs.\n" in fake_openai.requests[-1]["messages"][-1]["content"]


def test_parse_accepts_markers_fences_and_spaces_instead_of_a_tab() -> None:
    answer = "```\n<start>\nThe 3\n cat\t 10\n\n<end>\n```"
    assert [line.value for line in parse_chat_answer(answer, ["The", " cat"])] == [3, 10]


def test_endpoint_simulators_are_timed(fake_openai) -> None:
    fake_openai.completions_handler = _echo_handler({})
    simulator = CompletionsEchoSimulator("m", at(fake_openai))
    start = time.perf_counter()
    result = simulator.simulate("cats", sample_records()[1:3])
    assert result.ok and 0 < result.seconds <= time.perf_counter() - start


def test_a_key_of_any_shape_quoted_back_is_never_shown_by_the_completions_simulator(
    fake_openai, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", CUSTOM_SHAPED_KEY)
    fake_openai.require_key = "the-key-the-server-wants"  # every request is answered 401, quoting the key it got
    simulator = get_simulator("openai:served-model", "completions_echo", at(fake_openai))
    with pytest.raises(LLMError, match=r"HTTP 401 .*Incorrect API key provided: \*\*\*") as caught:
        simulator.simulate("cats", sample_records()[1:2])
    assert CUSTOM_SHAPED_KEY not in everything_shown(caught.value)

    # The command line, in its own process, with -v: the error line and every debug log and traceback on stderr.
    records = tmp_path / "records.json"
    records.write_text(json.dumps({"records": [record.to_json() for record in sample_records()[1:2]]}))
    argv = ["-v", "simulate", "--explanation", "cats", "--records", str(records), "--simulator", "openai:served",
            "--method", "completions_echo", "--db", str(tmp_path / "t.db")]  # fmt: skip
    env = {**os.environ, "OPENAI_API_KEY": CUSTOM_SHAPED_KEY, "OPENAI_BASE_URL": fake_openai.base_url}
    result = subprocess.run(
        [sys.executable, "-m", "core", *argv], cwd=Path(__file__).resolve().parent.parent, env=env,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and "error: simulator openai:served: HTTP 401" in result.stderr
    assert CUSTOM_SHAPED_KEY not in result.stdout + result.stderr
