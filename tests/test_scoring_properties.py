"""Exact values and boundaries of the scoring formulas (core/scoring.py) and the scorers' metrics and excerpt choice
(core/scorers/base.py), each computed by hand or by an independent reference (scipy), so that a changed comparison,
constant or operand shows. Fast and pure: no model, no database."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from core import scoring
from core.errors import InputError
from core.records import ActivationRecord, NeuronId, NeuronRecord, NeuronStats, ScoringRecords
from core.scorers.base import (
    MissingExcerpts,
    ScorerOptions,
    _spread,
    activating_threshold,
    auroc,
    balanced_accuracy,
    classified_excerpts,
)


def record(*activations: float) -> ActivationRecord:
    return ActivationRecord(tuple(f" t{i}" for i in range(len(activations))), activations)


# --- correlation, R², absdev ---------------------------------------------------------------------------------------


def test_correlation_exact_on_a_hand_fixture():
    # y − ȳ = [−1.5, −0.5, 0.5, 1.5], ŷ − ŷ̄ = [−0.5, −1.5, 1.5, 0.5]: Σ = 3, Σdy² = Σdŷ² = 5, so r = 3/5.
    assert scoring.correlation([1, 2, 3, 4], [2, 1, 4, 3]) == pytest.approx(0.6, abs=1e-15)
    assert scoring.correlation([1, 2, 3, 4], [3, 4, 1, 2]) == pytest.approx(-0.6, abs=1e-15)
    # Two values are enough (the minimum), and the sign follows the slope.
    assert scoring.correlation([1, 2], [3, 5]) == pytest.approx(1.0)
    assert scoring.correlation([1, 2], [5, 3]) == pytest.approx(-1.0)
    # Only one side constant is enough to make it undefined.
    assert scoring.correlation([1, 2], [4, 4]) is None
    assert scoring.correlation([4, 4], [1, 2]) is None


def test_correlation_never_leaves_minus_one_to_one():
    # Collinear values whose rounding could push |r| a hair past 1: always clipped.
    rng = np.random.default_rng(1)
    for _ in range(20):
        y = rng.normal(size=7) * 1e3 + 1e6
        assert scoring.correlation(y, 3.7 * y + 0.1) <= 1.0
        assert scoring.correlation(y, -3.7 * y + 0.1) >= -1.0
    assert scoring.correlation([0.1, 0.2, 0.3], [0.1, 0.2, 0.3]) == 1.0
    assert scoring.correlation([0.1, 0.2, 0.3], [-0.1, -0.2, -0.3]) == -1.0


def test_rsquared_and_absdev_one_value_and_exact():
    # One value is enough for R² and absdev: 1 − (2−1)²/2² and 1 − |2−1|/|2|.
    assert scoring.rsquared([2], [1]) == 0.75
    assert scoring.absdev([2], [1]) == 0.5
    assert scoring.rsquared([], []) is None and scoring.absdev([], []) is None
    # Negative true values: the scale is mean(y²) and mean|y|, not mean(y).
    assert scoring.rsquared([-2, 2], [0, 2]) == pytest.approx(1 - (4 / 2) / 4)
    assert scoring.absdev([-2, 2], [0, 2]) == pytest.approx(1 - (2 / 2) / 2)
    assert scoring.absdev([-1, 1], [1, 1]) == pytest.approx(0.0)


def test_non_finite_true_activations_are_named():
    with pytest.raises(InputError, match=r"^true activations hold a non-finite value at position 2;"):
        scoring.correlation([1, 2, math.inf], [1, 2, 3])
    with pytest.raises(InputError, match=r"^predictions hold a non-finite value at position 0;"):
        scoring.absdev([1, 2, 3], [math.nan, 2, 3])


def test_score_records_per_excerpt_values():
    records = [record(0, 2, 4), record(1, 3)]
    predictions = [[0, 1, 2], [3, 1]]
    scores = scoring.score_records(records, predictions)
    first, second = scores.per_excerpt
    # errors [0, 1, 2]: mean² 5/3 over mean(y²) 20/3; mean| | 1 over mean|y| 2.
    assert first == {"index": 0, "n_tokens": 3, "score": pytest.approx(1.0),
                     "rsquared": pytest.approx(1 - 5 / 3 / (20 / 3)), "absdev": pytest.approx(1 - 1 / 2)}  # fmt: skip
    assert second["index"] == 1 and second["n_tokens"] == 2 and second["score"] == pytest.approx(-1.0)
    pooled_true, pooled_predicted = [0, 2, 4, 1, 3], [0, 1, 2, 3, 1]
    assert scores.score == pytest.approx(stats.pearsonr(pooled_true, pooled_predicted).statistic)
    assert scores.rsquared == pytest.approx(scoring.rsquared(pooled_true, pooled_predicted))
    assert scores.absdev == pytest.approx(scoring.absdev(pooled_true, pooled_predicted))


# --- calibration -----------------------------------------------------------------------------------------------------


def test_fit_calibration_exact():
    # y = 2·EV − 2 exactly, EVs with a non-zero mean so that the intercept uses it.
    assert scoring.fit_calibration([record(0, 2), record(4)], [[1, 2], [3]]) == (
        pytest.approx(2.0),
        pytest.approx(-2.0),
    )
    # Least squares by hand: EV [0, 1, 2], y [0, 0, 3]: slope = Σdx·dy / Σdx² = 3/2, b = 1 − 1.5 = −0.5.
    assert scoring.fit_calibration([record(0, 0, 3)], [[0, 1, 2]]) == (pytest.approx(1.5), pytest.approx(-0.5))
    assert scoring.apply_calibration([[0, 1], [2]], 1.5, -0.5) == [[-0.5, 1.0], [2.5]]


def test_calibrated_score_keeps_the_raw_sign_without_a_slope_to_read():
    records = [record(0, 4, 1, 0)]
    evs = [[0.5, 3.0, 2.0, 0.0]]
    raw = scoring.score_records(records, evs).score
    # Read back from constant calibrated values: slope 0, so the raw correlation is kept (not flipped, not dropped).
    kept = scoring.score_calibrated(records, evs, [[1.0] * 4])
    assert kept.score == raw and kept.raw_score == raw and raw > 0
    # A negative slope given explicitly flips it even though the calibrated values would say otherwise.
    flipped = scoring.score_calibrated(records, evs, scoring.apply_calibration(evs, 2.0, 0.0), slope=-0.1)
    assert flipped.score == pytest.approx(-raw)
    # A single token: no slope can be read (fewer than 2 values), so the raw (undefined) score is kept.
    single = scoring.score_calibrated([record(3)], [[1.0]], [[-1.0]])
    assert single.score is None and single.rsquared == pytest.approx(1 - 16 / 9)


def test_slope_sign_read_back():
    evs = [[0.0, 1.0], [2.0]]
    assert scoring._slope_sign(evs, scoring.apply_calibration(evs, 3.0, 1.0)) == 1.0
    assert scoring._slope_sign(evs, scoring.apply_calibration(evs, -3.0, 1.0)) == -1.0
    assert scoring._slope_sign(evs, [[5.0, 5.0], [5.0]]) == 0.0
    assert scoring._slope_sign([[1.0]], [[2.0]]) == 0.0
    assert scoring._slope_sign([[1.0, 2.0]], [[2.0]]) == 0.0  # misaligned: nothing to read
    assert scoring._slope_sign([], []) == 0.0


# --- bootstrap and paired differences --------------------------------------------------------------------------------


def reference_interval(values: list[float], n_resamples: int, level: float, seed: int) -> tuple[float, float]:
    """The percentile bootstrap written out plainly: resample indices with the seeded generator, take quantiles."""
    rng = np.random.default_rng(seed)
    data = np.asarray(values, dtype=float)
    means = data[rng.integers(0, data.size, size=(n_resamples, data.size))].mean(axis=1)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


@pytest.mark.parametrize(("level", "seed"), [(0.95, 0), (0.5, 3), (0.8, 11)])
def test_bootstrap_interval_is_the_percentile_bootstrap(level: float, seed: int):
    values = [0.1, 0.9, 0.4, 0.35, 0.8, 0.05, 0.6]
    estimate = scoring.bootstrap_ci(values, n_resamples=300, level=level, seed=seed)
    assert (estimate.lo, estimate.hi) == pytest.approx(reference_interval(values, 300, level, seed), abs=1e-12)
    assert estimate.mean == pytest.approx(np.mean(values)) and estimate.n == 7
    # Chunked resampling (a large sample) gives the same as one draw.
    big = list(np.random.default_rng(4).normal(size=3000))
    assert scoring.bootstrap_ci(big, n_resamples=400, level=level, seed=seed)[1:3] == pytest.approx(
        reference_interval(big, 400, level, seed), abs=1e-12
    )


def test_bootstrap_settings_boundaries():
    assert scoring.bootstrap_ci([1.0, 3.0], n_resamples=1).n == 2  # one resample is allowed
    for bad in ({"n_resamples": 0}, {"level": 0.0}, {"level": 1.0}):
        with pytest.raises(InputError):
            scoring.bootstrap_ci([1.0, 2.0], **bad)
        with pytest.raises(InputError):
            scoring.paired_difference({"a": 1.0}, {"a": 0.0}, **bad)
    # A constant sample has a zero-width interval at its value.
    assert scoring.bootstrap_ci([2.0, 2.0, 2.0], n_resamples=50)[:3] == (2.0, 2.0, 2.0)


def test_paired_difference_thresholds_of_n():
    def pairs(n: int) -> tuple[dict, dict]:
        return {i: float(i) + (i % 3) for i in range(n)}, {i: float(i) for i in range(n)}

    one = scoring.paired_difference(*pairs(1))
    assert (one["n"], one["mean_diff"], one["ci_lo"], one["p_value"]) == (1, 0.0, None, None)
    two = scoring.paired_difference(*pairs(2), n_resamples=200)
    assert two["ci_lo"] is not None and two["p_value"] is None
    assert (two["ci_lo"], two["ci_hi"]) == pytest.approx(reference_interval([0.0, 1.0], 200, 0.95, 0))
    assert scoring.paired_difference(*pairs(4))["p_value"] is None
    a, b = pairs(5)
    five = scoring.paired_difference(a, b, n_resamples=200, level=0.8, seed=2)
    differences = [a[k] - b[k] for k in range(5)]
    assert five["p_value"] == pytest.approx(stats.wilcoxon(differences).pvalue)
    assert five["mean_diff"] == pytest.approx(np.mean(differences))
    assert (five["ci_lo"], five["ci_hi"]) == pytest.approx(reference_interval(differences, 200, 0.8, 2))


def test_paired_difference_orders_keys_the_same_whatever_the_insertion_order():
    a = {f"k{i}": float(i * i % 7) for i in range(8)}
    b = {f"k{i}": float(i) for i in range(8)}
    backwards = dict(reversed(list(a.items())))
    assert scoring.paired_difference(a, b, n_resamples=100) == scoring.paired_difference(backwards, b, n_resamples=100)
    # Keys sorted by type then text: the differences are resampled in the order of sorted keys.
    result = scoring.paired_difference(a, b, n_resamples=100, seed=1)
    ordered = [a[k] - b[k] for k in sorted(a)]
    assert (result["ci_lo"], result["ci_hi"]) == pytest.approx(reference_interval(ordered, 100, 0.95, 1))


# --- per-format tables -----------------------------------------------------------------------------------------------


def test_format_summary_exact_row_and_neuron_keys():
    rows = pd.DataFrame(
        [
            dict(format="summary", model="a", neuron="1:1", score=0.2, similarity=0.5, simulator="s"),
            dict(format="summary", model="b", neuron="1:1", score=0.6, similarity=None, simulator="s"),
            dict(format="original", model="a", neuron="1:1", score=0.1, similarity=0.3, simulator="s"),
        ]
    )
    table = scoring.format_summary(rows, n_resamples=100, level=0.9, seed=4)
    assert list(table["format"]) == ["summary", "original"]  # order of first appearance
    summary = table.iloc[0]
    # Same neuron number in two models: two neurons, not one averaged.
    assert summary["n"] == 2 and summary["mean_score"] == pytest.approx(0.4)
    assert (summary["score_ci_lo"], summary["score_ci_hi"]) == pytest.approx(
        reference_interval([0.2, 0.6], 100, 0.9, 4)
    )
    assert summary["mean_similarity"] == pytest.approx(0.5) and summary["n_similarity"] == 1
    original = table.iloc[1]
    assert original["n"] == 1 and math.isnan(original["score_ci_lo"]) and original["mean_similarity"] == 0.3
    assert list(table.columns) == scoring._SUMMARY_COLUMNS  # no token counts in these rows: no token columns
    differences = scoring.paired_format_differences(rows, baseline="original", n_resamples=100)
    assert list(differences["format"]) == ["summary"] and differences.iloc[0]["n"] == 1
    assert differences.iloc[0]["mean_diff"] == pytest.approx(0.1)  # only model a's neuron is in both


def test_score_rows_picks_the_named_simulator_and_refuses_unknown_ones():
    rows = [
        dict(format="f", neuron="1:1", score=0.2, simulator="s1"),
        dict(format="f", neuron="1:2", score=0.8, simulator="s2"),
        dict(format="f", neuron="1:3", score=None, simulator=None),
    ]
    assert scoring.format_summary(rows, simulator="s2", n_resamples=10).iloc[0]["mean_score"] == pytest.approx(0.8)
    with pytest.raises(InputError, match=r"no scores from simulator 's3'; the rows have: s1, s2"):
        scoring.format_summary(rows, simulator="s3")
    with pytest.raises(InputError, match=r"lack the column\(s\) score"):
        scoring.format_summary([dict(format="f", neuron="1:1")])
    with pytest.raises(InputError, match="baseline format 'x' has no rows"):
        scoring.paired_format_differences(rows, baseline="x", simulator="s1")
    # One method value only (the unscored row's method does not count as a second one).
    same = [dict(r, method="m" if r["simulator"] else "other") for r in rows[:1] + rows[2:]]
    assert scoring.format_summary(same, n_resamples=10).iloc[0]["n"] == 1


# --- scorer metrics ------------------------------------------------------------------------------------------------


def test_balanced_accuracy_exact():
    # TPR 2/3, TNR 1/2.
    assert balanced_accuracy([1, 1, 1, 0, 0], [1, 0, 1, 0, 1]) == pytest.approx((2 / 3 + 1 / 2) / 2)
    # A missing prediction drops its excerpt from its class only.
    assert balanced_accuracy([1, 1, 0, 0, 0], [1, None, 1, 0, 0]) == pytest.approx((1 + 2 / 3) / 2)
    assert balanced_accuracy([1, 0], [0, 1]) == 0.0
    assert balanced_accuracy([1, 0], [1, None]) is None  # no negative left
    assert balanced_accuracy([0, 0], [0, 1]) is None


def brute_auroc(labels: list[int], values: list[float]) -> float:
    positives = [v for label, v in zip(labels, values, strict=True) if label == 1]
    negatives = [v for label, v in zip(labels, values, strict=True) if label == 0]
    return stats.mannwhitneyu(positives, negatives).statistic / (len(positives) * len(negatives))


def test_auroc_is_the_mann_whitney_statistic():
    rng = np.random.default_rng(5)
    for _ in range(10):
        labels = [1, 0, *rng.integers(0, 2, size=9).tolist()]
        values = rng.integers(0, 4, size=11).astype(float).tolist()  # many ties
        assert auroc(labels, values) == pytest.approx(brute_auroc(labels, values))
    assert auroc([1, 0], [0.5, 0.5]) == 0.5
    assert auroc([1, 0, 0], [0.2, 0.3, 0.1]) == 0.5
    assert auroc([1, 1, 0], [0.9, 0.2, 0.3]) == 0.5
    assert auroc([0, 1], [0.1, 0.9]) == 1.0
    assert auroc([1, 1], [0.1, 0.9]) is None
    assert auroc([0, 1], [math.nan, 0.9]) is None


# --- which excerpts ----------------------------------------------------------------------------------------------


def test_spread_exact():
    assert _spread(list(range(10)), 4) == [0, 3, 6, 9]
    assert _spread(list(range(6)), 4) == [0, 2, 3, 5]
    assert _spread(list(range(5)), 3) == [0, 2, 4]
    assert _spread(list(range(5)), 1) == [0]
    assert _spread(list(range(3)), 3) == [0, 1, 2]
    assert _spread(list(range(2)), 5) == [0, 1]


def neuron(scoring_records: ScoringRecords | None, top=(), quantiles=None) -> NeuronRecord:
    stats_ = NeuronStats(0.0, 1.0, 5.0, {0.5: 0.5, 0.9: 1.0, 0.99: 2.0} if quantiles is None else quantiles)
    return NeuronRecord("m", NeuronId(0, 1), tuple(top), (), stats_, scoring_records)


def rec(name: str, top: float) -> ActivationRecord:
    return ActivationRecord((name, " x"), (top, 0.0))


def test_activating_threshold():
    assert activating_threshold(neuron(None), ScorerOptions()) == 2.0
    assert activating_threshold(neuron(None), ScorerOptions(activating_quantile=0.9)) == 1.0
    assert activating_threshold(neuron(None), ScorerOptions(activating_threshold=0.25)) == 0.25
    assert activating_threshold(neuron(None), ScorerOptions(activating_threshold=0.0)) == 0.0  # 0 is a threshold
    assert activating_threshold(neuron(None, quantiles={0.99 + 5e-10: 3.0}), ScorerOptions()) == 3.0
    with pytest.raises(InputError, match=r"no stored 0\.95 quantile \(stored: 0\.5, 0\.9, 0\.99\)"):
        activating_threshold(neuron(None), ScorerOptions(activating_quantile=0.95))
    with pytest.raises(InputError, match=r"\(stored: none\)"):
        activating_threshold(neuron(None, quantiles={}), ScorerOptions())


def test_classified_excerpts_boundaries():
    # Threshold 2.0 (q99): above it is activating, exactly at it is not, and may be non-activating.
    quantile = [rec("q3", 3.0), rec("q2", 2.0), rec("q25", 2.5), rec("shown", 4.0)]
    quiet = [rec("n0", 0.1), rec("n2", 2.0), rec("n21", 2.1), rec("q25", 0.0), rec("n1", 1.0)]
    top = [rec("shown", 4.0), rec("t5", 5.0)]  # top[0] after sorting is t5 (train), top[1] is "shown"
    scoring_records = ScoringRecords(tuple(quantile), (0.9, 0.5, 0.7, 0.99), tuple(quiet))
    record = neuron(scoring_records, top=top)
    assert [r.tokens[0] for r in record.split("train")] == ["t5"]
    activating, non = classified_excerpts(record, ScorerOptions(n_activating=10, n_non_activating=10))
    # The train split's t5 is never activating; "shown" is not in the train split, so it counts (from the quantile
    # samples, with its level); sorted by max, highest first.
    assert [(e.record.tokens[0], e.label, e.kind, e.level) for e in activating] == [
        ("shown", 1, "activating", 0.99), ("q3", 1, "activating", 0.9), ("q25", 1, "activating", 0.7),
    ]  # fmt: skip
    # Non-activating: max at most the threshold, not an activating excerpt's text, in stored order.
    assert [(e.record.tokens[0], e.label, e.kind, e.level) for e in non] == [
        ("n0", 0, "non_activating", None), ("n2", 0, "non_activating", None), ("n1", 0, "non_activating", None),
    ]  # fmt: skip
    few, fewer = classified_excerpts(record, ScorerOptions(n_activating=2, n_non_activating=2))
    assert [e.record.tokens[0] for e in few] == ["shown", "q25"]  # spread: the highest and the lowest
    assert [e.record.tokens[0] for e in fewer] == ["n0", "n2"]


def test_classified_excerpts_adds_top_records_not_shown():
    top = [rec(f"t{i}", 10.0 - i) for i in range(3)]  # t0 is the train split's
    record = neuron(ScoringRecords((rec("t1", 9.0),), (0.95,), ()), top=top)
    activating, _ = classified_excerpts(record, ScorerOptions(activating_threshold=7.5))
    # t1 once (from the quantile samples, keeping its level), t2 (8.0 > 7.5) from the top records with no level.
    assert [(e.record.tokens[0], e.level) for e in activating] == [("t1", 0.95), ("t2", None)]
    activating, _ = classified_excerpts(record, ScorerOptions(activating_threshold=8.0))
    assert [e.record.tokens[0] for e in activating] == ["t1"]  # 8.0 is not above 8.0


@pytest.mark.parametrize(("n", "count"), list(itertools.product(range(1, 7), range(1, 5))))
def test_spread_keeps_the_ends_and_order(n: int, count: int):
    picked = _spread(list(range(n)), count)
    assert len(picked) == min(n, count) and picked == sorted(set(picked))
    assert picked[0] == 0 and (count == 1 or picked[-1] == n - 1)


# --- more boundaries: rounding, big integers, empty tables, defaults ------------------------------------------------

# Collinear values whose correlation computes to 1.0000000000000002 before clipping.
COLLINEAR_Y = [21487.931762981094, 21364.950432280217, 21444.99469314692, 21449.989749642642]
COLLINEAR_X = [750.6610888582796, 746.2906679930292, 749.135222575759, 749.3127332516282]


def test_correlation_is_clipped_to_exactly_plus_or_minus_one():
    assert scoring.correlation(COLLINEAR_Y, COLLINEAR_X) == 1.0
    assert scoring.correlation(COLLINEAR_Y, [-x for x in COLLINEAR_X]) == -1.0


def test_big_integer_activations_do_not_overflow():
    # As int64, (4·10⁹)² overflows; as floats R² = 1 − (2·10⁹)²/2 / ((4·10⁹)²/2) = 0.75.
    assert scoring.rsquared([4 * 10**9, 0], [2 * 10**9, 0]) == pytest.approx(0.75)
    assert scoring.rsquared(np.array([4 * 10**9, 0]), np.array([2 * 10**9, 0])) == pytest.approx(0.75)


def test_messages_of_misaligned_input_are_whole():
    with pytest.raises(InputError, match=r"instead of passing NaN or infinity$"):
        scoring.correlation([1, math.nan], [1, 2])
    with pytest.raises(InputError, match=r"^2 records but 1 prediction lists: pass one list of predictions per record, "
                                         r"in the same order$"):  # fmt: skip
        scoring.score_records([record(1), record(2)], [[1]])
    with pytest.raises(InputError, match=r"^no records to score: pass at least one record with its predictions$"):
        scoring.fit_calibration([], [])
    with pytest.raises(InputError, match=r"^record 0 has 1 tokens but 2 predictions: predict one value per token$"):
        scoring.score_records([record(1)], [[1, 2]])


def test_scores_from_json_without_per_excerpt():
    assert scoring.Scores.from_json({"score": 0.5}) == scoring.Scores(0.5, None, None, ())


def test_slope_sign_of_two_values_and_flipping_an_undefined_score():
    assert scoring._slope_sign([[0.0, 1.0]], [[1.0, 3.0]]) == 1.0
    assert scoring._slope_sign([[0.0], [1.0]], [[3.0], [1.0]]) == -1.0
    flipped = scoring.score_calibrated([record(3)], [[1.0]], [[-1.0]], slope=-1.0)
    assert flipped.score is None and flipped.per_excerpt[0]["score"] is None


# Continuous values, so that another resample count, seed or order of the values moves the interval's ends.
SPREAD = [-1.738266, -1.336643, -1.361107, -0.351617, -2.312582, -0.188897, -0.957229, 0.8936, 0.956847, 1.392258,
          0.76747, -0.05303, 0.859794, 1.505481, -0.653595]  # fmt: skip


def test_paired_difference_with_keys_of_several_types():
    # Sorted by type name, then text: ints 2, 7 before strs "10", "3", "x" (by text alone "10" would come first).
    keys = ["10", 2, "3", 7, "x"]
    a = {k: v for k, v in zip(keys, [0.31, 0.77, 0.12, 0.58, 0.95], strict=True)}
    b = dict.fromkeys(keys, 0.0)
    by_type = [a[2], a[7], a["10"], a["3"], a["x"]]
    by_text = [a["10"], a[2], a["3"], a[7], a["x"]]
    assert reference_interval(by_type, 100, 0.5, 3) != reference_interval(by_text, 100, 0.5, 3)  # a sharp check
    result = scoring.paired_difference(a, b, n_resamples=100, level=0.5, seed=3)
    assert (result["ci_lo"], result["ci_hi"]) == pytest.approx(reference_interval(by_type, 100, 0.5, 3))


def test_defaults_are_2000_resamples_and_seed_0():
    # The check is sharp: 2001 resamples or seed 1 give other ends.
    assert reference_interval(SPREAD, 2000, 0.95, 0) != reference_interval(SPREAD, 2001, 0.95, 0)
    assert reference_interval(SPREAD, 2000, 0.95, 0) != reference_interval(SPREAD, 2000, 0.95, 1)
    keys = [f"1:{i}" for i in range(len(SPREAD))]
    a = dict(zip(keys, SPREAD, strict=True))
    b = dict.fromkeys(keys, 0.0)
    result = scoring.paired_difference(a, b)
    assert (result["ci_lo"], result["ci_hi"]) == pytest.approx(reference_interval([a[k] for k in sorted(keys)], 2000,
                                                                                  0.95, 0))  # fmt: skip
    rows = [dict(format="o", neuron=k, score=0.0, simulator="s") for k in keys]
    rows += [dict(format="x", neuron=k, score=v, simulator="s") for k, v in a.items()]
    summary = scoring.format_summary(rows).iloc[1]
    assert (summary["score_ci_lo"], summary["score_ci_hi"]) == pytest.approx(reference_interval(SPREAD, 2000, 0.95, 0))
    differences = scoring.paired_format_differences(rows, baseline="o").iloc[0]
    assert (differences["ci_lo"], differences["ci_hi"]) == (result["ci_lo"], result["ci_hi"])


def test_tables_keep_their_columns_when_empty_or_unscored():
    empty = pd.DataFrame(columns=["format", "neuron", "score", "simulator"])
    assert list(scoring.format_summary(empty).columns) == scoring._SUMMARY_COLUMNS
    only_baseline = [dict(format="original", neuron="1:1", score=0.5, simulator="s")]
    differences = scoring.paired_format_differences(only_baseline)
    assert len(differences) == 0
    assert list(differences.columns) == ["format", "baseline", "n", "mean_diff", "ci_lo", "ci_hi", "p_value"]
    # No score at all (no simulator column either): the similarity still counts, n is 0.
    unscored = [dict(format="f", neuron="1:1", score=None, similarity=0.4)]
    row = scoring.format_summary(unscored).iloc[0]
    assert row["n"] == 0 and row["mean_similarity"] == pytest.approx(0.4)
    with pytest.raises(InputError, match=r"^no scores from simulator 's'; the rows have: none$"):
        scoring.format_summary(unscored, simulator="s")
    # A score written as text that is not a number counts as missing.
    text = [dict(format="f", neuron="1:1", score="n/a", simulator="s"), dict(format="f", neuron="1:2", score="0.5",
                                                                              simulator="s")]  # fmt: skip
    assert scoring.format_summary(text).iloc[0][["n", "mean_score"]].tolist() == [1, 0.5]


def test_table_messages_list_every_value():
    with pytest.raises(InputError, match=r"^rows lack the column\(s\) neuron, score; need format, neuron, score"):
        scoring.format_summary([dict(format="f")])
    mixed = [dict(format="f", neuron="1:1", score=0.1, simulator=s) for s in ("b", "a")]
    message = r"^rows hold scores from 2 simulators \(a, b\); scores of different simulators cannot share one mean: "
    with pytest.raises(InputError, match=message + r"pass simulator= one of them$"):
        scoring.format_summary(mixed)
    methods = [dict(format="f", neuron="1:1", score=0.1, simulator="s", method=m) for m in ("y", "x")]
    with pytest.raises(InputError, match=r"^the scores of simulator 's' mix method values \(x, y\), which cannot "):
        scoring.format_summary(methods)
    with pytest.raises(InputError, match=r"formats present: f, g$"):
        scoring.paired_format_differences([*mixed[:1], dict(format="g", neuron="1:1", score=0.2, simulator="b")])


def test_per_format_tables_keep_the_order_of_neurons_and_pass_the_bootstrap_settings():
    scores = {f"m{(i * 7) % 15:02d}": v for i, v in enumerate(SPREAD)}  # models not in sorted order
    rows = [dict(format="s", model=m, neuron="1:1", score=v, simulator="x") for m, v in scores.items()]
    rows += [dict(format="o", model=m, neuron="1:1", score=v / 2, simulator="x") for m, v in scores.items()]
    row = scoring.format_summary(rows, n_resamples=150, level=0.7, seed=9).iloc[0]
    # Neurons in the order they first occur (not sorted): the resampled values are in that order.
    assert (row["score_ci_lo"], row["score_ci_hi"]) == pytest.approx(
        reference_interval(list(scores.values()), 150, 0.7, 9)
    )
    differences = scoring.paired_format_differences(rows, baseline="o", n_resamples=150, level=0.7, seed=9)
    assert list(differences.columns) == ["format", "baseline", "n", "mean_diff", "ci_lo", "ci_hi", "p_value"]
    first = differences.iloc[0]
    assert (first["format"], first["baseline"], first["n"]) == ("s", "o", len(SPREAD))
    halves = [scores[k] / 2 for k in sorted(scores)]  # paired by key, keys sorted
    assert (first["ci_lo"], first["ci_hi"]) == pytest.approx(reference_interval(halves, 150, 0.7, 9))


def test_excerpt_choice_errors():
    missing = r"^neuron 0:1 of m was collected without the scorers' excerpts .*"
    with pytest.raises(
        MissingExcerpts, match=missing + r"recollect its layer with `python -m core collect --replace`$"
    ):
        classified_excerpts(neuron(None), ScorerOptions())
    no_level = r"^neuron 0:1 has no stored 0\.99 quantile \(stored: 0\.99\); choose --activating-quantile among "
    with pytest.raises(InputError, match=no_level + r"them or give --activating-threshold$"):
        activating_threshold(neuron(None, quantiles={0.99: None}), ScorerOptions())  # type: ignore[dict-item]
