"""Statistics of pairwise ratings against hand-computed cases and against scipy / statsmodels / krippendorff."""

from __future__ import annotations

import itertools
import json
import math
import random

import choix
import krippendorff
import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats
from statsmodels.discrete.discrete_model import Logit
from statsmodels.stats import inter_rater
from statsmodels.stats.proportion import proportion_confint

from core import db as dbmod
from core import export, human_eval, stats
from core.errors import InputError
from tests.simulated_study import (
    BETA_2_2_SPREAD,
    MODEL,
    SIMULATED_ARMS,
    add_raters,
    explain_neurons,
    prefers,
    run_raters,
    simulate_outcomes,
    simulate_study,
    study_frame,
)

A, B, C = "summary", "original", "highlight"


def rating(item: int, rater: str, choice: str, left: str = A, right: str = B, **extra) -> dict:
    winner = {"left": left, "right": right}.get(choice)
    row = {
        "item_id": item,
        "neuron": f"0:{item}",
        "rater": rater,
        "choice": choice,
        "left_arm": left,
        "right_arm": right,
    }
    return {**row, "winner_arm": winner, "is_gold": 0, "gold_choice": None, **extra}


def frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows)


# --- proportions -------------------------------------------------------------------------------------------------


def test_wilson_interval_by_hand_and_against_statsmodels() -> None:
    # 7 of 10, by hand: centre (0.7 + z²/20)/(1 + z²/10), half-width z·sqrt(0.021 + z²/400)/(1 + z²/10).
    low, high = stats.wilson_interval(7, 10)
    assert low == pytest.approx(0.39678, abs=1e-5)
    assert high == pytest.approx(0.89220, abs=1e-5)
    for successes, n in [(0, 1), (0, 12), (3, 7), (50, 100), (99, 100), (12, 12), (1, 3000)]:
        expected = proportion_confint(successes, n, alpha=0.05, method="wilson")
        assert stats.wilson_interval(successes, n) == pytest.approx(expected, abs=1e-12)
    assert all(math.isnan(value) for value in stats.wilson_interval(0, 0))


def test_sign_test_by_hand_and_against_scipy() -> None:
    # 9 of 10: both tails hold {0, 1, 9, 10} successes: 2 · (10 + 1) / 2**10.
    assert stats.sign_test(9, 10) == pytest.approx(22 / 1024, abs=1e-15)
    assert stats.sign_test(5, 10) == 1.0
    for successes, n in [(0, 5), (3, 20), (31, 40), (100, 180)]:
        assert stats.sign_test(successes, n) == pytest.approx(scipy_stats.binomtest(successes, n).pvalue)
    assert math.isnan(stats.sign_test(0, 0))


def test_proportion_is_json_safe_when_empty() -> None:
    assert stats.proportion(0, 0) == stats.Proportion(successes=0, n=0, rate=None, ci=(None, None), p_value=None)
    assert stats.proportion(0, 0).to_json() == {
        "successes": 0,
        "n": 0,
        "rate": None,
        "ci": [None, None],
        "p_value": None,
    }


# --- win rate, position, per rater -------------------------------------------------------------------------------


def small_study() -> pd.DataFrame:
    return frame(
        [
            rating(1, "ann", "left"),  # A wins
            rating(2, "ann", "right", left=B, right=A),  # A wins
            rating(3, "ann", "left", left=B, right=A),  # B wins
            rating(4, "ann", "tie"),
            rating(1, "bob", "left"),  # A wins
            rating(2, "bob", "both_bad", left=B, right=A),
            rating(3, "bob", "right", left=B, right=A),  # A wins
            rating(9, "bob", "right", left="truth:summary", right="decoy:summary", is_gold=1, gold_choice="left"),
        ]
    )


def test_win_rate_counts_ties_and_both_bad_apart_and_ignores_gold() -> None:
    result = stats.win_rate(small_study(), A, B)
    assert (result.wins_a, result.wins_b, result.ties, result.both_bad) == (4, 1, 1, 1)
    assert result.n_ratings == 7
    assert result.decisive == 5
    assert result.win_rate == pytest.approx(0.8)
    assert result.wilson_ci == pytest.approx(proportion_confint(4, 5, method="wilson"))
    assert result.binomial_p == pytest.approx(scipy_stats.binomtest(4, 5).pvalue)
    assert result.tie_share == pytest.approx(1 / 7)
    assert stats.win_rate(small_study(), B, A).win_rate == pytest.approx(0.2)


def test_position_bias_counts_left_wins_among_decisive_ratings() -> None:
    result = stats.position_bias(small_study())
    # Decisive non-gold ratings: left, right, left, left, right → 3 of 5 went left.
    assert (result.successes, result.n) == (3, 5)
    assert result.p_value == pytest.approx(1.0)


def test_per_rater_win_rates() -> None:
    rows = {row.rater: row.pair for row in stats.per_rater(small_study(), [A, B])}
    assert (rows["ann"].wins_a, rows["ann"].wins_b, rows["ann"].ties) == (2, 1, 1)
    assert (rows["bob"].wins_a, rows["bob"].both_bad) == (2, 1)
    assert rows["bob"].win_rate == 1.0
    assert list(stats.per_rater(small_study(), [A, B])[0].to_json())[:3] == ["rater", "arm_a", "arm_b"]


# --- agreement ---------------------------------------------------------------------------------------------------


def labels_from_table(table: list[list[int]]) -> tuple[list[str], list[str]]:
    first, second = [], []
    for i, row in enumerate(table):
        for j, count in enumerate(row):
            first += [f"c{i}"] * count
            second += [f"c{j}"] * count
    return first, second


def test_cohen_kappa_by_hand_and_against_libraries() -> None:
    # Observed agreement 35/50 = 0.7; chance 0.5·0.6 + 0.5·0.4 = 0.5; κ = (0.7 − 0.5)/(1 − 0.5) = 0.4.
    first, second = labels_from_table([[20, 5], [10, 15]])
    assert stats.cohen_kappa(first, second) == pytest.approx(0.4)
    rng = random.Random(3)
    first = [rng.choice("abcd") for _ in range(80)]
    second = [label if rng.random() < 0.6 else rng.choice("abcd") for label in first]
    table = pd.crosstab(pd.Series(first), pd.Series(second)).to_numpy()
    assert stats.cohen_kappa(first, second) == pytest.approx(inter_rater.cohens_kappa(table).kappa)
    metrics = pytest.importorskip("sklearn.metrics")
    assert stats.cohen_kappa(first, second) == pytest.approx(metrics.cohen_kappa_score(first, second))
    assert math.isnan(stats.cohen_kappa(["a", "a"], ["a", "a"]))


def test_fleiss_kappa_by_hand_and_against_statsmodels() -> None:
    # P_i = 1, 1/3, 1 → P̄ = 7/9; p_a = 4/9, p_b = 5/9 → P_e = 41/81; κ = (7/9 − 41/81)/(1 − 41/81) = 22/40.
    assert stats.fleiss_kappa([["a", "a", "a"], ["a", "b", "b"], ["b", "b", "b"]]) == pytest.approx(0.55)
    rng = np.random.default_rng(5)
    units = rng.integers(0, 3, size=(30, 4))
    table, _ = inter_rater.aggregate_raters(units)
    expected = inter_rater.fleiss_kappa(table)
    assert stats.fleiss_kappa([[f"x{v}" for v in unit] for unit in units]) == pytest.approx(expected)
    assert math.isnan(stats.fleiss_kappa([["a", "b"], ["a", "b", "a"]]))


