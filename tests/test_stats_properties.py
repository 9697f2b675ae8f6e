"""Properties of the statistics that mutation testing (`make mutation MODULE=stats`, tests/README.md) showed
untested: boundaries at every threshold, exact values worked out by hand or with a reference library (scipy,
statsmodels, krippendorff, choix), results that must not depend on the order of the rows, and the fields every
result carries. The hand-computed cases of tests/test_stats.py stay there; these add what they left open."""

from __future__ import annotations

import itertools
import math
import re
import warnings

import choix
import krippendorff
import numpy as np
import pandas as pd
import pytest
from scipy import special as scipy_special
from scipy import stats as scipy_stats
from statsmodels.discrete.discrete_model import Logit
from statsmodels.genmod.bayes_mixed_glm import BinomialBayesMixedGLM
from statsmodels.stats import inter_rater
from statsmodels.stats.proportion import proportion_confint

from core import stats
from core.errors import InputError
from tests.test_stats import SIM, A, B, C, chance_ratings, frame, rating, scored, small_study

# --- proportions ---------------------------------------------------------------------------------------------------


def test_the_normal_quantile_and_percentile_interval_follow_the_confidence_level() -> None:
    assert stats.z_value() == pytest.approx(1.959963984540054, abs=1e-12)
    assert stats.z_value(0.9) == pytest.approx(1.6448536269514722, abs=1e-12)
    values = np.random.default_rng(1).normal(size=(400, 3))
    expected = np.quantile(values, [0.025, 0.975], axis=0).T
    assert stats.percentile_interval(values) == pytest.approx(expected, abs=1e-12)
    assert stats.percentile_interval(values, 0.8) == pytest.approx(np.quantile(values, [0.1, 0.9], axis=0).T)
    assert stats.wilson_interval(7, 10, confidence=0.9) == pytest.approx(
        proportion_confint(7, 10, alpha=0.1, method="wilson"), abs=1e-12
    )


def test_a_pair_mask_holds_only_the_items_of_that_pair_on_either_side() -> None:
    rows = frame(
        [
            rating(1, "ann", "left", left=A, right=B),
            rating(2, "ann", "left", left=B, right=A),
            rating(3, "ann", "left", left=B, right=C),
            rating(4, "ann", "left", left=C, right=A),
            rating(5, "ann", "left", left=C, right=B),
        ]
    )
    assert list(stats.pair_mask(rows, A, B)) == [True, True, False, False, False]
    assert list(stats.pair_mask(rows, B, C)) == [False, False, True, False, True]


def test_outcome_labels_name_the_chosen_arm_or_what_the_rating_said() -> None:
    rows = frame(
        [
            rating(1, "ann", "left"),
            rating(2, "ann", "right"),
            rating(3, "ann", "tie"),
            rating(4, "ann", "both_bad"),
        ]
    )
    assert list(stats.outcome_labels(rows)) == [A, B, "tie", "both_bad"]


def test_relative_outcomes_put_arms_missing_from_the_order_after_it_by_name() -> None:
    rows = frame(
        [
            rating(1, "ann", "left", left=A, right=B),  # B is in the order: A of the pair; B loses: −1
            rating(2, "ann", "right", left=A, right=C),  # neither in it: by name, highlight (C) first; C wins: +1
            rating(3, "ann", "tie", left=C, right=B),  # B first: 0
        ]
    )
    coded = stats.relative_outcomes(rows, [B])
    assert list(coded["arm_a"]) == [B, C, B]
    assert list(coded["arm_b"]) == [A, A, C]
    assert list(coded["a_left"]) == [False, False, False]
    assert list(coded["code"]) == [-1, 1, 0]
    assert coded["code"].dtype.kind == "i"
    assert list(stats.relative_outcomes(rows, [A, B, C])["arm_b"]) == [B, C, C]


def test_win_rate_shares_of_ties_and_both_bad_are_over_all_ratings_of_the_pair() -> None:
    result = stats.win_rate(small_study(), A, B)
    # 7 non-gold ratings of the pair: 1 tie and 1 both-bad.
    assert (result.tie_share, result.both_bad_share) == (pytest.approx(1 / 7), pytest.approx(1 / 7))
    empty = stats.win_rate(small_study().iloc[0:0], A, B)
    assert (empty.n_ratings, empty.tie_share, empty.both_bad_share, empty.win_rate) == (0, None, None, None)


def test_rows_per_rater_come_in_order_of_the_raters_names() -> None:
    gold = {"left": "truth:summary", "right": "decoy:summary", "is_gold": 1, "gold_choice": "left"}
    rows = frame(
        [
            rating(1, "cyd", "left"),
            rating(1, "ann", "right"),
            rating(1, "bob", "left"),
            rating(50, "cyd", "left", **gold),
            rating(50, "ann", "right", **gold),
            rating(50, "bob", "left", **gold),
        ]
    )
    assert [row.rater for row in stats.per_rater(rows, [A, B])] == ["ann", "bob", "cyd"]
    assert [row.rater for row in stats.gold_accuracy(rows)] == ["ann", "bob", "cyd"]


def test_a_rater_exactly_at_the_gold_threshold_is_kept() -> None:
    gold = {"left": "truth:summary", "right": "decoy:summary", "is_gold": 1, "gold_choice": "left"}
    rows = frame(
        [
            rating(50, "ann", "left", **gold),
            rating(51, "ann", "right", **gold),  # ann: 1 of 2, exactly 0.5
            rating(50, "bob", "left", **gold),
            rating(51, "bob", "tie", **gold),
            rating(52, "bob", "both_bad", **gold),  # bob: 1 of 3, below 0.5
            rating(1, "ann", "left"),
            rating(1, "bob", "left"),
        ]
    )
    kept, excluded = stats.exclude_low_gold_raters(rows, 0.5)
    assert excluded == ["bob"]
    assert set(kept["rater"]) == {"ann"}
    assert stats.exclude_low_gold_raters(rows, 0.51)[1] == ["ann", "bob"]
    assert stats.exclude_low_gold_raters(rows, None) == (rows, [])


def test_only_bounds_below_1e_12_are_rounding_noise() -> None:
    # A bound of exactly ±1e-12 is kept; anything smaller in magnitude is taken for noise and becomes 0.
    for bound in (1e-12, -1e-12, 2e-12):
        assert stats.percentile_interval(np.full((20, 1), bound)).tolist() == [[bound, bound]]
    for noise in (9.9e-13, -5.55e-17):
        assert stats.percentile_interval(np.full((20, 1), noise)).tolist() == [[0.0, 0.0]]


def test_relative_outcomes_of_no_ratings_keep_their_types() -> None:
    coded = stats.relative_outcomes(small_study().iloc[0:0], [A, B])
    assert len(coded) == 0
    assert (coded["a_left"].dtype.kind, coded["code"].dtype.kind) == ("b", "i")


# --- agreement -----------------------------------------------------------------------------------------------------


def test_cohen_kappa_refuses_unpaired_labels_and_is_zero_for_one_disagreement() -> None:
    with pytest.raises(InputError, match=r"^Cohen's kappa needs the two raters' labels on the same units$"):
        stats.cohen_kappa(["a"], ["a", "b"])
    # One unit, two different labels: p_o = 0, and each rater used one label, so p_e = 1·0 + 0·1 = 0: κ = 0.
    assert stats.cohen_kappa(["a"], ["b"]) == 0.0


