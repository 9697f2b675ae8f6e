"""Human judgements against automated scores, one score kind at a time and never mixed: each simulator·method's
simulation score and each embedder's similarity.

A ratings frame carries a kind's scores of the left and right explanation as the columns `automated_column(kind,
name, "left")` / `… "right"`, e.g. `score:hf:my-model·all_at_once:left` or `similarity:all-MiniLM-L6-v2:right`
(core.export.study_data writes them). Every comparison is relative to the item's pair, A being its first arm in the
study's arm order: the score difference is A's minus B's.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats
from statsmodels.discrete.discrete_model import Logit
from statsmodels.stats import inter_rater

from core.stats.neuron_level import cluster_keys
from core.stats.proportions import (
    CONFIDENCE,
    DECISIVE,
    arm_ratings,
    proportion,
    relative_outcomes,
    z_value,
)
from core.values import JsonFields, finite_or_none

AUTOMATED_KINDS = ("score", "similarity")
SIDES = ("left", "right")
# Fewer decisive ratings than this make a logistic slope mostly noise.
MIN_LOGISTIC_RATINGS = 5
# Cluster-robust standard errors need many clusters; below this many neurons they are too small.
FEW_CLUSTERS = 20


def automated_column(kind: str, name: str, side: str) -> str:
    """The ratings column holding a score kind's value for one side's explanation: `<kind>:<name>:<side>`, where
    kind is `score` (name `<simulator>·<method>`) or `similarity` (name: the embedder)."""
    if kind not in AUTOMATED_KINDS or side not in SIDES:
        raise ValueError(f"no automated column for kind {kind!r} and side {side!r}")
    return f"{kind}:{name}:{side}"


def automated_kinds(columns: Sequence[str]) -> list[tuple[str, str]]:
    """The (kind, name) pairs whose left and right columns are both in `columns`, sorted."""
    present = set(map(str, columns))
    found = set()
    for column in present:
        kind, _, rest = column.partition(":")
        name, _, side = rest.rpartition(":")
        if kind in AUTOMATED_KINDS and side == "left" and name and automated_column(kind, name, "right") in present:
            found.add((kind, name))
    return sorted(found)


@dataclass(frozen=True)
class HigherScoreChosen(JsonFields):
    """How often the human chose the explanation with the higher simulation score (see `human_vs_automated`):
    the proportion's fields, and the ratings left out because the two scores were equal."""

    successes: int
    n: int
    rate: float | None
    ci: tuple[float | None, float | None]
    p_value: float | None
    n_score_ties: int


def human_vs_automated(ratings: pd.DataFrame) -> HigherScoreChosen | None:
    """Descriptive: on decisive non-gold ratings of items whose two explanations both have different simulation
    scores (`left_score`/`right_score`), how often the human chose the higher-scored one, with a Wilson CI; ratings
    of items whose two scores are equal are a tie of the scores, counted as `n_score_ties` and left out of the rate.
    Not chance-corrected: when humans and the simulator each favour the same arm it is above 1/2 without any
    agreement on items (see `automated_comparisons`). None when no column, or no decisive rating has both scores."""
    if not {"left_score", "right_score"} <= set(ratings.columns):
        return None
    rated = arm_ratings(ratings)
    # An export read back from CSV keeps a column as text when a cell is not a number: such a cell is a missing score.
    left = pd.to_numeric(rated["left_score"], errors="coerce")
    right = pd.to_numeric(rated["right_score"], errors="coerce")
    scored = rated["choice"].isin(DECISIVE) & left.notna() & right.notna()
    if not scored.any():
        return None
    usable = scored & (left != right)
    agrees = (rated["choice"] == "left") == (left > right)
    ties = int((scored & (left == right)).sum())
    chosen = proportion(int((agrees & usable).sum()), int(usable.sum()))
    return HigherScoreChosen(chosen.successes, chosen.n, chosen.rate, chosen.ci, chosen.p_value, ties)


@dataclass(frozen=True)
class ScoreKappa(JsonFields):
    """Cohen's κ between the human majority of each item (A or B among its decisive ratings) and the sign of the
    score difference A − B. Items without a decisive majority, without both scores or with equal scores are left
    out and counted. `ci`: κ ± z·its asymptotic standard error (statsmodels)."""

    n_items: int
    n_agree: int
    kappa: float | None
    ci: tuple[float, float] | None
    table: tuple[tuple[int, int], tuple[int, int]]
    n_without_majority: int
    n_without_scores: int
    n_equal_scores: int
    note: str | None = None


@dataclass(frozen=True)
class ScoreLogistic(JsonFields):
    """Logistic regression of "A won" on decisive ratings on the score difference A − B (log-odds per unit of
    score difference), with neuron-clustered robust standard errors."""

    n_ratings: int
    n_neurons: int
    slope: float | None
    slope_ci: tuple[float, float] | None
    intercept: float | None
    p_value: float | None
    method: str
    note: str | None = None


