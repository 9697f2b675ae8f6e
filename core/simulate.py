"""Simulators: predict a neuron's activation on every token from an explanation (SPEC.md §3).

Every simulator has a `name` (`hf:PATH`, `openai:MODEL`), a `method` and `simulate(explanation, records)`, which
returns one expected value 0..10 per token of every record, or a failed result with the reason. A parse failure or
a misaligned answer is always a failure, never a row of zeros.

Methods (the `SIMULATORS` registry):
- `all_at_once` (local transformers model): one text prompt whose target lines read `token<TAB>unknown`; one forward
  pass per excerpt gives, at every position right after a `<TAB>`, the next-token distribution over "0".."10".
- `completions_echo` (an OpenAI-compatible /completions server that echoes prompt logprobs, e.g. vLLM): the same
  prompt, read from the echoed `top_logprobs`.
- `chat_logprobs` / `chat_parse` (chat-only APIs): the model writes the `token<TAB>n` lines itself; we read
  `top_logprobs` at each number, or just parse the numbers.

Token text in prompts is escaped (`escape_token`) so that a tab or newline inside a token cannot break the
one-line-per-token layout.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import math
import re
import threading
import time
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from core.errors import InputError, LLMError, ModelError
from core.prompts import EXPLANATION_PREFIX
from core.records import ActivationRecord, normalize

log = logging.getLogger(__name__)

BUNDLED_FEW_SHOT = Path(__file__).resolve().parent / "data" / "simulation_few_shot.json"
MAX_VALUE = 10
VALUE_STRINGS = tuple(str(v) for v in range(MAX_VALUE + 1))
UNKNOWN = "unknown"
START, END = "<start>", "<end>"
DEFAULT_TOP_LOGPROBS = 20  # vLLM's default cap; 11 values plus room for the non-numeric alternatives
DEFAULT_BATCH_SIZE = 16
DEFAULT_CONCURRENCY = 4

SYSTEM_MESSAGE = (
    "We are studying neurons in a neural network. Each neuron responds to some particular thing in a short text. "
    "Given an explanation of what a neuron responds to, predict how strongly it activates on each token of a "
    "text.\n\n"
    "Each line holds one token, a tab, and the activation: an integer from 0 (no response) to 10 (the strongest "
    'response). The word "unknown" marks an activation that is not shown. Most activations are 0. A tab or a '
    "newline inside a token is written as \\t or \\n."
)
CHAT_INSTRUCTIONS = (
    "\n\nReply with every token of the text, one per line, in the same order and written exactly as given, each "
    "followed by a tab and your predicted activation. Put the lines between <start> and <end>, and write nothing "
    "else."
)


# ---------------------------------------------------------------------------------------------------------------
# Results and the simulator interface
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimulationResult:
    """One list of predicted activations per record (one float per token), or status "failed" with the reason."""

    simulator: str
    method: str
    predictions: tuple[tuple[float, ...], ...] | None
    status: str = "ok"
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def failed(cls, simulator: str, method: str, reason: str, seconds: float = 0.0) -> SimulationResult:
        return cls(simulator, method, None, "failed", reason, seconds)

    def to_json(self) -> dict[str, Any]:
        return {
            "simulator": self.simulator,
            "method": self.method,
            "status": self.status,
            "error": self.error,
            "seconds": self.seconds,
            "predictions": None if self.predictions is None else [list(p) for p in self.predictions],
        }


@runtime_checkable
class Simulator(Protocol):
    """Anything that turns an explanation and records into a SimulationResult."""

    name: str
    method: str

    def simulate(self, explanation: str, records: Sequence[ActivationRecord]) -> SimulationResult: ...


class SimulationFailure(Exception):
    """Raised inside a simulator when an answer cannot be turned into predictions; becomes a failed result."""


def check_alignment(result: SimulationResult, records: Sequence[ActivationRecord]) -> SimulationResult:
    """The result itself when it has one finite prediction per token of every record; else a failed result."""
    if not result.ok:
        return result
    predictions = result.predictions or ()
    reason = None
    if len(predictions) != len(records):
        reason = f"{len(predictions)} prediction lists for {len(records)} records"
    else:
        for i, (record, predicted) in enumerate(zip(records, predictions, strict=True)):
            if len(predicted) != len(record.tokens):
                reason = f"record {i}: {len(predicted)} predictions for {len(record.tokens)} tokens"
                break
            if not all(isinstance(v, int | float) and math.isfinite(v) for v in predicted):
                reason = f"record {i}: a prediction is not a finite number"
                break
    if reason is None:
        return result
    return SimulationResult.failed(result.simulator, result.method, f"misaligned predictions: {reason}", result.seconds)


# ---------------------------------------------------------------------------------------------------------------
# Expected values (SPEC.md §3)
# ---------------------------------------------------------------------------------------------------------------


def value_probabilities(first: Mapping[str, float], after_one: Mapping[str, float] | None = None) -> list[float]:
    """Unnormalised P(value) for values 0..10 from the distribution over the first token written after the tab.

    `first` maps token strings to probabilities (any common scale; other tokens are ignored). For a tokenizer
    that writes "10" as "1","0", pass `after_one`, the (normalised) distribution of the token that follows "1":
    then P(10) = P("1")·P("0"|"1") and P(1) = P("1")·(1 − P("0"|"1")). Without it, "1" counts as the value 1.
    """
    probs = [float(first.get(text, 0.0)) for text in VALUE_STRINGS]
    if after_one is not None:
        p_one = probs[1]
        p_zero_after_one = min(1.0, max(0.0, float(after_one.get("0", 0.0))))
        probs[1] = p_one * (1.0 - p_zero_after_one)
        probs[MAX_VALUE] += p_one * p_zero_after_one
    return probs


def expected_value(probs: Sequence[float]) -> float | None:
    """EV = Σ v·p(v) / Σ p(v) over v = 0..10; None when no value has any probability."""
    total = float(sum(probs))
    if not total > 0 or not math.isfinite(total):
        return None
    return float(sum(v * p for v, p in enumerate(probs)) / total)


def _from_logprobs(logprobs: Mapping[str, float]) -> dict[str, float]:
    """Top-logprob maps → probabilities of the value strings (tokens are stripped: vLLM may render ' 7')."""
    probs: dict[str, float] = {}
    for token, logprob in logprobs.items():
        text = str(token).strip()
        if text in VALUE_STRINGS and logprob is not None:
            probs[text] = probs.get(text, 0.0) + math.exp(float(logprob))
    return probs


# ---------------------------------------------------------------------------------------------------------------
# The prompt: few-shot examples and pieces (pure functions)
# ---------------------------------------------------------------------------------------------------------------

_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def escape_token(token: str) -> str:
    """Token text safe for a `token<TAB>value` line: tab, newline, CR and other control characters escaped.

    Backslashes are kept as they are: the escapes only need to keep the line layout intact, and doubling every
    backslash in code excerpts would make them harder for the simulator to read.
    """
    out = []
    for ch in token:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif unicodedata.category(ch) == "Cc" or ch in "\u2028\u2029\x85":
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


@dataclass(frozen=True)
class SimulationExample:
    """A few-shot neuron: its explanation and records; activations before `first_shown[i]` are shown as unknown."""

    explanation: str
    records: tuple[ActivationRecord, ...]
    first_shown: tuple[int, ...]

    def values(self) -> list[list[int]]:
        """The 0..10 values shown (SPEC.md §1 normalisation over this example's records)."""
        return normalize(self.records)


def few_shot_from_json(data: Any, where: str = "simulation few-shot") -> tuple[SimulationExample, ...]:
    """Parse `{"neurons": [{"explanation", "records": [{"tokens", "activations", "first_shown"?}]}]}`."""
    neurons = data.get("neurons") if isinstance(data, dict) else data
    if not isinstance(neurons, list):
        raise InputError(f"{where}: expected an object with a 'neurons' list")
    examples = []
    for i, item in enumerate(neurons):
        here = f"{where}.neurons[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("explanation"), str) or not item["explanation"]:
            raise InputError(f"{here}: expected an object with a non-empty 'explanation' and 'records'")
        raw_records = item.get("records")
        if not isinstance(raw_records, list) or not raw_records:
            raise InputError(f"{here}.records: expected a non-empty list of records")
        records, first_shown = [], []
        for j, raw in enumerate(raw_records):
            record = ActivationRecord.from_json(raw, f"{here}.records[{j}]")
            shown = raw.get("first_shown", 0)
            if isinstance(shown, bool) or not isinstance(shown, int) or not 0 <= shown <= len(record.tokens):
                raise InputError(f"{here}.records[{j}].first_shown: expected an integer from 0 to the token count")
            records.append(record)
            first_shown.append(shown)
        examples.append(SimulationExample(item["explanation"].strip(), tuple(records), tuple(first_shown)))
    return tuple(examples)


@lru_cache(maxsize=8)
def _read_few_shot(path: str) -> tuple[SimulationExample, ...]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"cannot read simulation few-shot file {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    return few_shot_from_json(data, str(path))


def load_few_shot(source: str | Path | Sequence[SimulationExample] | None = None) -> tuple[SimulationExample, ...]:
    """Few-shot neurons: None → core/data/simulation_few_shot.json; "none" → no examples; a path; or examples."""
    if source is None:
        return _read_few_shot(str(BUNDLED_FEW_SHOT))
    if isinstance(source, str | Path):
        if str(source).strip().lower() == "none":
            return ()
        return _read_few_shot(str(Path(source).resolve()))
    return tuple(source)


def _explanation_text(explanation: str) -> str:
    text = " ".join(explanation.split())
    if not text:
        raise InputError("the explanation is empty: give the text of an explanation to simulate")
    return text.rstrip(".").rstrip()


def neuron_header(number: int, explanation: str) -> str:
    """The lines that introduce neuron `number` before its activation blocks."""
    return (
        f"\nNeuron {number}\nExplanation of neuron {number} behavior: {EXPLANATION_PREFIX} "
        f"{_explanation_text(explanation)}.\nActivations:\n"
    )


@dataclass(frozen=True)
class Piece:
    """A run of prompt text. `slot` pieces end right after a target `<TAB>`: the next token is a value."""

    text: str
    slot: bool = False


def _lines(tokens: Sequence[str], values: Sequence[str], slots: bool) -> list[Piece]:
    # A line's text and tab form one piece and its value (plus newline) the next, so the tab always ends a piece
    # and never merges with the value, in the few-shot examples and in the target alike.
    pieces = [Piece(f"{START}\n")]
    for token, value in zip(tokens, values, strict=True):
        pieces.append(Piece(f"{escape_token(token)}\t", slot=slots))
        pieces.append(Piece(f"{value}\n"))
    pieces.append(Piece(f"{END}\n"))
    return pieces


def few_shot_pieces(few_shot: Sequence[SimulationExample]) -> list[Piece]:
    """System message and few-shot neurons, as pieces (none of them a slot)."""
    pieces = [Piece(SYSTEM_MESSAGE + "\n")]
    for number, example in enumerate(few_shot, start=1):
        pieces.append(Piece(neuron_header(number, example.explanation)))
        for record, values, shown in zip(example.records, example.values(), example.first_shown, strict=True):
            texts = [UNKNOWN if i < shown else str(v) for i, v in enumerate(values)]
            pieces += _lines(record.tokens, texts, slots=False)
    return pieces


def target_pieces(record: ActivationRecord) -> list[Piece]:
    """One excerpt of the target neuron: every token as `token<TAB>unknown`, each tab a slot."""
    return _lines(record.tokens, [UNKNOWN] * len(record.tokens), slots=True)


def completion_prompt(
    explanation: str, record: ActivationRecord, few_shot: Sequence[SimulationExample]
) -> tuple[str, list[int]]:
    """The all-at-once prompt as one text, and the character offset of every slot (the start of its `unknown`)."""
    pieces = [
        *few_shot_pieces(few_shot),
        Piece(neuron_header(len(few_shot) + 1, explanation)),
        *target_pieces(record),
    ]
    text, offsets = "", []
    for piece in pieces:
        text += piece.text
        if piece.slot:
            offsets.append(len(text))
    return text, offsets


def hidden_count(few_shot: Sequence[SimulationExample]) -> int:
    """How many few-shot activations are shown as unknown (they precede the target's slots in the prompt)."""
    return sum(
        min(shown, len(record.tokens))
        for example in few_shot
        for record, shown in zip(example.records, example.first_shown, strict=True)
    )


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


def _logprob_tokens(content: Sequence[Mapping[str, Any]]) -> tuple[list[int], bytes]:
    """Byte offsets of chat logprob tokens and the bytes they spell (exact even for split multi-byte characters)."""
    starts, data = [], b""
    for item in content:
        starts.append(len(data))
        raw = item.get("bytes")
        data += bytes(raw) if raw is not None else str(item.get("token", "")).encode("utf-8")
    return starts, data


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


def predictions_from_chat_logprobs(
    answer: str, content: Sequence[Mapping[str, Any]], tokens: Sequence[str]
) -> list[float]:
    """EVs from a chat answer and its per-token logprobs (`choices[0].logprobs.content`, as dicts)."""
    lines = parse_chat_answer(answer, tokens)
    starts, data = _logprob_tokens(content)
    if data.decode("utf-8", errors="replace") != answer:
        raise SimulationFailure("the logprob tokens do not spell the answer text; cannot locate the numbers")
    predictions = []
    for line in lines:
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
        ev = expected_value(value_probabilities(first, after_one))
        # The written number is a prediction too when its alternatives hold no value (a sampled token outside
        # the top-k); never a zero.
        predictions.append(float(line.value) if ev is None else ev)
    return predictions


def predictions_from_echo(logprobs: Mapping[str, Any], n_slots: int, n_hidden: int) -> list[float]:
    """EVs from an echoed /completions prompt (`choices[0].logprobs` as a dict) for the target's `n_slots`.

    A slot is a token that starts "unknown" right after a token ending in a tab; tabs occur nowhere else in our
    prompts (escape_token), so the slots are the last `n_slots` of the `n_hidden + n_slots` such places. Counting
    tokens rather than trusting `text_offset` survives servers whose offsets drift on split multi-byte characters.
    """
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
    for number, index in enumerate(places[n_hidden:], start=1):
        ev = expected_value(value_probabilities(_from_logprobs(top[index] or {})))
        if ev is None:
            raise SimulationFailure(f"token {number}: no value 0..10 among the top logprobs; raise top_logprobs")
        predictions.append(ev)
    return predictions


# ---------------------------------------------------------------------------------------------------------------
# Local all-at-once simulator (transformers)
# ---------------------------------------------------------------------------------------------------------------


class _PieceEncoder:
    """Token ids of prompt pieces, encoded one by one so that piece boundaries are token boundaries.

    Tokenizers that prepend a space to every encoded text (SentencePiece "legacy" mode) are handled by encoding
    `"\\n" + piece` and dropping the ids of the newline.
    """

    ANCHOR = "\n"

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._cache: dict[str, tuple[int, ...]] = {}
        self._anchor = self._raw(self.ANCHOR)
        probe = "unknown"
        self.plain = self._raw(self.ANCHOR + probe)[len(self._anchor) :] == self._raw(probe)

    def _raw(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def __call__(self, text: str) -> tuple[int, ...]:
        ids = self._cache.get(text)
        if ids is None:
            if self.plain:
                ids = tuple(self._raw(text))
            else:
                anchored = self._raw(self.ANCHOR + text)
                n = len(self._anchor)
                ids = tuple(anchored[n:] if anchored[:n] == self._anchor else self._raw(text))
            if len(self._cache) < 100_000:
                self._cache[text] = ids
        return ids

    def start_ids(self) -> list[int]:
        """The special tokens the tokenizer puts before a text (e.g. BOS), if any."""
        with_special = list(self.tokenizer.encode("a", add_special_tokens=True))
        plain = self._raw("a")
        for i in range(len(with_special) - len(plain) + 1):
            if with_special[i : i + len(plain)] == plain:
                return with_special[:i]
        return []


@dataclass(frozen=True)
class ValueTokens:
    """Ids of the value strings. `ten_split`: "10" is written as the ids of "1" then "0"."""

    digits: tuple[int, ...]  # ids of "0".."9"
    ten: int | None  # id of "10" when it is a single token
    ten_split: bool


def value_tokens(encode: Callable[[str], Sequence[int]]) -> ValueTokens:
    """Find how the tokenizer writes 0..10; ModelError for tokenizers that split single digits."""
    digits = []
    for v in range(10):
        ids = list(encode(str(v)))
        if len(ids) != 1:
            raise ModelError(f"the simulator's tokenizer writes the digit {v} as {len(ids)} tokens; it cannot be used")
        digits.append(ids[0])
    ten = list(encode("10"))
    if len(ten) == 1:
        return ValueTokens(tuple(digits), ten[0], False)
    if ten == [digits[1], digits[0]]:
        return ValueTokens(tuple(digits), None, True)
    raise ModelError(f"the simulator's tokenizer writes 10 as {ten}, neither one token nor the tokens of 1 and 0")


@dataclass(frozen=True)
class EncodedExcerpt:
    """The token ids of one target excerpt and, for each record token, the index whose next token is its value."""

    ids: tuple[int, ...]
    slots: tuple[int, ...]


class LocalAllAtOnceSimulator:
    """All-at-once simulation with a local causal LM (SPEC.md §3): one forward pass per excerpt, batched.

    The prompt is built from pieces encoded one by one, so every slot is exactly the last position of a
    `token<TAB>` piece: no re-tokenising and searching. With `reuse_prefix` the key/value cache of system message
    + few-shot neurons is computed once per simulator and the explanation is appended once per neuron; every batch
    of excerpts runs on a copy of it. A tokenizer that writes "10" as "1","0" gets, per slot, one extra position
    holding "1" placed right after the slot (its own position id, attending only to the prompt up to the slot), so
    P("0" | "1") comes out of the same forward pass; see `value_probabilities`.
    """

    method = "all_at_once"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str = "hf:local",
        few_shot: str | Path | Sequence[SimulationExample] | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        reuse_prefix: bool = True,
    ) -> None:
        import torch

        if batch_size < 1:
            raise InputError(f"batch_size={batch_size}: use at least 1")
        self.torch = torch
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.batch_size = batch_size
        self.reuse_prefix = reuse_prefix
        self.few_shot = load_few_shot(few_shot)
        self.encode = _PieceEncoder(tokenizer)
        self.values = value_tokens(self.encode)
        self.device = next(model.parameters()).device
        self.prefix_ids: tuple[int, ...] = tuple(self.encode.start_ids()) + tuple(
            i for piece in few_shot_pieces(self.few_shot) for i in self.encode(piece.text)
        )
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad if pad is not None else 0)
        parameters = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in parameters else "past_key_values"
        self._keep_logits = "logits_to_keep" in parameters
        self._prefix_cache: Any = None
        self._neuron_cache: tuple[str, Any] | None = None
        self._lock = threading.Lock()  # the app may simulate from several sessions; the caches are per instance

    # -- encoding ---------------------------------------------------------------------------------------------

    def explanation_ids(self, explanation: str) -> tuple[int, ...]:
        return self.encode(neuron_header(len(self.few_shot) + 1, explanation))

    def encode_excerpt(self, record: ActivationRecord) -> EncodedExcerpt:
        ids: list[int] = []
        slots: list[int] = []
        pieces = target_pieces(record)
        pieces = pieces[:-2]  # after the last slot nothing can change a prediction: drop its value and <end>
        for piece in pieces:
            ids.extend(self.encode(piece.text))
            if piece.slot:
                slots.append(len(ids) - 1)
        return EncodedExcerpt(tuple(ids), tuple(slots))

    # -- simulation -------------------------------------------------------------------------------------------

    def simulate(self, explanation: str, records: Sequence[ActivationRecord]) -> SimulationResult:
        start = time.perf_counter()
        try:
            with self._lock:
                predictions = self.predict(explanation, records)
        except SimulationFailure as exc:
            return SimulationResult.failed(self.name, self.method, str(exc), time.perf_counter() - start)
        return SimulationResult(
            self.name, self.method, tuple(tuple(p) for p in predictions), seconds=time.perf_counter() - start
        )

    def predict(self, explanation: str, records: Sequence[ActivationRecord]) -> list[list[float]]:
        """Expected values per token of every record (the work behind `simulate`)."""
        encoded = [self.encode_excerpt(r) for r in records]
        explanation_ids = self.explanation_ids(explanation)
        results: list[list[float]] = [[] for _ in records]
        order = sorted(range(len(records)), key=lambda i: len(encoded[i].ids))  # similar lengths share a batch
        with self.torch.inference_mode():
            cache = self._neuron_prefix(explanation, explanation_ids) if self.reuse_prefix else None
            for start in range(0, len(order), self.batch_size):
                batch = [i for i in order[start : start + self.batch_size] if encoded[i].slots]
                if not batch:
                    continue
                if cache is None:
                    prefix = (*self.prefix_ids, *explanation_ids)
                    sequences = [list(prefix) + list(encoded[i].ids) for i in batch]
                    slots = [[len(prefix) + s for s in encoded[i].slots] for i in batch]
                    evs = self._forward(None, 0, sequences, slots)
                else:
                    past, past_len = cache
                    sequences = [list(encoded[i].ids) for i in batch]
                    slots = [list(encoded[i].slots) for i in batch]
                    evs = self._forward(self._expand(past, len(batch)), past_len, sequences, slots)
                for i, values in zip(batch, evs, strict=True):
                    results[i] = values
        return results

    def _run(self, input_ids: Any, cache: Any, **kwargs: Any) -> Any:
        if cache is not None:
            kwargs[self._cache_kw] = cache
        return self.model(input_ids=input_ids, use_cache=cache is not None, **kwargs)

    def _few_shot_prefix(self) -> tuple[Any, int]:
        if self._prefix_cache is None:
            from transformers import DynamicCache

            cache = DynamicCache()
            ids = self.torch.tensor([self.prefix_ids], device=self.device)
            self._run(ids, cache)
            self._prefix_cache = (cache, len(self.prefix_ids))
        return self._prefix_cache

    def _neuron_prefix(self, explanation: str, explanation_ids: Sequence[int]) -> tuple[Any, int]:
        # The last neuron's cache is kept: scoring the calibration and valid splits reuses it.
        if self._neuron_cache is not None and self._neuron_cache[0] == explanation:
            return self._neuron_cache[1]
        few_shot_cache, few_shot_len = self._few_shot_prefix()
        cache = copy.deepcopy(few_shot_cache)  # the few-shot cache is shared across neurons: never mutate it
        ids = self.torch.tensor([list(explanation_ids)], device=self.device)
        self._run(ids, cache)
        entry = (cache, few_shot_len + len(explanation_ids))
        self._neuron_cache = (explanation, entry)
        return entry

    @staticmethod
    def _expand(cache: Any, batch: int) -> Any:
        expanded = copy.deepcopy(cache)
        if batch > 1:
            expanded.batch_repeat_interleave(batch)
        return expanded

    def _forward(
        self, cache: Any, past_len: int, sequences: list[list[int]], slots: list[list[int]]
    ) -> list[list[float]]:
        torch = self.torch
        batch = len(sequences)
        length = max(len(s) for s in sequences)
        split = self.values.ten_split
        n_extra = max(len(s) for s in slots) if split else 0
        width = length + n_extra
        input_ids = torch.full((batch, width), self.pad_id, dtype=torch.long)
        for b, seq in enumerate(sequences):
            input_ids[b, : len(seq)] = torch.tensor(seq)
        kwargs: dict[str, Any] = {}
        if split:
            input_ids[:, length:] = self.values.digits[1]
            kwargs.update(self._split_layout(past_len, length, n_extra, slots))
        # Right padding needs no padding mask: causal attention keeps real positions from seeing later pads.
        keep = sorted({s for row in slots for s in row} | {length + k for k in range(n_extra)})
        column = {position: c for c, position in enumerate(keep)}
        if self._keep_logits:
            kwargs["logits_to_keep"] = torch.tensor(keep, device=self.device)
        logits = self._run(input_ids.to(self.device), cache, **kwargs).logits
        if not self._keep_logits:
            logits = logits[:, keep]
        digit_ids = list(self.values.digits) + ([self.values.ten] if self.values.ten is not None else [])
        value_logits = logits[:, :, digit_ids].float()
        value_logits = value_logits - value_logits.amax(dim=-1, keepdim=True)
        first = value_logits.exp().cpu().tolist()
        after = None
        if split:
            extra_columns = [column[length + k] for k in range(n_extra)]
            after = logits[:, extra_columns].float().log_softmax(dim=-1)[:, :, self.values.digits[0]].exp().cpu()
            after = after.tolist()
        results = []
        for b, row in enumerate(slots):
            evs = []
            for k, slot in enumerate(row):
                probs = dict(zip(VALUE_STRINGS, first[b][column[slot]], strict=False))
                ev = expected_value(value_probabilities(probs, {"0": after[b][k]} if after is not None else None))
                if ev is None:
                    raise SimulationFailure(f"no probability on any value at token {k + 1}; the logits are not finite")
                evs.append(ev)
            results.append(evs)
        return results

    def _split_layout(self, past_len: int, length: int, n_extra: int, slots: list[list[int]]) -> dict[str, Any]:
        """Position ids and a 4D additive mask for the extra "1" positions (see the class docstring)."""
        torch = self.torch
        batch, width = len(slots), length + n_extra
        positions = torch.arange(width).repeat(batch, 1) + past_len
        allowed = torch.ones(width, width, dtype=torch.bool).tril().repeat(batch, 1, 1)
        for b, row in enumerate(slots):
            for k, slot in enumerate(row):
                query = length + k
                allowed[b, query, :] = False
                allowed[b, query, : slot + 1] = True
                allowed[b, query, query] = True
                positions[b, query] = past_len + slot + 1
        allowed = torch.cat([torch.ones(batch, width, past_len, dtype=torch.bool), allowed], dim=-1)
        dtype = self.model.dtype
        mask = torch.zeros(batch, 1, width, past_len + width, dtype=dtype)
        mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
        return {"attention_mask": mask.to(self.device), "position_ids": positions.to(self.device)}


