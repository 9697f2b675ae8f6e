"""How many neurons a study needs, and the smallest effect a study can detect: pure functions for planning the
primary analysis (core.stats.neuron_level: an exact two-sided sign test over the neurons that lean one way).

The model behind every number: each neuron has its own latent probability p_n that arm A beats arm B, spread
around the win rate with intra-class correlation ICC (p_n ~ Beta with mean `win_rate` and variance
ICC·win_rate·(1 − win_rate); ICC 0: every neuron is the same), each of a neuron's `ratings_per_item` ratings is a
tie or both-bad with probability `tie_share` and otherwise picks A with probability p_n. A neuron leans A when A won
more than half of its decisive ratings, B when fewer; the rest (no decisive rating, or an even split) drop out of
the sign test. The power at n neurons is then exact: a binomial number of leaning neurons, and an exact binomial test
among them. The sample size is the smallest n whose power reaches the target, found by exact search (the power of a
discrete test is a sawtooth in n, so a slightly larger n can fall just short).

For comparison each result also carries the textbook design-effect figure: the normal-approximation sample size for
one proportion against 1/2, times 1 + (m − 1)·ICC, divided by m = ratings_per_item·(1 − tie_share) decisive ratings
per neuron. It describes a test of the mean share, not the sign test the study runs, and can be far off it.

The binomial and beta-binomial probabilities are scipy's; the exact power and its search are ours, because
statsmodels' power classes are normal approximations and its `binom_test_reject_interval` takes one n at a time.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from core.errors import InputError
from core.stats import DECISIVE, arm_ratings, cluster_keys, pair_mask
from core.values import to_jsonable

# Above this many neurons the search bisects instead of stepping: the sawtooth is then far smaller than a neuron.
_EXACT_SCAN_LIMIT = 3000
_MAX_NEURONS = 1_000_000
_EDGE = 1e-9

METHOD = (
    "Exact power of the neuron-level sign test (two-sided, exact binomial) under a beta-binomial model of each "
    "neuron's ratings; smallest n reaching the power by exact search. n_neurons_design_effect: normal approximation "
    "for one proportion against 1/2 times the design effect 1 + (m − 1)·ICC, per m decisive ratings per neuron."
)


@dataclass(frozen=True)
class Design:
    """A study design as the power calculation sees it (see the module docstring)."""

    icc: float
    ratings_per_item: int
    tie_share: float
    alpha: float = 0.05
    power: float = 0.8

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.icc < 1:
            problems.append(f"icc {self.icc} must be at least 0 and below 1")
        if self.ratings_per_item < 1 or int(self.ratings_per_item) != self.ratings_per_item:
            problems.append(f"ratings per item {self.ratings_per_item} must be a whole number, at least 1")
        if not 0 <= self.tie_share < 1:
            problems.append(f"tie share {self.tie_share} must be at least 0 and below 1")
        if not 0 < self.alpha < 1:
            problems.append(f"alpha {self.alpha} must be between 0 and 1")
        if not 0 < self.power < 1:
            problems.append(f"power {self.power} must be between 0 and 1")
        if problems:
            raise InputError("; ".join(problems))

    @property
    def decisive_per_neuron(self) -> float:
        return self.ratings_per_item * (1 - self.tie_share)

    @property
    def design_effect(self) -> float:
        return 1 + (self.decisive_per_neuron - 1) * self.icc


@dataclass(frozen=True)
class SampleSize:
    """Neurons needed to detect `win_rate` with the design's power; None (and `note`) when out of reach."""

    win_rate: float
    n_neurons: int | None
    achieved_power: float | None
    leaning_share: float
    n_neurons_design_effect: int
    design: Design
    method: str = METHOD
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        return to_jsonable({**asdict(self), "design_effect": self.design.design_effect})


@dataclass(frozen=True)
class DetectableEffect:
    """The smallest win rate above 1/2 that `n_neurons` detect with the design's power; None (and `note`) when no
    win rate is detectable."""

    n_neurons: int
    win_rate: float | None
    achieved_power: float | None
    design: Design
    method: str = METHOD
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        return to_jsonable({**asdict(self), "design_effect": self.design.design_effect})


@dataclass(frozen=True)
class DataDesign:
    """The design of a study's pair of arms read from its ratings, and the effect it can detect."""

    arm_a: str
    arm_b: str
    n_neurons: int
    mean_ratings_per_neuron: float | None
    tie_share: float | None
    icc: float | None
    icc_method: str
    effect: DetectableEffect | None
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        return to_jsonable({**asdict(self), "effect": self.effect.to_json() if self.effect else None})


