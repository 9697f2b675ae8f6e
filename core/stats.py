"""Statistics of a pairwise human evaluation: pure functions on a data frame of ratings.

A ratings frame has one row per rating with at least `item_id`, `rater`, `choice` (left|right|tie|both_bad),
`left_arm`, `right_arm`, `winner_arm` (the arm chosen, mapped when the rating was written) and `is_gold`. Optional:
`gold_choice` (the known answer of a gold item) and `left_score`/`right_score` (simulation scores, SPEC.md §4).
Gold items never enter arm statistics; ties and both-bad are counted and reported, never dropped silently: win
rates are over decisive ratings (left or right) and the counts beside them say how many were not decisive.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import krippendorff
import numpy as np
import pandas as pd
from scipy import stats as scipy_stats
from statsmodels.stats import inter_rater

from core.db import RATING_CHOICES
from core.errors import InputError

CHOICES = RATING_CHOICES
DECISIVE = CHOICES[:2]
CONFIDENCE = 0.95
# Virtual comparisons per pair of arms added to Bradley–Terry when the wins do not connect every arm both ways,
# where the maximum-likelihood strengths do not exist (an arm that never lost would be infinitely strong).
BT_PRIOR = 0.5


def clean(value: Any) -> Any:
    """The value with numpy scalars made plain and NaN made None, recursively, so it is JSON-safe and comparable."""
    if isinstance(value, dict):
        return {str(key): clean(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [clean(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --- proportions -------------------------------------------------------------------------------------------------


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion; (nan, nan) when n is 0."""
    if n == 0:
        return math.nan, math.nan
    z = scipy_stats.norm.ppf(1 - (1 - confidence) / 2)
    rate = successes / n
    denominator = 1 + z * z / n
    centre = (rate + z * z / (2 * n)) / denominator
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def sign_test(successes: int, n: int) -> float:
    """Exact two-sided binomial test of `successes` out of `n` against 1/2; nan when n is 0."""
    return float(scipy_stats.binomtest(successes, n, 0.5).pvalue) if n else math.nan


def proportion(successes: int, n: int) -> dict[str, Any]:
    """successes, n, rate, Wilson 95% CI and the sign test's p-value, JSON-safe."""
    low, high = wilson_interval(successes, n)
    rate = successes / n if n else math.nan
    return clean({"successes": successes, "n": n, "rate": rate, "ci": [low, high], "p_value": sign_test(successes, n)})


# --- frames ------------------------------------------------------------------------------------------------------


def arm_ratings(ratings: pd.DataFrame) -> pd.DataFrame:
    """The ratings of non-gold items: the ones that compare arms."""
    return ratings[ratings["is_gold"].astype(int) == 0]


def _pair_mask(ratings: pd.DataFrame, arm_a: str, arm_b: str) -> pd.Series:
    left, right = ratings["left_arm"], ratings["right_arm"]
    return ((left == arm_a) & (right == arm_b)) | ((left == arm_b) & (right == arm_a))


def outcome_labels(ratings: pd.DataFrame) -> pd.Series:
    """Each rating as the arm it chose, or `tie` / `both_bad`: the category raters agree or disagree on."""
    return ratings["winner_arm"].where(ratings["choice"].isin(DECISIVE), ratings["choice"])


def _counts(ratings: pd.DataFrame, arm_a: str, arm_b: str) -> dict[str, int]:
    decisive = ratings["choice"].isin(DECISIVE)
    return {
        "n_ratings": len(ratings),
        "wins_a": int((decisive & (ratings["winner_arm"] == arm_a)).sum()),
        "wins_b": int((decisive & (ratings["winner_arm"] == arm_b)).sum()),
        "ties": int((ratings["choice"] == "tie").sum()),
        "both_bad": int((ratings["choice"] == "both_bad").sum()),
    }