# ---------------------------------------------------------------------------------------------------------------
# OpenAI-compatible simulators
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class _EndpointSimulator(ABC):
    """Shared parts of the OpenAI-compatible simulators: client, few-shot, retries, one request per record.

    Transport and HTTP errors are retried with backoff (core.llm.RetryPolicy); when they persist, or the request
    is refused (a bad key, an unknown model, a server without echo), an LLMError stops the run so it can be fixed
    and resumed. An answer that arrives but cannot be used becomes a failed SimulationResult.
    """

    model: str
    base_url: str | None = None
    api_key: str | None = None
    few_shot: Any = None
    top_logprobs: int = DEFAULT_TOP_LOGPROBS
    concurrency: int = DEFAULT_CONCURRENCY
    timeout: float = 60.0
    retry: Any = None
    client: Any = field(default=None, repr=False)
    method: str = ""

    def __post_init__(self) -> None:
        from core.llm import RetryPolicy, openai_client

        self.examples = load_few_shot(self.few_shot)
        self.retry = self.retry or RetryPolicy()
        if self.client is None:
            self.client = openai_client(self.base_url, self.api_key, timeout=self.timeout)

    @property
    def name(self) -> str:
        return f"openai:{self.model}"

    def simulate(self, explanation: str, records: Sequence[ActivationRecord]) -> SimulationResult:
        start = time.perf_counter()
        _explanation_text(explanation)
        try:
            with ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(records) or 1))) as pool:
                futures = [pool.submit(self._one, explanation, record) for record in records]
                predictions = []
                for i, future in enumerate(futures):
                    try:
                        predictions.append(tuple(future.result()))
                    except SimulationFailure as exc:
                        raise SimulationFailure(f"record {i}: {exc}") from None
        except SimulationFailure as exc:
            return SimulationResult.failed(self.name, self.method, str(exc), time.perf_counter() - start)
        return SimulationResult(self.name, self.method, tuple(predictions), seconds=time.perf_counter() - start)

    def _request(self, create: Callable[..., Any], **params: Any) -> dict[str, Any]:
        """The first choice of one API call, as a dict, after retries (see the class docstring)."""
        import openai

        from core.llm import RETRYABLE_STATUS, scrub_secrets

        secrets = (self.api_key,)
        for attempt in range(self.retry.max_attempts):
            last = attempt == self.retry.max_attempts - 1
            retry_after = None
            try:
                response = create(**params)
                data = response.model_dump() if hasattr(response, "model_dump") else dict(response)
                choices = data.get("choices") or []
                if not choices:
                    raise SimulationFailure("the server returned no choices")
                return choices[0]
            except openai.APIStatusError as exc:
                if (exc.status_code not in RETRYABLE_STATUS and exc.status_code < 500) or last:
                    detail = scrub_secrets(str(exc.message), secrets)
                    raise LLMError(
                        f"simulator {self.name}: HTTP {exc.status_code} after {attempt + 1} attempt(s): {detail}; "
                        "check the model name, key and base URL, and that the server supports this method"
                    ) from None
                header = exc.response.headers.get("retry-after") if exc.response is not None else None
                retry_after = float(header) if header and header.replace(".", "", 1).isdigit() else None
            except (openai.APITimeoutError, openai.APIConnectionError) as exc:
                if last:
                    raise LLMError(
                        f"simulator {self.name}: cannot reach the server after {attempt + 1} attempts "
                        f"({type(exc).__name__}); check the base URL and that the server is up"
                    ) from None
            except (ValueError, openai.APIResponseValidationError) as exc:
                if last:
                    raise SimulationFailure(f"the server's answer is not valid JSON ({exc})") from None
            time.sleep(self.retry.delay(attempt, retry_after))
        raise LLMError(f"simulator {self.name}: gave up after {self.retry.max_attempts} attempts")

    @abstractmethod
    def _one(self, explanation: str, record: ActivationRecord) -> list[float]:
        """Predictions for one record: one request, parsed; SimulationFailure when the answer is unusable."""