def test_krippendorff_alpha_by_hand() -> None:
    # Coincidences: o_aa = 3, o_bb = 4, o_ab = o_ba = 1; n_a = 4, n_b = 5, n = 9.
    # Nominal α = 1 − (n − 1)·(o_ab + o_ba)/(2·n_a·n_b) = 1 − 8·2/40 = 0.6.
    units = {1: "aaa", 2: "abb", 3: "bbb"}
    labels = pd.DataFrame(
        [
            {"unit": unit, "rater": f"r{i}", "label": label}
            for unit, text in units.items()
            for i, label in enumerate(text)
        ]
    )
    assert stats.krippendorff_alpha(labels) == pytest.approx(0.6)


def test_agreement_of_two_raters_uses_cohen_and_matches_hand_values() -> None:
    rows = []
    for item, (ann, bob) in enumerate([("left", "left"), ("right", "right"), ("left", "right"), ("tie", "tie")]):
        rows += [rating(item, "ann", ann), rating(item, "bob", bob)]
    rows.append(rating(99, "ann", "left"))  # rated once: not part of agreement
    result = stats.agreement(frame(rows))
    assert (result.n_items, result.n_raters) == (4, 2)
    assert result.percent_agreement == pytest.approx(0.75)
    # Labels (A, A), (B, B), (A, B), (tie, tie): p_o = 3/4; p_e = (2·1 + 1·2 + 1·1)/16 = 5/16; κ = 7/11.
    assert result.cohen_kappa == pytest.approx((0.75 - 5 / 16) / (1 - 5 / 16))
    assert result.fleiss_items == 4


def test_agreement_is_one_for_identical_raters_and_near_zero_for_random_ones() -> None:
    rng = random.Random(11)
    identical, noisy = [], []
    for item in range(300):
        shared = rng.choice(["left", "right", "tie", "both_bad"])
        for rater in ("ann", "bob", "cyd"):
            identical.append(rating(item, rater, shared))
            noisy.append(rating(item, rater, rng.choice(["left", "right", "tie", "both_bad"])))
    same = stats.agreement(frame(identical))
    assert same.fleiss_kappa == pytest.approx(1.0)
    assert same.krippendorff_alpha == pytest.approx(1.0)
    assert same.percent_agreement == 1.0
    assert same.cohen_kappa is None  # three raters: Cohen's κ does not apply
    chance = stats.agreement(frame(noisy))
    assert abs(chance.fleiss_kappa) < 0.08
    assert abs(chance.krippendorff_alpha) < 0.08


# Items of a three-arm study coded relative to their pair (order A, B, C): A better +1, neither 0, B better −1.
# Units (+1, +1), (+1, 0), (−1, 0), (−1, −1), each from a different pair and side.
RELATIVE_HAND_CASE = [
    rating(1, "ann", "right", left=C, right=B),  # B over C: the pair's first arm wins, +1
    rating(1, "bob", "right", left=C, right=B),
    rating(2, "ann", "left", left=A, right=C),  # +1
    rating(2, "bob", "tie", left=A, right=C),  # 0
    rating(3, "ann", "left", left=B, right=A),  # B over A: −1
    rating(3, "bob", "both_bad", left=B, right=A),  # both bad counts as neither: 0
    rating(4, "ann", "left", left=C, right=A),  # −1
    rating(4, "bob", "left", left=C, right=A),
]


def test_relative_outcomes_code_each_rating_against_its_pair() -> None:
    coded = stats.relative_outcomes(frame(RELATIVE_HAND_CASE), [A, B, C])
    assert list(coded["code"]) == [1, 1, 1, 0, -1, 0, -1, -1]
    assert list(coded["arm_a"]) == [B, B, A, A, A, A, A, A]
    assert list(coded["a_left"]) == [False, False, True, True, False, False, False, False]
    by_name = stats.relative_outcomes(frame(RELATIVE_HAND_CASE))  # no order given: arms by name
    assert list(by_name["arm_a"])[:4] == [C, C, C, C]  # "highlight" < "original" < "summary"


def test_ordinal_alpha_and_fleiss_kappa_of_the_relative_coding_by_hand() -> None:
    result = stats.agreement(frame(RELATIVE_HAND_CASE), [A, B, C])
    assert result.krippendorff_alpha is not None and result.fleiss_kappa is not None
    # Coincidences o(+1,+1) = 2, o(−1,−1) = 2, o(+1,0) = o(0,+1) = o(−1,0) = o(0,−1) = 1; totals n₋ = 3, n₀ = 2,
    # n₊ = 3, n = 8. Ordinal δ²: (−1,0) and (0,+1): (3 + 2 − 5/2)² = 6.25; (−1,+1): (8 − 3)² = 25.
    # D_o = 4·6.25 / 8; D_e = 2·(6·6.25 + 6·6.25 + 9·25) / (8·7); α = 1 − D_o/D_e = 1 − 7/24.
    assert result.krippendorff_alpha == pytest.approx(17 / 24)
    # Fleiss: P_i = 1, 0, 0, 1 → P̄ = 1/2; p = 3/8, 2/8, 3/8 → P_e = 22/64; κ = (1/2 − 22/64)/(1 − 22/64) = 5/21.
    assert result.fleiss_kappa == pytest.approx(5 / 21)
    assert result.percent_agreement == pytest.approx(0.5)
    assert result.cohen_kappa == pytest.approx(stats.cohen_kappa([1, 1, -1, -1], [1, 0, 0, -1]))
    labels = stats.relative_outcomes(frame(RELATIVE_HAND_CASE), [A, B, C]).rename(columns={"item_id": "unit"})
    assert stats.krippendorff_alpha(labels.assign(label=labels["code"]), level="ordinal") == pytest.approx(17 / 24)
    assert result.krippendorff_alpha_ci_low is not None and result.krippendorff_alpha_ci_high is not None
    assert result.krippendorff_alpha_ci_low <= result.krippendorff_alpha <= result.krippendorff_alpha_ci_high


def test_batched_alpha_and_kappa_match_the_libraries() -> None:
    rng = np.random.default_rng(7)
    counts = np.zeros((40, 3))
    reliability = np.full((5, 40), np.nan)
    for unit in range(40):
        raters = rng.choice(5, size=rng.integers(1, 6), replace=False)
        values = rng.integers(0, 3, size=len(raters))
        reliability[raters, unit] = values
        counts[unit] = np.bincount(values, minlength=3)
    coincidences = stats.unit_coincidences(counts).sum(axis=0)
    for level in ("nominal", "ordinal"):
        expected = krippendorff.alpha(reliability_data=reliability, level_of_measurement=level)
        assert stats.alpha_from_coincidences(coincidences, level) == pytest.approx(expected)
    units = rng.integers(0, 3, size=(30, 4))
    table, _ = inter_rater.aggregate_raters(units)
    assert stats.fleiss_from_counts(table, np.ones((1, 30)))[0] == pytest.approx(inter_rater.fleiss_kappa(table))


def chance_ratings(arms: list[str], items: int, raters: int, seed: int, identical: bool = False) -> pd.DataFrame:
    """Items of random pairs of arms, each rated by `raters` raters choosing left, right or tie at random (or all
    giving the item's one random verdict)."""
    rng = random.Random(seed)
    rows = []
    for item in range(items):
        left, right = rng.sample(arms, 2)
        verdict = rng.choice(["left", "right", "tie"])
        for rater in range(raters):
            choice = verdict if identical else rng.choice(["left", "right", "tie"])
            rows.append(rating(item, f"r{rater}", choice, left=left, right=right))
    return frame(rows)


