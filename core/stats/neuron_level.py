"""The neuron as the unit of analysis: the primary test (one share per neuron, sign test, cluster bootstrap), the
secondary logistic mixed model, Holm's adjustment, and the resampling helpers the other modules share.

Ratings of one neuron share its two explanations (and often its raters), so they are not independent trials: a
test over ratings rejects far more often than its nominal level when neurons differ. The primary analysis therefore
reduces each neuron to one number first; bench/stats.py measures both tests' calibration.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
from scipy import special as scipy_special
from scipy import stats as scipy_stats
from statsmodels.genmod.bayes_mixed_glm import BinomialBayesMixedGLM
from statsmodels.stats.multitest import multipletests
from statsmodels.tools.sm_exceptions import ConvergenceWarning

from core.errors import InputError
from core.stats.proportions import CONFIDENCE, DECISIVE, arm_ratings, pair_mask
from core.values import JsonFields

# Columns that together name a neuron, where present; an exported frame has `model` and `neuron` ("layer:index").
NEURON_COLUMNS = ("model", "layer", "neuron")
BOOTSTRAP_RESAMPLES = 2000
# Bound on the resample draws held at once (about 64 MB of indices): bootstraps run in batches of resamples.
_BOOTSTRAP_CHUNK = 8_000_000
# A logistic mixed model below this many decisive ratings is mostly prior.
MIN_MIXED_RATINGS = 10
# How far A's win probability and one minus B's may differ before the mixed model's fit counts as unstable: VB's
# own noise stayed within 0.011 on the data sets we tried, a separated fit was off by 0.9.
SYMMETRY_TOLERANCE = 0.05


def multiplicities(n: int, resamples: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Bootstrap resamples of n clusters as multiplicity matrices (resamples × n: how often each cluster was drawn),
    in chunks of rows that hold at most a quarter of _BOOTSTRAP_CHUNK draws. A statistic that is a weighted sum over
    clusters is then one matrix product per chunk. The draws are those of scipy.stats.bootstrap (`rng.integers(0,
    n, (resamples, n))`), but scipy would build every resampled data set and take plain percentiles of a statistic
    of it, where Bradley–Terry and agreement need the counts and agreement leaves out resamples in which a measure
    is undefined."""
    chunk = max(1, _BOOTSTRAP_CHUNK // 4 // max(1, n))
    for start in range(0, resamples, chunk):
        rows = min(chunk, resamples - start)
        picks = rng.integers(0, n, size=(rows, n)) + n * np.arange(rows)[:, None]
        yield np.bincount(picks.ravel(), minlength=rows * n).reshape(rows, n).astype(float)


def cluster_keys(ratings: pd.DataFrame) -> pd.Series:
    """Each rating's cluster for a bootstrap: its neuron where the frame names neurons, else its item."""
    if "neuron" not in ratings.columns:
        return ratings["item_id"].astype(str)
    keys = [column for column in NEURON_COLUMNS if column in ratings.columns]
    return ratings[keys].astype(str).agg("|".join, axis=1) if len(ratings) else pd.Series([], dtype=str)


@dataclass(frozen=True)
class PrimaryAnalysis(JsonFields):
    """Arm A over arm B with the neuron as the unit: the mean over neurons of the share of each neuron's decisive
    ratings won by A, a cluster-bootstrap CI and a sign test over neurons. ci/p_value are None where `note` says.
    `p_value_holm` is set by the study summary (Holm over its pairs); None for one analysis alone."""

    arm_a: str
    arm_b: str
    unit: str
    n_units: int
    n_leaning_a: int
    n_leaning_b: int
    n_tied_units: int
    n_decisive_ratings: int
    n_units_without_decisive: int
    estimate: float | None
    ci: tuple[float, float] | None
    p_value: float | None
    method: str
    resamples: int
    seed: int
    note: str | None = None
    p_value_holm: float | None = None


@dataclass(frozen=True)
class SecondaryAnalysis(JsonFields):
    """A logistic mixed model of "A won" on decisive ratings: random intercepts for neuron and rater, A's position
    as a fixed effect. Fields are None (and `note` says why) where there was too little data to fit."""

    arm_a: str
    arm_b: str
    n_ratings: int
    n_neurons: int
    n_raters: int
    win_probability: float | None
    win_probability_ci: tuple[float, float] | None
    position_log_odds: float | None
    position_log_odds_ci: tuple[float, float] | None
    neuron_sd: float | None
    rater_sd: float | None
    converged: bool
    method: str
    note: str | None = None


def _neuron_keys(ratings: pd.DataFrame) -> list[str]:
    if "neuron" not in ratings.columns:
        raise InputError(
            "the neuron-level analysis needs a `neuron` column in the ratings (as in a study export); "
            f"these ratings have only: {', '.join(map(str, ratings.columns))}"
        )
    return [column for column in NEURON_COLUMNS if column in ratings.columns]


def _decisive_pair(ratings: pd.DataFrame, arm_a: str, arm_b: str) -> pd.DataFrame:
    pair = arm_ratings(ratings)
    pair = pair[pair_mask(pair, arm_a, arm_b)]
    return pair[pair["choice"].isin(DECISIVE) & pair["winner_arm"].isin([arm_a, arm_b])]


def neuron_shares(ratings: pd.DataFrame, arm_a: str, arm_b: str) -> pd.DataFrame:
    """One row per neuron with non-gold ratings of the pair: its key columns, wins_a, wins_b, decisive and share
    (wins_a / decisive; NaN when it has no decisive rating, since ties and both-bad carry no preference)."""
    keys = _neuron_keys(ratings)
    pair = arm_ratings(ratings)
    pair = pair[pair_mask(pair, arm_a, arm_b)]
    decisive = pair["choice"].isin(DECISIVE)
    counts = pd.DataFrame(
        {
            **{key: pair[key] for key in keys},
            "wins_a": (decisive & (pair["winner_arm"] == arm_a)).astype(int),
            "wins_b": (decisive & (pair["winner_arm"] == arm_b)).astype(int),
        }
    )
    per_neuron = counts.groupby(keys, sort=True, dropna=False)[["wins_a", "wins_b"]].sum().reset_index()
    per_neuron["decisive"] = per_neuron["wins_a"] + per_neuron["wins_b"]
    per_neuron["share"] = per_neuron["wins_a"] / per_neuron["decisive"].where(per_neuron["decisive"] > 0)
    return per_neuron


def cluster_bootstrap_ci(
    values: np.ndarray, resamples: int, rng: np.random.Generator, confidence: float = CONFIDENCE
) -> np.ndarray:
    """Percentile bootstrap CI of the mean over the last axis (the clusters), resampling clusters with replacement
    (scipy.stats.bootstrap); shape values.shape[:-1] + (2,). A 2-D input is many studies at once (for calibration),
    each resampled on its own: scipy, given them together, would draw the same resamples for every study."""
    values = np.asarray(values, dtype=float)
    flat = values.reshape(-1, values.shape[-1])
    bounds = np.empty((len(flat), 2))
    for row, clusters in enumerate(flat):
        result = scipy_stats.bootstrap(
            (clusters,),
            np.mean,
            n_resamples=resamples,
            batch=max(1, _BOOTSTRAP_CHUNK // len(clusters)),
            confidence_level=confidence,
            method="percentile",
            random_state=rng,
        )
        bounds[row] = result.confidence_interval
    return bounds.reshape(*values.shape[:-1], 2)


def sign_tests(successes: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Exact two-sided binomial test against 1/2 for many counts at once (the same values as scipy's binomtest:
    at p = 1/2 the two tails are mirror images); 1 where n is 0."""
    successes, n = np.asarray(successes), np.asarray(n)
    return np.minimum(1.0, 2 * scipy_stats.binom.cdf(np.minimum(successes, n - successes), n, 0.5))


def neuron_level(
    ratings: pd.DataFrame, arm_a: str, arm_b: str, *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> PrimaryAnalysis:
    """The primary analysis of arm A over B, neuron as the unit: mean per-neuron share of decisive ratings won by A,
    percentile cluster-bootstrap CI over neurons, exact sign test over neurons that lean one way."""
    shares_frame = neuron_shares(ratings, arm_a, arm_b)
    rated = shares_frame["decisive"] > 0
    shares = shares_frame.loc[rated, "share"].to_numpy(dtype=float)
    n_leaning_a, n_leaning_b = int((shares > 0.5).sum()), int((shares < 0.5).sum())
    method = (
        "Exact two-sided sign test over neurons that lean one way (binomial, p = 1/2); "
        f"{CONFIDENCE:.0%} percentile bootstrap CI of the mean per-neuron share, resampling neurons "
        f"({resamples} resamples, seed {seed})."
    )
    estimate = float(shares.mean()) if len(shares) else None
    ci: tuple[float, float] | None = None
    p_value: float | None = None
    note = None
    if len(shares) < 2:
        note = f"{len(shares)} neuron(s) with a decisive rating: a CI and a test need at least 2"
    else:
        low, high = cluster_bootstrap_ci(shares, resamples, np.random.default_rng(seed))
        ci = (float(low), float(high))
        if n_leaning_a + n_leaning_b:
            p_value = float(scipy_stats.binomtest(n_leaning_a, n_leaning_a + n_leaning_b, 0.5).pvalue)
        else:
            note = "no neuron leans either way (every share is exactly 1/2): the sign test has nothing to test"
    return PrimaryAnalysis(
        arm_a=arm_a,
        arm_b=arm_b,
        unit="neuron",
        n_units=len(shares),
        n_leaning_a=n_leaning_a,
        n_leaning_b=n_leaning_b,
        n_tied_units=len(shares) - n_leaning_a - n_leaning_b,
        n_decisive_ratings=int(shares_frame["decisive"].sum()),
        n_units_without_decisive=int((~rated).sum()),
        estimate=estimate,
        ci=ci,
        p_value=p_value,
        method=method,
        resamples=resamples,
        seed=seed,
        note=note,
    )


def _codes(column: pd.Series) -> np.ndarray:
    return pd.factorize(column.astype(str), sort=True)[0]


def mixed_effects(ratings: pd.DataFrame, arm_a: str, arm_b: str, *, seed: int = 0) -> SecondaryAnalysis:
    """A secondary analysis of arm A over B: statsmodels' BinomialBayesMixedGLM (variational Bayes) of "A won" on
    decisive ratings, random intercepts for neuron and rater, A-on-the-left as a fixed effect; None fields + note
    when there is too little data."""
    keys = _neuron_keys(ratings)
    decisive = _decisive_pair(ratings, arm_a, arm_b)
    neuron = _codes(decisive[keys].astype(str).agg("|".join, axis=1)) if len(decisive) else np.zeros(0, int)
    rater = _codes(decisive["rater"]) if len(decisive) else np.zeros(0, int)
    n_neurons, n_raters = len(np.unique(neuron)), len(np.unique(rater))
    a_won = (decisive["winner_arm"] == arm_a).to_numpy(dtype=float)
    # ±1/2 coding: the intercept is A's log-odds averaged over the two positions, the slope left minus right.
    a_left = (decisive["left_arm"] == arm_a).to_numpy(dtype=float) - 0.5
    method = (
        "Logistic mixed model of A winning on decisive ratings (statsmodels BinomialBayesMixedGLM, variational "
        "Bayes; priors N(0, 2²) on fixed effects): random intercepts for neuron and rater, A's position (±1/2) "
        "fixed; intervals are posterior mean ± 1.96 sd (mean-field VB tends to make them too narrow). The win "
        "probability is that of a typical neuron and rater (random effects at zero)."
    )
    empty = SecondaryAnalysis(
        arm_a, arm_b, len(decisive), n_neurons, n_raters, None, None, None, None, None, None, False, method
    )
    if len(decisive) < MIN_MIXED_RATINGS or n_neurons < 2:
        return replace(
            empty,
            note=f"{len(decisive)} decisive ratings on {n_neurons} neuron(s): a mixed model needs at least "
            f"{MIN_MIXED_RATINGS} ratings on 2 neurons",
        )
    if a_won.min() == a_won.max():
        return replace(empty, note="every decisive rating went the same way: the log-odds are unbounded")
    notes = []
    fixed, fixed_names = [np.ones(len(decisive))], ["intercept"]
    if len(np.unique(a_left)) == 2:
        fixed.append(a_left)
        fixed_names.append("a_left")
    else:
        notes.append("arm A was always on the same side: no position effect")
    # A variance component needs at least two levels; one rater's intercept is not separable from the fixed one.
    groups = [("neuron", neuron, n_neurons)] + ([("rater", rater, n_raters)] if n_raters >= 2 else [])
    if n_raters < 2:
        notes.append("one rater: no rater random effect")
    blocks = [np.eye(count)[codes] for _, codes, count in groups]
    ident = np.concatenate([np.full(count, i) for i, (_, _, count) in enumerate(groups)])

    def fit_of(outcome: np.ndarray, columns: list[np.ndarray]) -> Any:
        model = BinomialBayesMixedGLM(
            outcome,
            np.column_stack(columns),
            np.hstack(blocks),
            ident,
            fep_names=fixed_names,
            vcp_names=[name for name, _, _ in groups],
        )
        with warnings.catch_warnings():
            # Convergence is reported in the result, not as a warning on the console.
            warnings.simplefilter("ignore", ConvergenceWarning)
            return model.fit_vb(fit_method="L-BFGS-B", rng=np.random.default_rng(seed))

    fit = fit_of(a_won, fixed)
    converged = bool(fit.optim_retvals.success)
    if not converged:
        notes.append(f"VB optimisation did not converge: {fit.optim_retvals.message}")
    # The model is symmetric in the arms (its priors are centred), so B over A must give A's log-odds negated. Where
    # neurons are separated (each one's ratings all going one way) VB can settle on a confident, one-sided answer
    # that the swapped fit contradicts: then there is no estimate to give.
    swapped = fit_of(1 - a_won, [fixed[0], *(-column for column in fixed[1:])])  # the intercept, then -a_left
    p_a, p_b = scipy_special.expit(fit.fe_mean[0]), scipy_special.expit(swapped.fe_mean[0])
    if abs(p_a - (1 - p_b)) > SYMMETRY_TOLERANCE:
        notes.append(
            f"the variational fit is unstable on these data (A over B gives {p_a:.3f}, B over A gives {p_b:.3f}, "
            "which should add up to 1), as when each neuron's ratings all go one way: no estimate"
        )
        return replace(empty, note="; ".join(notes))
    z = scipy_stats.norm.ppf(1 - (1 - CONFIDENCE) / 2)

    def interval(i: int) -> tuple[float, float]:
        return float(fit.fe_mean[i] - z * fit.fe_sd[i]), float(fit.fe_mean[i] + z * fit.fe_sd[i])

    low, high = interval(0)
    position = "a_left" in fixed_names
    sds = dict(zip([name for name, _, _ in groups], np.exp(fit.vcp_mean), strict=True))
    return replace(
        empty,
        win_probability=float(scipy_special.expit(fit.fe_mean[0])),
        win_probability_ci=(float(scipy_special.expit(low)), float(scipy_special.expit(high))),
        position_log_odds=float(fit.fe_mean[1]) if position else None,
        position_log_odds_ci=interval(1) if position else None,
        neuron_sd=float(sds["neuron"]),
        rater_sd=float(sds["rater"]) if "rater" in sds else None,
        converged=converged,
        note="; ".join(notes) or None,
    )


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm–Bonferroni adjusted p-values (statsmodels multipletests) in the given order; None (or NaN) stays None
    and does not count towards the number of tests."""
    present = [i for i, p in enumerate(p_values) if p is not None and math.isfinite(p)]
    adjusted: list[float | None] = [None] * len(p_values)
    if present:
        values = multipletests([p_values[i] for i in present], method="holm")[1]
        for i, value in zip(present, values, strict=True):
            adjusted[i] = float(value)
    return adjusted
