"""What every simulator shares (docs/METHOD.md §3): the options, the result type and interface, expected values, and
the all-at-once prompt with its few-shot examples. Implementations (core/simulate/api.py, core/simulate/local.py)
import this module and nothing else of the package; the registry in core/simulate/__init__.py imports them.

Token text in prompts is escaped (`escape_token`, shared with the explainer's original format in core/prompts.py) so
that a tab or newline inside a token cannot break the one-line-per-token layout.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pydantic import Field, StrictInt, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from core.datafiles import DataModel, parse
from core.errors import InputError
from core.llm.base import ApiOptions, LocalModelOptions
from core.prompts import EXPLANATION_PREFIX, RecordData, an_object, escape_token, read_data_file
from core.records import ActivationRecord, normalize

log = logging.getLogger(__name__)

BUNDLED_FEW_SHOT = Path(__file__).resolve().parent.parent / "data" / "simulation_few_shot.json"
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
    # Tokens of every request, as the server counted them; None when it did not report them (or a local model).
    input_tokens: int | None = None
    output_tokens: int | None = None

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
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "predictions": None if self.predictions is None else [list(p) for p in self.predictions],
        }


@runtime_checkable
class Simulator(Protocol):
    """Anything that turns an explanation and records into a SimulationResult."""

    @property
    def name(self) -> str: ...

    @property
    def method(self) -> str: ...

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
DEFAULT_TOP_LOGPROBS = 20  # vLLM's default cap; 11 values plus room for the non-numeric alternatives
DEFAULT_BATCH_SIZE = 16  # excerpts per forward pass of a local simulator


@dataclass(frozen=True)
class SimulatorOptions:
    """How to run a simulator: the part its backend reads (`api` for `openai:` simulators, `local` for `hf:`), the
    few-shot neurons (None: the bundled ones, "none", a JSON file, or examples), and per method:
    - `reuse_prefix` (hf): keep the key/value cache of the shared prompt prefix;
    - `top_logprobs` (openai): alternatives asked for at each position (None: 20 for simulators; for the
      detection and fuzzing scorers, whose LLM the same options describe, 5);
    - `on_no_value` (openai): a position whose top logprobs hold no value 0..10 is read as 0 and counted ("zero",
      OpenAI's reading) or fails the simulation ("fail").
    """

    api: ApiOptions = field(default_factory=ApiOptions)
    local: LocalModelOptions = field(default_factory=LocalModelOptions)
    few_shot: str | Path | tuple[SimulationExample, ...] | None = None
    reuse_prefix: bool = True
    top_logprobs: int | None = None
    on_no_value: str = DEFAULT_NO_VALUE

    def __post_init__(self) -> None:
        if self.on_no_value not in NO_VALUE_POLICIES:
            raise InputError(
                f"on_no_value {self.on_no_value!r} is unknown; choose one of {', '.join(NO_VALUE_POLICIES)}"
            )
        if self.top_logprobs is not None and self.top_logprobs < 0:
            raise InputError(f"top_logprobs {self.top_logprobs} must not be negative")


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


class SimulationRecordData(RecordData):
    """A few-shot record of a simulation few-shot file: activations before `first_shown` are shown as unknown."""

    first_shown: StrictInt = 0

    @field_validator("first_shown")
    @classmethod
    def _shown(cls, first_shown: int, info: ValidationInfo) -> int:
        if not 0 <= first_shown <= len(info.data.get("tokens") or ()):
            raise PydanticCustomError("first_shown", "expected an integer from 0 to the token count")
        return first_shown


class SimulationNeuronData(DataModel):
    explanation: str = Field(min_length=1)
    records: list[SimulationRecordData] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _object(cls, data: Any) -> Any:
        return an_object(data, "a non-empty 'explanation' and 'records'")


class SimulationFewShotFile(DataModel):
    """A simulation few-shot file: `{"description"?, "neurons": [{"explanation", "records": [{"tokens",
    "activations", "first_shown"?}]}]}`, or the list of neurons alone."""

    description: str | None = None
    neurons: list[SimulationNeuronData]

    @model_validator(mode="before")
    @classmethod
    def _the_list(cls, data: Any) -> Any:
        return data if isinstance(data, dict) else {"neurons": data}

    def examples(self) -> tuple[SimulationExample, ...]:
        return tuple(
            SimulationExample(
                neuron.explanation.strip(),
                tuple(r.record() for r in neuron.records),
                tuple(r.first_shown for r in neuron.records),
            )
            for neuron in self.neurons
        )


def few_shot_from_json(data: Any, where: str = "simulation few-shot") -> tuple[SimulationExample, ...]:
    """Parse `{"neurons": [{"explanation", "records": [{"tokens", "activations", "first_shown"?}]}]}`."""
    return parse(SimulationFewShotFile, data, where).examples()


def load_few_shot(source: str | Path | Sequence[SimulationExample] | None = None) -> tuple[SimulationExample, ...]:
    """Few-shot neurons: None → core/data/simulation_few_shot.json; "none" → no examples; a path; or examples."""
    if source is None or isinstance(source, str | Path):
        if isinstance(source, str) and source.strip().lower() == "none":
            return ()
        path = BUNDLED_FEW_SHOT if source is None else source
        return read_data_file(path, SimulationFewShotFile, "simulation few-shot").examples()
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
