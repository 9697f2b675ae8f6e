"""The OpenAI-compatible simulators (docs/METHOD.md §3): `completions_echo` reads the all-at-once prompt's echoed
`top_logprobs` from a /completions server (e.g. vLLM), as OpenAI's simulator does; the chat fallbacks
`chat_logprobs` and `chat_parse` have the model write the `token<TAB>n` lines itself. Built by
`core.simulate.get_simulator` from a `SimulatorOptions` (its `api` part says how to reach the server).

As in OpenAI's code, a position whose top logprobs hold no value 0..10 is read as 0 and counted; with
`on_no_value="fail"` it fails the simulation instead.
"""

from __future__ import annotations

import logging
import math
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from core.errors import InputError
from core.llm.api import call_api, logprob_token_offsets, openai_client
from core.llm.base import UnreadableAnswer
from core.records import ActivationRecord
from core.simulate.base import (
    DEFAULT_NO_VALUE,
    DEFAULT_TOP_LOGPROBS,
    END,
    NO_VALUE_POLICIES,
    START,
    SYSTEM_MESSAGE,
    UNKNOWN,
    VALUE_STRINGS,
    SimulationExample,
    SimulationFailure,
    SimulationResult,
    SimulatorOptions,
    completion_prompt,
    escape_token,
    expected_value,
    explanation_text,
    hidden_count,
    load_few_shot,
    neuron_header,
    value_probabilities,
)

log = logging.getLogger(__name__)

CHAT_INSTRUCTIONS = (
    "\n\nReply with every token of the text, one per line, in the same order and written exactly as given, each "
    "followed by a tab and your predicted activation. Put the lines between <start> and <end>, and write nothing "
    "else."
)


# ---------------------------------------------------------------------------------------------------------------
# The chat-fallback prompt (pure functions)
# ---------------------------------------------------------------------------------------------------------------


def _chat_user(number: int, explanation: str, record: ActivationRecord) -> str:
    lines = "".join(f"{escape_token(t)}\t{UNKNOWN}\n" for t in record.tokens)
    return neuron_header(number, explanation).lstrip("\n") + f"{START}\n{lines}{END}"


def _chat_answer(record: ActivationRecord, values: Sequence[int]) -> str:
    lines = "".join(f"{escape_token(t)}\t{v}\n" for t, v in zip(record.tokens, values, strict=True))
    return f"{START}\n{lines}{END}"


def chat_messages(
    explanation: str, record: ActivationRecord, few_shot: Sequence[SimulationExample]
) -> list[dict[str, str]]:
    """The chat-fallback conversation: the few-shot neurons answered in full, then the target excerpt."""
    messages = [{"role": "system", "content": SYSTEM_MESSAGE + CHAT_INSTRUCTIONS}]
    for number, example in enumerate(few_shot, start=1):
        for rec, values in zip(example.records, example.values(), strict=True):
            messages.append({"role": "user", "content": _chat_user(number, example.explanation, rec)})
            messages.append({"role": "assistant", "content": _chat_answer(rec, values)})
    messages.append({"role": "user", "content": _chat_user(len(few_shot) + 1, explanation, record)})
    return messages


# ---------------------------------------------------------------------------------------------------------------
# Parsing chat answers
# ---------------------------------------------------------------------------------------------------------------

_FENCE = re.compile(r"^\s*```")


@dataclass(frozen=True)
class ParsedLine:
    value: int
    value_start: int  # character offset of the number in the answer


def parse_chat_answer(answer: str, tokens: Sequence[str]) -> list[ParsedLine]:
    """The value written on each `token<TAB>n` line, checked against the expected tokens; SimulationFailure if not.

    `<start>`/`<end>` markers, code fences and blank lines are skipped. Without a tab, the last run of spaces
    separates the token from the number.
    """
    if not isinstance(answer, str) or not answer.strip():
        raise SimulationFailure("the simulator returned an empty answer")
    parsed: list[ParsedLine] = []
    offset = 0
    for raw in answer.split("\n"):
        line_start, offset = offset, offset + len(raw) + 1
        line = raw.rstrip("\r")
        if not line.strip() or line.strip() in (START, END) or _FENCE.match(line):
            continue
        match = re.match(r"^(.*)\t[ ]*(\S+)[ \t]*$", line) or re.match(r"^(.*\S)[ ]+(\d+)[ \t]*$", line)
        number = len(parsed) + 1
        if not match:
            raise SimulationFailure(f"answer line {number} ({line[:60]!r}) is not of the form token<TAB>activation")
        token_text, value_text = match.group(1), match.group(2)
        if value_text not in VALUE_STRINGS:
            raise SimulationFailure(
                f"answer line {number} ({line[:60]!r}): {value_text!r} is not an integer activation from 0 to 10"
            )
        if len(parsed) >= len(tokens):
            raise SimulationFailure(f"the answer has more lines than the {len(tokens)} tokens of the excerpt")
        expected = escape_token(tokens[len(parsed)])
        if token_text.strip() != expected.strip():
            raise SimulationFailure(
                f"answer line {number}: expected token {expected!r}, got {token_text!r}; the lines are misaligned"
            )
        parsed.append(ParsedLine(int(value_text), line_start + match.start(2)))
    if len(parsed) != len(tokens):
        raise SimulationFailure(f"the answer has {len(parsed)} lines for the {len(tokens)} tokens of the excerpt")
    return parsed