@dataclass
class CompletionsEchoSimulator(_EndpointSimulator):
    """All-at-once over /completions with `echo=True, logprobs=K, max_tokens=0` (vLLM and compatible servers).

    Only the first token after each tab is visible, so for a served tokenizer that writes "10" as "1","0" the
    value 10 cannot be told from 1 (the mass of "1" counts as 1); use the local method for such models.
    """

    method: str = "completions_echo"

    def _one(self, explanation: str, record: ActivationRecord) -> list[float]:
        if not record.tokens:
            return []
        prompt, _offsets = completion_prompt(explanation, record, self.examples)
        choice = self._request(
            self.client.completions.create,
            model=self.model,
            prompt=prompt,
            echo=True,
            logprobs=self.top_logprobs,
            max_tokens=0,
            temperature=0,
        )
        return predictions_from_echo(choice.get("logprobs") or {}, len(record.tokens), hidden_count(self.examples))


@dataclass
class ChatSimulator(_EndpointSimulator):
    """Chat fallback: the model writes the `token<TAB>n` lines (temperature 0); `chat_logprobs` reads the
    top_logprobs at each number, `chat_parse` takes the numbers as written."""

    method: str = "chat_logprobs"

    def _one(self, explanation: str, record: ActivationRecord) -> list[float]:
        if not record.tokens:
            return []
        with_logprobs = self.method == "chat_logprobs"
        extra: dict[str, Any] = {"logprobs": True, "top_logprobs": self.top_logprobs} if with_logprobs else {}
        choice = self._request(
            self.client.chat.completions.create,
            model=self.model,
            messages=chat_messages(explanation, record, self.examples),
            temperature=0,
            max_tokens=16 * len(record.tokens) + 64,
            **extra,
        )
        answer = (choice.get("message") or {}).get("content")
        if not with_logprobs:
            return [float(line.value) for line in parse_chat_answer(answer, record.tokens)]
        content = (choice.get("logprobs") or {}).get("content")
        if not content:
            raise SimulationFailure("the server returned no logprobs; use the chat_parse method with this server")
        return predictions_from_chat_logprobs(answer, content, record.tokens)


