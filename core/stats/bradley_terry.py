"""Bradley–Terry strengths of the arms from decisive ratings, with bootstrap CIs that resample neurons, intervals on
the pairwise differences and ranks that only separate arms the data separate.

The fit is choix's (iterative Luce spectral ranking, the maximum-likelihood estimate); whether the wins connect the
arms is scipy's strongly connected components. The bootstrap refits thousands of resamples at once with Hunter's MM
algorithm instead (`mm_strengths`): the same estimate (to 1e-8 at the bootstrap's tolerance), but choix fits one
data set per call, 10 to 15 times slower over 2000 resamples (bench/stats.py measures both).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import choix
import numpy as np
import pandas as pd
from scipy import sparse
from scipy.sparse import csgraph

from core.errors import InputError
from core.stats.neuron_level import BOOTSTRAP_RESAMPLES, cluster_keys, multiplicities
from core.stats.proportions import (
    CONFIDENCE,
    DECISIVE,
    arm_ratings,
    pair_counts,
    pair_mask,
    percentile_interval,
    z_value,
)
from core.values import JsonFields

# Virtual comparisons per pair of arms added to Bradley–Terry when the wins do not connect every arm both ways,
# where the maximum-likelihood strengths do not exist (an arm that never lost would be infinitely strong). They are
# added to the win counts, not passed as choix's `alpha`, which regularises its Markov chain, not the likelihood.
BT_PRIOR = 0.5
_MAX_ITERATIONS = 10_000


@dataclass(frozen=True)
class BradleyTerryFit:
    """Log-strengths (mean zero) of each arm and their covariance from the Fisher information."""

    arms: tuple[str, ...]
    strengths: np.ndarray
    covariance: np.ndarray
    wins: np.ndarray
    prior: float


def strongly_connected(wins: np.ndarray) -> np.ndarray:
    """Whether each win matrix (…, k, k; wins[i, j]: i beat j) connects every arm to every other along wins, both
    ways: the condition for the maximum-likelihood strengths to exist. All matrices at once, as one graph of
    disjoint copies for scipy's strongly connected components."""
    wins = np.asarray(wins)
    size = wins.shape[-1]
    beaten = wins.reshape(-1, size, size) > 0
    graph, winner, loser = np.nonzero(beaten)
    nodes = len(beaten) * size
    edges = (np.ones(len(graph), dtype=bool), (graph * size + winner, graph * size + loser))
    _, components = csgraph.connected_components(
        sparse.csr_matrix(edges, shape=(nodes, nodes)), directed=True, connection="strong"
    )
    components = components.reshape(len(beaten), size)
    return (components == components[:, :1]).all(axis=1).reshape(wins.shape[:-2])


def mm_strengths(total: np.ndarray, tolerance: float = 1e-12) -> np.ndarray:
    """Mean-zero log-strengths maximising the Bradley–Terry likelihood of win matrices (…, k, k) by Hunter's MM
    algorithm, all at once; every arm must have a win and a loss in a strongly connected matrix (add a prior
    otherwise). For the bootstrap: `bradley_terry_fit` fits one matrix with choix."""
    games, won = total + np.swapaxes(total, -1, -2), total.sum(axis=-1)
    strength = np.ones(won.shape)
    for _ in range(_MAX_ITERATIONS):
        updated = won / (games / (strength[..., :, None] + strength[..., None, :])).sum(axis=-1)
        updated /= np.exp(np.mean(np.log(updated), axis=-1, keepdims=True))
        done = np.max(np.abs(np.log(updated) - np.log(strength)), initial=0.0) < tolerance
        strength = updated
        if done:
            break
    return np.log(strength)


