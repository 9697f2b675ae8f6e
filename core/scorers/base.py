"""What every scorer shares (docs/METHOD.md §10): options, the excerpts a neuron is scored on, per-excerpt
predictions, the result of scoring one explanation, and the two metrics (balanced accuracy, AUROC).

Pure functions and frozen dataclasses; no I/O.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from core.errors import InputError, WorkbenchError
from core.records import ActivationRecord, NeuronRecord

DEFAULT_ACTIVATING_QUANTILE = 0.99
DEFAULT_ACTIVATING = 10
DEFAULT_NON_ACTIVATING = 10
DEFAULT_EXCERPTS_PER_CALL = 5


class MissingExcerpts(WorkbenchError):
    """The neuron lacks the excerpts a scorer needs (collected before they existed, or imported)."""


@dataclass(frozen=True)
class ScorerOptions:
    """Settings shared by the scorers; each is recorded with every score (`settings`).

    "Activating" means a per-excerpt max above `activating_threshold` when given (raw units), else above the neuron's
    `activating_quantile` of per-excerpt maxima (one of the stored levels 0.5, 0.9, 0.99, 0.999).
    """

    activating_quantile: float = DEFAULT_ACTIVATING_QUANTILE
    activating_threshold: float | None = None
    n_activating: int = DEFAULT_ACTIVATING
    n_non_activating: int = DEFAULT_NON_ACTIVATING
    excerpts_per_call: int = DEFAULT_EXCERPTS_PER_CALL
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_activating", "n_non_activating", "excerpts_per_call"):
            if getattr(self, name) < 1:
                raise InputError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.activating_quantile < 1:
            raise InputError(f"activating quantile {self.activating_quantile} must be between 0 and 1")
        if self.activating_threshold is not None and not math.isfinite(self.activating_threshold):
            raise InputError("the activating threshold must be a finite number")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ScoringExcerpt:
    """One excerpt a neuron is scored on: its record, its label (1 activating or correctly highlighted, 0 not), the
    kind of excerpt it is, and where it lies in the neuron's distribution (`level`: the share of excerpts with a
    lower or equal max; None for a top record)."""

    record: ActivationRecord
    label: int
    kind: str
    level: float | None = None
    marked: tuple[bool, ...] | None = None  # fuzzing: the tokens shown highlighted


@dataclass(frozen=True)
class ExcerptPrediction:
    """A scorer's verdict on one excerpt: the prediction (0/1; None when the answer could not be read), the
    probability of 1 where logprobs gave one, and for the embedding scorer the cosine to the explanation."""

    index: int
    kind: str
    label: int
    max_activation: float
    level: float | None = None
    prediction: int | None = None
    probability: float | None = None
    similarity: float | None = None
    call: int | None = None  # which LLM call of the neuron showed it

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class ScorerResult:
    """One explanation scored by one scorer: the score (balanced accuracy for the classifiers, AUROC for the
    embedding scorer), the AUC where probabilities exist, per-excerpt predictions, tokens spent and time."""

    scorer: str
    model: str
    method: str
    status: str
    score: float | None = None
    auc: float | None = None
    per_excerpt: tuple[ExcerptPrediction, ...] = ()
    input_tokens: int | None = None
    output_tokens: int | None = None
    seconds: float = 0.0
    error: str | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["per_excerpt"] = [p.to_json() for p in self.per_excerpt]
        data["notes"] = list(self.notes)
        return data


# --- Which excerpts ------------------------------------------------------------------------------------------------


def activating_threshold(record: NeuronRecord, options: ScorerOptions) -> float:
    """The raw per-excerpt max above which an excerpt counts as activating for this neuron (docs/METHOD.md §10)."""
    if options.activating_threshold is not None:
        return float(options.activating_threshold)
    quantiles = record.stats.quantiles
    level = min(quantiles, key=lambda q: abs(q - options.activating_quantile), default=None)
    if level is None or abs(level - options.activating_quantile) > 1e-9 or quantiles[level] is None:
        stored = ", ".join(f"{q:g}" for q in sorted(quantiles)) or "none"
        raise InputError(
            f"neuron {record.neuron} has no stored {options.activating_quantile:g} quantile (stored: {stored}); "
            "choose --activating-quantile among them or give --activating-threshold"
        )
    return float(quantiles[level])


def _spread(items: Sequence[Any], count: int) -> list[Any]:
    """`count` items evenly spaced over `items` (all of them when there are fewer), in order."""
    if len(items) <= count:
        return list(items)
    if count == 1:
        return [items[0]]
    return [items[round(i * (len(items) - 1) / (count - 1))] for i in range(count)]


def neuron_seed(seed: int, record: NeuronRecord) -> int:
    """A seed for one neuron, the same for every explanation of it, so that their excerpts and batches match."""
    digest = hashlib.sha256(f"{seed}|{record.model}|{record.neuron}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def classified_excerpts(
    record: NeuronRecord, options: ScorerOptions
) -> tuple[list[ScoringExcerpt], list[ScoringExcerpt]]:
    """(activating, non-activating) excerpts of a neuron for detection and embedding (docs/METHOD.md §10).

    Activating: the quantile samples and the top records whose max is above the threshold, never one shown to the
    explainer (the train split), `n_activating` of them evenly spaced over their maxima, so that several quantiles
    mix. Non-activating: the first `n_non_activating` sampled excerpts whose max is below the median.
    MissingExcerpts when the neuron was stored without the scorers' excerpts.
    """
    if record.scoring is None:
        raise MissingExcerpts(
            f"neuron {record.neuron} of {record.model} was collected without the scorers' excerpts (quantile "
            "samples, non-activating, bottom); recollect its layer with `python -m core collect --replace`"
        )
    threshold = activating_threshold(record, options)
    shown = {r.tokens for r in record.split("train")}
    candidates: dict[tuple[str, ...], ScoringExcerpt] = {}
    for rec, level in zip(record.scoring.quantile, record.scoring.levels, strict=True):
        if rec.max_activation > threshold and rec.tokens not in shown:
            candidates.setdefault(rec.tokens, ScoringExcerpt(rec, 1, "activating", level))
    for rec in record.top:
        if rec.max_activation > threshold and rec.tokens not in shown:
            candidates.setdefault(rec.tokens, ScoringExcerpt(rec, 1, "activating", None))
    ordered = sorted(candidates.values(), key=lambda e: e.record.max_activation, reverse=True)
    activating = _spread(ordered, options.n_activating)
    quiet = [
        ScoringExcerpt(rec, 0, "non_activating", None)
        for rec in record.scoring.non_activating
        if rec.tokens not in candidates and rec.max_activation <= threshold
    ][: options.n_non_activating]
    return activating, quiet


def fuzzing_excerpts(record: NeuronRecord, options: ScorerOptions) -> list[ScoringExcerpt]:
    """Activating excerpts, about half with their truly activating tokens (activation above the threshold)
    highlighted (label 1) and the others with as many other tokens, drawn at random, highlighted (label 0)."""
    activating, _ = classified_excerpts(record, options)
    threshold = activating_threshold(record, options)
    rng = random.Random(neuron_seed(options.seed, record) ^ 0xF022)
    wrong = set(rng.sample(range(len(activating)), len(activating) // 2))
    found = []
    for number, excerpt in enumerate(activating):
        truly = tuple(a > threshold for a in excerpt.record.activations)
        count = sum(truly)
        others = [i for i, marked in enumerate(truly) if not marked]
        if number in wrong and len(others) >= count:
            chosen = set(rng.sample(others, count))
            marked = tuple(i in chosen for i in range(len(truly)))
            found.append(ScoringExcerpt(excerpt.record, 0, "random_highlight", excerpt.level, marked))
        else:
            found.append(ScoringExcerpt(excerpt.record, 1, "true_highlight", excerpt.level, truly))
    return found


def batches(excerpts: Sequence[ScoringExcerpt], size: int, seed: int) -> list[list[tuple[int, ScoringExcerpt]]]:
    """The excerpts shuffled (seeded) and cut into calls of `size`; each keeps its index in `excerpts`."""
    order = list(enumerate(excerpts))
    random.Random(seed).shuffle(order)
    return [order[start : start + size] for start in range(0, len(order), size)]


# --- Metrics --------------------------------------------------------------------------------------------------------


def balanced_accuracy(labels: Sequence[int], predictions: Sequence[int | None]) -> float | None:
    """(true-positive rate + true-negative rate) / 2 over the excerpts with a prediction; None without both
    classes."""
    pairs = [(label, p) for label, p in zip(labels, predictions, strict=True) if p is not None]
    positives = [p for label, p in pairs if label == 1]
    negatives = [p for label, p in pairs if label == 0]
    if not positives or not negatives:
        return None
    return (sum(p == 1 for p in positives) / len(positives) + sum(p == 0 for p in negatives) / len(negatives)) / 2


def auroc(labels: Sequence[int], values: Sequence[float | None]) -> float | None:
    """The area under the ROC curve of `values` for telling label 1 from label 0 (ties count half): the chance
    that a random positive outranks a random negative. None unless every value is there and both classes are."""
    present = [v for v in values if v is not None and math.isfinite(v)]
    if len(present) != len(values):
        return None
    positives = [v for label, v in zip(labels, present, strict=True) if label == 1]
    negatives = [v for label, v in zip(labels, present, strict=True) if label == 0]
    if not positives or not negatives:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))