def leaning_probabilities(win_rate: float, design: Design) -> tuple[float, float]:
    """The probability that a neuron leans A, and that it leans B, under the design's model."""
    rated = design.ratings_per_item
    decisive = np.arange(rated + 1)
    weights = scipy_stats.binom.pmf(decisive, rated, 1 - design.tie_share)
    lean_a = lean_b = 0.0
    for count, weight in zip(decisive, weights, strict=True):
        wins = np.arange(count + 1)
        if design.icc > 0:
            concentration = 1 / design.icc - 1
            pmf = scipy_stats.betabinom.pmf(wins, count, win_rate * concentration, (1 - win_rate) * concentration)
        else:
            pmf = scipy_stats.binom.pmf(wins, count, win_rate)
        lean_a += weight * pmf[2 * wins > count].sum()
        lean_b += weight * pmf[2 * wins < count].sum()
    return float(lean_a), float(lean_b)


def _rejection(leaning: np.ndarray, share_a: float, alpha: float) -> np.ndarray:
    """The probability that the exact two-sided sign test rejects at `alpha` with `leaning` neurons (an array),
    each leaning A with probability share_a."""
    critical = scipy_stats.binom.ppf(alpha / 2, leaning, 0.5)
    critical = np.where(2 * scipy_stats.binom.cdf(critical, leaning, 0.5) <= alpha, critical, critical - 1)
    low = scipy_stats.binom.cdf(critical, leaning, share_a)
    high = scipy_stats.binom.sf(leaning - critical - 1, leaning, share_a)
    return np.where(critical >= 0, low + high, 0.0)


class _PowerCurve:
    """The sign test's power as a function of the number of neurons, for one win rate and design."""

    def __init__(self, win_rate: float, design: Design) -> None:
        lean_a, lean_b = leaning_probabilities(win_rate, design)
        self.leaning = lean_a + lean_b
        self.share_a = lean_a / self.leaning if self.leaning else 0.5
        self.alpha = design.alpha
        self._rejection = np.zeros(0)

    def __call__(self, n_neurons: int) -> float:
        if len(self._rejection) <= n_neurons:
            self._rejection = _rejection(np.arange(max(2 * n_neurons, 64) + 1), self.share_a, self.alpha)
        if self.leaning >= 1 - 1e-15:
            return float(self._rejection[n_neurons])
        weights = scipy_stats.binom.pmf(np.arange(n_neurons + 1), n_neurons, self.leaning)
        return float(weights @ self._rejection[: n_neurons + 1])


def _normal_sample_size(share: float, alpha: float, power: float) -> float:
    """Normal-approximation sample size of a one-proportion test of `share` against 1/2."""
    z_alpha, z_power = scipy_stats.norm.ppf(1 - alpha / 2), scipy_stats.norm.ppf(power)
    return ((z_alpha * 0.5 + z_power * math.sqrt(share * (1 - share))) / (share - 0.5)) ** 2