def win_rate(ratings: pd.DataFrame, arm_a: str, arm_b: str) -> dict[str, Any]:
    """Arm A's win rate over B among decisive ratings, with Wilson CI and sign test; ties and both-bad beside it."""
    pair = arm_ratings(ratings)
    counts = _counts(pair[_pair_mask(pair, arm_a, arm_b)], arm_a, arm_b)
    decisive = counts["wins_a"] + counts["wins_b"]
    result = proportion(counts["wins_a"], decisive)
    n = counts["n_ratings"]
    return clean(
        {
            "arm_a": arm_a,
            "arm_b": arm_b,
            **counts,
            "decisive": decisive,
            "win_rate": result["rate"],
            "wilson_ci": result["ci"],
            "binomial_p": result["p_value"],
            "tie_share": counts["ties"] / n if n else math.nan,
            "both_bad_share": counts["both_bad"] / n if n else math.nan,
        }
    )


def position_bias(ratings: pd.DataFrame) -> dict[str, Any]:
    """How often the left explanation wins among decisive ratings of non-gold items, tested against 1/2."""
    choices = arm_ratings(ratings)["choice"]
    return proportion(int((choices == "left").sum()), int(choices.isin(DECISIVE).sum()))


def per_rater(ratings: pd.DataFrame, arms: Sequence[str]) -> list[dict[str, Any]]:
    """Win rate and counts of every rater for every pair of arms they rated."""
    rows = []
    for rater, own in arm_ratings(ratings).groupby("rater", sort=True):
        for arm_a, arm_b in itertools.combinations(arms, 2):
            result = win_rate(own, arm_a, arm_b)
            if result["n_ratings"]:
                rows.append({"rater": str(rater), **result})
    return rows


# --- agreement ---------------------------------------------------------------------------------------------------


def cohen_kappa(first: Sequence[Any], second: Sequence[Any]) -> float:
    """Cohen's κ of two raters' labels on the same units (statsmodels); nan when chance agreement is total."""
    if len(first) != len(second):
        raise InputError("Cohen's kappa needs the two raters' labels on the same units")
    categories = sorted(set(first) | set(second), key=str)
    if len(first) == 0 or len(categories) < 2:
        return math.nan
    index = {category: i for i, category in enumerate(categories)}
    table = np.zeros((len(categories), len(categories)))
    for a, b in zip(first, second, strict=True):
        table[index[a], index[b]] += 1
    return float(inter_rater.cohens_kappa(table, return_results=False))


def fleiss_kappa(units: Sequence[Sequence[Any]]) -> float:
    """Fleiss' κ of units that each have the same number of labels (statsmodels); nan when undefined."""
    if not units or len({len(unit) for unit in units}) != 1 or len(units[0]) < 2:
        return math.nan
    categories = sorted({label for unit in units for label in unit}, key=str)
    if len(categories) < 2:
        return math.nan
    index = {category: i for i, category in enumerate(categories)}
    table, _ = inter_rater.aggregate_raters(np.array([[index[label] for label in unit] for unit in units]))
    return float(inter_rater.fleiss_kappa(table, method="fleiss"))


def krippendorff_alpha(labels: pd.DataFrame) -> float:
    """Krippendorff's α (nominal) of a frame with columns unit, rater, label; missing pairs allowed."""
    matrix = labels.pivot_table(index="rater", columns="unit", values="label", aggfunc="first")
    categories = sorted(pd.unique(labels["label"]), key=str)
    if matrix.shape[0] < 2 or len(categories) < 2:
        return math.nan
    codes = matrix.apply(lambda column: column.map({c: float(i) for i, c in enumerate(categories)}))
    return float(krippendorff.alpha(reliability_data=codes.to_numpy(dtype=float), level_of_measurement="nominal"))