def test_raters_at_chance_agree_at_zero_with_three_arms_where_arm_labels_made_them_agree() -> None:
    arms = [A, B, C]
    ratings = chance_ratings(arms, 600, 3, seed=1)
    result = stats.agreement(ratings, arms).to_json()
    assert abs(result["krippendorff_alpha"]) < 0.1
    assert abs(result["fleiss_kappa"]) < 0.1
    assert result["krippendorff_alpha_ci_low"] < 0 < result["krippendorff_alpha_ci_high"]
    assert result["fleiss_kappa_ci_low"] < 0 < result["fleiss_kappa_ci_high"]
    # The old coding, by the arm chosen: categories of different pairs never meet, and chance looks like agreement:
    # observed 1/3, expected 1/3² + 3·(2/9)² → κ ≈ 0.1 here (0.25 for raters who never tie).
    compared = stats.arm_ratings(ratings)
    by_arm = pd.DataFrame(
        {"unit": compared["item_id"], "rater": compared["rater"], "label": stats.outcome_labels(compared)}
    )
    assert stats.krippendorff_alpha(by_arm) > 0.07
    same = stats.agreement(chance_ratings(arms, 200, 3, seed=2, identical=True), arms)
    assert same.krippendorff_alpha == pytest.approx(1.0)
    assert same.fleiss_kappa == pytest.approx(1.0)
    assert same.krippendorff_alpha_ci_low == pytest.approx(1.0)


def test_agreement_cis_are_seeded_and_every_value_is_a_number_or_none() -> None:
    ratings = chance_ratings([A, B, C], 60, 3, seed=3)
    first, again = stats.agreement(ratings, [A, B, C], seed=4), stats.agreement(ratings, [A, B, C], seed=4)
    assert first == again
    assert stats.agreement(ratings, [A, B, C], seed=5).fleiss_kappa_ci_low != first.fleiss_kappa_ci_low
    assert all(value is None or type(value) in (int, float) for value in first.to_json().values())
    empty = stats.agreement(ratings.iloc[0:0], [A, B, C])
    assert (empty.n_items, empty.krippendorff_alpha, empty.krippendorff_alpha_ci_low) == (0, None, None)
    assert "relative to its item's pair" in stats.agreement_method()


# --- Bradley–Terry -----------------------------------------------------------------------------------------------


def test_bradley_terry_of_two_arms_is_the_log_odds() -> None:
    fit = stats.bradley_terry_fit([A] * 30 + [B] * 10, [B] * 30 + [A] * 10, [A, B])
    assert fit.strengths[0] - fit.strengths[1] == pytest.approx(math.log(3), abs=1e-9)
    assert fit.strengths.sum() == pytest.approx(0, abs=1e-12)
    # Var(θ_A − θ_B) of a logistic MLE: 1 / (n p (1 − p)) with p = 3/4, n = 40.
    difference = np.array([1, -1])
    assert difference @ fit.covariance @ difference == pytest.approx(1 / (40 * 0.75 * 0.25))


def simulate_comparisons(truth: dict[str, float], n: int, seed: int) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    arms = list(truth)
    winners, losers = [], []
    for _ in range(n):
        i, j = rng.choice(len(arms), size=2, replace=False)
        p_i = 1 / (1 + math.exp(truth[arms[j]] - truth[arms[i]]))
        first, second = (arms[i], arms[j]) if rng.random() < p_i else (arms[j], arms[i])
        winners.append(first)
        losers.append(second)
    return winners, losers


def test_bradley_terry_matches_statsmodels_logistic_regression() -> None:
    arms = [A, B, C, "avhs"]
    winners, losers = simulate_comparisons({A: 0.6, B: 0.0, C: -0.3, "avhs": 0.2}, 400, seed=1)
    fit = stats.bradley_terry_fit(winners, losers, arms)
    assert fit.prior == 0.0
    # Same likelihood as a logistic regression on ±1 indicators with the first arm as the reference.
    rng = np.random.default_rng(2)
    design, outcome = [], []
    for winner, loser in zip(winners, losers, strict=True):
        row = np.zeros(len(arms))
        first, second = (winner, loser) if rng.random() < 0.5 else (loser, winner)
        row[arms.index(first)], row[arms.index(second)] = 1, -1
        design.append(row[1:])
        outcome.append(int(first == winner))
    result = Logit(np.array(outcome), np.array(design)).fit(disp=0)
    ours = fit.strengths[1:] - fit.strengths[0]
    assert ours == pytest.approx(result.params, abs=1e-6)
    contrasts = np.hstack([-np.ones((len(arms) - 1, 1)), np.eye(len(arms) - 1)])
    errors = np.sqrt(np.diag(contrasts @ fit.covariance @ contrasts.T))
    assert errors == pytest.approx(result.bse, rel=1e-4)


def test_bradley_terry_recovers_known_strengths() -> None:
    truth = {A: 0.8, B: 0.0, C: -0.8}
    winners, losers = simulate_comparisons(truth, 3000, seed=4)
    rows = frame(
        [
            rating(i, "sim", "left", left=winner, right=loser)
            for i, (winner, loser) in enumerate(zip(winners, losers, strict=True))
        ]
    )
    result = stats.bradley_terry(rows, [A, B, C])
    for row in result.arms:
        assert row.ci[0] < truth[row.arm] < row.ci[1]
        assert row.strength == pytest.approx(truth[row.arm], abs=0.15)


def test_strong_connectivity_of_many_win_matrices_matches_reachability() -> None:
    rng = np.random.default_rng(3)
    for size in (2, 3, 5):
        wins = (rng.random((300, size, size)) < 0.35) * (1 - np.eye(size))
        # Brute force: i reaches j within size − 1 steps of "beat".
        reach = np.eye(size, dtype=bool) | (wins > 0)
        for _ in range(size):
            reach = reach | ((reach.astype(int) @ (wins > 0).astype(int)) > 0)
        expected = reach.all(axis=(1, 2))
        assert 0 < expected.sum() < len(wins)
        assert list(stats.strongly_connected(wins)) == list(expected)
        assert [bool(stats.strongly_connected(matrix)) for matrix in wins[:20]] == list(expected[:20])


def test_the_batched_mm_fit_of_the_bootstrap_matches_choix() -> None:
    rng = np.random.default_rng(4)
    batch = rng.integers(0, 30, size=(50, 4, 4)) + stats.BT_PRIOR * (1 - np.eye(4))
    batch *= 1 - np.eye(4)
    expected = np.array([choix.ilsr_pairwise_dense(matrix, tol=1e-13, max_iter=10_000) for matrix in batch])
    assert stats.mm_strengths(batch) == pytest.approx(expected, abs=1e-9)
    winners, losers = simulate_comparisons({A: 0.6, B: 0.0, C: -0.3}, 300, seed=2)
    fit = stats.bradley_terry_fit(winners, losers, [A, B, C])
    assert fit.strengths == pytest.approx(stats.mm_strengths(fit.wins), abs=1e-9)


def test_bradley_terry_uses_a_prior_when_an_arm_never_loses() -> None:
    fit = stats.bradley_terry_fit([A, A, B], [B, C, C], [A, B, C])
    assert fit.prior == stats.BT_PRIOR
    assert np.all(np.isfinite(fit.strengths))
    assert fit.strengths[0] > fit.strengths[1] > fit.strengths[2]