@dataclass(frozen=True)
class ArmScore(JsonFields):
    """An arm's Bradley–Terry strength and its mean score of one kind."""

    arm: str
    strength: float
    mean_score: float


@dataclass(frozen=True)
class ScoreRankCorrelation(JsonFields):
    """Kendall's τ between the arms' Bradley–Terry strengths and their mean score over the study's explanations."""

    n_arms: int
    tau: float | None
    p_value: float | None
    arms: tuple[ArmScore, ...]
    note: str | None = None


@dataclass(frozen=True)
class AutomatedComparison(JsonFields):
    """The human judgements against one score kind."""

    kind: str
    name: str
    kappa: ScoreKappa
    logistic: ScoreLogistic
    rank_correlation: ScoreRankCorrelation


def _differences(coded: pd.DataFrame, kind: str, name: str) -> pd.Series:
    left = pd.to_numeric(coded[automated_column(kind, name, "left")], errors="coerce")
    right = pd.to_numeric(coded[automated_column(kind, name, "right")], errors="coerce")
    a_left = coded["a_left"].to_numpy(dtype=bool)
    return left.where(a_left, right) - right.where(a_left, left)


def score_kappa(coded: pd.DataFrame, difference: pd.Series) -> ScoreKappa:
    """κ of the per-item human majority against the sign of the score difference (see ScoreKappa)."""
    per_item = (
        pd.DataFrame(
            {"item": coded["item_id"], "a": coded["code"] == 1, "b": coded["code"] == -1, "difference": difference}
        )
        .groupby("item", sort=True)
        .agg(a=("a", "sum"), b=("b", "sum"), difference=("difference", "first"))
    )
    majority = np.sign(per_item["a"] - per_item["b"])
    scored = per_item["difference"].notna()
    usable = (majority != 0) & scored & (per_item["difference"] != 0)
    human = majority[usable] > 0
    machine = per_item.loc[usable, "difference"] > 0
    # Rows: the humans' majority A, B; columns: the scores favour A, B.
    table = np.array([[(h & m).sum() for m in (machine, ~machine)] for h in (human, ~human)])
    kappa, ci, note = None, None, None
    if usable.sum() == 0:
        note = "no item has a decisive human majority and two different scores"
    elif table.sum(axis=0).min() == 0 or table.sum(axis=1).min() == 0:
        note = (
            "the humans' majorities or the scores' signs all favour the same arm: κ is then 0 (or 0/0) by "
            "construction and says nothing about agreement on items"
        )
    else:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            result = inter_rater.cohens_kappa(table)
        kappa, half = float(result.kappa), z_value() * float(result.std_kappa)
        ci = (kappa - half, kappa + half)
    return ScoreKappa(
        n_items=int(usable.sum()),
        n_agree=int(table[0, 0] + table[1, 1]),
        kappa=kappa,
        ci=ci,
        table=((int(table[0, 0]), int(table[0, 1])), (int(table[1, 0]), int(table[1, 1]))),
        n_without_majority=int((majority == 0).sum()),
        n_without_scores=int(((majority != 0) & ~scored).sum()),
        n_equal_scores=int(((majority != 0) & scored & (per_item["difference"] == 0)).sum()),
        note=note,
    )


LOGISTIC_METHOD = (
    "statsmodels Logit of A winning (decisive ratings) on the score difference A − B with an intercept; slope in "
    f"log-odds per unit of score difference, {CONFIDENCE:.0%} Wald CI with standard errors clustered by neuron."
)


def _separated(x: np.ndarray, y: np.ndarray) -> bool:
    """Whether a threshold on x splits the outcomes (completely or quasi-completely): the MLE slope is infinite."""
    won, lost = x[y == 1], x[y == 0]
    return bool(lost.max() <= won.min() or won.max() <= lost.min())


