"""Proportions and the frames they are counted on: win rates with Wilson CIs and sign tests, position bias, per
rater, and each rating coded relative to its item's pair of arms."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats
from statsmodels.stats.proportion import proportion_confint

from core.db import RATING_CHOICES
from core.values import JsonFields, finite_or_none

CHOICES = RATING_CHOICES
DECISIVE = CHOICES[:2]
CONFIDENCE = 0.95


def z_value(confidence: float = CONFIDENCE) -> float:
    """The two-sided normal quantile of a confidence level: 1.96 at 95%."""
    return float(scipy_stats.norm.ppf(1 - (1 - confidence) / 2))


def percentile_interval(values: np.ndarray, confidence: float = CONFIDENCE) -> np.ndarray:
    """Percentile bootstrap interval over the first axis (the resamples): shape values.shape[1:] + (2,)."""
    tail = (1 - confidence) / 2
    bounds = np.moveaxis(np.quantile(values, [tail, 1 - tail], axis=0), 0, -1)
    # Sums of shares that cancel leave rounding noise such as 5.55e-17 where the bound is 0.
    return np.where(np.abs(bounds) < 1e-12, 0.0, bounds)


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (statsmodels); (nan, nan) when n is 0."""
    if n == 0:
        return math.nan, math.nan
    low, high = proportion_confint(successes, n, alpha=1 - confidence, method="wilson")
    # At 0 or n successes a bound is exactly 0 or 1; statsmodels leaves rounding noise such as 2.2e-16 there.
    return 0.0 if successes == 0 else float(low), 1.0 if successes == n else float(high)


def sign_test(successes: int, n: int) -> float:
    """Exact two-sided binomial test of `successes` out of `n` against 1/2; nan when n is 0."""
    return float(scipy_stats.binomtest(successes, n, 0.5).pvalue) if n else math.nan


@dataclass(frozen=True)
class Proportion(JsonFields):
    """A share of successes with its Wilson 95% CI and the sign test's p-value against 1/2; None where n is 0."""

    successes: int
    n: int
    rate: float | None
    ci: tuple[float | None, float | None]
    p_value: float | None


def proportion(successes: int, n: int) -> Proportion:
    """successes, n, rate, Wilson 95% CI and the sign test's p-value."""
    low, high = wilson_interval(successes, n)
    rate = successes / n if n else None
    return Proportion(
        successes, n, rate, (finite_or_none(low), finite_or_none(high)), finite_or_none(sign_test(successes, n))
    )


# --- frames ------------------------------------------------------------------------------------------------------


def arm_ratings(ratings: pd.DataFrame) -> pd.DataFrame:
    """The ratings of non-gold items: the ones that compare arms."""
    return ratings[ratings["is_gold"].astype(int) == 0]


def pair_mask(ratings: pd.DataFrame, arm_a: str, arm_b: str) -> pd.Series:
    """Rows whose item shows arms A and B, on either side."""
    left, right = ratings["left_arm"], ratings["right_arm"]
    return ((left == arm_a) & (right == arm_b)) | ((left == arm_b) & (right == arm_a))


def outcome_labels(ratings: pd.DataFrame) -> pd.Series:
    """Each rating as the arm it chose, or `tie` / `both_bad` (what the rating says, not a coding for agreement:
    see `relative_outcomes`)."""
    return ratings["winner_arm"].where(ratings["choice"].isin(DECISIVE), ratings["choice"])


def relative_outcomes(ratings: pd.DataFrame, arms: Sequence[str] | None = None) -> pd.DataFrame:
    """Non-gold ratings coded relative to their item's pair: `arm_a` is whichever of the two arms comes first in
    `arms` (arms not in it follow, by name; None: by name), `arm_b` the other, and `code` is +1 (A better), 0 (tie
    or both bad: neither is preferred) or −1 (B better). Keeps the other columns; `a_left` says where A was."""
    compared = arm_ratings(ratings)
    order = {arm: i for i, arm in enumerate(arms or ())}

    def rank(arm: Any) -> tuple[int, str]:
        return order.get(arm, len(order)), str(arm)

    left, right = compared["left_arm"], compared["right_arm"]
    a_left = np.array([rank(a) <= rank(b) for a, b in zip(left, right, strict=True)], dtype=bool)
    arm_a, arm_b = left.where(a_left, right), right.where(a_left, left)
    decisive = compared["choice"].isin(DECISIVE)
    code = np.where(decisive, np.where(compared["winner_arm"] == arm_a, 1, -1), 0)
    return compared.assign(arm_a=arm_a, arm_b=arm_b, a_left=a_left, code=code.astype(int))


@dataclass(frozen=True)
class PairCounts(JsonFields):
    """Ratings of a pair of arms: A's and B's decisive wins, ties and both-bad."""

    n_ratings: int
    wins_a: int
    wins_b: int
    ties: int
    both_bad: int