def _alternatives(item: Mapping[str, Any], prefix: str) -> dict[str, float]:
    """The top_logprobs of a token as {value string: probability}, after a shared prefix (e.g. a merged tab)."""
    found: dict[str, float] = {}
    for alt in item.get("top_logprobs") or []:
        token = str(alt.get("token", ""))
        if token.startswith(prefix):
            rest = token[len(prefix) :].rstrip()
            if rest in VALUE_STRINGS and alt.get("logprob") is not None:
                found[rest] = found.get(rest, 0.0) + math.exp(float(alt["logprob"]))
    return found


@dataclass(frozen=True)
class Reading:
    """Expected values read from logprobs, and how many of them are 0 for want of any value 0..10 there."""

    predictions: list[float]
    no_value_count: int = 0
    usage: tuple[int, int] | None = None  # (prompt, completion) tokens as the server counted them, if it did


def _value_or_zero(ev: float | None, number: int, on_no_value: str) -> float | None:
    """The expected value at token `number`; None (read as 0 and counted, as OpenAI does) when no value 0..10 was
    among the top logprobs, or SimulationFailure when `on_no_value` is "fail"."""
    if ev is None and on_no_value == "fail":
        raise SimulationFailure(f"token {number}: no value 0..10 among the top logprobs; raise top_logprobs")
    return ev


def _check_policy(on_no_value: str) -> None:
    if on_no_value not in NO_VALUE_POLICIES:
        raise InputError(f"on_no_value {on_no_value!r} is unknown; choose one of {', '.join(NO_VALUE_POLICIES)}")


def predictions_from_chat_logprobs(
    answer: str,
    content: Sequence[Mapping[str, Any]],
    tokens: Sequence[str],
    on_no_value: str = DEFAULT_NO_VALUE,
) -> Reading:
    """EVs from a chat answer and its per-token logprobs (`choices[0].logprobs.content`, as dicts).

    Where no value 0..10 is among a number's alternatives, the EV is 0 and counted ("zero"), or the answer fails
    ("fail").
    """
    _check_policy(on_no_value)
    lines = parse_chat_answer(answer, tokens)
    starts, data = logprob_token_offsets(content)
    if data.decode("utf-8", errors="replace") != answer:
        raise SimulationFailure("the logprob tokens do not spell the answer text; cannot locate the numbers")
    predictions = []
    missing = 0
    for number, line in enumerate(lines, start=1):
        value_byte = len(answer[: line.value_start].encode("utf-8"))
        index = max(i for i, start in enumerate(starts) if start <= value_byte)
        prefix = data[starts[index] : value_byte].decode("utf-8", errors="replace")
        first = _alternatives(content[index], prefix)
        after_one = None
        token_rest = str(content[index].get("token", ""))[len(prefix) :].strip()
        if "10" not in first and token_rest == "1" and index + 1 < len(content):
            # "10" is written as "1","0" by this tokenizer: the next token's alternatives give P("0" | "1").
            # Top logprobs are over the whole vocabulary, so exp(logprob) of "0" is already P("0" | "1").
            after_one = _alternatives(content[index + 1], "")
        ev = _value_or_zero(expected_value(value_probabilities(first, after_one)), number, on_no_value)
        missing += ev is None
        predictions.append(ev or 0.0)
    return Reading(predictions, missing)


def _from_logprobs(logprobs: Mapping[str, float]) -> dict[str, float]:
    """Top-logprob maps → probabilities of the value strings. Only the exact strings "0".."10" count, as in OpenAI's
    simulator: a value with a leading space (" 7") is another token and is ignored."""
    probs: dict[str, float] = {}
    for token, logprob in logprobs.items():
        text = str(token)
        if text in VALUE_STRINGS and logprob is not None:
            probs[text] = probs.get(text, 0.0) + math.exp(float(logprob))
    return probs