def score_logistic(coded: pd.DataFrame, difference: pd.Series) -> ScoreLogistic:
    """Logistic regression of A winning on the score difference (see ScoreLogistic)."""
    # An infinite difference (from a score no scorer gives, read from a file) is no evidence: it counts as missing.
    differences = difference.to_numpy(dtype=float)
    usable = coded["choice"].isin(DECISIVE).to_numpy() & np.isfinite(differences)
    x = differences[usable]
    y = (coded["code"].to_numpy()[usable] == 1).astype(float)
    clusters = pd.factorize(cluster_keys(coded[usable]), sort=True)[0] if usable.any() else np.zeros(0, int)
    n_neurons = len(np.unique(clusters))
    empty = ScoreLogistic(len(x), n_neurons, None, None, None, None, LOGISTIC_METHOD)

    def without(note: str) -> ScoreLogistic:
        return replace(empty, note=note)

    if len(x) < MIN_LOGISTIC_RATINGS:
        return without(f"{len(x)} decisive ratings with both scores: the regression needs {MIN_LOGISTIC_RATINGS}")
    if y.min() == y.max():
        return without("every decisive rating went the same way: the log-odds are unbounded")
    if np.ptp(x) == 0:
        return without("every rating has the same score difference: no slope to estimate")
    if _separated(x, y):
        return without(
            "perfect separation: a threshold on the score difference splits A's wins from B's, so the maximum-"
            "likelihood slope is infinite (the scores predict these ratings perfectly; more data will bound it)"
        )
    design = np.column_stack([np.ones(len(x)), x])
    notes = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model = Logit(y, design)
            if n_neurons >= 2:
                fit = model.fit(disp=0, cov_type="cluster", cov_kwds={"groups": clusters})
                if n_neurons < FEW_CLUSTERS:
                    notes.append(f"{n_neurons} neurons: clustered standard errors are unreliable below {FEW_CLUSTERS}")
            else:
                fit = model.fit(disp=0)
                notes.append("one neuron: standard errors not clustered")
        except (np.linalg.LinAlgError, ValueError) as exc:
            return without(f"the regression could not be fitted: {exc}")
    if not fit.mle_retvals.get("converged", True):
        notes.append("the fit did not converge")
    notes += sorted({str(warning.message).split("\n")[0] for warning in caught if "separation" in str(warning.message)})
    low, high = fit.conf_int(alpha=1 - CONFIDENCE)[1]
    return ScoreLogistic(
        n_ratings=len(x),
        n_neurons=n_neurons,
        slope=float(fit.params[1]),
        slope_ci=(float(low), float(high)),
        intercept=float(fit.params[0]),
        p_value=float(fit.pvalues[1]),
        method=LOGISTIC_METHOD,
        note="; ".join(notes) or None,
    )


def arm_mean_scores(ratings: pd.DataFrame, kind: str, name: str) -> dict[str, float]:
    """Each arm's mean score of one kind over the distinct explanations shown in its non-gold items."""
    rated = arm_ratings(ratings)
    parts = []
    for side in SIDES:
        id_column = f"{side}_explanation_id"
        # The same explanation may be shown on either side; float ids, so that 3 and 3.0 are one explanation. Without
        # an id, each item's side is an explanation of its own.
        own = rated["item_id"].astype(str) + f":{side}"
        if id_column in rated:
            ids = pd.to_numeric(rated[id_column], errors="coerce").astype(float)
            key = ids.astype(str).where(ids.notna(), own)
        else:
            key = own
        values = pd.to_numeric(rated[automated_column(kind, name, side)], errors="coerce")
        parts.append(pd.DataFrame({"arm": rated[f"{side}_arm"], "key": key, "value": values}))
    values = pd.concat(parts).dropna(subset=["value"]).drop_duplicates(subset=["arm", "key"])
    return {str(arm): float(mean) for arm, mean in values.groupby("arm", sort=True)["value"].mean().items()}


def score_rank_correlation(
    means: Mapping[str, float], strengths: Mapping[str, float] | None, arms: Sequence[str]
) -> ScoreRankCorrelation:
    """Kendall's τ (scipy, τ-b) of the arms' strengths against their mean scores, over arms that have both."""
    if strengths is None or len(arms) < 3:
        return ScoreRankCorrelation(len(arms), None, None, (), "a rank correlation of arms needs at least 3 arms")
    both = [arm for arm in arms if arm in means and strengths.get(arm) is not None]
    rows = tuple(ArmScore(arm, strengths[arm], means[arm]) for arm in both)
    if len(both) < 3:
        return ScoreRankCorrelation(len(both), None, None, rows, f"{len(both)} arm(s) have scores: τ needs 3")
    result = scipy_stats.kendalltau([strengths[arm] for arm in both], [means[arm] for arm in both])
    tau = finite_or_none(result.statistic)
    note = None if tau is not None else "τ is undefined: the strengths or the mean scores are all equal"
    return ScoreRankCorrelation(len(both), tau, finite_or_none(result.pvalue), rows, note)


def automated_comparisons(
    ratings: pd.DataFrame, arms: Sequence[str], strengths: Mapping[str, float] | None = None
) -> list[AutomatedComparison]:
    """The human judgements against every score kind the ratings carry, one comparison per kind (see the module
    docstring); `strengths` are the arms' Bradley–Terry strengths, for the rank correlation (≥ 3 arms)."""
    coded = relative_outcomes(ratings, arms)
    comparisons = []
    for kind, name in automated_kinds(list(ratings.columns)):
        difference = _differences(coded, kind, name)
        comparisons.append(
            AutomatedComparison(
                kind=kind,
                name=name,
                kappa=score_kappa(coded, difference),
                logistic=score_logistic(coded, difference),
                rank_correlation=score_rank_correlation(arm_mean_scores(ratings, kind, name), strengths, arms),
            )
        )
    return comparisons