def comparison_ratings(winners: list[str], losers: list[str]) -> list[dict]:
    """One rating per comparison, the winner on the left, each on its own neuron."""
    return [
        rating(i, "sim", "left", left=won, right=lost)
        for i, (won, lost) in enumerate(zip(winners, losers, strict=True))
    ]


def unanimous_three_arm_study(seed: int, neurons: int = 60, raters: int = 10) -> pd.DataFrame:
    """Every neuron compares a random pair of A, B, C and all its raters give the same verdict, drawn from true
    log-strengths A 0.5, B 0, C −0.5: few independent units behind many ratings."""
    truth = {A: 0.5, B: 0.0, C: -0.5}
    rng = np.random.default_rng(seed)
    rows = []
    for neuron in range(neurons):
        left, right = (str(arm) for arm in rng.choice([A, B, C], size=2, replace=False))
        choice = "left" if rng.random() < 1 / (1 + math.exp(truth[right] - truth[left])) else "right"
        rows += [rating(neuron, f"r{i}", choice, left=left, right=right) for i in range(raters)]
    return frame(rows)


def test_bradley_terry_bootstrap_resamples_neurons_not_ratings() -> None:
    ratings = unanimous_three_arm_study(seed=3)
    result = stats.bradley_terry(ratings, [A, B, C])
    assert result.unit == "neuron" and "bootstrap over 60 neurons" in result.ci_method
    for row in result.arms:
        bootstrap, fisher = row.ci[1] - row.ci[0], row.fisher_ci[1] - row.fisher_ci[0]
        # 600 ratings but 60 independent verdicts: the honest interval is about sqrt(10) ≈ 3 times wider.
        assert bootstrap > 2 * fisher
    assert result == stats.bradley_terry(ratings, [A, B, C])  # seeded
    assert result.arms[0].ci != stats.bradley_terry(ratings, [A, B, C], seed=1).arms[0].ci
    json.dumps(result.to_json(), allow_nan=False)


def test_bradley_terry_differences_ranks_and_ties_per_pair() -> None:
    truth = {A: 1.5, B: 0.0, C: -1.5}
    winners, losers = simulate_comparisons(truth, 1500, seed=5)
    rows = comparison_ratings(winners, losers)
    rows += [rating(5000, "sim", "tie", left=A, right=C), rating(5001, "sim", "both_bad", left=C, right=A)]
    result = stats.bradley_terry(frame(rows), [A, B, C])
    strengths = {row.arm: row.strength for row in result.arms}
    assert [row.rank for row in result.arms] == [1, 2, 3]
    differences = {(row.arm_a, row.arm_b): row for row in result.differences}
    assert list(differences) == [(A, B), (A, C), (B, C)]
    assert differences[A, C].difference == pytest.approx(strengths[A] - strengths[C])
    assert differences[A, C].ci[0] < 3.0 < differences[A, C].ci[1]
    assert (differences[A, C].ties, differences[A, C].both_bad, differences[A, B].ties) == (1, 1, 0)
    assert "not modelled" in result.ties and result.warning is None
    # Two equal arms overlap and share a rank; a weaker one whose interval lies below both ranks third.
    winners, losers = simulate_comparisons({A: 0.0, B: 0.0, C: -2.0}, 1500, seed=6)
    rows = comparison_ratings(winners, losers)
    ranked = {row.arm: row for row in stats.bradley_terry(frame(rows), [A, B, C]).arms}
    assert (ranked[A].rank, ranked[B].rank, ranked[C].rank) == (1, 1, 3)


def test_bradley_terry_ranks_differ_wherever_intervals_do_not_overlap() -> None:
    for seed in range(5):
        result = stats.bradley_terry(unanimous_three_arm_study(seed, neurons=40, raters=3), [A, B, C])
        for first, second in itertools.combinations(result.arms, 2):
            apart = first.ci[1] < second.ci[0] or second.ci[1] < first.ci[0]
            assert not apart or first.rank != second.rank


def test_bradley_terry_warns_when_the_strengths_come_from_the_prior() -> None:
    rows = [rating(1, "ann", "left", left=A, right=B), rating(2, "ann", "left", left=B, right=C)]
    result = stats.bradley_terry(frame(rows), [A, B, C])
    assert result.prior == stats.BT_PRIOR
    assert result.warning is not None and "not strongly connected" in result.warning and "prior" in result.warning
    assert "Fisher" in result.ci_method or "bootstrap" in result.ci_method
    empty = stats.bradley_terry(frame(rows).iloc[0:0], [A, B, C])
    assert "Fisher" in empty.ci_method and all(row.ci is not None for row in empty.arms)
    fits = stats.strongly_connected(np.array([[[0, 1], [1, 0]], [[0, 1], [0, 0]]]))
    assert list(fits) == [True, False]


# --- gold, automated scores, items, summary ----------------------------------------------------------------------


def gold_rows() -> list[dict]:
    gold = {"left": "truth:summary", "right": "decoy:summary", "is_gold": 1, "gold_choice": "left"}
    return [
        rating(50, "ann", "left", **gold),
        rating(51, "ann", "left", **gold),
        rating(50, "bob", "right", **gold),
        rating(51, "bob", "tie", **gold),
    ]


def test_gold_accuracy_and_excluding_raters_below_a_threshold() -> None:
    rows = frame([*gold_rows(), rating(1, "ann", "left"), rating(1, "bob", "right"), rating(1, "cyd", "right")])
    accuracy = {row.rater: row for row in stats.gold_accuracy(rows)}
    assert accuracy["ann"] == stats.GoldAccuracy(rater="ann", n_gold=2, correct=2, accuracy=1.0)
    assert accuracy["bob"].accuracy == 0.0
    assert "cyd" not in accuracy
    kept, excluded = stats.exclude_low_gold_raters(rows, 0.5)
    assert excluded == ["bob"]
    assert sorted(kept["rater"].unique()) == ["ann", "cyd"]  # no gold answers: no evidence, kept
    summary = stats.summary_from_ratings(rows, [A, B], min_gold_accuracy=0.5)
    assert summary.gold.excluded_raters == ("bob",)
    assert summary.wins == {A: 1, B: 1}


def test_human_vs_automated_counts_agreement_with_the_higher_score() -> None:
    rows = frame(
        [
            rating(1, "ann", "left", left_score=0.5, right_score=0.1),  # agrees
            rating(2, "ann", "left", left_score=0.1, right_score=0.4),  # disagrees
            rating(3, "ann", "right", left_score=0.0, right_score=0.3),  # agrees
            rating(4, "ann", "tie", left_score=0.0, right_score=0.3),  # not decisive
            rating(5, "ann", "left", left_score=None, right_score=0.3),  # a score missing
            rating(6, "ann", "left", left_score=0.2, right_score=0.2),  # equal scores
        ]
    )
    result = stats.human_vs_automated(rows)
    assert result is not None
    assert (result.successes, result.n, result.n_score_ties) == (2, 3, 1)
    assert result.ci == pytest.approx(proportion_confint(2, 3, method="wilson"))
    assert stats.human_vs_automated(small_study()) is None
    # Equal scores are a tie of the scores, not "no scores".
    tied = stats.human_vs_automated(frame([rating(1, "ann", "left", left_score=0.2, right_score=0.2)]))
    assert tied is not None and (tied.n, tied.n_score_ties, tied.rate) == (0, 1, None)


