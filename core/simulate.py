"""Simulators: predict a neuron's activation on every token from an explanation (docs/METHOD.md §3).

Every simulator has a `name` (`hf:PATH`, `openai:MODEL`), a `method` and `simulate(explanation, records)`, which
returns one expected value 0..10 per token of every record, or a failed result with the reason. A parse failure or
a misaligned answer is always a failure, never a row of zeros. A position whose top logprobs hold no value 0..10 is
read as an expected value of 0, as OpenAI's simulator does, and counted (`SimulationResult.no_value_count`); the
`on_no_value="fail"` option of the API simulators makes it a failure instead.

Methods (the `SIMULATORS` registry below; `get_simulator` builds them):
- `all_at_once` (local transformers model, core/simulate_local.py), the paper's method: one text prompt whose
  target lines read
  `token<TAB>unknown`; one forward pass per excerpt gives, at every position right after a `<TAB>`, the next-token
  distribution over "0".."10".
- `completions_echo` (an OpenAI-compatible /completions server that echoes prompt logprobs, e.g. vLLM;
  core/simulate_api.py): the same all-at-once prompt, read from the echoed `top_logprobs`.
- `chat_logprobs` / `chat_parse` (chat-only APIs; core/simulate_api.py): fallbacks that are not the paper's method;
  the model writes the `token<TAB>n` lines itself; we read `top_logprobs` at each number, or parse the numbers.
  `chat_logprobs` is the default for `openai:` simulators, so every score table names the method (`method_note`).

This module holds what they share: the result type and interface, expected values and the prompt. Token text in
prompts is escaped (`escape_token`, shared with the explainer's original format in core/prompts.py) so that a tab or
newline inside a token cannot break the one-line-per-token layout.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from core.errors import InputError
from core.prompts import EXPLANATION_PREFIX, escape_token
from core.records import ActivationRecord, normalize

log = logging.getLogger(__name__)

BUNDLED_FEW_SHOT = Path(__file__).resolve().parent / "data" / "simulation_few_shot.json"
MAX_VALUE = 10
VALUE_STRINGS = tuple(str(v) for v in range(MAX_VALUE + 1))
UNKNOWN = "unknown"
START, END = "<start>", "<end>"

SYSTEM_MESSAGE = (
    "We are studying neurons in a neural network. Each neuron responds to some particular thing in a short text. "
    "Given an explanation of what a neuron responds to, predict how strongly it activates on each token of a "
    "text.\n\n"
    "Each line holds one token, a tab, and the activation: an integer from 0 (no response) to 10 (the strongest "
    'response). The word "unknown" marks an activation that is not shown. Most activations are 0. A tab or a '
    "newline inside a token is written as \\t or \\n."
)


# ---------------------------------------------------------------------------------------------------------------
# Results and the simulator interface
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimulationResult:
    """One list of predicted activations per record (one float per token), or status "failed" with the reason.

    `no_value_count`: how many predictions are 0 because no value 0..10 was among the top logprobs there.
    """

    simulator: str
    method: str
    predictions: tuple[tuple[float, ...], ...] | None
    status: str = "ok"
    error: str | None = None
    seconds: float = 0.0
    no_value_count: int = 0

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
            "no_value_count": self.no_value_count,
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
# Expected values (docs/METHOD.md §3)
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


# What to do at a position whose top logprobs hold no value 0..10: "zero" reads it as EV 0, as OpenAI's simulator
# does (its expected value of an empty distribution is 0), and counts it; "fail" fails the simulation.
NO_VALUE_POLICIES = ("zero", "fail")
DEFAULT_NO_VALUE = "zero"


def expected_value(probs: Sequence[float]) -> float | None:
    """EV = Σ v·p(v) / Σ p(v) over v = 0..10; None when no value has any probability (the callers decide)."""
    total = float(sum(probs))
    if not total > 0 or not math.isfinite(total):
        return None
    return float(sum(v * p for v, p in enumerate(probs)) / total)


# ---------------------------------------------------------------------------------------------------------------
# The prompt: few-shot examples and pieces (pure functions)
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimulationExample:
    """A few-shot neuron: its explanation and records; activations before `first_shown[i]` are shown as unknown."""

    explanation: str
    records: tuple[ActivationRecord, ...]
    first_shown: tuple[int, ...]

    def values(self) -> list[list[int]]:
        """The 0..10 values shown (docs/METHOD.md §1 normalisation over this example's records)."""
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


def explanation_text(explanation: str) -> str:
    """The explanation on one line (tabs and newlines become spaces) without its final periods; InputError when
    nothing is left."""
    text = " ".join(str(explanation or "").split()).rstrip(".").rstrip()
    if not text:
        raise InputError(f"the explanation {explanation!r} is empty: give the text of an explanation to simulate")
    return text


def neuron_header(number: int, explanation: str) -> str:
    """The lines that introduce neuron `number` before its activation blocks."""
    return (
        f"\nNeuron {number}\nExplanation of neuron {number} behavior: {EXPLANATION_PREFIX} "
        f"{explanation_text(explanation)}.\nActivations:\n"
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


# ---------------------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimulatorKind:
    """One simulation method: the backend prefix it runs on and what it needs."""

    method: str
    backend: str
    description: str
    all_at_once: bool  # the paper's method: one prompt, EVs read after every token<TAB> (docs/METHOD.md §3)


SIMULATORS: dict[str, SimulatorKind] = {
    kind.method: kind
    for kind in (
        SimulatorKind("all_at_once", "hf", "local transformers model: logits after every token<TAB> in one pass", True),
        SimulatorKind("completions_echo", "openai", "/completions with echo + logprobs (vLLM): the same prompt", True),
        SimulatorKind("chat_logprobs", "openai", "chat: the model writes token<TAB>n; read top_logprobs at n", False),
        SimulatorKind("chat_parse", "openai", "chat without logprobs: parse the integers the model writes", False),
    )
}
DEFAULT_METHODS = {"hf": "all_at_once", "openai": "chat_logprobs"}
# Scores imported from a published file (`python -m core import-scores`), not computed here.
IMPORTED_METHOD = "imported"
# The metrics of the scorers other than simulation (core.scorers; docs/METHOD.md §10), as score headers name them.
SCORER_METRICS = {
    "balanced_accuracy": "a detection or fuzzing scorer's balanced accuracy (0.5 = chance), not a correlation",
    "auroc": "an embedding scorer's AUROC of explanation–excerpt cosines (0.5 = chance), not a correlation",
}


def method_note(method: str | None) -> str:
    """The method as every score table header names it, saying whether it is the paper's (docs/METHOD.md §3)."""
    if method == IMPORTED_METHOD:
        return "imported: published scores, not computed here"
    if str(method) in SCORER_METRICS:
        return f"{method}: {SCORER_METRICS[str(method)]}"
    kind = SIMULATORS.get(str(method))
    if kind is None:
        return f"{method}: unknown method"
    if kind.all_at_once:
        return f"{method}: the paper's all-at-once method"
    return f"{method}: a chat fallback, not the paper's all-at-once method; not comparable with the paper's scores"


def parse_simulator_spec(spec: str) -> tuple[str, str]:
    """`hf:PATH` or `openai:MODEL` → (backend, model)."""
    backend, sep, model = (spec or "").strip().partition(":")
    if not sep or backend not in DEFAULT_METHODS or not model.strip():
        raise InputError(f"simulator {spec!r} is not of the form hf:PATH or openai:MODEL")
    return backend, model.strip()


def get_simulator(spec: str, method: str | None = None, **options: Any) -> Simulator:
    """Build the simulator for `hf:PATH` (method all_at_once) or `openai:MODEL` (completions_echo, chat_logprobs
    (default) or chat_parse). Options: hf → device, dtype, batch_size, reuse_prefix, few_shot; openai → base_url,
    api_key, top_logprobs, concurrency, timeout, retry (core.llm.RetryPolicy), few_shot, client, on_no_value
    ("zero" or "fail"). None means default."""
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
        # The implementations import this module, so they are imported here, where they are built.
        from core.llm_hf import load_hf_causal_lm
        from core.simulate_local import LocalAllAtOnceSimulator

        model_obj, tokenizer = load_hf_causal_lm(model, options.pop("device", None), options.pop("dtype", None))
        return LocalAllAtOnceSimulator(model_obj, tokenizer, name=f"hf:{model}", **options)
    accepted = {
        *("base_url", "api_key", "top_logprobs", "concurrency", "timeout", "few_shot", "client", "retry"),
        "on_no_value",
    }
    unknown = set(options) - accepted
    if unknown:
        raise InputError(f"unknown options for an openai: simulator: {', '.join(sorted(unknown))}")
    from core.simulate_api import ChatSimulator, CompletionsEchoSimulator

    if method == "completions_echo":
        return CompletionsEchoSimulator(model, **options)
    return ChatSimulator(model, method=method, **options)