def agreement(ratings: pd.DataFrame) -> dict[str, Any]:
    """Agreement on non-gold items rated by ≥ 2 raters: mean pairwise agreement, Cohen's κ when exactly two raters
    share items, Fleiss' κ on the items with the most common number of raters, and Krippendorff's α on all."""
    compared = arm_ratings(ratings)
    labels = pd.DataFrame(
        {"unit": compared["item_id"], "rater": compared["rater"].astype(str), "label": outcome_labels(compared)}
    )
    sizes = labels.groupby("unit")["rater"].nunique()
    shared = labels[labels["unit"].isin(sizes[sizes >= 2].index)]
    units = [list(group["label"]) for _, group in shared.groupby("unit", sort=True)]
    raters = sorted(shared["rater"].unique())
    result: dict[str, Any] = {"n_items": len(units), "n_raters": len(raters)}
    pairs = [sum(a == b for a, b in itertools.combinations(unit, 2)) / math.comb(len(unit), 2) for unit in units]
    result["percent_agreement"] = float(np.mean(pairs)) if pairs else math.nan
    result["cohen_kappa"] = math.nan
    if len(raters) == 2:
        wide = shared.pivot_table(index="unit", columns="rater", values="label", aggfunc="first")
        result["cohen_kappa"] = cohen_kappa(list(wide[raters[0]]), list(wide[raters[1]]))
    counts = pd.Series([len(unit) for unit in units], dtype=int)
    common = int(counts.mode().max()) if len(counts) else 0
    fleiss_units = [unit for unit in units if len(unit) == common]
    result.update(
        fleiss_kappa=fleiss_kappa(fleiss_units),
        fleiss_items=len(fleiss_units),
        fleiss_raters_per_item=common,
        krippendorff_alpha=krippendorff_alpha(shared) if units else math.nan,
    )
    return clean(result)


# --- Bradley–Terry -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BradleyTerryFit:
    """Log-strengths (mean zero) of each arm and their covariance from the Fisher information."""

    arms: tuple[str, ...]
    strengths: np.ndarray
    covariance: np.ndarray
    wins: np.ndarray
    prior: float


def _strongly_connected(wins: np.ndarray) -> bool:
    def reach(adjacency: np.ndarray) -> set[int]:
        seen, frontier = {0}, [0]
        while frontier:
            node = frontier.pop()
            for other in np.flatnonzero(adjacency[node] > 0):
                if other not in seen:
                    seen.add(int(other))
                    frontier.append(int(other))
        return seen

    k = len(wins)
    return len(reach(wins)) == k and len(reach(wins.T)) == k


def bradley_terry_fit(
    winners: Sequence[str], losers: Sequence[str], arms: Sequence[str], prior: float | None = None
) -> BradleyTerryFit:
    """Bradley–Terry maximum likelihood by Hunter's MM algorithm. `prior` virtual wins each way per pair of arms;
    None: none when the wins connect every arm both ways (the MLE exists), else BT_PRIOR."""
    index = {arm: i for i, arm in enumerate(arms)}
    if len(index) < 2:
        raise InputError("Bradley–Terry needs at least two arms")
    wins = np.zeros((len(arms), len(arms)))
    for winner, loser in zip(winners, losers, strict=True):
        wins[index[winner], index[loser]] += 1
    if prior is None:
        prior = 0.0 if _strongly_connected(wins) else BT_PRIOR
    total = wins + prior * (1 - np.eye(len(arms)))
    games, won = total + total.T, total.sum(axis=1)
    strength = np.ones(len(arms))
    for _ in range(10_000):
        updated = won / (games / (strength[:, None] + strength[None, :])).sum(axis=1)
        updated /= np.exp(np.mean(np.log(updated)))
        done = np.max(np.abs(np.log(updated) - np.log(strength))) < 1e-12
        strength = updated
        if done:
            break
    theta = np.log(strength)
    p = 1 / (1 + np.exp(-(theta[:, None] - theta[None, :])))
    information = games * p * (1 - p)
    hessian = np.diag(information.sum(axis=1)) - information
    # The Laplacian's null space is the all-ones vector, so its pseudo-inverse is the covariance of the mean-zero θ.
    return BradleyTerryFit(tuple(arms), theta, np.linalg.pinv(hessian), wins, prior)