def test_labels_of_mixed_types_are_compared_not_ordered() -> None:
    # Labels are only told apart, never ranked (nominal): a missing label (None) or a number among text is a label.
    assert stats.cohen_kappa(["a", None, 1, "a"], ["a", None, 1, 1]) == pytest.approx(
        stats.cohen_kappa(["a", "n", "1", "a"], ["a", "n", "1", "1"])
    )
    assert stats.fleiss_kappa([["a", 1], [1, 1], ["a", "a"]]) == pytest.approx(
        stats.fleiss_kappa([["a", "1"], ["1", "1"], ["a", "a"]])
    )
    mixed = pd.DataFrame({"unit": [1, 1, 2, 2, 3, 3], "rater": ["r", "s"] * 3, "label": ["a", 1, 1, 1, "a", "a"]})
    as_text = mixed.assign(label=mixed["label"].astype(str))
    assert stats.krippendorff_alpha(mixed) == pytest.approx(stats.krippendorff_alpha(as_text))


def test_fleiss_kappa_of_units_with_two_labels_each_by_hand() -> None:
    # P_i = 1, 0, 1, 1 → P̄ = 3/4; p_a = 3/8, p_b = 5/8 → P_e = 17/32; κ = (3/4 − 17/32)/(1 − 17/32) = 7/15.
    units = [["a", "a"], ["a", "b"], ["b", "b"], ["b", "b"]]
    assert stats.fleiss_kappa(units) == pytest.approx(7 / 15)
    assert math.isnan(stats.fleiss_kappa([["a"], ["b"]]))


def test_krippendorff_alpha_matches_the_package_at_each_level_and_orders_numbers_as_numbers() -> None:
    rng = np.random.default_rng(21)
    values = [1, 2, 10]  # as text "10" would sort between "1" and "2"
    reliability = np.full((4, 40), np.nan)
    rows = []
    for unit in range(40):
        for rater in rng.choice(4, size=int(rng.integers(2, 5)), replace=False):
            code = int(rng.choice(3, p=[0.6, 0.1, 0.3]))
            reliability[rater, unit] = code
            rows.append({"unit": unit, "rater": f"r{rater}", "label": values[code]})
    labels = pd.DataFrame(rows)
    for level in ("nominal", "ordinal"):
        expected = krippendorff.alpha(reliability_data=reliability, level_of_measurement=level)
        assert stats.krippendorff_alpha(labels, level) == pytest.approx(expected, abs=1e-12), level
    # One rater has nobody to agree with; one unit rated two ways by two raters is α = 0 (D_o = D_e).
    assert math.isnan(stats.krippendorff_alpha(labels[labels["rater"] == "r0"]))
    two = pd.DataFrame({"unit": [1, 1], "rater": ["a", "b"], "label": ["x", "y"]})
    assert stats.krippendorff_alpha(two) == 0.0