def predictions_from_echo(
    logprobs: Mapping[str, Any], n_slots: int, n_hidden: int, on_no_value: str = DEFAULT_NO_VALUE
) -> Reading:
    """EVs from an echoed /completions prompt (`choices[0].logprobs` as a dict) for the target's `n_slots`.

    A slot is a token that starts "unknown" right after a token ending in a tab; tabs occur nowhere else in our
    prompts (escape_token), so the slots are the last `n_slots` of the `n_hidden + n_slots` such places. Counting
    tokens rather than trusting `text_offset` survives servers whose offsets drift on split multi-byte characters.
    A slot whose top logprobs hold no value 0..10 gets EV 0 and is counted ("zero", OpenAI's reading), or fails the
    excerpt ("fail").
    """
    _check_policy(on_no_value)
    tokens = logprobs.get("tokens") or []
    top = logprobs.get("top_logprobs") or []
    if not tokens or len(top) != len(tokens):
        raise SimulationFailure("the server returned no echoed prompt logprobs; it must support echo with logprobs")
    places = [
        i
        for i in range(1, len(tokens))
        if str(tokens[i - 1]).endswith("\t") and tokens[i] and UNKNOWN.startswith(str(tokens[i]))
    ]
    if len(places) != n_hidden + n_slots:
        raise SimulationFailure(
            f"found {len(places)} tab-then-unknown places in the echoed prompt, expected {n_hidden + n_slots}: the "
            "server's tokenizer merges the tab with the text around it, so the slots cannot be aligned "
            "(use the local all_at_once method with this model)"
        )
    predictions = []
    missing = 0
    for number, index in enumerate(places[n_hidden:], start=1):
        ev = _value_or_zero(expected_value(value_probabilities(_from_logprobs(top[index] or {}))), number, on_no_value)
        missing += ev is None
        predictions.append(ev or 0.0)
    return Reading(predictions, missing)


# ---------------------------------------------------------------------------------------------------------------
# OpenAI-compatible simulators
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class _EndpointSimulator(ABC):
    """Shared parts of the OpenAI-compatible simulators: client, few-shot, one request per record.

    The openai SDK retries what may pass (core/llm/api.py); when an error persists, or the request is refused (a bad
    key, an unknown model, a server without echo), an LLMError stops the run so it can be fixed and resumed. An
    answer that arrives but cannot be used becomes a failed SimulationResult.
    """

    model: str
    options: SimulatorOptions = field(default_factory=SimulatorOptions)
    method: str = ""

    def __post_init__(self) -> None:
        self.examples = load_few_shot(self.options.few_shot)
        chosen = self.options.top_logprobs
        self.top_logprobs = DEFAULT_TOP_LOGPROBS if chosen is None else chosen
        self.on_no_value = self.options.on_no_value
        self.client = openai_client(self.options.api)
        # One pool of `concurrency` request threads for the simulator's whole life: every request of every
        # explanation goes through it, so explanations simulated at once (core.pipeline) share the bound.
        self._requests = ThreadPoolExecutor(self.options.api.concurrency, thread_name_prefix=f"simulate-{self.model}")

    @property
    def parallel_explanations(self) -> int:
        """How many explanations callers may simulate at once: requests are bounded by the shared pool anyway."""
        return self.options.api.concurrency

    @property
    def name(self) -> str:
        return f"openai:{self.model}"

    def simulate(self, explanation: str, records: Sequence[ActivationRecord]) -> SimulationResult:
        start = time.perf_counter()
        explanation_text(explanation)
        futures = [self._requests.submit(self._one, explanation, record) for record in records]
        try:
            predictions = []
            missing = 0
            usage: list[tuple[int, int] | None] = []
            for i, future in enumerate(futures):
                try:
                    reading = future.result()
                except SimulationFailure as exc:
                    raise SimulationFailure(f"record {i}: {exc}") from None
                predictions.append(tuple(reading.predictions))
                missing += reading.no_value_count
                if reading.predictions:  # an empty record sends no request
                    usage.append(reading.usage)
        except SimulationFailure as exc:
            return SimulationResult.failed(self.name, self.method, str(exc), time.perf_counter() - start)
        finally:
            for future in futures:  # after a failure (or Ctrl-C), this explanation's queued requests are not sent
                future.cancel()
        if missing:
            total = sum(len(p) for p in predictions)
            log.warning(
                "%s (%s): %d of %d tokens had no value 0..10 among the top logprobs and were read as 0, as OpenAI's "
                "simulator does; raise top_logprobs to see more of the distribution",
                self.name,
                self.method,
                missing,
                total,
            )
        counted = [u for u in usage if u is not None]
        complete = len(counted) == len(usage)  # tokens are reported only when the server counted every request
        return SimulationResult(
            self.name,
            self.method,
            tuple(predictions),
            seconds=time.perf_counter() - start,
            no_value_count=missing,
            input_tokens=sum(u[0] for u in counted) if complete else None,
            output_tokens=sum(u[1] for u in counted) if complete else None,
        )

    def _request(self, endpoint: Callable[..., Any], **params: Any) -> tuple[dict[str, Any], tuple[int, int] | None]:
        """The first choice of one API call as plain JSON, and the server's (prompt, completion) token counts if it
        gave them, after the SDK's retries (see the class docstring).

        `endpoint` is a `with_raw_response` method: the answer is read with json.loads, not built into the SDK's
        typed objects, because an echo answer carries top logprobs for every prompt token (about 700 positions
        for one excerpt with the bundled few-shot) and building those objects took 27 ms per answer against
        json.loads's 5.5 ms: the client's CPU, not the server, capped scoring throughput (bench/llm.py).
        """
        try:
            response = call_api(
                f"simulator {self.name}",
                _json_of(endpoint),
                params,
                self.options.api,
                ", and that the server supports this method",
            )
        except UnreadableAnswer as exc:
            raise SimulationFailure(f"the server's answer is not valid JSON ({exc})") from None
        choices = response.get("choices") if isinstance(response, dict) else None
        if not choices or not isinstance(choices[0], dict):
            raise SimulationFailure("the server returned no choices")
        usage = response.get("usage")
        counts = None
        if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
            counts = (usage["prompt_tokens"], int(usage.get("completion_tokens") or 0))
        return choices[0], counts

    @abstractmethod
    def _one(self, explanation: str, record: ActivationRecord) -> Reading:
        """Predictions for one record: one request, parsed; SimulationFailure when the answer is unusable."""


