"""The whole study's statistics as one typed result with the summary's JSON, and per-item aggregates."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd

from core.errors import InputError
from core.stats.agreement import Agreement, agreement, agreement_method
from core.stats.automated import AutomatedComparison, HigherScoreChosen, automated_comparisons, human_vs_automated
from core.stats.bradley_terry import BradleyTerry, bradley_terry
from core.stats.neuron_level import PrimaryAnalysis, SecondaryAnalysis, holm, mixed_effects, neuron_level
from core.stats.proportions import (
    CHOICES,
    DECISIVE,
    GoldAccuracy,
    Proportion,
    RaterWinRate,
    WinRate,
    arm_ratings,
    exclude_low_gold_raters,
    gold_accuracy,
    per_rater,
    position_bias,
    win_rate,
)
from core.values import JsonFields, to_jsonable

# Rating-level figures treat every rating as an independent trial; they describe the data but do not test it.
RATING_UNIT_NOTE = "rating level, descriptive: assumes independent ratings"


def item_aggregates(items: pd.DataFrame, ratings: pd.DataFrame) -> pd.DataFrame:
    """One row per item (`item_id` column) with its rating counts by choice, mean confidence and mean seconds."""
    counts = pd.crosstab(ratings["item_id"], ratings["choice"]).reindex(columns=list(CHOICES))
    counts = counts.fillna(0).astype(int).add_prefix("n_")
    grouped = ratings.groupby("item_id")
    extra = pd.DataFrame(
        {
            "n_ratings": grouped.size(),
            "mean_confidence": grouped["confidence"].mean() if "confidence" in ratings else math.nan,
            "mean_seconds": grouped["seconds"].mean() if "seconds" in ratings else math.nan,
        }
    )
    merged = items.merge(counts.join(extra), left_on="item_id", right_index=True, how="left")
    count_columns = [*counts.columns, "n_ratings"]
    merged[count_columns] = merged[count_columns].fillna(0).astype(int)
    return merged


@dataclass(frozen=True)
class GoldSummary(JsonFields):
    """Gold items per rater, the accuracy below which raters were left out, and who was."""

    per_rater: tuple[GoldAccuracy, ...]
    min_accuracy: float | None
    excluded_raters: tuple[str, ...]


@dataclass(frozen=True)
class StudyStatistics:
    """Every statistic of a study's ratings (`summary_from_ratings`). The first pair of `arms` is the primary pair:
    `primary` is its neuron-level test, `win_rate`/`wilson_ci`/`binomial_p` its rating-level figures."""

    arms: tuple[str, ...]
    n_ratings: int
    n_gold_ratings: int
    n_raters: int
    wins: Mapping[str, int]
    ties: int
    both_bad: int
    neuron_pairs: tuple[PrimaryAnalysis, ...]
    secondary: SecondaryAnalysis
    pairs: tuple[WinRate, ...]
    position_bias: Proportion
    per_rater: tuple[RaterWinRate, ...]
    agreement: Agreement
    agreement_method: str
    bradley_terry: BradleyTerry | None
    gold: GoldSummary
    human_vs_automated: HigherScoreChosen | None
    automated: tuple[AutomatedComparison, ...]

    @property
    def primary(self) -> PrimaryAnalysis:
        return self.neuron_pairs[0]

    @property
    def primary_pair(self) -> tuple[str, str]:
        return self.pairs[0].arm_a, self.pairs[0].arm_b

    @property
    def win_rate(self) -> float | None:
        return self.pairs[0].win_rate

    @property
    def wilson_ci(self) -> tuple[float | None, float | None] | None:
        return self.pairs[0].wilson_ci

    @property
    def binomial_p(self) -> float | None:
        return self.pairs[0].binomial_p

    def without_tests(self) -> StudyStatistics:
        """These statistics with the p-values and CIs of the primary and rating-level tests withheld (a plan's
        `interim: hide` before its target)."""
        hidden = tuple(replace(pair, p_value=None, ci=None, p_value_holm=None) for pair in self.neuron_pairs)
        return replace(
            self,
            neuron_pairs=hidden,
            pairs=tuple(replace(pair, wilson_ci=None, binomial_p=None) for pair in self.pairs),
            secondary=replace(self.secondary, win_probability_ci=None, position_log_odds_ci=None),
        )

    def to_json(self) -> dict[str, Any]:
        """The summary's JSON, key for key as `study summary` prints it and the Results page reads it."""
        neuron_pairs = [pair.to_json() for pair in self.neuron_pairs]
        return {
            "arms": list(self.arms),
            "n_ratings": self.n_ratings,
            "n_gold_ratings": self.n_gold_ratings,
            "n_raters": self.n_raters,
            "wins": to_jsonable(self.wins),
            "ties": self.ties,
            "both_bad": self.both_bad,
            "primary_pair": list(self.primary_pair),
            "primary": neuron_pairs[0],
            "secondary": self.secondary.to_json(),
            "neuron_pairs": neuron_pairs,
            "multiple_pairs": "p_value_holm: Holm-adjusted over the study's pairs" if len(neuron_pairs) > 1 else None,
            "descriptive": RATING_UNIT_NOTE,
            "win_rate": self.win_rate,
            "wilson_ci": to_jsonable(self.wilson_ci),
            "binomial_p": self.binomial_p,
            "pairs": [{**pair.to_json(), "unit": RATING_UNIT_NOTE} for pair in self.pairs],
            "left_win_rate": self.position_bias.rate,
            "position_bias": self.position_bias.to_json(),
            "per_rater": [row.to_json() for row in self.per_rater],
            "agreement": self.agreement.to_json(),
            "agreement_method": self.agreement_method,
            "bradley_terry": self.bradley_terry.to_json() if self.bradley_terry else None,
            "gold": self.gold.to_json(),
            "human_vs_automated": self.human_vs_automated.to_json() if self.human_vs_automated else None,
            "automated": [comparison.to_json() for comparison in self.automated],
        }


