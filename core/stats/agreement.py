"""Agreement between raters who rated the same items.

Labels are coded relative to each item's pair of arms (`relative_outcomes`): A better (+1), neither (0: a tie or
both bad) or B better (−1), where A is whichever of the item's two arms comes first in the study's arm order. Coded
by arm name instead, the categories of different pairs never meet, and with three or more arms raters at chance
would seem to agree (κ ≈ 0.2). Both-bad is coded as neither rather than dropped: it states no preference between
the two explanations, and dropping it would hide the disagreement between a rater who saw no difference and one
who did.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import krippendorff
import numpy as np
import pandas as pd
from statsmodels.stats import inter_rater

from core.errors import InputError
from core.stats.neuron_level import BOOTSTRAP_RESAMPLES, multiplicities
from core.stats.proportions import CONFIDENCE, relative_outcomes
from core.values import JsonFields, finite_or_none

# The ordered codes of a rating relative to its pair: B better, neither, A better.
RELATIVE_CODES = (-1, 0, 1)


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


def krippendorff_alpha(labels: pd.DataFrame, level: Literal["nominal", "ordinal"] = "nominal") -> float:
    """Krippendorff's α of a frame with columns unit, rater, label (the krippendorff package); missing pairs
    allowed. `level` nominal, or ordinal where the labels' sort order is their order."""
    matrix = labels.pivot_table(index="rater", columns="unit", values="label", aggfunc="first")
    categories = sorted(pd.unique(labels["label"]), key=str if level == "nominal" else None)
    if matrix.shape[0] < 2 or len(categories) < 2:
        return math.nan
    codes = matrix.apply(lambda column: column.map({c: float(i) for i, c in enumerate(categories)}))
    return float(krippendorff.alpha(reliability_data=codes.to_numpy(dtype=float), level_of_measurement=level))


# --- α and κ from per-unit counts, for many resamples at once -----------------------------------------------------


def unit_coincidences(counts: np.ndarray) -> np.ndarray:
    """Each unit's contribution to Krippendorff's coincidence matrix, flattened: (units, C·C) from the per-unit
    category counts (units, C). Units with fewer than two labels are not pairable and contribute nothing."""
    counts = np.asarray(counts, dtype=float)
    size = counts.shape[1]
    labels = counts.sum(axis=1)
    pairs = counts[:, :, None] * counts[:, None, :] - np.eye(size) * counts[:, :, None]
    pairs /= np.where(labels >= 2, labels - 1, np.inf)[:, None, None]
    return pairs.reshape(len(counts), size * size)


def _distances(totals: np.ndarray, level: str) -> np.ndarray:
    """Krippendorff's squared distances δ²(c, k), (…, C, C), from the category totals (…, C) for ordinal data."""
    size = totals.shape[-1]
    if level == "nominal":
        return np.broadcast_to(1 - np.eye(size), (*totals.shape[:-1], size, size))
    if level != "ordinal":
        raise ValueError(f"level {level!r} is not nominal or ordinal")
    cumulative = np.cumsum(totals, axis=-1)
    # For c ≤ k: the sum of the totals from c to k, less half of the two ends.
    between = cumulative[..., None, :] - cumulative[..., :, None] + totals[..., :, None]
    upper = (between - (totals[..., :, None] + totals[..., None, :]) / 2) ** 2
    below = np.tril(np.ones((size, size), dtype=bool), -1)
    return np.where(below, np.swapaxes(upper, -1, -2), upper) * (1 - np.eye(size))


def alpha_from_coincidences(coincidences: np.ndarray, level: str = "ordinal") -> np.ndarray:
    """Krippendorff's α of coincidence matrices (…, C·C), summed over units: 1 − (n − 1)·Σ o·δ² / Σ n_c·n_k·δ²;
    nan where the data have a single category."""
    size = math.isqrt(coincidences.shape[-1])
    matrix = coincidences.reshape(*coincidences.shape[:-1], size, size)
    totals = matrix.sum(axis=-1)
    n = totals.sum(axis=-1)
    delta = _distances(totals, level)
    observed = (matrix * delta).sum(axis=(-2, -1))
    expected = (totals[..., :, None] * totals[..., None, :] * delta).sum(axis=(-2, -1))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(expected > 0, 1 - (n - 1) * observed / expected, np.nan)