# ---------------------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimulatorKind:
    """One simulation method: the backend prefix it runs on and what it needs."""

    method: str
    backend: str
    description: str


SIMULATORS: dict[str, SimulatorKind] = {
    kind.method: kind
    for kind in (
        SimulatorKind("all_at_once", "hf", "local transformers model: logits after every token<TAB> in one pass"),
        SimulatorKind("completions_echo", "openai", "/completions with echo + logprobs (vLLM): the same prompt"),
        SimulatorKind("chat_logprobs", "openai", "chat: the model writes token<TAB>n; read top_logprobs at n"),
        SimulatorKind("chat_parse", "openai", "chat without logprobs: parse the integers the model writes"),
    )
}
DEFAULT_METHODS = {"hf": "all_at_once", "openai": "chat_logprobs"}


def parse_simulator_spec(spec: str) -> tuple[str, str]:
    """`hf:PATH` or `openai:MODEL` → (backend, model)."""
    backend, sep, model = (spec or "").strip().partition(":")
    if not sep or backend not in DEFAULT_METHODS or not model.strip():
        raise InputError(f"simulator {spec!r} is not of the form hf:PATH or openai:MODEL")
    return backend, model.strip()


def get_simulator(spec: str, method: str | None = None, **options: Any) -> Simulator:
    """Build the simulator for `hf:PATH` (method all_at_once) or `openai:MODEL` (completions_echo, chat_logprobs
    (default) or chat_parse). Options: hf → device, dtype, batch_size, reuse_prefix, few_shot; openai → base_url,
    api_key, top_logprobs, concurrency, timeout, retry (core.llm.RetryPolicy), few_shot, client. None means default."""
    backend, model = parse_simulator_spec(spec)
    method = method or DEFAULT_METHODS[backend]
    kind = SIMULATORS.get(method)
    if kind is None:
        raise InputError(f"unknown simulation method {method!r}; choose one of {', '.join(SIMULATORS)}")
    if kind.backend != backend:
        allowed = [m for m, k in SIMULATORS.items() if k.backend == backend]
        raise InputError(f"method {method!r} does not run on {backend}: simulators; use {', '.join(allowed)}")
    options = {k: v for k, v in options.items() if v is not None}
    if backend == "hf":
        unknown = set(options) - {"device", "dtype", "batch_size", "reuse_prefix", "few_shot"}
        if unknown:
            raise InputError(f"unknown options for an hf: simulator: {', '.join(sorted(unknown))}")
        from core.llm import load_hf_causal_lm

        model_obj, tokenizer = load_hf_causal_lm(model, options.pop("device", None), options.pop("dtype", None))
        return LocalAllAtOnceSimulator(model_obj, tokenizer, name=f"hf:{model}", **options)
    accepted = {"base_url", "api_key", "top_logprobs", "concurrency", "timeout", "few_shot", "client", "retry"}
    unknown = set(options) - accepted
    if unknown:
        raise InputError(f"unknown options for an openai: simulator: {', '.join(sorted(unknown))}")
    if method == "completions_echo":
        return CompletionsEchoSimulator(model, **options)
    return ChatSimulator(model, method=method, **options)