def summary_from_ratings(
    ratings: pd.DataFrame, arms: Sequence[str], min_gold_accuracy: float | None = None, *, seed: int = 0
) -> StudyStatistics:
    """Every statistic of a study from its ratings frame; every bootstrap is seeded with `seed`. Counts are of
    non-gold ratings, after leaving out raters below `min_gold_accuracy`. The primary pair is arms[0] over arms[1];
    `pairs` holds every pair; Bradley–Terry is computed when there are more than two arms; `automated` compares
    the humans with every score kind the ratings carry."""
    if len(arms) < 2:
        raise InputError("a study summary needs at least two arms")
    gold = gold_accuracy(ratings)
    kept, excluded = exclude_low_gold_raters(ratings, min_gold_accuracy)
    combinations = list(itertools.combinations(arms, 2))
    # The neuron is the unit of the test (see neuron_level); the rating-level figures stay, labelled descriptive.
    neuron_pairs = [neuron_level(kept, a, b, seed=seed) for a, b in combinations]
    adjusted = holm([pair.p_value for pair in neuron_pairs])
    compared = arm_ratings(kept)
    decisive = compared["choice"].isin(DECISIVE)
    strengths = bradley_terry(kept, arms, seed=seed) if len(arms) > 2 else None
    by_arm = {row.arm: row.strength for row in strengths.arms} if strengths else None
    return StudyStatistics(
        arms=tuple(arms),
        n_ratings=len(compared),
        n_gold_ratings=len(kept) - len(compared),
        n_raters=int(kept["rater"].nunique()),
        wins={arm: int((decisive & (compared["winner_arm"] == arm)).sum()) for arm in arms},
        ties=int((compared["choice"] == "tie").sum()),
        both_bad=int((compared["choice"] == "both_bad").sum()),
        neuron_pairs=tuple(replace(pair, p_value_holm=p) for pair, p in zip(neuron_pairs, adjusted, strict=True)),
        secondary=mixed_effects(kept, *arms[:2], seed=seed),
        pairs=tuple(win_rate(kept, a, b) for a, b in combinations),
        position_bias=position_bias(kept),
        per_rater=tuple(per_rater(kept, arms)),
        agreement=agreement(kept, arms, seed=seed),
        agreement_method=agreement_method(seed=seed),
        bradley_terry=strengths,
        gold=GoldSummary(tuple(gold), min_gold_accuracy, tuple(excluded)),
        human_vs_automated=human_vs_automated(kept),
        automated=tuple(automated_comparisons(kept, arms, by_arm)),
    )