def test_unit_coincidences_and_alpha_from_them_by_hand() -> None:
    # Labels a, a, b in one unit (3 labels): each ordered pair of labels counts 1/(3 − 1). A unit with one label
    # is not pairable.
    counts = np.array([[2, 1, 0], [0, 0, 1]])
    assert stats.unit_coincidences(counts).reshape(2, 3, 3).tolist() == [
        [[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
        [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
    ]
    coincidences = stats.unit_coincidences(np.array([[2, 1, 0], [0, 2, 0], [1, 0, 1]])).sum(axis=0)
    for level in ("nominal", "ordinal"):
        alpha = stats.alpha_from_coincidences(coincidences, level)
        assert np.ndim(alpha) == 0, level
    with pytest.raises(ValueError, match="level 'ratio' is not nominal or ordinal"):
        stats.alpha_from_coincidences(coincidences, "ratio")


def test_batched_fleiss_kappa_is_nan_of_the_right_shape_where_undefined() -> None:
    empty = stats.fleiss_from_counts(np.zeros((0, 3)), np.ones((4, 0)))
    assert empty.shape == (4,) and np.isnan(empty).all()
    one_label = np.array([[1, 0, 0], [0, 1, 0]])
    assert stats.fleiss_from_counts(one_label, np.ones((5, 2))).shape == (5,)
    assert np.isnan(stats.fleiss_from_counts(one_label, np.ones((5, 2)))).all()
    assert np.ndim(stats.fleiss_from_counts(one_label, np.ones(2))) == 0
    two_labels = np.array([[2, 0], [1, 1], [0, 2]])
    assert np.ndim(stats.fleiss_from_counts(two_labels, np.ones(3))) == 0


def coded_by_hand(ratings: pd.DataFrame, arms: list[str]) -> pd.DataFrame:
    """Each rating's code relative to its pair, computed here without relative_outcomes: +1 when the pair's arm that
    comes first in `arms` won, −1 when the other did, 0 for a tie or both bad."""
    rows = []
    for row in ratings.itertuples():
        first = min((row.left_arm, row.right_arm), key=arms.index)
        code = 0 if row.choice not in ("left", "right") else (1 if row.winner_arm == first else -1)
        rows.append({"unit": row.item_id, "rater": row.rater, "code": code})
    return pd.DataFrame(rows)


def reference_agreement(coded: pd.DataFrame) -> tuple[float, float]:
    """Ordinal α (krippendorff) over every unit and Fleiss' κ (statsmodels) over every unit."""
    wide = coded.pivot_table(index="rater", columns="unit", values="code", aggfunc="first")
    alpha = krippendorff.alpha(reliability_data=wide.to_numpy(dtype=float) + 1, level_of_measurement="ordinal")
    table = pd.crosstab(coded["unit"], coded["code"]).to_numpy()
    return alpha, inter_rater.fleiss_kappa(table)


# Three arms whose names sort differently from the study's order for one pair only: x < y < z by name, the study
# lists x, z, y. Pair (z, y) is coded with z first in the study, y first by name.
ORDERED_ARMS = ["x", "z", "y"]
ORDERED_CASE = [
    rating(1, "ann", "left", left="z", right="y"),
    rating(1, "bob", "left", left="z", right="y"),
    rating(2, "ann", "left", left="y", right="z"),
    rating(2, "bob", "tie", left="y", right="z"),
    rating(3, "ann", "left", left="x", right="z"),
    rating(3, "bob", "left", left="x", right="z"),
    rating(4, "ann", "right", left="x", right="y"),
    rating(4, "bob", "both_bad", left="x", right="y"),
    rating(5, "ann", "left", left="z", right="x"),
    rating(5, "bob", "left", left="z", right="x"),
]


def test_agreement_codes_each_pair_in_the_studys_arm_order() -> None:
    ratings = frame(ORDERED_CASE)
    result = stats.agreement(ratings, ORDERED_ARMS, resamples=50)
    alpha, kappa = reference_agreement(coded_by_hand(ratings, ORDERED_ARMS))
    assert result.krippendorff_alpha == pytest.approx(alpha, abs=1e-12)
    assert result.fleiss_kappa == pytest.approx(kappa, abs=1e-12)
    by_name = reference_agreement(coded_by_hand(ratings, sorted(ORDERED_ARMS)))
    assert by_name[0] != pytest.approx(alpha)  # the order matters here, so the test can tell
    # Without ties or both-bad, the 'neither' category is empty and stays so.
    decisive = ratings[ratings["choice"].isin(stats.DECISIVE)]
    shared = decisive[decisive.groupby("item_id")["rater"].transform("nunique") >= 2]
    result = stats.agreement(shared, ORDERED_ARMS, resamples=50)
    alpha, kappa = reference_agreement(coded_by_hand(shared, ORDERED_ARMS))
    assert (result.krippendorff_alpha, result.fleiss_kappa) == (pytest.approx(alpha), pytest.approx(kappa))


def test_fleiss_kappa_takes_the_larger_rater_count_when_two_counts_are_equally_common() -> None:
    rows = []
    for item, choices in enumerate([("left", "left"), ("left", "right"), ("left", "left", "left"),
                                    ("right", "right", "left")]):  # fmt: skip
        rows += [rating(item, f"r{i}", choice) for i, choice in enumerate(choices)]
    result = stats.agreement(frame(rows), [A, B], resamples=50)
    assert (result.fleiss_raters_per_item, result.fleiss_items, result.n_items) == (3, 2, 4)
    expected = inter_rater.fleiss_kappa(np.array([[3, 0], [1, 2]]))  # items 2 and 3 by (A, B) wins
    assert result.fleiss_kappa == pytest.approx(expected)


def test_agreement_of_no_one_and_two_shared_items() -> None:
    rows = [rating(1, "ann", "left"), rating(1, "bob", "right"), rating(2, "ann", "left"), rating(2, "bob", "left")]
    empty = stats.agreement(frame(rows).iloc[0:0], [A, B])
    assert (empty.n_items, empty.n_raters, empty.fleiss_items, empty.fleiss_raters_per_item) == (0, 0, 0, 0)
    assert (empty.percent_agreement, empty.fleiss_kappa, empty.cohen_kappa) == (None, None, None)
    assert (empty.fleiss_kappa_ci_low, empty.fleiss_kappa_ci_high) == (None, None)
    one = stats.agreement(frame(rows[:2]), [A, B])
    assert (one.n_items, one.percent_agreement, one.fleiss_raters_per_item) == (1, 0.0, 2)
    assert (one.krippendorff_alpha_ci_low, one.fleiss_kappa_ci_low) == (None, None)  # one item: no resampling
    two = stats.agreement(frame(rows), [A, B])
    assert two.percent_agreement == pytest.approx(0.5)
    assert two.krippendorff_alpha_ci_low is not None and two.krippendorff_alpha_ci_high is not None


def test_agreement_cis_are_percentiles_of_the_measures_on_resampled_items() -> None:
    # 12 items, 3 raters each; the reference recomputes α (krippendorff) and κ (statsmodels) on every resample of
    # the items, drawn as scipy.stats.bootstrap draws them: rng.integers(0, n, (resamples, n)).
    rng = np.random.default_rng(8)
    rows = []
    for item in range(12):
        left, right = (A, B) if item % 2 else (B, A)
        verdict = rng.choice(["left", "right", "tie"])
        for rater in ("ann", "bob", "cyd"):
            choice = verdict if rng.random() < 0.7 else rng.choice(["left", "right", "tie"])
            rows.append(rating(item, rater, str(choice), left=left, right=right))
    ratings = frame(rows)
    resamples, seed = 300, 5
    result = stats.agreement(ratings, [A, B], resamples=resamples, seed=seed)
    coded = coded_by_hand(ratings, [A, B])
    wide = coded.pivot_table(index="rater", columns="unit", values="code").to_numpy() + 1
    counts = pd.crosstab(coded["unit"], coded["code"]).reindex(columns=[-1, 0, 1], fill_value=0).to_numpy()
    alphas, kappas = [], []
    for picks in np.random.default_rng(seed).integers(0, 12, size=(resamples, 12)):
        if len(np.unique(wide[:, picks])) > 1:
            alphas.append(krippendorff.alpha(reliability_data=wide[:, picks], level_of_measurement="ordinal"))
        kappas.append(inter_rater.fleiss_kappa(counts[picks]))
    kappas = [kappa for kappa in kappas if np.isfinite(kappa)]
    assert (result.krippendorff_alpha_ci_low, result.krippendorff_alpha_ci_high) == pytest.approx(
        tuple(np.quantile(alphas, [0.025, 0.975])), abs=1e-9
    )
    assert (result.fleiss_kappa_ci_low, result.fleiss_kappa_ci_high) == pytest.approx(
        tuple(np.quantile(kappas, [0.025, 0.975])), abs=1e-9
    )
    # Items that all got the same single label: α and κ are undefined in every resample, so there is no CI.
    same = frame([rating(item, rater, "left") for item in range(4) for rater in ("ann", "bob")])
    unanimous = stats.agreement(same, [A, B], resamples=50)
    assert (unanimous.krippendorff_alpha, unanimous.krippendorff_alpha_ci_low) == (None, None)
    assert (unanimous.fleiss_kappa, unanimous.fleiss_kappa_ci_high, unanimous.percent_agreement) == (None, None, 1.0)


def test_agreement_is_seeded_with_the_seed_its_method_names() -> None:
    ratings = chance_ratings([A, B, C], 60, 3, seed=3)
    assert stats.agreement(ratings, [A, B, C]) == stats.agreement(ratings, [A, B, C], seed=0)
    assert stats.agreement(ratings, [A, B, C]) != stats.agreement(ratings, [A, B, C], seed=1)
    method = stats.agreement_method()
    assert method.startswith("Each rating coded relative to its item's pair: ")
    assert "(2000 resamples, seed 0)" in method
    for words in ("A better / neither (tie or both bad) / B better, A being the pair's first arm in the study's arm",
                  "Krippendorff's α ordinal", "Fleiss' κ on those with the most common number of raters",
                  "Cohen's κ only when exactly two raters"):  # fmt: skip
        assert words in method, words


def test_alpha_of_a_grid_of_resampled_coincidences_is_each_one_alone() -> None:
    # The coincidences may carry any number of leading axes (…, C·C); each cell is its own α.
    rng = np.random.default_rng(17)
    counts = np.array([np.bincount(rng.integers(0, 3, size=int(rng.integers(1, 5))), minlength=3) for _ in range(9)])
    weights = rng.integers(0, 3, size=(2, 3, 9)).astype(float)  # 2 × 3 resamples, not square, so axes can't mix
    weights[0, 0] = 1.0  # one cell is the data as they are: its α is the package's
    grid = weights @ stats.unit_coincidences(counts)
    assert grid.shape == (2, 3, 9)
    for level in ("nominal", "ordinal"):
        alphas = stats.alpha_from_coincidences(grid, level)
        alone = [[stats.alpha_from_coincidences(grid[i, j], level) for j in range(3)] for i in range(2)]
        assert alphas.shape == (2, 3), level
        np.testing.assert_allclose(alphas, alone, rtol=1e-12, err_msg=level)
        reliability = np.full((4, 9), np.nan)
        for unit, unit_counts in enumerate(counts):
            labels = np.repeat(np.arange(3), unit_counts)
            reliability[: len(labels), unit] = labels
        expected = krippendorff.alpha(reliability_data=reliability, level_of_measurement=level)
        assert alphas[0, 0] == pytest.approx(expected, abs=1e-12), level


def test_batched_fleiss_kappa_depends_on_the_weights_ratios_and_is_nan_for_one_category_despite_rounding() -> None:
    counts = np.array([[2, 1, 0], [0, 3, 0], [1, 1, 1], [3, 0, 0]])
    # Weights 1, 2, 0, 3 are those rows repeated: statsmodels on the repeated table.
    expected = inter_rater.fleiss_kappa(np.repeat(counts, [1, 2, 0, 3], axis=0))
    weights = np.array([[1.0, 2.0, 0.0, 3.0], [0.1, 0.2, 0.0, 0.3], [10.0, 20.0, 0.0, 30.0]])
    assert stats.fleiss_from_counts(counts, weights) == pytest.approx([expected] * 3, abs=1e-12)
    # Every label in one category: chance agreement is total, so κ is undefined, even where rounding of fractional
    # weights leaves chance at 1 − 2.2e-16 or 1 + 4.4e-16 rather than exactly 1.
    same = np.array([[3, 0, 0]] * 3)
    weights = np.array([[0.358, 0.572, 0.322], [0.017, 0.813, 0.913], [1.0, 2.0, 3.0]])
    assert np.isnan(stats.fleiss_from_counts(same, weights)).all()


def test_undefined_agreement_is_nan_or_none_without_runtime_warnings() -> None:
    # Measures left undefined (one category, nothing weighted) say so by nan, not by numpy or statsmodels warnings.
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert math.isnan(stats.cohen_kappa(["a", "a"], ["a", "a"]))
        assert math.isnan(stats.cohen_kappa([], []))
        same = np.array([[2, 0, 0], [3, 0, 0]])
        assert np.isnan(stats.fleiss_from_counts(same, np.ones((2, 2)))).all()
        assert np.isnan(stats.fleiss_from_counts(np.array([[2, 0], [1, 1]]), np.zeros((1, 2)))).all()
        for level in ("nominal", "ordinal"):
            assert np.isnan(stats.alpha_from_coincidences(stats.unit_coincidences(same).sum(axis=0), level))
            assert np.isnan(stats.alpha_from_coincidences(np.zeros((4, 9)), level)).all()
        rows = [rating(item, rater, "left") for item in range(3) for rater in ("ann", "bob")]
        unanimous = stats.agreement(frame(rows), resamples=50)
        assert (unanimous.cohen_kappa, unanimous.fleiss_kappa, unanimous.krippendorff_alpha) == (None, None, None)


# --- the neuron as the unit ------------------------------------------------------------------------------------


def test_bootstrap_multiplicities_draw_every_cluster_and_exactly_the_resamples_asked_for() -> None:
    rng = np.random.default_rng(3)
    chunks = list(stats.multiplicities(7, 50, rng))
    # One chunk here: the draws are rng.integers(0, n, (resamples, n)), counted per cluster.
    expected = np.random.default_rng(3).integers(0, 7, size=(50, 7))
    assert len(chunks) == 1
    assert chunks[0].tolist() == [np.bincount(row, minlength=7).tolist() for row in expected]
    # Many clusters: several chunks, together exactly `resamples` rows, each a resample of all n clusters.
    weights = np.vstack(list(stats.multiplicities(1000, 5000, np.random.default_rng(4))))
    assert weights.shape == (5000, 1000) and weights.dtype == float
    assert (weights.sum(axis=1) == 1000).all()
    assert (weights.sum(axis=0) > 0).all()  # every cluster, the first included, is drawn somewhere
    assert len({row.tobytes() for row in weights}) == 5000


def test_cluster_keys_are_neurons_where_the_frame_names_them_else_items() -> None:
    rows = frame(
        [
            rating(1, "ann", "left", model="toy", neuron="0:1"),
            rating(2, "ann", "left", model="toy", neuron="0:1"),
            rating(3, "ann", "left", model="toy", neuron="0:2"),
        ]
    )
    keys = stats.cluster_keys(rows)
    assert keys.iloc[0] == keys.iloc[1] != keys.iloc[2]
    assert list(stats.cluster_keys(rows.drop(columns=["model", "neuron"]))) == ["1", "2", "3"]
    empty = stats.cluster_keys(rows.iloc[0:0])
    assert isinstance(empty, pd.Series) and len(empty) == 0


def neuron_rating(neuron: int, rater: str, a_wins: bool | None, a_left: bool = True) -> dict:
    left, right = (A, B) if a_left else (B, A)
    choice = "tie" if a_wins is None else ("left" if a_wins == a_left else "right")
    return rating(neuron, rater, choice, left=left, right=right, model="toy", neuron=f"0:{neuron}")


def test_a_neuron_with_one_decisive_rating_counts_and_two_neurons_get_a_ci() -> None:
    rows = [neuron_rating(0, "r0", True), neuron_rating(1, "r0", False), neuron_rating(1, "r1", None)]
    shares = stats.neuron_shares(frame(rows), A, B)
    assert list(shares["decisive"]) == [1, 1] and list(shares["share"]) == [1.0, 0.0]
    primary = stats.neuron_level(frame(rows), A, B, resamples=100, seed=4)
    assert (primary.n_units, primary.n_leaning_a, primary.n_leaning_b, primary.estimate) == (2, 1, 1, 0.5)
    assert primary.ci is not None and primary.p_value == pytest.approx(1.0) and primary.note is None
    assert (primary.arm_a, primary.arm_b, primary.unit, primary.resamples, primary.seed) == (A, B, "neuron", 100, 4)
    assert "Exact two-sided sign test over neurons" in primary.method and "(100 resamples, seed 4)" in primary.method
    balanced = stats.neuron_level(frame([neuron_rating(n, f"r{i}", i == 0) for n in range(2) for i in range(2)]), A, B)
    assert balanced.p_value is None and "no neuron leans either way" in balanced.note


def shuffled(ratings: pd.DataFrame, seed: int) -> pd.DataFrame:
    return ratings.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def test_the_analyses_do_not_depend_on_the_order_of_the_rows() -> None:
    rng = np.random.default_rng(6)
    rows = [
        neuron_rating(neuron, f"r{rater}", bool(rng.random() < 0.3 + 0.04 * neuron), a_left=bool(rng.random() < 0.5))
        for neuron in range(12)
        for rater in range(3)
    ]
    ratings = frame(rows)
    assert stats.neuron_level(shuffled(ratings, 1), A, B) == stats.neuron_level(ratings, A, B)
    three = frame([{**row, "neuron": f"0:{i % 9}"} for i, row in enumerate(unanimous_rows())])
    first = stats.bradley_terry(three, [A, B, C], resamples=200)
    assert stats.bradley_terry(shuffled(three, 2), [A, B, C], resamples=200) == first


def test_the_primary_analysis_uses_seed_0_unless_told() -> None:
    rng = np.random.default_rng(2)
    ratings = frame([neuron_rating(n, f"r{i}", bool(rng.random() < 0.6)) for n in range(15) for i in range(n % 4 + 1)])
    assert stats.neuron_level(ratings, A, B) == stats.neuron_level(ratings, A, B, seed=0)
    assert stats.neuron_level(ratings, A, B).ci != stats.neuron_level(ratings, A, B, seed=1).ci


def test_cluster_bootstrap_ci_follows_the_confidence_level() -> None:
    shares = np.random.default_rng(0).random(25)
    picks = np.random.default_rng(9).integers(0, 25, size=(500, 25))
    expected = np.quantile(shares[picks].mean(axis=1), [0.05, 0.95])
    assert stats.cluster_bootstrap_ci(shares, 500, np.random.default_rng(9), 0.9) == pytest.approx(expected)


def test_the_mixed_model_needs_ten_ratings_on_two_neurons_and_two_raters_for_a_rater_effect() -> None:
    # Exactly 10 decisive ratings on exactly 2 neurons by exactly 2 raters, A on both sides, A and B both winning.
    outcomes = [True, True, False, True, False, True, False, True, True, False]
    rows = [neuron_rating(i % 2, f"r{i // 5}", won, a_left=i % 3 == 0) for i, won in enumerate(outcomes)]
    fitted = stats.mixed_effects(frame(rows), A, B)
    assert (fitted.n_ratings, fitted.n_neurons, fitted.n_raters) == (10, 2, 2)
    assert fitted.win_probability is not None and fitted.rater_sd is not None and fitted.neuron_sd is not None
    assert fitted.position_log_odds is not None
    assert fitted.note is None or "rater" not in fitted.note
    nine = stats.mixed_effects(frame(rows[:9]), A, B)
    assert nine.win_probability is None and "9 decisive ratings on 2 neuron(s)" in nine.note
    assert (nine.arm_a, nine.arm_b, nine.method) == (A, B, fitted.method)
    nothing = stats.mixed_effects(frame([neuron_rating(0, "r0", None)]), A, B)
    assert (nothing.n_ratings, nothing.n_neurons, nothing.n_raters, nothing.converged) == (0, 0, 0, False)
    for words in ("Logistic mixed model of A winning", "BinomialBayesMixedGLM", "variational Bayes",
                  "random intercepts for neuron and rater", "A's position (±1/2)", "mean-field VB",
                  "The win probability is that of a typical neuron and rater"):  # fmt: skip
        assert words in fitted.method, words


def test_the_mixed_model_says_when_a_was_always_on_one_side_and_there_was_one_rater() -> None:
    rows = [neuron_rating(n, "r0", n % 3 > 0) for n in range(12)]  # A always on the left
    result = stats.mixed_effects(frame(rows), A, B)
    assert result.note == "arm A was always on the same side: no position effect; one rater: no rater random effect"
    assert (result.position_log_odds, result.position_log_odds_ci, result.rater_sd) == (None, None, None)
    assert result.win_probability is not None


def test_the_mixed_model_fits_through_numerical_warnings_and_refuses_a_one_sided_answer() -> None:
    # Two neurons that each always pick the same arm, 200 ratings each: the VB objective overflows in np.exp (a
    # RuntimeWarning inside statsmodels), and the fit still comes back. One neuron for each arm: the answer is 1/2,
    # yet VB says A wins with 0.95 one way round and B with 1.00 the other, so there is no estimate, and the note
    # says why.
    rows = [neuron_rating(n, f"r{i % 3}", n == 0, a_left=i % 2 == 0) for n in range(2) for i in range(200)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.mixed_effects(frame(rows), A, B)
    assert (result.n_ratings, result.n_neurons, result.n_raters, result.converged) == (400, 2, 3, False)
    assert (result.win_probability, result.position_log_odds, result.neuron_sd) == (None, None, None)
    assert result.note.startswith("the variational fit is unstable on these data (A over B gives 0.951, B over A")


def test_the_mixed_model_is_statsmodels_vb_fit_of_the_documented_model() -> None:
    rng = np.random.default_rng(12)
    rows = []
    for neuron in range(20):
        for rater in range(4):
            a_left = bool(rng.random() < 0.5)
            rows.append(neuron_rating(neuron, f"r{rater}", bool(rng.random() < (0.75 if a_left else 0.55)), a_left))
    ratings = frame(rows)
    result = stats.mixed_effects(ratings, A, B)
    # The model as its method says: "A won" on an intercept and A's side (±1/2), random intercepts per neuron and
    # per rater, statsmodels' variational Bayes; intervals posterior mean ± 1.96 posterior sd.
    neuron = pd.factorize(ratings["neuron"], sort=True)[0]
    rater = pd.factorize(ratings["rater"], sort=True)[0]
    a_left = (ratings["left_arm"] == A).to_numpy(dtype=float) - 0.5
    exog_vc = np.hstack([np.eye(20)[neuron], np.eye(4)[rater]])
    model = BinomialBayesMixedGLM(
        (ratings["winner_arm"] == A).to_numpy(dtype=float),
        np.column_stack([np.ones(len(ratings)), a_left]),
        exog_vc,
        np.array([0] * 20 + [1] * 4),
    )
    fit = model.fit_vb(fit_method="L-BFGS-B", rng=np.random.default_rng(0))
    z = scipy_stats.norm.ppf(0.975)
    mean, sd = fit.fe_mean, fit.fe_sd
    assert result.win_probability == pytest.approx(scipy_special.expit(mean[0]), abs=1e-6)
    assert result.win_probability_ci == pytest.approx(
        (scipy_special.expit(mean[0] - z * sd[0]), scipy_special.expit(mean[0] + z * sd[0])), abs=1e-6
    )
    assert result.position_log_odds == pytest.approx(mean[1], abs=1e-6)
    assert result.position_log_odds_ci == pytest.approx((mean[1] - z * sd[1], mean[1] + z * sd[1]), abs=1e-6)
    assert (result.neuron_sd, result.rater_sd) == pytest.approx(tuple(np.exp(fit.vcp_mean)), abs=1e-6)


def test_the_neuron_level_analyses_say_which_column_they_need_and_which_they_were_given() -> None:
    ratings = frame([rating(1, "ann", "left")]).drop(columns=["neuron"])
    message = (
        "the neuron-level analysis needs a `neuron` column in the ratings (as in a study export); these ratings "
        "have only: item_id, rater, choice, left_arm, right_arm, winner_arm, is_gold, gold_choice"
    )
    for analysis in (stats.neuron_shares, stats.neuron_level, stats.mixed_effects):
        with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
            analysis(ratings, A, B)


def test_neuron_shares_count_wins_as_integers_and_keep_neurons_with_a_missing_key_part() -> None:
    # Neuron 1's model is unknown (an empty cell in an imported file): it is still a neuron of its own.
    rows = [neuron_rating(0, "r0", True), neuron_rating(0, "r1", False), neuron_rating(0, "r2", True)]
    rows += [{**neuron_rating(1, rater, False), "model": None} for rater in ("r0", "r1")]
    shares = stats.neuron_shares(frame(rows), A, B)
    assert list(shares["neuron"]) == ["0:0", "0:1"]
    assert (list(shares["wins_a"]), list(shares["wins_b"]), list(shares["decisive"])) == ([2, 0], [1, 2], [3, 2])
    assert all(shares[column].dtype.kind == "i" for column in ("wins_a", "wins_b", "decisive"))
    primary = stats.neuron_level(frame(rows), A, B, resamples=50)
    assert (primary.n_units, primary.n_decisive_ratings, primary.estimate) == (2, 5, pytest.approx(1 / 3))


def test_the_neuron_level_method_and_notes_read_as_written() -> None:
    primary = stats.neuron_level(frame([neuron_rating(n, "r0", n == 0) for n in range(2)]), A, B, resamples=50)
    assert primary.method == (
        "Exact two-sided sign test over neurons that lean one way (binomial, p = 1/2); 95% percentile bootstrap CI "
        "of the mean per-neuron share, resampling neurons (50 resamples, seed 0)."
    )
    balanced = stats.neuron_level(frame([neuron_rating(n, f"r{i}", i == 0) for n in range(2) for i in range(2)]), A, B)
    assert balanced.note == "no neuron leans either way (every share is exactly 1/2): the sign test has nothing to test"
    one_way = stats.mixed_effects(frame([neuron_rating(n % 3, f"r{n % 2}", True, n % 2 == 0) for n in range(12)]), A, B)
    assert one_way.note == "every decisive rating went the same way: the log-odds are unbounded"
    assert one_way.win_probability is None and one_way.n_ratings == 12


# --- Bradley–Terry -------------------------------------------------------------------------------------------------


def unanimous_rows() -> list[dict]:
    """Nine neurons, each with the same five comparisons of A, B, C: A twice over B, B over C, C over A, A over C."""
    comparisons = [(A, B), (A, B), (B, C), (C, A), (A, C)]
    return [
        rating(neuron * 10 + i, "sim", "left", left=winner, right=loser, model="toy", neuron=f"0:{neuron}")
        for neuron in range(9)
        for i, (winner, loser) in enumerate(comparisons)
    ]


def test_bradley_terry_needs_two_arms_and_its_prior_is_virtual_wins_each_way() -> None:
    with pytest.raises(InputError, match=r"^Bradley–Terry needs at least two arms$"):
        stats.bradley_terry_fit([A], [A], [A])
    fit = stats.bradley_terry_fit([A, A, B], [B, C, C], [A, B, C])
    assert fit.prior == stats.BT_PRIOR
    with_prior = fit.wins + stats.BT_PRIOR * (1 - np.eye(3))
    expected = choix.ilsr_pairwise_dense(with_prior, tol=1e-12, max_iter=10_000)
    assert fit.strengths == pytest.approx(expected - expected.mean(), abs=1e-9)
    single = np.array([[0, 2], [1, 0]])
    assert np.ndim(stats.strongly_connected(single)) == 0 and bool(stats.strongly_connected(single))


def test_identical_neurons_give_a_bootstrap_interval_that_is_the_estimate_itself() -> None:
    result = stats.bradley_terry(frame(unanimous_rows()), [A, B, C], resamples=200)
    assert result.bootstrap_prior_share == 0.0 and result.prior == 0.0 and result.warning is None
    for row in result.arms:
        assert row.ci == pytest.approx((row.strength, row.strength), abs=1e-7)
    # A perfect cycle: every arm equally strong, every interval the single point 0, so they all share rank 1.
    cycle = [
        rating(neuron * 10 + i, "sim", "left", left=winner, right=loser, model="toy", neuron=f"0:{neuron}")
        for neuron in range(5)
        for i, (winner, loser) in enumerate([(A, B), (B, C), (C, A)])
    ]
    tied = stats.bradley_terry(frame(cycle), [A, B, C], resamples=100)
    assert [(row.strength, row.ci, row.rank) for row in tied.arms] == [(pytest.approx(0, abs=1e-12), (0.0, 0.0), 1)] * 3


def test_bradley_terry_bootstrap_of_two_opposite_neurons_by_hand() -> None:
    # Neuron 0: A beat B; neuron 1: B beat A. A resample of both neurons is 1–1 (strengths equal, probability 1/2);
    # one neuron twice is 2–0, not connected, so it gets the prior: 2.5 to 0.5 virtual wins, log-strengths ±log(5)/2.
    rows = [
        rating(1, "ann", "left", left=A, right=B, model="toy", neuron="0:0"),
        rating(2, "ann", "right", left=A, right=B, model="toy", neuron="0:1"),
        rating(3, "ann", "tie", left=A, right=B, model="toy", neuron="0:1"),
        rating(4, "ann", "both_bad", left=B, right=A, model="toy", neuron="0:1"),
    ]
    result = stats.bradley_terry(frame(rows), [A, B], resamples=2000, seed=3)
    half = math.log(5) / 2
    assert result.ci_method == "bootstrap over 2 neurons"
    assert result.arms[0].ci == pytest.approx((-half, half), abs=1e-6)
    assert result.differences[0].ci == pytest.approx((-2 * half, 2 * half), abs=1e-6)
    assert result.bootstrap_prior_share == pytest.approx(0.5, abs=0.05)
    assert [(row.rank, row.wins, row.losses) for row in result.arms] == [(1, 1.0, 1.0), (1, 1.0, 1.0)]
    difference = result.differences[0]
    assert (difference.wins_a, difference.wins_b, difference.ties, difference.both_bad) == (1, 1, 1, 1)
    assert "(2000 resamples, seed 3;" in result.method


def test_fisher_intervals_are_the_estimate_plus_minus_z_standard_errors() -> None:
    rows = frame(unanimous_rows())
    result = stats.bradley_terry(rows, [A, B, C], resamples=100)
    compared = stats.arm_ratings(rows)
    fit = stats.bradley_terry_fit(list(compared["left_arm"]), list(compared["right_arm"]), [A, B, C])
    z = scipy_stats.norm.ppf(0.975)
    for i, row in enumerate(result.arms):
        error = math.sqrt(fit.covariance[i, i])
        assert row.fisher_ci == pytest.approx((row.strength - z * error, row.strength + z * error))
    assert [(row.wins, row.losses) for row in result.arms] == [(27.0, 9.0), (9.0, 18.0), (9.0, 18.0)]
    for difference, (i, j) in zip(result.differences, itertools.combinations(range(3), 2), strict=True):
        variance = fit.covariance[i, i] + fit.covariance[j, j] - 2 * fit.covariance[i, j]
        half = z * math.sqrt(variance)
        assert difference.fisher_ci == pytest.approx((difference.difference - half, difference.difference + half))
    pairs = [(row.arm_a, row.arm_b, row.wins_a, row.wins_b) for row in result.differences]
    assert pairs == [(A, B, 18, 0), (A, C, 9, 9), (B, C, 9, 0)]


def test_bradley_terry_leaves_out_arms_it_was_not_given_and_names_arms_without_a_win_or_a_loss() -> None:
    rows = [*unanimous_rows(), rating(999, "sim", "left", left=A, right="avhs", model="toy", neuron="0:1")]
    assert stats.bradley_terry(frame(rows), [A, B, C], resamples=50) == stats.bradley_terry(
        frame(rows[:-1]), [A, B, C], resamples=50
    )
    chain = [rating(1, "ann", "left", left=A, right=B), rating(2, "ann", "left", left=B, right=C),
             rating(3, "ann", "left", left=A, right=C)]  # fmt: skip
    warning = stats.bradley_terry(frame(chain), [A, B, C]).warning
    assert "; no win or no loss: summary, highlight): " in warning and "per pair of arms" in warning
    two_cycles = [
        rating(1, "ann", "left", left=A, right=B),
        rating(2, "ann", "left", left=B, right=A),
        rating(3, "ann", "left", left=C, right="avhs"),
        rating(4, "ann", "left", left="avhs", right=C),
    ]
    warning = stats.bradley_terry(frame(two_cycles), [A, B, C, "avhs"]).warning
    assert "not strongly connected" in warning and "no win or no loss" not in warning
    empty = stats.bradley_terry(frame(chain).iloc[0:0], [A, B, C])
    assert empty.bootstrap_prior_share is None
    assert empty.ci_method == "Fisher information: 0 neuron(s) with a decisive rating, too few to resample"
    one = stats.bradley_terry(frame(chain).assign(neuron="0:0"), [A, B, C])
    assert one.ci_method.startswith("Fisher information: 1 neuron(s)") and one.bootstrap_prior_share is None


def test_the_bradley_terry_method_says_what_was_fitted() -> None:
    method = stats.bradley_terry(frame(unanimous_rows()), [A, B, C], resamples=100, seed=2).method
    assert "(100 resamples, seed 2;" in method
    for words in ("Bradley–Terry maximum likelihood", "choix's iterative Luce spectral ranking",
                  "Hunter's MM for the bootstrap", "Ties and both-bad are not modelled", "(no Davidson term)",
                  "a resample whose wins do not connect the arms gets the prior", "`fisher_ci` assumes independent",
                  "`rank`: 1 + the number of arms whose interval lies wholly above"):  # fmt: skip
        assert words in method, words


# --- humans against automated scores -------------------------------------------------------------------------------


def test_automated_columns_are_named_per_side_and_need_both_sides() -> None:
    with pytest.raises(ValueError, match=r"^no automated column for kind 'rating' and side 'left'$"):
        stats.automated_column("rating", "x", "left")
    assert stats.automated_kinds(["score:lonely:right", "score:alone:left", "similarity:pair:left",
                                  "similarity:pair:right"]) == [("similarity", "pair")]  # fmt: skip


def kappa_of(rows: list[dict]) -> stats.ScoreKappa:
    return stats.automated_comparisons(frame(rows), [A, B])[0].kappa


def test_score_kappa_says_why_it_is_missing_and_counts_equal_scores_of_either_majority() -> None:
    higher_a, higher_b, equal = (0.6, 0.2), (0.2, 0.6), (0.4, 0.4)
    none_usable = kappa_of([scored(1, "ann", "tie", A, B, higher_a), scored(2, "ann", "left", A, B, equal)])
    assert (none_usable.kappa, none_usable.n_items) == (None, 0)
    assert none_usable.note == "no item has a decisive human majority and two different scores"
    # The humans always favour A while the scores go both ways: κ says nothing.
    one_sided = kappa_of([scored(i, "ann", "left", A, B, higher_a if i % 2 else higher_b) for i in range(6)])
    assert one_sided.kappa is None and one_sided.table == ((3, 3), (0, 0)) and "by construction" in one_sided.note
    rows = [scored(i, "ann", "left" if i % 2 else "right", A, B, higher_a if i < 3 else higher_b) for i in range(6)]
    rows += [scored(10, "ann", "left", A, B, equal), scored(11, "ann", "right", A, B, equal)]  # majority A, B
    counted = kappa_of(rows)
    assert (counted.n_items, counted.n_equal_scores, counted.note) == (6, 2, None)
    # Rows humans A, B; columns scores A, B: (A, A) items 1; (A, B) 3, 5; (B, A) 0, 2; (B, B) 4.
    assert counted.table == ((1, 2), (2, 1))
    # p_o = 2/6, p_e = (3·3 + 3·3)/36 = 1/2: κ = (1/3 − 1/2)/(1/2) = −1/3.
    assert counted.kappa == pytest.approx(-1 / 3)


def logistic_rows(items: int, seed: int, raters: int = 3, neurons: int | None = None) -> list[dict]:
    """Ratings whose A-won odds rise with the score difference A − B; item i on neuron i (mod `neurons`)."""
    rng = np.random.default_rng(seed)
    rows = []
    for item in range(items):
        difference = float(rng.normal())
        left, right = (A, B) if item % 2 else (B, A)
        scores = (difference, 0.0) if left == A else (0.0, difference)
        neuron = f"0:{item % (neurons or items)}"
        for rater in range(raters):
            a_wins = rng.random() < 1 / (1 + math.exp(-(0.2 + 1.5 * difference)))
            choice = "left" if (left == A) == a_wins else "right"
            rows.append(scored(item, f"r{rater}", choice, left, right, scores) | {"neuron": neuron})
    return rows


def logistic_of(rows: list[dict]) -> stats.ScoreLogistic:
    return stats.automated_comparisons(frame(rows), [A, B])[0].logistic


def reference_logit(rows: list[dict], clustered: bool):
    ratings = frame(rows)
    coded = stats.relative_outcomes(ratings, [A, B])
    left, right = coded[f"{SIM}:left"], coded[f"{SIM}:right"]
    x = left.where(coded["a_left"], right) - right.where(coded["a_left"], left)
    model = Logit((coded["code"] == 1).to_numpy(dtype=float), np.column_stack([np.ones(len(x)), x]))
    if not clustered:
        return model.fit(disp=0)
    groups = pd.factorize(coded["neuron"], sort=True)[0]
    return model.fit(disp=0, cov_type="cluster", cov_kwds={"groups": groups})


def test_the_logistic_slope_has_neuron_clustered_errors_from_20_neurons_on() -> None:
    rows = logistic_rows(20, seed=1)
    logistic = logistic_of(rows)
    fit = reference_logit(rows, clustered=True)
    assert (logistic.n_ratings, logistic.n_neurons, logistic.note) == (60, 20, None)
    assert (logistic.intercept, logistic.slope) == pytest.approx(tuple(fit.params), abs=1e-6)
    assert logistic.slope_ci == pytest.approx(tuple(fit.conf_int(alpha=0.05)[1]), abs=1e-6)
    assert logistic.p_value == pytest.approx(fit.pvalues[1], abs=1e-9)
    few = logistic_of(logistic_rows(20, seed=1, neurons=2))
    assert few.n_neurons == 2 and few.note == "2 neurons: clustered standard errors are unreliable below 20"
    nineteen = logistic_of(logistic_rows(19, seed=1))
    assert nineteen.note == "19 neurons: clustered standard errors are unreliable below 20"


def test_one_neuron_gets_plain_standard_errors_and_says_so() -> None:
    rows = logistic_rows(12, seed=2, neurons=1)
    logistic = logistic_of(rows)
    fit = reference_logit(rows, clustered=False)
    assert (logistic.n_neurons, logistic.note) == (1, "one neuron: standard errors not clustered")
    assert logistic.slope_ci == pytest.approx(tuple(fit.conf_int(alpha=0.05)[1]), abs=1e-6)


def test_the_logistic_regression_needs_five_mixed_ratings_with_different_differences() -> None:
    def rows_of(pairs: list[tuple[float, str]]) -> list[dict]:
        return [scored(i, "ann", choice, A, B, (score, 0.0)) for i, (score, choice) in enumerate(pairs)]

    five = [(0.1, "left"), (0.5, "right"), (0.2, "left"), (0.9, "left"), (0.3, "right")]
    assert logistic_of(rows_of(five)).slope is not None
    four = logistic_of(rows_of(five[:4]))
    assert (four.slope, four.n_ratings, four.n_neurons) == (None, 4, 4)
    assert four.note == "4 decisive ratings with both scores: the regression needs 5"
    assert four.method == stats.automated.LOGISTIC_METHOD
    nothing = logistic_of([scored(1, "ann", "tie", A, B, (0.1, 0.0))])
    assert (nothing.n_ratings, nothing.n_neurons) == (0, 0)
    same_way = logistic_of(rows_of([(s, "left") for s, _ in five]))
    assert same_way.note == "every decisive rating went the same way: the log-odds are unbounded"
    same_difference = logistic_of(rows_of([(0.4, choice) for _, choice in five]))
    assert same_difference.note == "every rating has the same score difference: no slope to estimate"
    # Quasi-complete separation: A's wins and losses meet at one difference, 0.5, and do not overlap.
    touching = logistic_of(rows_of([(0.1, "right"), (0.3, "right"), (0.5, "right"), (0.5, "left"), (0.8, "left")]))
    assert touching.slope is None and touching.note.startswith("perfect separation: a threshold on the score")
    assert "splits A's wins from B's" in touching.note


def test_arm_means_count_each_explanation_once_whichever_side_it_was_shown_on() -> None:
    column = {"left": f"{SIM}:left", "right": f"{SIM}:right"}

    def shown(item: int, left: tuple[str, float, float], right: tuple[str, float, float]) -> dict:
        (left_arm, left_id, left_value), (right_arm, right_id, right_value) = left, right
        row = rating(item, "ann", "left", left=left_arm, right=right_arm)
        return row | {"left_explanation_id": left_id, "right_explanation_id": right_id,
                      column["left"]: left_value, column["right"]: right_value}  # fmt: skip

    # A's explanation 1 (0.9) is shown in three items, once on the right with a float id; A's explanation 2 (0.1)
    # once. Per explanation A's mean is 0.5; per item it would be 0.7.
    rows = [
        shown(1, (A, 1, 0.9), (B, 3, 0.2)),
        shown(2, (A, 1, 0.9), (B, 4, 0.4)),
        shown(3, (B, 3, 0.2), (A, 1.0, 0.9)),
        shown(4, (A, 2, 0.1), (B, 4, 0.4)),
    ]
    means = stats.arm_mean_scores(frame(rows), "score", "hf:my-model·all_at_once")
    assert means == {A: pytest.approx(0.5), B: pytest.approx(0.3)}
    # Without explanation ids every item's side is an explanation of its own.
    plain = frame(rows).drop(columns=["left_explanation_id", "right_explanation_id"])
    assert stats.arm_mean_scores(plain, "score", "hf:my-model·all_at_once") == {
        A: pytest.approx(0.7),
        B: pytest.approx((0.2 + 0.4 + 0.2 + 0.4) / 4),
    }


def test_the_rank_correlation_needs_three_arms_with_strengths_and_scores() -> None:
    arms = [A, B, C, "avhs"]
    means = {A: 0.9, B: 0.5, C: 0.1, "avhs": 0.3}
    strengths = {A: 1.0, B: -0.2, C: -0.9, "avhs": 0.3}
    result = stats.score_rank_correlation(means, strengths, arms)
    expected = scipy_stats.kendalltau([1.0, -0.2, -0.9, 0.3], [0.9, 0.5, 0.1, 0.3])
    assert (result.n_arms, result.tau, result.p_value, result.note) == (
        4, pytest.approx(expected.statistic), pytest.approx(expected.pvalue), None
    )  # fmt: skip
    assert [(row.arm, row.strength, row.mean_score) for row in result.arms] == [
        (arm, strengths[arm], means[arm]) for arm in arms
    ]
    no_strengths = stats.score_rank_correlation(means, None, arms)
    assert (no_strengths.n_arms, no_strengths.tau, no_strengths.arms) == (4, None, ())
    assert no_strengths.note == "a rank correlation of arms needs at least 3 arms"
    two = stats.score_rank_correlation(means, strengths, [A, B])
    assert (two.n_arms, two.arms) == (2, ())
    # avhs has a strength but no scores, C a score but no strength: two arms have both.
    partial = stats.score_rank_correlation({A: 0.9, B: 0.5, C: 0.1}, {A: 1.0, B: 0.2, "avhs": 0.1}, arms)
    assert (partial.n_arms, partial.tau, [row.arm for row in partial.arms]) == (2, None, [A, B])
    assert partial.note == "2 arm(s) have scores: τ needs 3"
    flat = stats.score_rank_correlation({A: 0.5, B: 0.5, C: 0.5}, {A: 1.0, B: 0.2, C: 0.1}, [A, B, C])
    assert (flat.tau, flat.p_value) == (None, None)
    assert flat.note == "τ is undefined: the strengths or the mean scores are all equal"


# --- the whole study -----------------------------------------------------------------------------------------------

SUMMARY_KEYS = [
    "arms", "n_ratings", "n_gold_ratings", "n_raters", "wins", "ties", "both_bad", "primary_pair", "primary",
    "secondary", "neuron_pairs", "multiple_pairs", "descriptive", "win_rate", "wilson_ci", "binomial_p", "pairs",
    "left_win_rate", "position_bias", "per_rater", "agreement", "agreement_method", "bradley_terry", "gold",
    "human_vs_automated", "automated",
]  # fmt: skip


def test_the_summary_counts_and_keys_of_a_small_study() -> None:
    ratings = small_study().assign(left_score=[0.9, 0.1, 0.5, 0.3, 0.8, 0.2, 0.4, 0.6],
                                   right_score=[0.1, 0.4, 0.2, 0.3, 0.4, 0.6, 0.1, 0.1])  # fmt: skip
    summary = stats.summary_from_ratings(ratings, [A, B], min_gold_accuracy=0.0)
    as_json = summary.to_json()
    assert list(as_json) == SUMMARY_KEYS
    assert (as_json["n_ratings"], as_json["n_gold_ratings"], as_json["n_raters"]) == (7, 1, 2)
    assert (as_json["wins"], as_json["ties"], as_json["both_bad"]) == ({A: 4, B: 1}, 1, 1)
    assert as_json["multiple_pairs"] is None and as_json["descriptive"] == stats.RATING_UNIT_NOTE
    assert as_json["human_vs_automated"] == stats.human_vs_automated(ratings).to_json()
    assert as_json["gold"] == {
        "per_rater": [row.to_json() for row in stats.gold_accuracy(ratings)],
        "min_accuracy": 0.0,
        "excluded_raters": [],
    }
    with pytest.raises(InputError, match=r"^a study summary needs at least two arms$"):
        stats.summary_from_ratings(ratings, [A])


def three_arm_study(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for item in range(36):
        left, right = (str(arm) for arm in rng.choice([A, B, C], size=2, replace=False))
        for rater in ("ann", "bob"):
            favoured = A if rng.random() < 0.6 else (B if rng.random() < 0.5 else C)
            choice = "left" if favoured == left else ("right" if favoured == right else "tie")
            rows.append(rating(item, rater, choice, left=left, right=right, model="toy", neuron=f"0:{item % 12}"))
    return frame(rows)


def test_every_part_of_the_summary_uses_the_summarys_seed_and_arm_order() -> None:
    ratings, arms = three_arm_study(5), [C, A, B]  # not the order of the names
    summary = stats.summary_from_ratings(ratings, arms, seed=3)
    pairs = [stats.neuron_level(ratings, a, b, seed=3) for a, b in itertools.combinations(arms, 2)]
    adjusted = stats.holm([pair.p_value for pair in pairs])
    assert [pair.p_value for pair in pairs] != [None] * 3
    assert summary.neuron_pairs == tuple(
        stats.neuron_level(ratings, a, b, seed=3).__class__(**{**vars(pair), "p_value_holm": p})
        for pair, p, (a, b) in zip(pairs, adjusted, itertools.combinations(arms, 2), strict=True)
    )
    assert summary.secondary == stats.mixed_effects(ratings, C, A, seed=3)
    assert summary.agreement == stats.agreement(ratings, arms, seed=3)
    assert summary.agreement != stats.agreement(ratings, None, seed=3)
    assert summary.agreement_method == stats.agreement_method(seed=3)
    assert summary.bradley_terry == stats.bradley_terry(ratings, arms, seed=3)
    assert "Holm-adjusted over the study's pairs" in summary.to_json()["multiple_pairs"]
    assert stats.summary_from_ratings(ratings, arms) == stats.summary_from_ratings(ratings, arms, seed=0)


def test_item_aggregates_count_every_choice_and_average_what_the_ratings_have() -> None:
    items = pd.DataFrame({"item_id": [1, 2, 3]})
    ratings = frame([rating(1, "ann", "left"), rating(1, "bob", "tie"), rating(2, "ann", "right")])
    plain = stats.item_aggregates(items, ratings).set_index("item_id")
    assert plain[["n_left", "n_right", "n_tie", "n_both_bad", "n_ratings"]].to_numpy().tolist() == [
        [1, 0, 1, 0, 2], [0, 1, 0, 0, 1], [0, 0, 0, 0, 0]
    ]  # fmt: skip
    assert all(plain[column].dtype.kind == "i" for column in ("n_left", "n_both_bad", "n_ratings"))
    assert plain["mean_confidence"].isna().all() and plain["mean_seconds"].isna().all()
    timed = stats.item_aggregates(items, ratings.assign(seconds=[4.0, 8.0, 3.0], confidence=[1, 2, 5]))
    assert timed.set_index("item_id")["mean_seconds"].tolist()[:2] == [6.0, 3.0]
    assert timed.set_index("item_id")["mean_confidence"].tolist()[:2] == [1.5, 5.0]