def fleiss_from_counts(counts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Fleiss' κ of units with the same number of labels, from their category counts (units, C), once per row of
    `weights` (…, units: how often each unit counts); nan where chance agreement is total or no unit counts."""
    counts = np.asarray(counts, dtype=float)
    labels = counts.sum(axis=1)[0] if len(counts) else 0.0
    if labels < 2:
        return np.full(weights.shape[:-1], np.nan)
    per_unit = ((counts**2).sum(axis=1) - labels) / (labels * (labels - 1))
    total = weights.sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        observed = weights @ per_unit / total
        shares = weights @ counts / (total[..., None] * labels)
        chance = (shares**2).sum(axis=-1)
        return np.where(chance < 1 - 1e-12, (observed - chance) / (1 - chance), np.nan)


def _interval(values: np.ndarray) -> tuple[float | None, float | None]:
    """The percentile interval of the resamples where the measure is defined; (None, None) when none is."""
    finite = values[np.isfinite(values)]
    if len(finite) == 0:
        return None, None
    tail = (1 - CONFIDENCE) / 2
    low, high = np.quantile(finite, [tail, 1 - tail])
    return float(low), float(high)


def agreement_method(resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> str:
    """What `agreement` measures, in words (the summary's `agreement_method`)."""
    return (
        "Each rating coded relative to its item's pair: A better / neither (tie or both bad) / B better, A being "
        "the pair's first arm in the study's arm order. Items rated by two or more raters; Krippendorff's α "
        "ordinal on all of them, Fleiss' κ on those with the most common number of raters, Cohen's κ only when "
        f"exactly two raters share items. {CONFIDENCE:.0%} percentile bootstrap CIs resampling items "
        f"({resamples} resamples, seed {seed})."
    )


@dataclass(frozen=True)
class Agreement(JsonFields):
    """Agreement between raters on the items two or more of them rated (see `agreement_method`): percent agreement,
    Cohen's κ (two raters only), Fleiss' κ (on the items with the most common number of raters) and ordinal
    Krippendorff's α, with bootstrap CIs over items; None where a measure is undefined."""

    n_items: int
    n_raters: int
    percent_agreement: float | None
    cohen_kappa: float | None
    fleiss_kappa: float | None
    fleiss_items: int
    fleiss_raters_per_item: int
    krippendorff_alpha: float | None
    krippendorff_alpha_ci_low: float | None
    krippendorff_alpha_ci_high: float | None
    fleiss_kappa_ci_low: float | None
    fleiss_kappa_ci_high: float | None


def agreement(
    ratings: pd.DataFrame, arms: Sequence[str] | None = None, *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> Agreement:
    """Agreement on non-gold items rated by ≥ 2 raters (see `Agreement` and `agreement_method`)."""
    coded = relative_outcomes(ratings, arms)
    labels = pd.DataFrame({"unit": coded["item_id"], "rater": coded["rater"].astype(str), "code": coded["code"]})
    sizes = labels.groupby("unit")["rater"].nunique()
    shared = labels[labels["unit"].isin(sizes[sizes >= 2].index)]
    counts = pd.crosstab(shared["unit"], shared["code"]).reindex(columns=list(RELATIVE_CODES), fill_value=0)
    matrix = counts.to_numpy(dtype=float)
    raters = sorted(shared["rater"].unique())
    per_unit = matrix.sum(axis=1)
    common = int(pd.Series(per_unit).mode().max()) if len(per_unit) else 0
    modal = per_unit == common
    coincidences = unit_coincidences(matrix)
    everyone = np.ones((1, len(matrix)))
    # Per unit: the share of its pairs of labels that agree.
    pairs_agreeing = ((matrix**2).sum(axis=1) - per_unit) / np.maximum(per_unit * (per_unit - 1), 1)
    cohen = None
    if len(raters) == 2:
        wide = shared.pivot_table(index="unit", columns="rater", values="code", aggfunc="first")
        cohen = cohen_kappa(list(wide[raters[0]]), list(wide[raters[1]]))
    alphas, kappas = [], []
    if len(matrix) >= 2:
        for weights in multiplicities(len(matrix), resamples, np.random.default_rng(seed)):
            alphas.append(alpha_from_coincidences(weights @ coincidences))
            kappas.append(fleiss_from_counts(matrix[modal], weights[:, modal]))
    alpha_ci = _interval(np.concatenate(alphas)) if alphas else (None, None)
    kappa_ci = _interval(np.concatenate(kappas)) if kappas else (None, None)
    rated = len(matrix) > 0
    return Agreement(
        n_items=len(matrix),
        n_raters=len(raters),
        percent_agreement=float(pairs_agreeing.mean()) if rated else None,
        cohen_kappa=finite_or_none(cohen),
        fleiss_kappa=finite_or_none(fleiss_from_counts(matrix[modal], everyone[:, modal])[0]) if rated else None,
        fleiss_items=int(modal.sum()),
        fleiss_raters_per_item=common,
        krippendorff_alpha=finite_or_none(alpha_from_coincidences(coincidences.sum(axis=0))) if rated else None,
        krippendorff_alpha_ci_low=alpha_ci[0],
        krippendorff_alpha_ci_high=alpha_ci[1],
        fleiss_kappa_ci_low=kappa_ci[0],
        fleiss_kappa_ci_high=kappa_ci[1],
    )
