"""Domain data: neurons, activation records, per-neuron records, splits and normalisation (docs/METHOD.md §1)."""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from core.errors import InputError


@dataclass(frozen=True, order=True)
class NeuronId:
    """One MLP neuron, written `layer:index` everywhere."""

    layer: int
    index: int

    def __str__(self) -> str:
        return f"{self.layer}:{self.index}"

    @classmethod
    def parse(cls, text: str) -> NeuronId:
        """Parse `layer:index`, e.g. `3:17`."""
        layer, sep, index = text.strip().partition(":")
        if not sep or not layer.strip().isdigit() or not index.strip().isdigit():
            raise InputError(f"neuron {text!r} is not of the form layer:index, e.g. 3:17")
        return cls(int(layer), int(index))

    def to_json(self) -> dict[str, int]:
        return {"layer_index": self.layer, "neuron_index": self.index}


_NEURON_TOKEN = re.compile(r"[^\s,;]+")


def parse_neurons(text: str) -> list[NeuronId]:
    """Neurons written `layer:index`, separated by commas, semicolons, spaces or new lines, in order and without
    repeats; `#` starts a comment (`--neurons 3:17,3:42`, the Explain page's list)."""
    lines = [line.split("#", 1)[0] for line in text.splitlines()]
    found = [NeuronId.parse(token) for line in lines for token in _NEURON_TOKEN.findall(line)]
    if not found:
        raise InputError("no neurons given: write them as layer:index, e.g. 3:17,3:42")
    return list(dict.fromkeys(found))