def pair_counts(ratings: pd.DataFrame, arm_a: str, arm_b: str) -> PairCounts:
    """Ratings, A's and B's decisive wins, ties and both-bad among `ratings` (already those of the pair)."""
    decisive = ratings["choice"].isin(DECISIVE)
    return PairCounts(
        n_ratings=len(ratings),
        wins_a=int((decisive & (ratings["winner_arm"] == arm_a)).sum()),
        wins_b=int((decisive & (ratings["winner_arm"] == arm_b)).sum()),
        ties=int((ratings["choice"] == "tie").sum()),
        both_bad=int((ratings["choice"] == "both_bad").sum()),
    )


@dataclass(frozen=True)
class WinRate(JsonFields):
    """Arm A's win rate over B among decisive ratings, each rating a trial (descriptive), with its Wilson CI and sign
    test; the counts of ties and both-bad beside it. Rates are None without ratings; the CI and p-value also when a
    plan hides them before its target (core.export)."""

    arm_a: str
    arm_b: str
    n_ratings: int
    wins_a: int
    wins_b: int
    ties: int
    both_bad: int
    decisive: int
    win_rate: float | None
    wilson_ci: tuple[float | None, float | None] | None
    binomial_p: float | None
    tie_share: float | None
    both_bad_share: float | None


def win_rate(ratings: pd.DataFrame, arm_a: str, arm_b: str) -> WinRate:
    """Arm A's win rate over B among decisive ratings, with Wilson CI and sign test; ties and both-bad beside it."""
    pair = arm_ratings(ratings)
    counts = pair_counts(pair[pair_mask(pair, arm_a, arm_b)], arm_a, arm_b)
    decisive = counts.wins_a + counts.wins_b
    result = proportion(counts.wins_a, decisive)
    n = counts.n_ratings
    return WinRate(
        arm_a=arm_a,
        arm_b=arm_b,
        n_ratings=n,
        wins_a=counts.wins_a,
        wins_b=counts.wins_b,
        ties=counts.ties,
        both_bad=counts.both_bad,
        decisive=decisive,
        win_rate=result.rate,
        wilson_ci=result.ci,
        binomial_p=result.p_value,
        tie_share=counts.ties / n if n else None,
        both_bad_share=counts.both_bad / n if n else None,
    )


def position_bias(ratings: pd.DataFrame) -> Proportion:
    """How often the left explanation wins among decisive ratings of non-gold items, tested against 1/2."""
    choices = arm_ratings(ratings)["choice"]
    return proportion(int((choices == "left").sum()), int(choices.isin(DECISIVE).sum()))


@dataclass(frozen=True)
class RaterWinRate:
    """One rater's win rate for one pair of arms; in JSON the rater's name comes first, then the pair's fields."""

    rater: str
    pair: WinRate

    def to_json(self) -> dict[str, Any]:
        return {"rater": self.rater, **self.pair.to_json()}


def per_rater(ratings: pd.DataFrame, arms: Sequence[str]) -> list[RaterWinRate]:
    """Win rate and counts of every rater for every pair of arms they rated."""
    rows = []
    for rater, own in arm_ratings(ratings).groupby("rater", sort=True):
        for arm_a, arm_b in itertools.combinations(arms, 2):
            result = win_rate(own, arm_a, arm_b)
            if result.n_ratings:
                rows.append(RaterWinRate(str(rater), result))
    return rows


# --- gold items --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GoldAccuracy(JsonFields):
    """One rater's gold items: answered, answered correctly, and the accuracy (tie and both-bad count as wrong)."""

    rater: str
    n_gold: int
    correct: int
    accuracy: float


def gold_accuracy(ratings: pd.DataFrame) -> list[GoldAccuracy]:
    """Per rater: gold items answered, answered correctly and the accuracy (tie and both-bad count as wrong)."""
    gold = ratings[ratings["is_gold"].astype(int) == 1]
    rows = []
    for rater, own in gold.groupby(gold["rater"].astype(str), sort=True):
        correct = int((own["choice"] == own["gold_choice"]).sum())
        rows.append(GoldAccuracy(str(rater), len(own), correct, correct / len(own)))
    return rows


def exclude_low_gold_raters(ratings: pd.DataFrame, min_accuracy: float | None) -> tuple[pd.DataFrame, list[str]]:
    """Drop every rating of raters whose gold accuracy is below `min_accuracy`; raters with no gold answers stay."""
    if min_accuracy is None:
        return ratings, []
    excluded = sorted(row.rater for row in gold_accuracy(ratings) if row.accuracy < min_accuracy)
    return ratings[~ratings["rater"].astype(str).isin(excluded)], excluded