SIM = "score:hf:my-model·all_at_once"


def scored(item: int, rater: str, choice: str, left: str, right: str, scores: tuple, **extra) -> dict:
    """A rating whose item's explanations have simulation scores (left, right) of one kind."""
    columns = {f"{SIM}:left": scores[0], f"{SIM}:right": scores[1], "left_score": scores[0], "right_score": scores[1]}
    return rating(item, rater, choice, left=left, right=right, **columns, **extra)


def test_automated_kinds_are_read_from_the_column_names() -> None:
    columns = [f"{SIM}:left", f"{SIM}:right", "similarity:all-MiniLM·x:left", "similarity:all-MiniLM·x:right"]
    columns += ["score:lonely:left", "left_score", "right_score"]
    assert stats.automated_kinds(columns) == [("score", "hf:my-model·all_at_once"), ("similarity", "all-MiniLM·x")]
    assert stats.automated_column("score", "hf:my-model·all_at_once", "left") == f"{SIM}:left"
    with pytest.raises(ValueError):
        stats.automated_column("rating", "x", "left")


def test_kappa_of_human_majorities_against_score_signs_by_hand() -> None:
    left_higher, right_higher = (0.6, 0.2), (0.2, 0.6)
    rows = [
        scored(1, "ann", "left", A, B, left_higher),  # (human majority, scores' sign) = (A, A)
        scored(1, "bob", "left", A, B, left_higher),
        scored(2, "ann", "right", B, A, right_higher),  # A on the right wins and scores more: (A, A)
        scored(2, "bob", "right", B, A, right_higher),
        scored(2, "cyd", "left", B, A, right_higher),
        scored(3, "ann", "left", A, B, right_higher),  # (A, B)
        scored(4, "ann", "right", A, B, right_higher),  # (B, B)
        scored(4, "bob", "right", A, B, right_higher),
        scored(5, "ann", "left", B, A, left_higher),  # (B, B)
        scored(6, "ann", "right", A, B, left_higher),  # (B, A): the tie does not count
        scored(6, "bob", "tie", A, B, left_higher),
        scored(7, "ann", "left", A, B, left_higher),  # no majority: dropped
        scored(7, "bob", "right", A, B, left_higher),
        scored(8, "ann", "left", A, B, (None, 0.3)),  # a score missing: dropped
        scored(9, "ann", "right", A, B, (0.4, 0.4)),  # equal scores: dropped
    ]
    (comparison,) = stats.automated_comparisons(frame(rows), [A, B])
    kappa = comparison.kappa
    assert (comparison.kind, comparison.name) == ("score", "hf:my-model·all_at_once")
    assert kappa.table == ((2, 1), (1, 2))
    # p_o = 4/6, p_e = (3·3 + 3·3)/36 = 1/2: κ = (2/3 − 1/2)/(1/2) = 1/3.
    assert kappa.kappa == pytest.approx(1 / 3)
    assert (kappa.n_items, kappa.n_agree) == (6, 4)
    assert (kappa.n_without_majority, kappa.n_without_scores, kappa.n_equal_scores) == (1, 1, 1)
    assert kappa.ci[0] < 1 / 3 < kappa.ci[1]
    assert comparison.rank_correlation.tau is None and "3 arms" in comparison.rank_correlation.note
    always_a = [scored(i, "ann", "left" if i % 2 else "right", A, B, (0.6, 0.2)) for i in range(6)]
    one_sided = stats.automated_comparisons(frame(always_a), [A, B])[0].kappa
    assert one_sided.kappa is None and "by construction" in one_sided.note


def independent_preferences(items: int, seed: int) -> pd.DataFrame:
    """Humans (3 raters per item) and the simulator each favour A 70% of the time, independently of each other."""
    rng = random.Random(seed)
    rows = []
    for item in range(items):
        left, right = (A, B) if rng.random() < 0.5 else (B, A)
        a_score, b_score = (0.6, 0.3) if rng.random() < 0.7 else (0.3, 0.6)
        scores = (a_score, b_score) if left == A else (b_score, a_score)
        for rater in ("ann", "bob", "cyd"):
            a_wins = rng.random() < 0.7
            rows.append(scored(item, rater, "left" if (left == A) == a_wins else "right", left, right, scores))
    return frame(rows)


def test_humans_and_scores_favouring_the_same_arm_independently_do_not_agree() -> None:
    ratings = independent_preferences(400, seed=8)
    old = stats.human_vs_automated(ratings)
    # 0.7·0.7 + 0.3·0.3 = 0.58 "agreement", and a test against 1/2 that calls it significant.
    assert old is not None and old.rate == pytest.approx(0.58, abs=0.03)
    assert old.p_value is not None and old.p_value < 0.01
    (comparison,) = stats.automated_comparisons(ratings, [A, B])
    assert abs(comparison.kappa.kappa) < 0.1
    assert comparison.kappa.ci[0] < 0 < comparison.kappa.ci[1]
    assert comparison.logistic.slope_ci[0] < 0 < comparison.logistic.slope_ci[1]


def test_logistic_regression_of_the_choice_on_the_score_difference() -> None:
    rng = np.random.default_rng(9)
    rows = []
    for item in range(300):
        difference = rng.normal()
        left, right = (A, B) if item % 2 else (B, A)
        scores = (difference, 0.0) if left == A else (0.0, difference)
        for rater in ("ann", "bob"):
            a_wins = rng.random() < 1 / (1 + math.exp(-(0.3 + 2.0 * difference)))
            rows.append(scored(item, rater, "left" if (left == A) == a_wins else "right", left, right, scores))
    ratings = frame(rows)
    logistic = stats.automated_comparisons(ratings, [A, B])[0].logistic
    assert logistic.slope_ci[0] < 2.0 < logistic.slope_ci[1] and logistic.slope_ci[0] > 1.0
    assert (logistic.n_ratings, logistic.n_neurons) == (600, 300)
    coded = stats.relative_outcomes(ratings, [A, B])
    left, right = coded[f"{SIM}:left"], coded[f"{SIM}:right"]
    difference = left.where(coded["a_left"], right) - right.where(coded["a_left"], left)
    plain = Logit((coded["code"] == 1).astype(float), np.column_stack([np.ones(600), difference])).fit(disp=0)
    assert (logistic.intercept, logistic.slope) == pytest.approx(tuple(plain.params), abs=1e-6)
    assert "clustered by neuron" in logistic.method


def test_logistic_regression_says_why_when_the_scores_separate_the_choices() -> None:
    rows = [scored(i, "ann", "left", A, B, (0.1 * i, 0.5)) for i in range(6, 12)]  # A wins where A scores more
    rows += [scored(i, "ann", "right", A, B, (0.1 * i, 0.5)) for i in range(0, 5)]
    logistic = stats.automated_comparisons(frame(rows), [A, B])[0].logistic
    assert logistic.slope is None and "separation" in logistic.note
    few = stats.automated_comparisons(frame(rows[:3]), [A, B])[0].logistic
    assert few.slope is None and "needs" in few.note