def bradley_terry_fit(
    winners: Sequence[str], losers: Sequence[str], arms: Sequence[str], prior: float | None = None
) -> BradleyTerryFit:
    """Bradley–Terry maximum likelihood (choix's iterative Luce spectral ranking). `prior` virtual wins each way per
    pair of arms; None: none when the wins connect every arm both ways (the MLE exists), else BT_PRIOR."""
    index = {arm: i for i, arm in enumerate(arms)}
    if len(index) < 2:
        raise InputError("Bradley–Terry needs at least two arms")
    wins = np.zeros((len(arms), len(arms)))
    for winner, loser in zip(winners, losers, strict=True):
        wins[index[winner], index[loser]] += 1
    if prior is None:
        prior = 0.0 if bool(strongly_connected(wins)) else BT_PRIOR
    total = wins + prior * (1 - np.eye(len(arms)))
    theta = choix.ilsr_pairwise_dense(total, tol=1e-12, max_iter=_MAX_ITERATIONS)
    games = total + total.T
    p = 1 / (1 + np.exp(-(theta[:, None] - theta[None, :])))
    information = games * p * (1 - p)
    hessian = np.diag(information.sum(axis=1)) - information
    # The Laplacian's null space is the all-ones vector, so its pseudo-inverse is the covariance of the mean-zero θ.
    return BradleyTerryFit(tuple(arms), theta, np.linalg.pinv(hessian), wins, prior)


def _bootstrap_strengths(per_cluster: np.ndarray, resamples: int, seed: int) -> tuple[np.ndarray, float]:
    """Log-strengths of `resamples` resamples of the clusters (resamples × k) and the share of them that needed the
    prior because their wins did not connect the arms."""
    size = per_cluster.shape[-1]
    flat = per_cluster.reshape(len(per_cluster), -1)
    thetas, needed_prior = [], 0
    for weights in multiplicities(len(per_cluster), resamples, np.random.default_rng(seed)):
        wins = (weights @ flat).reshape(len(weights), size, size)
        connected = strongly_connected(wins)
        needed_prior += int((~connected).sum())
        prior = np.where(connected, 0.0, BT_PRIOR)[:, None, None] * (1 - np.eye(size))
        thetas.append(mm_strengths(wins + prior, tolerance=1e-9))
    return np.concatenate(thetas), needed_prior / resamples