def neurons_from_file(name: str, data: bytes) -> list[NeuronId]:
    """Neurons from a file's bytes: a CSV with columns layer,neuron (`--neuron-file`, an upload), or text with
    layer:index entries as parse_neurons reads them."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{name} is not UTF-8 text; give a CSV with columns layer,neuron") from None
    first = next((line for line in text.splitlines() if line.strip()), "")
    if "layer" not in first.lower():
        return parse_neurons(text)
    return neurons_from_csv(text, name)


def neurons_from_csv(text: str, source: str = "neuron file") -> list[NeuronId]:
    """Neurons from CSV text with columns layer,neuron (any case, e.g. Layer,Neuron), in order, without repeats."""
    found = []
    for number, row in enumerate(csv.DictReader(io.StringIO(text)), start=2):
        fields = {str(k).strip().lower(): (v or "").strip() for k, v in row.items() if k is not None}
        if not {"layer", "neuron"} <= set(fields):
            raise InputError(f"{source}: expected columns layer,neuron (found: {', '.join(fields) or 'none'})")
        if not fields["layer"].isdigit() or not fields["neuron"].isdigit():
            raise InputError(f"{source}, line {number}: layer and neuron must be non-negative integers")
        found.append(NeuronId(int(fields["layer"]), int(fields["neuron"])))
    if not found:
        raise InputError(f"{source} lists no neurons; expected a CSV with columns layer,neuron")
    return list(dict.fromkeys(found))


@dataclass(frozen=True)
class ActivationRecord:
    """Tokens of one excerpt, as the tokenizer renders them, and one raw activation per token."""

    tokens: tuple[str, ...]
    activations: tuple[float, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "tokens", tuple(self.tokens))
        object.__setattr__(self, "activations", tuple(map(float, self.activations)))  # map: 3× a generator
        if len(self.tokens) != len(self.activations):
            raise InputError(
                f"record has {len(self.tokens)} tokens but {len(self.activations)} activations: they must match"
            )

    @property
    def max_activation(self) -> float:
        return max(self.activations, default=float("-inf"))

    def to_json(self) -> dict[str, list]:
        return {"tokens": list(self.tokens), "activations": list(self.activations)}

    @classmethod
    def from_json(cls, data: Any, where: str = "record") -> ActivationRecord:
        """Build from `{"tokens": [...], "activations": [...]}`, naming the bad field on error."""
        if not isinstance(data, dict):
            raise InputError(f"{where}: expected an object with 'tokens' and 'activations'")
        tokens, activations = data.get("tokens"), data.get("activations")
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise InputError(f"{where}.tokens: expected a list of strings")
        if not isinstance(activations, list):
            raise InputError(f"{where}.activations: expected a list of numbers")
        for i, value in enumerate(activations):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InputError(f"{where}.activations[{i}]: {value!r} is not a number")
            if not math.isfinite(value):
                raise InputError(f"{where}.activations[{i}]: {value!r} is not finite")
        if len(tokens) != len(activations):
            raise InputError(
                f"{where}: {len(tokens)} tokens but {len(activations)} activations; "
                "tokens and activations must have the same length"
            )
        return cls(tuple(tokens), tuple(float(a) for a in activations))


def records_from_json(data: Any, where: str = "records") -> list[ActivationRecord]:
    """Parse a list of records, or `{"records": [...]}`, with errors naming the field."""
    if isinstance(data, dict) and "records" in data:
        data = data["records"]
    if not isinstance(data, list):
        raise InputError(f"{where}: expected a list of records or an object with a 'records' list")
    return [ActivationRecord.from_json(item, f"{where}[{i}]") for i, item in enumerate(data)]


@dataclass(frozen=True)
class NeuronStats:
    """Summary statistics of one neuron over the corpus. Quantiles are of the per-excerpt max."""

    mean: float
    variance: float
    max: float
    quantiles: dict[float, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "mean": self.mean,
            "variance": self.variance,
            "max": self.max,
            "quantiles": {str(q): v for q, v in sorted(self.quantiles.items())},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NeuronStats:
        return cls(
            mean=float(data["mean"]),
            variance=float(data["variance"]),
            max=float(data["max"]),
            quantiles={float(q): float(v) for q, v in data.get("quantiles", {}).items()},
        )


# The longest text `activate` and the Neurons page's "Try your own text" run as one excerpt (docs/METHOD.md §10).
MAX_TEXT_TOKENS = 512


# docs/METHOD.md §1: splits by index into the sorted top list and into the random list.
SPLITS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "train": ((0, 4, 8, 12, 16), ()),
    "calibration": ((1, 5, 9, 13, 17), (0, 3, 6, 9, 12)),
    "valid": ((2, 6, 10, 14, 18), (1, 4, 7, 10, 13)),
    "test": ((3, 7, 11, 15, 19), (2, 5, 8, 11, 14)),
}


# docs/METHOD.md §1 collects at least this many top and random records, so that every split is full.
MIN_TOP_RECORDS = 1 + max(i for top, _ in SPLITS.values() for i in top)
MIN_RANDOM_RECORDS = 1 + max(i for _, random in SPLITS.values() for i in random)


@dataclass(frozen=True)
class ScoringRecords:
    """Excerpts kept for the scorers (docs/METHOD.md §10), besides the top and random records:

    - `quantile`: excerpts spread over the quantiles of the per-excerpt max from the median up, highest first, each
      with `levels[i]`, the share of the corpus's excerpts whose max is at most its own (from the quantile sample);
    - `non_activating`: excerpts whose max is below the neuron's median, in a random order;
    - `bottom`: the excerpts with the most negative activations, most negative first.
    """

    quantile: tuple[ActivationRecord, ...] = ()
    levels: tuple[float, ...] = ()
    non_activating: tuple[ActivationRecord, ...] = ()
    bottom: tuple[ActivationRecord, ...] = ()

    def __post_init__(self) -> None:
        order = sorted(range(len(self.quantile)), key=lambda i: self.quantile[i].max_activation, reverse=True)
        levels = tuple(float(v) for v in self.levels)
        if len(levels) != len(self.quantile):
            raise InputError(f"{len(self.quantile)} quantile records but {len(levels)} levels: they must match")
        object.__setattr__(self, "quantile", tuple(self.quantile[i] for i in order))
        object.__setattr__(self, "levels", tuple(levels[i] for i in order))
        object.__setattr__(self, "non_activating", tuple(self.non_activating))
        object.__setattr__(self, "bottom", tuple(self.bottom))

    def to_json(self) -> dict[str, Any]:
        return {
            "quantile": [{**r.to_json(), "level": level} for r, level in zip(self.quantile, self.levels, strict=True)],
            "non_activating": [r.to_json() for r in self.non_activating],
            "bottom": [r.to_json() for r in self.bottom],
        }

    @classmethod
    def from_json(cls, data: Any) -> ScoringRecords:
        if not isinstance(data, dict):
            raise InputError("scoring: expected an object with quantile, non_activating and bottom records")
        quantile = data.get("quantile", [])
        levels = []
        for i, item in enumerate(quantile):
            level = item.get("level") if isinstance(item, dict) else None
            if isinstance(level, bool) or not isinstance(level, int | float):
                raise InputError(f"scoring.quantile[{i}].level: expected a number between 0 and 1")
            levels.append(float(level))
        return cls(
            quantile=tuple(records_from_json(quantile, "scoring.quantile")),
            levels=tuple(levels),
            non_activating=tuple(records_from_json(data.get("non_activating", []), "scoring.non_activating")),
            bottom=tuple(records_from_json(data.get("bottom", []), "scoring.bottom")),
        )


@dataclass(frozen=True)
class NeuronRecord:
    """Everything collected for one neuron: top records (descending by max), random records, stats, and the scorers'
    excerpts (`scoring`; None for a neuron collected before they existed, or imported).

    `top` is kept sorted by max activation, highest first (a stable sort), because the splits index into it.
    """

    model: str
    neuron: NeuronId
    top: tuple[ActivationRecord, ...]
    random: tuple[ActivationRecord, ...]
    stats: NeuronStats
    scoring: ScoringRecords | None = None

    def __post_init__(self) -> None:
        top = tuple(sorted(self.top, key=lambda r: r.max_activation, reverse=True))
        object.__setattr__(self, "top", top)
        object.__setattr__(self, "random", tuple(self.random))

    def split(self, name: str) -> list[ActivationRecord]:
        """The records of a split (docs/METHOD.md §1): its top records in table order, then its random records.

        With fewer than MIN_TOP_RECORDS (20) top or MIN_RANDOM_RECORDS (15) random records collected, a split
        holds only those of its indices that exist, so it can be short or empty (with 10 top records, valid holds
        top 2 and 6); `split_shortfall` says what is missing. Callers decide whether a short split may be used.
        """
        if name not in SPLITS:
            raise InputError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}")
        top_idx, random_idx = SPLITS[name]
        return [self.top[i] for i in top_idx if i < len(self.top)] + [
            self.random[i] for i in random_idx if i < len(self.random)
        ]

    def split_shortfall(self, name: str) -> tuple[int, int]:
        """How many top and random records of a split are missing because fewer were collected; (0, 0) if full."""
        if name not in SPLITS:
            raise InputError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}")
        top_idx, random_idx = SPLITS[name]
        return sum(i >= len(self.top) for i in top_idx), sum(i >= len(self.random) for i in random_idx)

    def to_json(self) -> dict[str, Any]:
        data = {
            "model": self.model,
            "neuron": str(self.neuron),
            "stats": self.stats.to_json(),
            "top": [r.to_json() for r in self.top],
            "random": [r.to_json() for r in self.random],
        }
        if self.scoring is not None:
            data["scoring"] = self.scoring.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NeuronRecord:
        return cls(
            model=data["model"],
            neuron=NeuronId.parse(data["neuron"]),
            top=tuple(records_from_json(data["top"], "top")),
            random=tuple(records_from_json(data["random"], "random")),
            stats=NeuronStats.from_json(data["stats"]),
            scoring=ScoringRecords.from_json(data["scoring"]) if data.get("scoring") is not None else None,
        )


def normalize(records: Sequence[ActivationRecord], max_activation: float | None = None) -> list[list[int]]:
    """Integer 0..10 activations for prompts (docs/METHOD.md §1): min(10, floor(10·relu(a)/M)); all 0 when M ≤ 0.

    M defaults to the max of relu(a) over the records shown.
    """
    if max_activation is None:
        max_activation = max((max(0.0, a) for r in records for a in r.activations), default=0.0)
    if max_activation <= 0:
        return [[0] * len(r.activations) for r in records]
    return [[min(10, math.floor(10 * max(0.0, a) / max_activation)) for a in r.activations] for r in records]