def test_rank_correlation_of_strengths_and_mean_scores_needs_three_arms() -> None:
    arms = [A, B, C, "avhs"]
    value = {A: 0.9, B: 0.5, C: 0.1, "avhs": 0.3}
    rows = [
        scored(i, "ann", "left", left, right, (value[left], value[right]))
        for i, (left, right) in enumerate(itertools.permutations(arms, 2))
    ]
    strengths = {A: 1.0, B: 0.2, C: -0.9, "avhs": -0.3}
    correlation = stats.automated_comparisons(frame(rows), arms, strengths)[0].rank_correlation
    assert (correlation.n_arms, correlation.tau) == (4, pytest.approx(1.0))
    assert {row.arm: row.mean_score for row in correlation.arms} == pytest.approx(value)
    flipped = stats.automated_comparisons(frame(rows), arms, {arm: -s for arm, s in strengths.items()})
    assert flipped[0].rank_correlation.tau == pytest.approx(-1.0)


def test_item_aggregates_count_choices_per_item() -> None:
    items = pd.DataFrame({"item_id": [1, 2, 3, 4, 7]})
    aggregated = stats.item_aggregates(items, small_study().assign(confidence=[5, 4, 3, 2, 1, 2, 3, 4], seconds=2.0))
    row = aggregated.set_index("item_id").loc[1]
    assert (row["n_left"], row["n_ratings"], row["mean_confidence"]) == (2, 2, 3.0)
    assert aggregated.set_index("item_id").loc[7, "n_ratings"] == 0


def three_arm_ratings() -> pd.DataFrame:
    """One rating of each pair of arms A, B and C, and a second of A against B."""
    return frame(
        [
            rating(1, "ann", "left", left=A, right=C),
            rating(2, "ann", "right", left=B, right=C),
            rating(3, "ann", "left", left=B, right=A),
            rating(4, "ann", "left"),
        ]
    )


def test_summary_has_the_documented_keys_and_pairs_for_three_arms() -> None:
    rows = three_arm_ratings()
    summary = stats.summary_from_ratings(rows, [A, B, C])
    as_json = summary.to_json()
    required = {"arms", "n_ratings", "wins", "ties", "both_bad", "win_rate", "wilson_ci", "binomial_p"}
    assert required | {"left_win_rate", "agreement", "primary", "neuron_pairs", "multiple_pairs"} <= set(as_json)
    assert [(pair.arm_a, pair.arm_b) for pair in summary.pairs] == [(A, B), (A, C), (B, C)]
    assert [(pair["arm_a"], pair["unit"]) for pair in as_json["pairs"]] == [(A, stats.RATING_UNIT_NOTE)] * 2 + [
        (B, stats.RATING_UNIT_NOTE)
    ]
    assert summary.bradley_terry is not None and {row.arm for row in summary.bradley_terry.arms} == {A, B, C}
    assert summary.wins == {A: 2, B: 1, C: 1}
    assert summary.primary_pair == (A, B) and as_json["primary_pair"] == [A, B]
    assert as_json["primary"] == as_json["neuron_pairs"][0] and summary.primary is summary.neuron_pairs[0]
    assert (summary.win_rate, summary.wilson_ci) == (summary.pairs[0].win_rate, summary.pairs[0].wilson_ci)
    empty = stats.summary_from_ratings(rows.iloc[0:0], [A, B])
    assert (empty.n_ratings, empty.win_rate, empty.bradley_terry) == (0, None, None)
    assert empty.to_json()["win_rate"] is None


# --- the neuron as the unit: primary and secondary analyses ------------------------------------------------------


def neuron_rating(neuron: int, rater: str, a_wins: bool | None, a_left: bool = True, **extra) -> dict:
    """A rating of neuron `0:neuron`'s item; a_wins None is a tie."""
    left, right = (A, B) if a_left else (B, A)
    choice = "tie" if a_wins is None else ("left" if a_wins == a_left else "right")
    return rating(neuron, rater, choice, left=left, right=right, model="toy", neuron=f"0:{neuron}", **extra)


def unanimous_study() -> pd.DataFrame:
    """20 neurons × 10 raters, every rater of a neuron agreeing: A on neurons 0–11, B on 12–19."""
    return frame(
        [
            neuron_rating(neuron, f"r{rater}", a_wins=neuron < 12, a_left=neuron % 2 == 0)
            for neuron in range(20)
            for rater in range(10)
        ]
    )


def test_neuron_level_counts_neurons_where_the_rating_level_test_counts_ratings() -> None:
    ratings = unanimous_study()
    primary = stats.neuron_level(ratings, A, B)
    assert (primary.unit, primary.n_units, primary.n_leaning_a, primary.n_leaning_b) == ("neuron", 20, 12, 8)
    assert primary.estimate == pytest.approx(0.6)
    # 12 of 20 neurons: binomtest(12, 20) = 2 · P(X ≥ 12) = 0.5034…
    assert primary.p_value == pytest.approx(scipy_stats.binomtest(12, 20).pvalue, abs=1e-12)
    assert primary.p_value == pytest.approx(0.50344, abs=1e-5)
    # The bootstrap SE of a mean of twelve 1s and eight 0s is about sqrt(0.24 / 20) = 0.11: CI about 0.4–0.8.
    low, high = primary.ci
    assert 0.35 < low < 0.5 < high < 0.85
    # The same ratings as 200 independent trials: 120 of 200, p = 0.0057…, and a Wilson CI that excludes 1/2.
    rating_level = stats.win_rate(ratings, A, B)
    assert rating_level.binomial_p == pytest.approx(scipy_stats.binomtest(120, 200).pvalue, abs=1e-12)
    assert rating_level.binomial_p == pytest.approx(0.005685, abs=1e-6)
    assert rating_level.wilson_ci is not None and rating_level.wilson_ci[0] > 0.5


def test_neuron_level_weighs_every_neuron_once_and_drops_what_carries_no_preference() -> None:
    rows = [neuron_rating(0, f"r{i}", a_wins=True) for i in range(10)]  # 10 of 10 for A
    rows += [neuron_rating(1, "r0", a_wins=False), neuron_rating(1, "r1", a_wins=False, a_left=False)]  # 0 of 2
    rows += [neuron_rating(2, "r0", a_wins=True), neuron_rating(2, "r1", a_wins=False), neuron_rating(2, "r2", None)]
    rows += [neuron_rating(3, "r0", None), neuron_rating(3, "r1", None)]  # only ties: no preference, dropped
    rows += [neuron_rating(4, "r0", a_wins=False, is_gold=1)]  # gold never counts
    rows += [neuron_rating(5, "r0", a_wins=True) | {"left_arm": C, "winner_arm": C}]  # another pair
    primary = stats.neuron_level(frame(rows), A, B)
    # Shares 1, 0, 1/2: the mean is 1/2, where pooling the ratings would give 11 of 14.
    assert primary.estimate == pytest.approx(0.5)
    assert (primary.n_units, primary.n_leaning_a, primary.n_leaning_b, primary.n_tied_units) == (3, 1, 1, 1)
    assert (primary.n_decisive_ratings, primary.n_units_without_decisive) == (14, 1)
    assert primary.p_value == pytest.approx(1.0)
    swapped = stats.neuron_level(frame(rows), B, A)
    assert (swapped.estimate, swapped.n_leaning_a, swapped.n_leaning_b) == (pytest.approx(0.5), 1, 1)
    shares = stats.neuron_shares(frame(rows), A, B).set_index("neuron")
    assert list(shares["decisive"]) == [10, 2, 2, 0]
    assert math.isnan(shares.loc["0:3", "share"])


