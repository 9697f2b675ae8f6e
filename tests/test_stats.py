"""Statistics of pairwise ratings against hand-computed cases and against scipy / statsmodels / krippendorff."""

from __future__ import annotations

import math
import random

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats
from statsmodels.discrete.discrete_model import Logit
from statsmodels.stats import inter_rater
from statsmodels.stats.proportion import proportion_confint

from core import stats

A, B, C = "summary", "original", "highlight"


def rating(item: int, rater: str, choice: str, left: str = A, right: str = B, **extra) -> dict:
    winner = {"left": left, "right": right}.get(choice)
    row = {"item_id": item, "rater": rater, "choice": choice, "left_arm": left, "right_arm": right}
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
    assert stats.proportion(0, 0) == {"successes": 0, "n": 0, "rate": None, "ci": [None, None], "p_value": None}


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
    assert (result["wins_a"], result["wins_b"], result["ties"], result["both_bad"]) == (4, 1, 1, 1)
    assert result["n_ratings"] == 7
    assert result["decisive"] == 5
    assert result["win_rate"] == pytest.approx(0.8)
    assert result["wilson_ci"] == pytest.approx(list(proportion_confint(4, 5, method="wilson")))
    assert result["binomial_p"] == pytest.approx(scipy_stats.binomtest(4, 5).pvalue)
    assert result["tie_share"] == pytest.approx(1 / 7)
    assert stats.win_rate(small_study(), B, A)["win_rate"] == pytest.approx(0.2)


def test_position_bias_counts_left_wins_among_decisive_ratings() -> None:
    result = stats.position_bias(small_study())
    # Decisive non-gold ratings: left, right, left, left, right → 3 of 5 went left.
    assert (result["successes"], result["n"]) == (3, 5)
    assert result["p_value"] == pytest.approx(1.0)


def test_per_rater_win_rates() -> None:
    rows = {row["rater"]: row for row in stats.per_rater(small_study(), [A, B])}
    assert (rows["ann"]["wins_a"], rows["ann"]["wins_b"], rows["ann"]["ties"]) == (2, 1, 1)
    assert (rows["bob"]["wins_a"], rows["bob"]["both_bad"]) == (2, 1)
    assert rows["bob"]["win_rate"] == 1.0


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
    assert (result["n_items"], result["n_raters"]) == (4, 2)
    assert result["percent_agreement"] == pytest.approx(0.75)
    # Labels (A, A), (B, B), (A, B), (tie, tie): p_o = 3/4; p_e = (2·1 + 1·2 + 1·1)/16 = 5/16; κ = 7/11.
    assert result["cohen_kappa"] == pytest.approx((0.75 - 5 / 16) / (1 - 5 / 16))
    assert result["fleiss_items"] == 4


def test_agreement_is_one_for_identical_raters_and_near_zero_for_random_ones() -> None:
    rng = random.Random(11)
    identical, noisy = [], []
    for item in range(300):
        shared = rng.choice(["left", "right", "tie", "both_bad"])
        for rater in ("ann", "bob", "cyd"):
            identical.append(rating(item, rater, shared))
            noisy.append(rating(item, rater, rng.choice(["left", "right", "tie", "both_bad"])))
    same = stats.agreement(frame(identical))
    assert same["fleiss_kappa"] == pytest.approx(1.0)
    assert same["krippendorff_alpha"] == pytest.approx(1.0)
    assert same["percent_agreement"] == 1.0
    assert same["cohen_kappa"] is None  # three raters: Cohen's κ does not apply
    chance = stats.agreement(frame(noisy))
    assert abs(chance["fleiss_kappa"]) < 0.08
    assert abs(chance["krippendorff_alpha"]) < 0.08


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
    for row in result["arms"]:
        assert row["ci"][0] < truth[row["arm"]] < row["ci"][1]
        assert row["strength"] == pytest.approx(truth[row["arm"]], abs=0.15)


def test_bradley_terry_uses_a_prior_when_an_arm_never_loses() -> None:
    fit = stats.bradley_terry_fit([A, A, B], [B, C, C], [A, B, C])
    assert fit.prior == stats.BT_PRIOR
    assert np.all(np.isfinite(fit.strengths))
    assert fit.strengths[0] > fit.strengths[1] > fit.strengths[2]


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
    accuracy = {row["rater"]: row for row in stats.gold_accuracy(rows)}
    assert accuracy["ann"] == {"rater": "ann", "n_gold": 2, "correct": 2, "accuracy": 1.0}
    assert accuracy["bob"]["accuracy"] == 0.0
    assert "cyd" not in accuracy
    kept, excluded = stats.exclude_low_gold_raters(rows, 0.5)
    assert excluded == ["bob"]
    assert sorted(kept["rater"].unique()) == ["ann", "cyd"]  # no gold answers: no evidence, kept
    summary = stats.summary_from_ratings(rows, [A, B], min_gold_accuracy=0.5)
    assert summary["gold"]["excluded_raters"] == ["bob"]
    assert summary["wins"] == {A: 1, B: 1}


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
    assert (result["successes"], result["n"]) == (2, 3)
    assert result["ci"] == pytest.approx(list(proportion_confint(2, 3, method="wilson")))
    assert stats.human_vs_automated(small_study()) is None


def test_item_aggregates_count_choices_per_item() -> None:
    items = pd.DataFrame({"item_id": [1, 2, 3, 4, 7]})
    aggregated = stats.item_aggregates(items, small_study().assign(confidence=[5, 4, 3, 2, 1, 2, 3, 4], seconds=2.0))
    row = aggregated.set_index("item_id").loc[1]
    assert (row["n_left"], row["n_ratings"], row["mean_confidence"]) == (2, 2, 3.0)
    assert aggregated.set_index("item_id").loc[7, "n_ratings"] == 0


def test_summary_has_the_documented_keys_and_pairs_for_three_arms() -> None:
    rows = frame(
        [
            rating(1, "ann", "left", left=A, right=C),
            rating(2, "ann", "right", left=B, right=C),
            rating(3, "ann", "left", left=B, right=A),
            rating(4, "ann", "left"),
        ]
    )
    summary = stats.summary_from_ratings(rows, [A, B, C])
    required = {"arms", "n_ratings", "wins", "ties", "both_bad", "win_rate", "wilson_ci", "binomial_p"}
    assert required | {"left_win_rate", "agreement"} <= set(summary)
    assert [(pair["arm_a"], pair["arm_b"]) for pair in summary["pairs"]] == [(A, B), (A, C), (B, C)]
    assert {row["arm"] for row in summary["bradley_terry"]["arms"]} == {A, B, C}
    assert summary["wins"] == {A: 2, B: 1, C: 1}
    assert summary["primary_pair"] == [A, B]
    empty = stats.summary_from_ratings(rows.iloc[0:0], [A, B])
    assert (empty["n_ratings"], empty["win_rate"], empty["bradley_terry"]) == (0, None, None)