def _first_reaching(curve: _PowerCurve, target: float, guess: float) -> int | None:
    """The smallest n with curve(n) ≥ target: stepping near the guess, bisecting when n is large."""
    if guess > _EXACT_SCAN_LIMIT:
        # Past the limit only whether it is reached matters: a far larger guess would build arrays of that size.
        guess = min(guess, _MAX_NEURONS)
        low, high = max(1, int(guess / 2)), int(guess) + 1
        while curve(high) < target:
            low, high = high, high * 2
            if high > _MAX_NEURONS:
                return None
        while curve(low) >= target and low > 1:
            low //= 2
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (low, middle) if curve(middle) >= target else (middle, high)
        return high
    n = max(1, int(0.75 * guess))
    while n > 1 and curve(n) >= target:
        n = max(1, n // 2)
    while curve(n) < target:
        n += 1
        if n > 4 * _EXACT_SCAN_LIMIT:
            return _first_reaching(curve, target, 2 * _EXACT_SCAN_LIMIT)
    return n


def neurons_needed(
    win_rate: float,
    icc: float,
    ratings_per_item: int,
    tie_share: float,
    alpha: float = 0.05,
    power: float = 0.8,
) -> SampleSize:
    """The smallest number of neurons whose sign test detects a mean win rate `win_rate` of A over B (either side
    of 1/2) with probability `power` at level `alpha` (see the module docstring)."""
    design = Design(icc, ratings_per_item, tie_share, alpha, power)
    if not 0 < win_rate < 1 or win_rate == 0.5:
        raise InputError(f"win rate {win_rate} must be between 0 and 1 and not 1/2 (no effect to detect)")
    share = max(win_rate, 1 - win_rate)
    curve = _PowerCurve(share, design)
    approximate = _normal_sample_size(share, alpha, power) * design.design_effect / design.decisive_per_neuron
    note, n_neurons, achieved = None, None, None
    if curve.share_a <= 0.5 or curve.leaning == 0:
        note = "no neuron leans either way under this design: add ratings per item"
    else:
        guess = _normal_sample_size(curve.share_a, alpha, power) / curve.leaning
        n_neurons = _first_reaching(curve, power, guess)
        if n_neurons is None:
            note = f"more than {_MAX_NEURONS:,} neurons"
        else:
            achieved = curve(n_neurons)
    return SampleSize(
        win_rate=win_rate,
        n_neurons=n_neurons,
        achieved_power=achieved,
        leaning_share=curve.leaning,
        n_neurons_design_effect=math.ceil(approximate - 1e-9),
        design=design,
        note=note,
    )


def detectable_effect(
    n_neurons: int,
    icc: float,
    ratings_per_item: int,
    tie_share: float,
    alpha: float = 0.05,
    power: float = 0.8,
) -> DetectableEffect:
    """The smallest mean win rate above 1/2 that a sign test over `n_neurons` neurons detects with probability
    `power` at level `alpha` (bisection on the win rate; the power rises with it)."""
    design = Design(icc, ratings_per_item, tie_share, alpha, power)
    if n_neurons < 1:
        raise InputError(f"{n_neurons} neurons: the number of neurons must be at least 1")
    best = _PowerCurve(1 - _EDGE, design)(n_neurons)
    if best < power:
        return DetectableEffect(
            n_neurons,
            None,
            None,
            design,
            note=f"even a win rate of 1 reaches only power {best:.2f} with {n_neurons} neurons: the sign test needs "
            "more neurons that lean one way",
        )
    low, high = 0.5, 1 - _EDGE
    while high - low > 1e-5:
        middle = (low + high) / 2
        low, high = (low, middle) if _PowerCurve(middle, design)(n_neurons) >= power else (middle, high)
    return DetectableEffect(n_neurons, high, _PowerCurve(high, design)(n_neurons), design)


ICC_METHOD = (
    "one-way ANOVA estimator on the decisive ratings' outcomes (A won: 1) grouped by neuron: (MSB − MSW) / (MSB + "
    "(n₀ − 1)·MSW), clipped to [0, 0.99]"
)


def anova_icc(outcomes: pd.Series, groups: pd.Series) -> float | None:
    """The one-way ANOVA estimate of the intra-class correlation of `outcomes` within `groups`; None with fewer than
    two groups or no replication within groups. (scipy's f_oneway gives only F, and needs guards where all groups
    are unanimous; no dependency estimates ICC(1) with unequal group sizes.)"""
    frame = pd.DataFrame({"y": outcomes.astype(float).to_numpy(), "g": groups.to_numpy()})
    sizes = frame.groupby("g")["y"].size()
    k, total = len(sizes), len(frame)
    if k < 2 or total <= k:
        return None
    means = frame.groupby("g")["y"].transform("mean")
    between = float((sizes * (frame.groupby("g")["y"].mean() - frame["y"].mean()) ** 2).sum()) / (k - 1)
    within = float(((frame["y"] - means) ** 2).sum()) / (total - k)
    n0 = (total - float((sizes**2).sum()) / total) / (k - 1)
    denominator = between + (n0 - 1) * within
    if denominator <= 0:
        return 0.0
    return float(min(max((between - within) / denominator, 0.0), 0.99))


def detectable_from_data(
    ratings: pd.DataFrame, arm_a: str, arm_b: str, alpha: float = 0.05, power: float = 0.8
) -> DataDesign:
    """The smallest win rate of A over B that a study's design detects: its number of neurons, mean ratings per
    neuron (rounded), tie share and ICC (`anova_icc` on the decisive outcomes) read from its non-gold ratings."""
    pair = arm_ratings(ratings)
    pair = pair[pair_mask(pair, arm_a, arm_b)]
    if pair.empty:
        note = f"no rating compares {arm_a} and {arm_b}"
        return DataDesign(arm_a, arm_b, 0, None, None, None, ICC_METHOD, None, note)
    neurons = cluster_keys(pair)
    decisive = pair["choice"].isin(DECISIVE).to_numpy()
    per_neuron = float(neurons.value_counts().mean())
    tie_share = float(1 - decisive.mean())
    icc = anova_icc(pair.loc[decisive, "winner_arm"] == arm_a, neurons[decisive])
    notes = []
    if icc is None:
        notes.append("the ICC could not be estimated (too few neurons with decisive ratings): 0 assumed")
    rounded = max(1, round(per_neuron))
    if rounded != per_neuron:
        notes.append(f"{per_neuron:.2f} ratings per neuron, rounded to {rounded}")
    n_neurons = int(neurons.nunique())
    if tie_share >= 1:
        effect = None
        notes.append("no decisive rating: nothing to detect with")
    else:
        effect = detectable_effect(n_neurons, icc or 0.0, rounded, tie_share, alpha, power)
    return DataDesign(arm_a, arm_b, n_neurons, per_neuron, tie_share, icc, ICC_METHOD, effect, "; ".join(notes) or None)
