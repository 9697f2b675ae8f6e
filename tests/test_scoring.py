"""Scoring formulas, calibration and per-format statistics (docs/METHOD.md §3–§4)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from core import scoring
from core.errors import InputError
from core.records import ActivationRecord


def record(*activations: float) -> ActivationRecord:
    return ActivationRecord(tuple(f" t{i}" for i in range(len(activations))), activations)


# --- formulas ----------------------------------------------------------------------------------------------------


def test_correlation_hand_computed():
    # y = [1, 2, 3], ŷ = [1, 2, 4]: cov = 3, Σdy² = 2, Σdŷ² = 42/9, so r = 9/√84.
    assert scoring.correlation([1, 2, 3], [1, 2, 4]) == pytest.approx(9 / math.sqrt(84))
    assert scoring.correlation([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_correlation_matches_numpy_and_scipy_on_random_data():
    rng = np.random.default_rng(7)
    for _ in range(5):
        y = rng.normal(size=300)
        y_hat = 0.4 * y + rng.normal(size=300)
        expected = stats.pearsonr(y, y_hat).statistic
        assert scoring.correlation(y, y_hat) == pytest.approx(expected, abs=1e-12)
        assert scoring.correlation(y.tolist(), y_hat.tolist()) == pytest.approx(np.corrcoef(y, y_hat)[0, 1])


def test_correlation_undefined_cases_are_none():
    assert scoring.correlation([0, 0, 0], [1, 2, 3]) is None
    assert scoring.correlation([1, 2, 3], [5, 5, 5]) is None
    # Repeated decimals: a computed std is not exactly 0, but the series is constant.
    assert scoring.correlation([0.1] * 7, [1, 2, 3, 4, 5, 6, 7]) is None
    assert scoring.correlation([1.0], [2.0]) is None
    assert scoring.correlation([], []) is None


def test_formulas_refuse_misaligned_or_non_finite_input():
    with pytest.raises(InputError, match="3 true activations but 2 predictions"):
        scoring.correlation([1, 2, 3], [1, 2])
    with pytest.raises(InputError, match="predictions hold a non-finite value at position 1"):
        scoring.rsquared([1, 2, 3], [1, float("nan"), 3])


def test_rsquared_and_absdev_hand_computed():
    # errors [0, 0, 1]: mean squared 1/3 over mean(y²) = 14/3; mean |err| 1/3 over mean|y| = 2.
    assert scoring.rsquared([1, 2, 3], [1, 2, 2]) == pytest.approx(1 - 1 / 14)
    assert scoring.absdev([1, 2, 3], [1, 2, 2]) == pytest.approx(1 - 1 / 6)
    # Predicting all zeros gives R² = 0 and absdev = 0; a prediction twice too big is worse than nothing.
    assert scoring.rsquared([1, -2, 3], [0, 0, 0]) == pytest.approx(0.0)
    assert scoring.absdev([1, -2, 3], [0, 0, 0]) == pytest.approx(0.0)
    assert scoring.rsquared([1, 2], [3, 6]) == pytest.approx(1 - (4 + 16) / 2 / 2.5)
    assert scoring.rsquared([0, 0], [1, 2]) is None
    assert scoring.absdev([0, 0], [1, 2]) is None


def test_perfect_oracle_scores_one():
    records = [record(0, 0, 3.5, 0), record(1.25, 0, 0, 7), record(0, 0, 0, 0)]
    scores = scoring.score_records(records, [list(r.activations) for r in records])
    assert (scores.score, scores.rsquared, scores.absdev) == (pytest.approx(1.0), 1.0, 1.0)
    # Correlation ignores scale and offset, R² does not.
    affine = scoring.score_records(records, [[2 * a + 1 for a in r.activations] for r in records])
    assert affine.score == pytest.approx(1.0)
    assert affine.rsquared < 0
    # The all-zero record has no defined per-excerpt score but still counts in the pooled one.
    assert scores.per_excerpt[2]["score"] is None
    assert scores.per_excerpt[2]["rsquared"] is None
    assert [item["n_tokens"] for item in scores.per_excerpt] == [4, 4, 4]


def test_pooled_score_is_not_the_mean_of_per_excerpt_scores():
    records = [record(0, 1), record(10, 11)]
    predictions = [[0.0, 1.0], [1.0, 0.5]]
    scores = scoring.score_records(records, predictions)
    per_excerpt = [item["score"] for item in scores.per_excerpt]
    assert per_excerpt == [pytest.approx(1.0), pytest.approx(-1.0)]
    pooled = np.corrcoef([0, 1, 10, 11], [0, 1, 1, 0.5])[0, 1]
    assert scores.score == pytest.approx(pooled)
    assert scores.score > 0.3  # while the mean of per-excerpt correlations is 0
    assert np.mean(per_excerpt) == pytest.approx(0.0)


def test_constant_predictions_score_none_not_zero():
    scores = scoring.score_records([record(0, 5, 0), record(2, 0, 0)], [[0, 0, 0], [0, 0, 0]])
    assert scores.score is None
    assert scores.rsquared == pytest.approx(0.0)
    assert scoring.Scores.from_json(scores.to_json()) == scores


def test_score_records_names_the_misaligned_record():
    records = [record(1, 2), record(1, 2, 3)]
    with pytest.raises(InputError, match="2 records but 1 prediction lists"):
        scoring.score_records(records, [[1, 2]])
    with pytest.raises(InputError, match="record 1 has 3 tokens but 2 predictions"):
        scoring.score_records(records, [[1, 2], [1, 2]])
    with pytest.raises(InputError, match="no records"):
        scoring.score_records([], [])


def test_calibration_recovers_slope_and_intercept():
    rng = np.random.default_rng(3)
    predictions = [rng.uniform(0, 10, size=16).tolist() for _ in range(4)]
    records = [record(*(2.5 * ev - 1.0 for ev in row)) for row in predictions]
    a, b = scoring.fit_calibration(records, predictions)
    assert (a, b) == (pytest.approx(2.5), pytest.approx(-1.0))

    noisy = [record(*(0.3 * ev + 2 + rng.normal(scale=0.1) for ev in row)) for row in predictions]
    a, b = scoring.fit_calibration(noisy, predictions)
    flat_true = [v for r in noisy for v in r.activations]
    flat_predicted = [v for row in predictions for v in row]
    expected = stats.linregress(flat_predicted, flat_true)
    assert (a, b) == (pytest.approx(expected.slope), pytest.approx(expected.intercept))

    original = [list(row) for row in predictions]
    calibrated = scoring.apply_calibration(predictions, a, b)
    assert predictions == original  # not mutated
    before, after = scoring.score_records(noisy, predictions), scoring.score_records(noisy, calibrated)
    # docs/METHOD.md §3: a positive linear calibration changes R² but not correlation.
    assert after.score == pytest.approx(before.score)
    assert after.rsquared > 0.9 > before.rsquared


def test_calibration_of_constant_predictions_is_the_mean():
    assert scoring.fit_calibration([record(1, 3), record(5, 7)], [[2, 2], [2, 2]]) == (0.0, pytest.approx(4.0))


@pytest.mark.parametrize(("a", "b", "sign"), [(0.5, 1.0, 1), (-2.0, 3.0, -1), (0.0, 1.5, 1)])
def test_calibrated_scores_follow_the_slope_as_openai_does(a: float, b: float, sign: int):
    # docs/METHOD.md §3: the calibrated score is the correlation of a·EV + b, so a negative slope flips it, as in
    # OpenAI's code; a zero slope would erase it, and then the raw correlation is kept. The raw one stays beside it.
    records = [record(0, 4, 1, 0), record(2, 0, 0, 6)]
    evs = [[0.5, 3.0, 2.0, 0.0], [1.0, 0.5, 0.0, 5.0]]
    calibrated = scoring.apply_calibration(evs, a, b)
    plain, fitted = scoring.score_records(records, evs), scoring.score_records(records, calibrated)
    for slope in (None, a):  # the slope given, or read back from the two prediction sets
        scores = scoring.score_calibrated(records, evs, calibrated, slope=slope)
        assert scores.score == pytest.approx(sign * plain.score) and plain.score > 0.8
        assert scores.raw_score == plain.score
        if a != 0:
            assert scores.score == pytest.approx(fitted.score)  # what OpenAI's calibrated simulator reports
        assert (scores.rsquared, scores.absdev) == (fitted.rsquared, fitted.absdev)
        assert [item["score"] for item in scores.per_excerpt] == pytest.approx(
            [sign * item["score"] for item in plain.per_excerpt]
        )
        assert [item["raw_score"] for item in scores.per_excerpt] == [item["score"] for item in plain.per_excerpt]
        assert [item["rsquared"] for item in scores.per_excerpt] == [i["rsquared"] for i in fitted.per_excerpt]
    assert scoring.Scores.from_json(scores.to_json()) == scores


def test_uncalibrated_scores_have_no_raw_score():
    scores = scoring.score_records([record(0, 4, 1)], [[0.0, 3.0, 1.0]])
    assert scores.raw_score is None and scores.to_json()["raw_score"] is None


# --- statistics --------------------------------------------------------------------------------------------------


def test_bootstrap_ci_covers_the_true_mean_and_is_deterministic():
    sample = np.random.default_rng(11).normal(loc=3.0, scale=2.0, size=200)
    estimate = scoring.bootstrap_ci(sample.tolist(), seed=5)
    assert estimate.n == 200
    assert estimate.mean == pytest.approx(sample.mean())
    assert estimate.lo < 3.0 < estimate.hi
    # Width near the normal-theory 2·1.96·s/√n.
    assert estimate.hi - estimate.lo == pytest.approx(2 * 1.96 * sample.std(ddof=1) / math.sqrt(200), rel=0.15)
    assert scoring.bootstrap_ci(sample.tolist(), seed=5) == estimate
    assert scoring.bootstrap_ci(sample.tolist(), seed=6) != estimate


def test_bootstrap_ci_ignores_missing_values():
    estimate = scoring.bootstrap_ci([1.0, None, float("nan"), 3.0, 2.0], n_resamples=500)
    assert estimate.n == 3
    assert estimate.mean == pytest.approx(2.0)
    assert 1.0 <= estimate.lo <= 2.0 <= estimate.hi <= 3.0
    assert scoring.bootstrap_ci([None, float("nan")]) == scoring.Estimate(None, None, None, 0)
    assert scoring.bootstrap_ci([4.0]) == scoring.Estimate(4.0, None, None, 1)
    with pytest.raises(InputError, match="level"):
        scoring.bootstrap_ci([1.0, 2.0], level=95)


def test_paired_difference_sign_ci_and_wilcoxon():
    rng = np.random.default_rng(2)
    keys = [f"0:{i}" for i in range(30)]
    baseline = {k: float(v) for k, v in zip(keys, rng.normal(0.2, 0.1, size=30), strict=True)}
    better = {k: baseline[k] + 0.05 + float(rng.normal(0, 0.03)) for k in keys}
    result = scoring.paired_difference(better, baseline)
    differences = np.array([better[k] - baseline[k] for k in sorted(keys)])
    assert result["n"] == 30
    assert result["mean_diff"] == pytest.approx(differences.mean())
    assert 0 < result["ci_lo"] < result["mean_diff"] < result["ci_hi"]
    assert result["p_value"] == pytest.approx(stats.wilcoxon(differences).pvalue)
    assert result["p_value"] < 0.001

    reverse = scoring.paired_difference(baseline, better)
    assert reverse["mean_diff"] == pytest.approx(-result["mean_diff"])
    assert reverse["ci_hi"] < 0
    assert reverse["p_value"] == pytest.approx(result["p_value"])
    assert scoring.paired_difference(better, baseline) == result  # seeded


def test_paired_difference_uses_only_keys_defined_on_both_sides():
    a = {"1:1": 0.5, "1:2": 0.3, "1:3": None, "1:4": 0.9, "1:5": float("nan")}
    b = {"1:1": 0.1, "1:2": 0.4, "1:3": 0.2, "1:5": 0.2, "9:9": 0.0}
    result = scoring.paired_difference(a, b)
    assert result["n"] == 2
    assert result["mean_diff"] == pytest.approx(((0.5 - 0.1) + (0.3 - 0.4)) / 2)
    assert result["p_value"] is None  # fewer than 5 pairs
    same = {f"k{i}": float(i) for i in range(6)}
    assert scoring.paired_difference(same, same)["p_value"] == 1.0
    assert scoring.paired_difference({}, b) == {
        "n": 0,
        "mean_diff": None,
        "ci_lo": None,
        "ci_hi": None,
        "p_value": None,
    }


def _rows() -> pd.DataFrame:
    rows = []
    for i in range(8):
        neuron = f"3:{i}"
        rows.append(
            dict(
                format="original",
                neuron=neuron,
                score=0.1 + 0.01 * i,
                similarity=0.8,
                input_tokens=2000,
                simulator="hf:sim",
            )
        )
        rows.append(
            dict(
                format="summary",
                neuron=neuron,
                score=0.2 + 0.01 * i + 0.002 * (i % 3),
                similarity=0.9 if i else None,
                input_tokens=800,
                simulator="hf:sim",
            )
        )
    return pd.DataFrame(rows)


def test_format_summary_table():
    rows = _rows()
    table = scoring.format_summary(rows, n_resamples=500)
    assert list(table["format"]) == ["original", "summary"]
    original = table.set_index("format").loc["original"]
    assert original["n"] == 8
    assert original["mean_score"] == pytest.approx(np.mean([0.1 + 0.01 * i for i in range(8)]))
    assert original["score_ci_lo"] < original["mean_score"] < original["score_ci_hi"]
    assert original["mean_input_tokens_unknown"] == 2000  # rows that do not say what counted their tokens
    summary = table.set_index("format").loc["summary"]
    assert summary["mean_similarity"] == pytest.approx(0.9)
    assert summary["n_similarity"] == 7


def test_format_summary_averages_samples_per_neuron_and_keeps_unscored_explanations():
    rows = pd.DataFrame(
        [
            dict(format="highlight", neuron="1:1", score=0.2, input_tokens=100, simulator="hf:sim"),
            dict(format="highlight", neuron="1:1", score=0.4, input_tokens=300, simulator="hf:sim"),
            dict(format="highlight", neuron="1:2", score=0.9, input_tokens=200, simulator="hf:sim"),
            # Unscored (no simulator): its tokens differ from the others' mean, so dropping the row shows.
            dict(format="highlight", neuron="1:3", score=None, input_tokens=500, simulator=None),
        ]
    )
    row = scoring.format_summary(rows).iloc[0]
    assert row["n"] == 2  # neurons with a score
    assert row["mean_score"] == pytest.approx((0.3 + 0.9) / 2)
    # Per neuron first (1:1 → 200, 1:2 → 200, 1:3 → 500), then over neurons: the unscored one counts.
    assert row["mean_input_tokens_unknown"] == pytest.approx((200 + 200 + 500) / 3)
    # With the tokenizer named, each unit keeps its own mean: the API's count is never averaged with cl100k's.
    counted = rows.assign(tokenizer=["api:m", "api:m", "cl100k_base", "cl100k_base"])
    row = scoring.format_summary(counted).iloc[0]
    assert row["mean_input_tokens_server"] == pytest.approx(200)
    assert row["mean_input_tokens_cl100k"] == pytest.approx((200 + 500) / 2)
    assert "mean_input_tokens_unknown" not in row
    assert math.isnan(row["mean_similarity"])


def test_format_summary_refuses_to_mix_simulators():
    rows = _rows()
    other = rows.assign(simulator="openai:other", score=rows["score"] + 0.5)
    mixed = pd.concat([rows, other], ignore_index=True)
    with pytest.raises(InputError, match=r"2 simulators .*pass simulator="):
        scoring.format_summary(mixed)
    with pytest.raises(InputError, match="2 simulators"):
        scoring.paired_format_differences(mixed)
    chosen = scoring.format_summary(mixed, simulator="hf:sim", n_resamples=500)
    pd.testing.assert_frame_equal(chosen, scoring.format_summary(rows, n_resamples=500))
    with pytest.raises(InputError, match="no scores from simulator 'nope'"):
        scoring.format_summary(mixed, simulator="nope")
    with pytest.raises(InputError, match="score"):
        scoring.format_summary(rows.drop(columns=["score"]))


@pytest.mark.parametrize(
    ("column", "values"),
    [("method", ("chat_logprobs", "chat_parse")), ("split", ("valid", "test")), ("calibrated", (False, True))],
)
def test_format_summary_refuses_to_mix_methods_splits_or_calibration(column: str, values: tuple) -> None:
    rows = _rows()
    rows[column] = [values[i % 2] for i in range(len(rows))]
    with pytest.raises(InputError, match=rf"simulator 'hf:sim' mix {column} values .*pass the rows of one {column}"):
        scoring.format_summary(rows)
    with pytest.raises(InputError, match=f"mix {column} values"):
        scoring.paired_format_differences(rows)
    one = rows.assign(**{column: values[0]})
    assert scoring.format_summary(one, n_resamples=500).equals(scoring.format_summary(_rows(), n_resamples=500))


def test_paired_format_differences_against_the_baseline():
    rows = _rows()
    table = scoring.paired_format_differences(rows, n_resamples=500)
    assert list(table["format"]) == ["summary"]
    row = table.iloc[0]
    expected = np.array([0.1 + 0.002 * (i % 3) for i in range(8)])
    assert row["n"] == 8
    assert row["mean_diff"] == pytest.approx(expected.mean())
    assert row["ci_lo"] > 0
    assert row["p_value"] == pytest.approx(stats.wilcoxon(expected).pvalue)
    reversed_table = scoring.paired_format_differences(rows, baseline="summary", n_resamples=500)
    assert reversed_table.iloc[0]["mean_diff"] == pytest.approx(-expected.mean())
    with pytest.raises(InputError, match="baseline format 'avhs' has no rows"):
        scoring.paired_format_differences(rows, baseline="avhs")