def bradley_terry(ratings: pd.DataFrame, arms: Sequence[str]) -> dict[str, Any]:
    """Bradley–Terry log-strengths (mean zero) with Fisher-information 95% CIs from decisive non-gold ratings."""
    decisive = arm_ratings(ratings)
    decisive = decisive[decisive["choice"].isin(DECISIVE)]
    losers = decisive["right_arm"].where(decisive["choice"] == "left", decisive["left_arm"])
    fit = bradley_terry_fit(list(decisive["winner_arm"]), list(losers), arms)
    z = scipy_stats.norm.ppf(1 - (1 - CONFIDENCE) / 2)
    errors = np.sqrt(np.clip(np.diag(fit.covariance), 0, None))
    rows = [
        {
            "arm": arm,
            "strength": fit.strengths[i],
            "ci": [fit.strengths[i] - z * errors[i], fit.strengths[i] + z * errors[i]],
            "wins": fit.wins[i].sum(),
            "losses": fit.wins[:, i].sum(),
        }
        for i, arm in enumerate(fit.arms)
    ]
    return clean({"prior": fit.prior, "arms": rows})


# --- gold items and automated scores -----------------------------------------------------------------------------


def gold_accuracy(ratings: pd.DataFrame) -> list[dict[str, Any]]:
    """Per rater: gold items answered, answered correctly and the accuracy (tie and both-bad count as wrong)."""
    gold = ratings[ratings["is_gold"].astype(int) == 1]
    rows = []
    for rater, own in gold.groupby(gold["rater"].astype(str), sort=True):
        correct = int((own["choice"] == own["gold_choice"]).sum())
        rows.append({"rater": rater, "n_gold": len(own), "correct": correct, "accuracy": correct / len(own)})
    return clean(rows)


def exclude_low_gold_raters(ratings: pd.DataFrame, min_accuracy: float | None) -> tuple[pd.DataFrame, list[str]]:
    """Drop every rating of raters whose gold accuracy is below `min_accuracy`; raters with no gold answers stay."""
    if min_accuracy is None:
        return ratings, []
    excluded = sorted(row["rater"] for row in gold_accuracy(ratings) if row["accuracy"] < min_accuracy)
    return ratings[~ratings["rater"].astype(str).isin(excluded)], excluded


def human_vs_automated(ratings: pd.DataFrame) -> dict[str, Any] | None:
    """On decisive non-gold ratings of items whose two explanations both have (different) simulation scores: how
    often the human chose the higher-scored one, with a Wilson CI. None when no column or no such rating."""
    if not {"left_score", "right_score"} <= set(ratings.columns):
        return None
    rated = arm_ratings(ratings)
    left, right = pd.to_numeric(rated["left_score"]), pd.to_numeric(rated["right_score"])
    usable = rated["choice"].isin(DECISIVE) & left.notna() & right.notna() & (left != right)
    if not usable.any():
        return None
    agrees = (rated["choice"] == "left") == (left > right)
    return proportion(int((agrees & usable).sum()), int(usable.sum()))


# --- per item and the whole study --------------------------------------------------------------------------------


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
    ratings: pd.DataFrame, arms: Sequence[str], min_gold_accuracy: float | None = None
) -> dict[str, Any]:
    """Every statistic of a study from its ratings frame, JSON-safe. Counts are of non-gold ratings, after leaving
    out raters below `min_gold_accuracy`. The top-level win rate is arms[0] over arms[1] (the primary pair);
    `pairs` holds every pair; Bradley–Terry is computed when there are more than two arms."""
    if len(arms) < 2:
        raise InputError("a study summary needs at least two arms")
    gold = gold_accuracy(ratings)
    kept, excluded = exclude_low_gold_raters(ratings, min_gold_accuracy)
    pairs = [win_rate(kept, a, b) for a, b in itertools.combinations(arms, 2)]
    primary = pairs[0]
    compared = arm_ratings(kept)
    decisive = compared["choice"].isin(DECISIVE)
    bias = position_bias(kept)
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
            "win_rate": primary["win_rate"],
            "wilson_ci": primary["wilson_ci"],
            "binomial_p": primary["binomial_p"],
            "pairs": pairs,
            "left_win_rate": bias["rate"],
            "position_bias": bias,
            "per_rater": per_rater(kept, arms),
            "agreement": agreement(kept),
            "bradley_terry": bradley_terry(kept, arms) if len(arms) > 2 else None,
            "gold": {"per_rater": gold, "min_accuracy": min_gold_accuracy, "excluded_raters": excluded},
            "human_vs_automated": human_vs_automated(kept),
        }
    )