def test_neuron_level_is_seeded_json_safe_and_says_why_a_ci_is_missing() -> None:
    ratings = simulate_study(neurons=30, ratings_per_neuron=5, latent_spread=BETA_2_2_SPREAD, seed=2)
    arms = SIMULATED_ARMS
    assert stats.neuron_level(ratings, *arms, seed=3) == stats.neuron_level(ratings, *arms, seed=3)
    assert stats.neuron_level(ratings, *arms, seed=3).ci != stats.neuron_level(ratings, *arms, seed=4).ci
    as_json = json.loads(json.dumps(stats.neuron_level(ratings, *arms).to_json()))
    assert as_json["ci"] == list(stats.neuron_level(ratings, *arms).ci)
    assert "sign test" in as_json["method"] and "bootstrap" in as_json["method"]
    one = stats.neuron_level(frame([neuron_rating(0, "r0", True), neuron_rating(0, "r1", True)]), A, B)
    assert (one.estimate, one.ci, one.p_value) == (1.0, None, None)
    assert "at least 2" in one.note
    none = stats.neuron_level(frame([neuron_rating(0, "r0", None)]), A, B)
    assert (none.n_units, none.estimate, none.ci) == (0, None, None)
    balanced = [neuron_rating(n, f"r{i}", a_wins=i == 0) for n in range(3) for i in range(2)]
    undecided = stats.neuron_level(frame(balanced), A, B)
    assert (undecided.n_tied_units, undecided.p_value, undecided.ci) == (3, None, (0.5, 0.5))
    with pytest.raises(InputError, match="neuron"):
        stats.neuron_level(small_study().drop(columns="neuron"), A, B)


def test_sign_tests_of_many_counts_match_scipy() -> None:
    successes, n = np.array([0, 3, 12, 10, 31, 0, 7]), np.array([5, 20, 20, 20, 40, 0, 7])
    expected = [scipy_stats.binomtest(k, m).pvalue if m else 1.0 for k, m in zip(successes, n, strict=True)]
    assert stats.sign_tests(successes, n) == pytest.approx(expected, abs=1e-12)


def test_cluster_bootstrap_is_the_percentile_interval_of_resampled_neurons() -> None:
    # scipy.stats.bootstrap draws rng.integers(0, n, (resamples, n)): each row a resample of the neurons.
    shares = np.random.default_rng(0).random(25).round(1)
    picks = np.random.default_rng(9).integers(0, 25, size=(500, 25))
    expected = np.quantile(shares[picks].mean(axis=1), [0.025, 0.975])
    assert stats.cluster_bootstrap_ci(shares, 500, np.random.default_rng(9)) == pytest.approx(expected, abs=1e-12)


def test_cluster_bootstrap_of_many_studies_matches_one_at_a_time() -> None:
    values = np.random.default_rng(0).random((3, 25))
    together = stats.cluster_bootstrap_ci(values[:1], 500, np.random.default_rng(9))
    alone = stats.cluster_bootstrap_ci(values[0], 500, np.random.default_rng(9))
    assert together.shape == (1, 2) and alone.shape == (2,)
    assert together[0] == pytest.approx(alone)
    assert stats.cluster_bootstrap_ci(values, 500, np.random.default_rng(9)).shape == (3, 2)


@pytest.mark.parametrize("ratings_per_neuron", [4, 8])
def test_neuron_level_is_calibrated_when_neurons_differ_and_no_arm_is_better(ratings_per_neuron: int) -> None:
    # 1000 studies of 30 neurons, each neuron with its own latent share p_n ~ Beta(2, 2) (mean 1/2): no arm is
    # better, yet a neuron's raters lean together. Vectorised over studies with the same functions neuron_level
    # uses (checked against neuron_level itself on the first studies below) to stay within a few seconds.
    simulated = simulate_outcomes(
        1000, neurons=30, ratings_per_neuron=ratings_per_neuron, latent_spread=BETA_2_2_SPREAD, seed=ratings_per_neuron
    )
    shares = simulated.wins_a / simulated.decisive
    leaning_a, leaning_b = (shares > 0.5).sum(axis=1), (shares < 0.5).sum(axis=1)
    p_values = stats.sign_tests(leaning_a, leaning_a + leaning_b)
    ci = stats.cluster_bootstrap_ci(shares, stats.BOOTSTRAP_RESAMPLES, np.random.default_rng(1))
    false_positives = float(np.mean(p_values < 0.05))
    coverage = float(np.mean((ci[:, 0] <= 0.5) & (ci[:, 1] >= 0.5)))
    assert false_positives <= 0.06
    assert coverage >= 0.93
    for study in range(10):
        primary = stats.neuron_level(study_frame(simulated, study), *SIMULATED_ARMS)
        assert primary.estimate == pytest.approx(shares[study].mean())
        assert primary.p_value == pytest.approx(p_values[study], abs=1e-12)
    # The rating-level test on the same studies is not calibrated: what this test guards against.
    wins, decisive = simulated.wins_a.sum(axis=1), simulated.decisive.sum(axis=1)
    assert np.mean(stats.sign_tests(wins, decisive) < 0.05) > 0.08


def test_mixed_effects_recovers_a_known_preference_and_position_effect() -> None:
    # Every neuron at p = 0.7, the left side favoured by 1 on the log-odds scale (2 between left and right).
    ratings = simulate_study(neurons=50, ratings_per_neuron=4, preference=0.7, position_bias=1.0, seed=5)
    result = stats.mixed_effects(ratings, *SIMULATED_ARMS)
    assert result.converged and result.note is None
    assert (result.n_ratings, result.n_neurons, result.n_raters) == (200, 50, 8)
    assert result.win_probability_ci[0] < 0.7 < result.win_probability_ci[1]
    assert result.position_log_odds_ci[0] < 2.0 < result.position_log_odds_ci[1]
    assert result.position_log_odds_ci[0] > 0.5
    json.dumps(result.to_json())
    null = stats.mixed_effects(simulate_study(neurons=50, latent_spread=BETA_2_2_SPREAD, seed=6), *SIMULATED_ARMS)
    assert null.win_probability_ci[0] < 0.5 < null.win_probability_ci[1]
    assert null.neuron_sd > null.rater_sd  # the spread is between neurons, not raters


def test_mixed_effects_says_why_it_did_not_fit() -> None:
    few = stats.mixed_effects(frame([neuron_rating(n, "r0", n % 2 == 0) for n in range(4)]), A, B)
    assert (few.win_probability, few.converged) == (None, False)
    assert "at least" in few.note
    same = stats.mixed_effects(frame([neuron_rating(n, f"r{n % 3}", True) for n in range(12)]), A, B)
    assert same.win_probability is None and "same way" in same.note
    one_rater = stats.mixed_effects(frame([neuron_rating(n, "r0", n % 3 > 0, n % 2 == 0) for n in range(30)]), A, B)
    assert one_rater.rater_sd is None and "one rater" in one_rater.note
    assert one_rater.win_probability is not None