def bradley_terry_method(resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> str:
    return (
        "Bradley–Terry maximum likelihood (choix's iterative Luce spectral ranking; Hunter's MM for the bootstrap "
        "resamples) on decisive ratings. Ties and both-bad are not modelled "
        "(no Davidson term): they are left out of the fit and counted per pair in `differences`. "
        f"`ci`: {CONFIDENCE:.0%} percentile bootstrap resampling neurons ({resamples} resamples, seed {seed}; "
        "a resample whose wins do not connect the arms gets the prior); `fisher_ci` assumes independent ratings "
        "and is too narrow when a neuron's raters lean together. `rank`: 1 + the number of arms whose interval lies "
        "wholly above the arm's, so arms whose intervals do not overlap get different ranks."
    )


@dataclass(frozen=True)
class ArmStrength(JsonFields):
    """One arm's Bradley–Terry log-strength with its CI (`ci`: bootstrap over neurons, or Fisher's; `fisher_ci`:
    assuming independent ratings), its rank and its decisive wins and losses."""

    arm: str
    strength: float
    ci: tuple[float, float]
    fisher_ci: tuple[float, float]
    rank: int
    wins: float
    losses: float


@dataclass(frozen=True)
class StrengthDifference(JsonFields):
    """Arm A's log-strength minus arm B's, with its bootstrap CI (None without a bootstrap) and Fisher CI, and the
    pair's ratings: decisive wins each way, ties and both-bad."""

    arm_a: str
    arm_b: str
    difference: float
    ci: tuple[float, float] | None
    fisher_ci: tuple[float, float]
    wins_a: int
    wins_b: int
    ties: int
    both_bad: int


@dataclass(frozen=True)
class BradleyTerry(JsonFields):
    """The arms' Bradley–Terry strengths and their pairwise differences (see `bradley_terry`)."""

    prior: float
    warning: str | None
    unit: str
    ci_method: str
    bootstrap_prior_share: float | None
    ties: str
    method: str
    arms: tuple[ArmStrength, ...]
    differences: tuple[StrengthDifference, ...]


def _pair(interval: np.ndarray) -> tuple[float, float]:
    return float(interval[0]), float(interval[1])


def bradley_terry(
    ratings: pd.DataFrame, arms: Sequence[str], *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> BradleyTerry:
    """Bradley–Terry log-strengths (mean zero) from decisive non-gold ratings: per arm the strength, its CI
    (bootstrap over neurons; Fisher's when fewer than two neurons), rank, wins and losses; per pair the difference
    of strengths with CIs and the counts, ties included; a `warning` when the strengths lean on the prior."""
    compared = arm_ratings(ratings)
    losers_all = compared["right_arm"].where(compared["choice"] == "left", compared["left_arm"])
    decisive = compared["choice"].isin(DECISIVE) & compared["winner_arm"].isin(arms) & losers_all.isin(arms)
    rated, losers = compared[decisive], losers_all[decisive]
    fit = bradley_terry_fit(list(rated["winner_arm"]), list(losers), arms)
    index = {arm: i for i, arm in enumerate(arms)}
    z = z_value()
    errors = np.sqrt(np.clip(np.diag(fit.covariance), 0, None))
    fisher = np.column_stack([fit.strengths - z * errors, fit.strengths + z * errors])
    clusters = pd.factorize(cluster_keys(rated), sort=True)[0] if len(rated) else np.zeros(0, dtype=int)
    n_clusters = int(clusters.max()) + 1 if len(clusters) else 0
    bootstrap_prior_share = None
    if n_clusters >= 2:
        per_cluster = np.zeros((n_clusters, len(arms), len(arms)))
        np.add.at(per_cluster, (clusters, rated["winner_arm"].map(index), losers.map(index)), 1)
        thetas, bootstrap_prior_share = _bootstrap_strengths(per_cluster, resamples, seed)
        intervals = percentile_interval(thetas)
        ci_method = f"bootstrap over {n_clusters} neurons"
    else:
        thetas, intervals = None, fisher
        ci_method = f"Fisher information: {n_clusters} neuron(s) with a decisive rating, too few to resample"
    rank = [1 + int((intervals[:, 0] > intervals[i, 1]).sum()) for i in range(len(arms))]
    rows = tuple(
        ArmStrength(
            arm=arm,
            strength=float(fit.strengths[i]),
            ci=_pair(intervals[i]),
            fisher_ci=_pair(fisher[i]),
            rank=rank[i],
            wins=float(fit.wins[i].sum()),
            losses=float(fit.wins[:, i].sum()),
        )
        for i, arm in enumerate(fit.arms)
    )
    differences = []
    for arm_a, arm_b in itertools.combinations(arms, 2):
        i, j = index[arm_a], index[arm_b]
        contrast = np.zeros(len(arms))
        contrast[i], contrast[j] = 1, -1
        difference = float(fit.strengths[i] - fit.strengths[j])
        error = float(np.sqrt(max(contrast @ fit.covariance @ contrast, 0)))
        counts = pair_counts(compared[pair_mask(compared, arm_a, arm_b)], arm_a, arm_b)
        differences.append(
            StrengthDifference(
                arm_a=arm_a,
                arm_b=arm_b,
                difference=difference,
                ci=_pair(percentile_interval(thetas[:, i] - thetas[:, j])) if thetas is not None else None,
                fisher_ci=(difference - z * error, difference + z * error),
                wins_a=counts.wins_a,
                wins_b=counts.wins_b,
                ties=counts.ties,
                both_bad=counts.both_bad,
            )
        )
    warning = None
    if fit.prior:
        lacking = [arm for i, arm in enumerate(arms) if not fit.wins[i].sum() or not fit.wins[:, i].sum()]
        warning = (
            "the comparison graph is not strongly connected (the wins do not link every arm to every other both "
            f"ways{'; no win or no loss: ' + ', '.join(lacking) if lacking else ''}): the maximum-likelihood "
            f"strengths do not exist, and these come partly from the prior of {fit.prior:g} virtual wins each way "
            "per pair of arms"
        )
    return BradleyTerry(
        prior=fit.prior,
        warning=warning,
        unit="neuron",
        ci_method=ci_method,
        bootstrap_prior_share=bootstrap_prior_share,
        ties="reported per pair (ties, both_bad in differences), not modelled",
        method=bradley_terry_method(resamples, seed),
        arms=rows,
        differences=tuple(differences),
    )
