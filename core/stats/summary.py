"""The whole study's statistics in one JSON-safe summary, and per-item aggregates."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from core.errors import InputError
from core.stats.agreement import agreement, agreement_method
from core.stats.automated import automated_comparisons, human_vs_automated
from core.stats.bradley_terry import bradley_terry
from core.stats.neuron_level import holm, mixed_effects, neuron_level
from core.stats.proportions import (
    CHOICES,
    DECISIVE,
    arm_ratings,
    clean,
    exclude_low_gold_raters,
    gold_accuracy,
    per_rater,
    position_bias,
    win_rate,
)

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


def summary_from_ratings(
    ratings: pd.DataFrame, arms: Sequence[str], min_gold_accuracy: float | None = None, *, seed: int = 0
) -> dict[str, Any]:
    """Every statistic of a study from its ratings frame, JSON-safe; every bootstrap is seeded with `seed`. Counts
    are of non-gold ratings, after leaving out raters below `min_gold_accuracy`. The top-level win rate is arms[0]
    over arms[1] (the primary pair); `pairs` holds every pair; Bradley–Terry is computed when there are more than
    two arms; `automated` compares the humans with every score kind the ratings carry."""
    if len(arms) < 2:
        raise InputError("a study summary needs at least two arms")
    gold = gold_accuracy(ratings)
    kept, excluded = exclude_low_gold_raters(ratings, min_gold_accuracy)
    pairs = [win_rate(kept, a, b) for a, b in itertools.combinations(arms, 2)]
    # The neuron is the unit of the test (see neuron_level); the rating-level figures stay, labelled descriptive.
    neuron_pairs = [neuron_level(kept, a, b, seed=seed).to_json() for a, b in itertools.combinations(arms, 2)]
    for pair, adjusted in zip(neuron_pairs, holm([pair["p_value"] for pair in neuron_pairs]), strict=True):
        pair["p_value_holm"] = adjusted
    for pair in pairs:
        pair["unit"] = RATING_UNIT_NOTE
    primary = pairs[0]
    compared = arm_ratings(kept)
    decisive = compared["choice"].isin(DECISIVE)
    bias = position_bias(kept)
    strengths = bradley_terry(kept, arms, seed=seed) if len(arms) > 2 else None
    by_arm = {row["arm"]: row["strength"] for row in strengths["arms"]} if strengths else None
    return clean(
        {
            "arms": list(arms),
            "n_ratings": len(compared),
            "n_gold_ratings": len(kept) - len(compared),
            "n_raters": int(kept["rater"].nunique()),
            "wins": {arm: int((decisive & (compared["winner_arm"] == arm)).sum()) for arm in arms},
            "ties": int((compared["choice"] == "tie").sum()),
            "both_bad": int((compared["choice"] == "both_bad").sum()),
            "primary_pair": [primary["arm_a"], primary["arm_b"]],
            "primary": neuron_pairs[0],
            "secondary": mixed_effects(kept, *arms[:2], seed=seed).to_json(),
            "neuron_pairs": neuron_pairs,
            "multiple_pairs": "p_value_holm: Holm-adjusted over the study's pairs" if len(neuron_pairs) > 1 else None,
            "descriptive": RATING_UNIT_NOTE,
            "win_rate": primary["win_rate"],
            "wilson_ci": primary["wilson_ci"],
            "binomial_p": primary["binomial_p"],
            "pairs": pairs,
            "left_win_rate": bias["rate"],
            "position_bias": bias,
            "per_rater": per_rater(kept, arms),
            "agreement": agreement(kept, arms, seed=seed),
            "agreement_method": agreement_method(seed=seed),
            "bradley_terry": strengths,
            "gold": {"per_rater": gold, "min_accuracy": min_gold_accuracy, "excluded_raters": excluded},
            "human_vs_automated": human_vs_automated(kept),
            "automated": [comparison.to_json() for comparison in automated_comparisons(kept, arms, by_arm)],
        }
    )