def test_mixed_effects_gives_no_estimate_where_swapping_the_arms_contradicts_it() -> None:
    # Two neurons always for A and two always for B, 100 ratings each: variational Bayes reported A winning with
    # probability 0.9997 (CI 0.996 to 1), and B winning with 0.91 when the arms were swapped. No estimate, and why.
    rows = [
        neuron_rating(neuron, f"r{i % 3}", neuron < 2, a_left=i % 2 == 0) for neuron in range(4) for i in range(100)
    ]
    separated = stats.mixed_effects(frame(rows), A, B)
    assert (separated.win_probability, separated.win_probability_ci, separated.neuron_sd) == (None, None, None)
    assert "the variational fit is unstable on these data (A over B gives 1.000" in separated.note
    assert separated.note.endswith("should add up to 1), as when each neuron's ratings all go one way: no estimate")
    # The notes gathered before the check come first.
    one_sided = [neuron_rating(neuron, "r0", neuron < 2) for neuron in range(4) for _ in range(100)]
    assert stats.mixed_effects(frame(one_sided), A, B).note.startswith(
        "arm A was always on the same side: no position effect; one rater: no rater random effect; the variational "
        "fit is unstable on these data (A over B gives "
    )
    # Where the fit is sound, the two directions mirror each other.
    ratings = simulate_study(neurons=30, ratings_per_neuron=4, preference=0.7, seed=8)
    forward, backward = (
        stats.mixed_effects(ratings, *SIMULATED_ARMS),
        stats.mixed_effects(ratings, *SIMULATED_ARMS[::-1]),
    )
    assert forward.note is None and forward.win_probability == pytest.approx(1 - backward.win_probability, abs=0.02)


def test_withholding_the_tests_hides_every_p_value_and_ci_of_the_tests_and_nothing_else() -> None:
    ratings = simulate_study(neurons=30, ratings_per_neuron=4, preference=0.7, seed=7)
    summary = stats.summary_from_ratings(ratings, list(SIMULATED_ARMS))
    hidden = summary.without_tests().to_json()
    shown = summary.to_json()
    assert shown["primary"]["p_value"] is not None and shown["wilson_ci"] is not None
    for pair in (hidden["primary"], *hidden["neuron_pairs"]):
        assert (pair["p_value"], pair["ci"], pair["p_value_holm"]) == (None, None, None)
    for pair in (hidden, *hidden["pairs"]):
        assert (pair["wilson_ci"], pair["binomial_p"]) == (None, None)
    assert (hidden["secondary"]["win_probability_ci"], hidden["secondary"]["position_log_odds_ci"]) == (None, None)
    assert hidden["win_rate"] == shown["win_rate"] and hidden["primary"]["estimate"] == shown["primary"]["estimate"]
    assert hidden["per_rater"] == shown["per_rater"] and hidden["position_bias"] == shown["position_bias"]


def test_holm_adjusts_the_present_p_values_and_passes_none_through() -> None:
    # Sorted 0.01, 0.03, 0.04 times 3, 2, 1 → 0.03, 0.06, 0.04, then made monotone: 0.03, 0.06, 0.06.
    assert stats.holm([0.01, 0.04, 0.03, None]) == pytest.approx([0.03, 0.06, 0.06, None])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert stats.holm([None, None]) == [None, None]
    assert stats.holm([]) == []


# --- the summary's new keys, and the score columns a study's export carries -------------------------------------


def test_summary_reports_agreement_cis_bootstrapped_bradley_terry_and_every_score_kind() -> None:
    arms = [A, B, C]
    ratings = chance_ratings(arms, 90, 3, seed=12)
    rng = np.random.default_rng(13)
    per_item = {item: rng.random(4) for item in ratings["item_id"].unique()}
    for i, side in enumerate(("left", "right")):
        ratings[f"{SIM}:{side}"] = [per_item[item][i] for item in ratings["item_id"]]
        ratings[f"similarity:mini:{side}"] = [per_item[item][2 + i] for item in ratings["item_id"]]
    summary = stats.summary_from_ratings(ratings, arms).to_json()
    assert json.loads(json.dumps(summary, allow_nan=False)) == summary
    assert summary == stats.summary_from_ratings(ratings, arms).to_json()  # every bootstrap is seeded
    agreement = summary["agreement"]
    assert {"krippendorff_alpha_ci_low", "krippendorff_alpha_ci_high", "fleiss_kappa_ci_low"} <= set(agreement)
    assert all(value is None or isinstance(value, int | float) for value in agreement.values())
    assert "ordinal" in summary["agreement_method"]
    assert {"warning", "differences", "method", "ci_method"} <= set(summary["bradley_terry"])
    assert {"rank", "ci", "fisher_ci"} <= set(summary["bradley_terry"]["arms"][0])
    assert [(row["kind"], row["name"]) for row in summary["automated"]] == [
        ("score", "hf:my-model·all_at_once"),
        ("similarity", "mini"),
    ]
    for row in summary["automated"]:
        assert {"kappa", "logistic", "rank_correlation"} <= set(row)
        assert row["rank_correlation"]["n_arms"] == 3 and row["rank_correlation"]["tau"] is not None
    assert summary["human_vs_automated"] is None  # no left_score / right_score columns: the old key stays None


def test_study_data_carries_every_score_kind_apart(db) -> None:
    neurons = explain_neurons(db, 6)
    human_eval.create_study(db, "S", "summary,original", neurons, 2, seed=1)
    add_raters(db, ["ann", "bob"])
    run_raters(
        db, "S", {"ann": prefers("summary", 0.7, random.Random(1)), "bob": prefers("summary", 0.7, random.Random(2))}
    )
    explanations = dbmod.list_explanations(db, MODEL)
    base = {"split": "valid", "status": "ok", "created_at": "x"}
    for row in explanations:
        value = 0.1 * row["id"]
        # An uncalibrated score under two methods, and a calibrated one that must stay out.
        for method, calibrated, score in (
            ("all_at_once", 0, value),
            ("chat_parse", 0, -value),
            ("all_at_once", 1, 9.0),
        ):
            kind = {"simulator": "hf:tiny", "method": method, "calibrated": calibrated, "score": score}
            db["scores"].insert({**base, "explanation_id": row["id"], **kind})
        for reference, cosine in (("one", 0.2), ("two", 0.4)):
            dbmod.save_similarity(db, row["id"], "reference", f"{reference} {row['id']}", "mini", cosine)
    data = export.study_data(db, "S")
    kinds = ["score:hf:tiny·all_at_once", "score:hf:tiny·chat_parse", "similarity:mini"]
    assert [column for column in data.ratings.columns if ":" in column] == [
        f"{kind}:{side}" for kind in kinds for side in ("left", "right")
    ]
    for frame_ in (data.ratings, data.items):
        ids = frame_["left_explanation_id"]
        assert list(frame_["score:hf:tiny·all_at_once:left"]) == pytest.approx(list(0.1 * ids))  # never calibrated
        assert list(frame_["score:hf:tiny·chat_parse:left"]) == pytest.approx(list(-0.1 * ids))
        assert list(frame_["similarity:mini:right"]) == pytest.approx([0.3] * len(frame_))  # mean over references
    assert data.ratings["left_score"].notna().all()  # the one-simulator columns stay
    summary = export.summary_of(data)
    assert [(row.kind, row.name) for row in summary.analysis.statistics.automated] == [
        ("score", "hf:tiny·all_at_once"),
        ("score", "hf:tiny·chat_parse"),
        ("similarity", "mini"),
    ]


def test_bounds_that_are_zero_or_one_are_exactly_that() -> None:
    from core.stats.proportions import percentile_interval, wilson_interval

    for n in (1, 3, 7, 10, 49, 100):
        assert wilson_interval(0, n)[0] == 0.0 and wilson_interval(n, n)[1] == 1.0
    shares = np.array([[0.1 + 0.2 - 0.3], [0.7 - 0.7], [0.1 + 0.2 - 0.3]])  # rounding noise around 0
    assert percentile_interval(shares)[0].tolist() == [0.0, 0.0]