def _json_of(raw_endpoint: Callable[..., Any]) -> Callable[..., Any]:
    """`raw_endpoint` (a `client.….with_raw_response.create`) returning the answer's JSON; an answer that is not
    JSON raises ValueError, which call_api asks again for."""

    def call(**params: Any) -> Any:
        return raw_endpoint(**params).http_response.json()

    return call


@dataclass
class CompletionsEchoSimulator(_EndpointSimulator):
    """All-at-once over /completions with `echo=True, logprobs=K, max_tokens=0` (vLLM and compatible servers).

    Only the first token after each tab is visible, so for a served tokenizer that writes "10" as "1","0" the
    value 10 cannot be told from 1 (the mass of "1" counts as 1); use the local method for such models.
    """

    method: str = "completions_echo"

    def _one(self, explanation: str, record: ActivationRecord) -> Reading:
        if not record.tokens:
            return Reading([])
        prompt, _offsets = completion_prompt(explanation, record, self.examples)
        choice, usage = self._request(
            self.client.completions.with_raw_response.create,
            model=self.model,
            prompt=prompt,
            echo=True,
            logprobs=self.top_logprobs,
            max_tokens=0,
            temperature=0,
        )
        reading = predictions_from_echo(
            choice.get("logprobs") or {}, len(record.tokens), hidden_count(self.examples), self.on_no_value
        )
        return replace(reading, usage=usage)


@dataclass
class ChatSimulator(_EndpointSimulator):
    """Chat fallback: the model writes the `token<TAB>n` lines (temperature 0); `chat_logprobs` reads the
    top_logprobs at each number, `chat_parse` takes the numbers as written."""

    method: str = "chat_logprobs"

    def _one(self, explanation: str, record: ActivationRecord) -> Reading:
        if not record.tokens:
            return Reading([])
        with_logprobs = self.method == "chat_logprobs"
        extra: dict[str, Any] = {"logprobs": True, "top_logprobs": self.top_logprobs} if with_logprobs else {}
        choice, usage = self._request(
            self.client.chat.completions.with_raw_response.create,
            model=self.model,
            messages=chat_messages(explanation, record, self.examples),
            temperature=0,
            max_tokens=16 * len(record.tokens) + 64,
            **extra,
        )
        answer = (choice.get("message") or {}).get("content") or ""  # none is read as empty: a failure, with why
        if not with_logprobs:
            return Reading([float(line.value) for line in parse_chat_answer(answer, record.tokens)], usage=usage)
        content = (choice.get("logprobs") or {}).get("content")
        if not content:
            raise SimulationFailure("the server returned no logprobs; use the chat_parse method with this server")
        return replace(predictions_from_chat_logprobs(answer, content, record.tokens, self.on_no_value), usage=usage)
