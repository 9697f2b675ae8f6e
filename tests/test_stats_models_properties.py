"""Properties of the models behind the study statistics that mutation testing (`make mutation MODULE=stats-models`,
tests/README.md) showed untested after tests/test_stats_properties.py: Bradley–Terry strengths that solve the
likelihood equations where choix converges slowly, batches of any shape, a bootstrap prior share over every chunk
of resamples and no dependence on the order of the rows; the logistic regression's separation at both boundaries,
its non-convergence and its silence on stdout; infinite differences, scores read back as text and explanations
without ids; and the full text of every warning, note and method. Values are worked out by hand or by a reference
written here (scipy's root finder, statsmodels, a reachability search)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import optimize
from statsmodels.discrete.discrete_model import Logit

from core import stats
from core.stats.bradley_terry import bradley_terry_method
from tests.test_stats import SIM, A, B, C, frame, rating, three_arm_ratings, unanimous_three_arm_study

# --- Bradley–Terry: the fit --------------------------------------------------------------------------------------


def comparisons(counts: dict[tuple[str, str], int]) -> tuple[list[str], list[str]]:
    """Winners and losers of `counts[winner, loser]` comparisons each."""
    winners = [winner for (winner, _), n in counts.items() for _ in range(n)]
    losers = [loser for (_, loser), n in counts.items() for _ in range(n)]
    return winners, losers


def test_the_fit_solves_the_likelihood_equations_where_choix_needs_hundreds_of_iterations() -> None:
    # A beat B 1000 times to 1; C links them with one win over A and one loss to B. By symmetry the log-strengths
    # are (a, −a, 0), and A's equation, wins = expected wins, is 1001·σ(2a) + σ(a) = 1000. Choix's spectral
    # iterations crawl here: ~280 of them to 1e-12, and its default tolerance stops 1e-7 short.
    winners, losers = comparisons({(A, B): 1000, (B, A): 1, (C, A): 1, (B, C): 1})

    def excess(a: float) -> float:
        return 1001 / (1 + math.exp(-2 * a)) + 1 / (1 + math.exp(-a)) - 1000

    a = optimize.brentq(excess, 0.0, 20.0, xtol=1e-15, rtol=1e-15)
    fit = stats.bradley_terry_fit(winners, losers, [A, B, C])
    assert fit.prior == 0.0
    assert fit.strengths == pytest.approx([a, -a, 0.0], abs=1e-9)


def test_the_fit_refuses_winners_and_losers_of_different_lengths() -> None:
    with pytest.raises(ValueError):
        stats.bradley_terry_fit([A, B], [B], [A, B])
    with pytest.raises(ValueError):
        stats.bradley_terry_fit([A], [B, A], [A, B])


def reachable_both_ways(wins: np.ndarray) -> bool:
    """Brute force: every arm reaches every other along "beat" within k − 1 steps."""
    beat = wins > 0
    reach = np.eye(len(wins), dtype=bool) | beat
    for _ in range(len(wins)):
        reach = reach | ((reach.astype(int) @ beat.astype(int)) > 0)
    return bool(reach.all())


def test_connectivity_and_mm_strengths_take_batches_of_any_shape() -> None:
    rng = np.random.default_rng(11)
    # Four arms in a 2 × 3 batch: the batch's second axis (3) is not the number of arms (4).
    wins = (rng.random((2, 3, 4, 4)) < 0.4) * rng.integers(1, 5, size=(2, 3, 4, 4)) * (1 - np.eye(4))
    connected = stats.strongly_connected(wins)
    assert connected.shape == (2, 3)
    expected = [[reachable_both_ways(matrix) for matrix in row] for row in wins]
    assert connected.tolist() == expected
    assert 0 < connected.sum() < connected.size
    total = wins + stats.BT_PRIOR * (1 - np.eye(4))
    strengths = stats.mm_strengths(total)
    assert strengths.shape == (2, 3, 4)
    for i, j in np.ndindex(2, 3):
        assert strengths[i, j] == pytest.approx(stats.mm_strengths(total[i, j]), abs=1e-9)
        # Each matrix alone solves its likelihood equations: wins = expected wins.
        theta = strengths[i, j]
        games = total[i, j] + total[i, j].T
        expected_wins = (games / (1 + np.exp(-(theta[:, None] - theta[None, :])))).sum(axis=1)
        assert expected_wins == pytest.approx(total[i, j].sum(axis=1), abs=1e-8)
    # An empty batch has no strengths.
    assert stats.mm_strengths(np.zeros((0, 3, 3))).shape == (0, 3)


# --- Bradley–Terry: the bootstrap and the report -----------------------------------------------------------------


def test_the_bootstrap_prior_share_counts_the_resamples_of_every_chunk() -> None:
    # 1000 neurons: 999 with A and B beating each other and B beating C, one with C's only win. A resample lacks
    # that neuron, so its wins do not connect C and it needs the prior, with probability (1 − 1/1000)^1000 ≈ 0.368.
    # 4000 resamples of 1000 neurons come in two chunks of 2000.
    rows = []
    for neuron in range(999):
        for i, (winner, loser) in enumerate([(A, B), (B, A), (B, C)]):
            rows.append(rating(neuron * 3 + i, "sim", "left", left=winner, right=loser, neuron=f"0:{neuron}"))
    rows.append(rating(10_000, "sim", "left", left=C, right=B, neuron="0:999"))
    result = stats.bradley_terry(frame(rows), [A, B, C], resamples=4000)
    assert result.ci_method == "bootstrap over 1000 neurons"
    # Binomial standard error of the share over 4000 resamples: about 0.008.
    assert result.bootstrap_prior_share == pytest.approx((1 - 1 / 1000) ** 1000, abs=0.03)


def test_bradley_terry_does_not_depend_on_the_order_of_the_rows_when_neurons_differ() -> None:
    ratings = unanimous_three_arm_study(seed=3, neurons=30, raters=2)
    first = stats.bradley_terry(ratings, [A, B, C], resamples=200)
    for seed in (1, 2):
        shuffled = ratings.sample(frac=1.0, random_state=seed).reset_index(drop=True)
        assert stats.bradley_terry(shuffled, [A, B, C], resamples=200) == first


def test_the_bradley_terry_warning_ties_and_method_read_as_written() -> None:
    chain = [rating(1, "ann", "left", left=A, right=B), rating(2, "ann", "left", left=B, right=C)]
    result = stats.bradley_terry(frame(chain), [A, B, C])
    assert result.warning == (
        "the comparison graph is not strongly connected (the wins do not link every arm to every other both ways; "
        f"no win or no loss: {A}, {C}): the maximum-likelihood strengths do not exist, and these come partly from "
        "the prior of 0.5 virtual wins each way per pair of arms"
    )
    assert result.ties == "reported per pair (ties, both_bad in differences), not modelled"
    two_cycles = [
        rating(1, "ann", "left", left=A, right=B),
        rating(2, "ann", "left", left=B, right=A),
        rating(3, "ann", "left", left=C, right="avhs"),
        rating(4, "ann", "left", left="avhs", right=C),
    ]
    assert stats.bradley_terry(frame(two_cycles), [A, B, C, "avhs"]).warning == (
        "the comparison graph is not strongly connected (the wins do not link every arm to every other both ways): "
        "the maximum-likelihood strengths do not exist, and these come partly from the prior of 0.5 virtual wins "
        "each way per pair of arms"
    )
    assert result.method == (
        "Bradley–Terry maximum likelihood (choix's iterative Luce spectral ranking; Hunter's MM for the bootstrap "
        "resamples) on decisive ratings. Ties and both-bad are not modelled (no Davidson term): they are left out "
        "of the fit and counted per pair in `differences`. `ci`: 95% percentile bootstrap resampling neurons (2000 "
        "resamples, seed 0; a resample whose wins do not connect the arms gets the prior); `fisher_ci` assumes "
        "independent ratings and is too narrow when a neuron's raters lean together. `rank`: 1 + the number of "
        "arms whose interval lies wholly above the arm's, so arms whose intervals do not overlap get different ranks."
    )
    # The method's defaults are the fit's.
    assert bradley_terry_method() == result.method


# --- humans against automated scores: the logistic regression -----------------------------------------------------


def rows_of(pairs: list[tuple[float, str]], neurons: int | None = None) -> list[dict]:
    """One rating per item of A (left, scoring `difference`) against B (right, scoring 0); item i on neuron i (mod
    `neurons`)."""
    return [
        rating(i, "ann", choice, left=A, right=B, **{f"{SIM}:left": difference, f"{SIM}:right": 0.0})
        | {"neuron": f"0:{i % (neurons or len(pairs))}"}
        for i, (difference, choice) in enumerate(pairs)
    ]


def logistic_of(rows: list[dict]) -> stats.ScoreLogistic:
    return stats.automated_comparisons(frame(rows), [A, B])[0].logistic


SEPARATION = (
    "perfect separation: a threshold on the score difference splits A's wins from B's, so the maximum-likelihood "
    "slope is infinite (the scores predict these ratings perfectly; more data will bound it)"
)


def test_separation_is_found_at_a_touching_threshold_whichever_side_wins() -> None:
    # A wins above 0.5 and loses below it, meeting at 0.5; then the mirror image, A winning below.
    above = [(0.1, "right"), (0.3, "right"), (0.5, "right"), (0.5, "left"), (0.8, "left")]
    below = [(0.1, "left"), (0.3, "left"), (0.5, "left"), (0.5, "right"), (0.8, "right")]
    for pairs in (above, below):
        logistic = logistic_of(rows_of(pairs))
        assert (logistic.slope, logistic.note) == (None, SEPARATION)
    # One win past the threshold and the slope is finite again.
    for pairs in ([*above, (0.2, "left")], [*below, (0.9, "left")]):
        assert logistic_of(rows_of(pairs)).slope is not None


def not_converging(neurons: int | None = None) -> list[dict]:
    """A wins at differences 1 to 3 and loses at −3 to −1, but loses at +1e-10 and wins at −1e-10: not separated,
    yet the slope's MLE is so large that statsmodels' 35 Newton steps do not reach it."""
    spread = np.linspace(1, 3, 10)
    pairs = [(float(d), "left") for d in spread] + [(float(-d), "right") for d in spread]
    return rows_of([*pairs, (1e-10, "right"), (-1e-10, "left")], neurons)


def test_a_fit_that_does_not_converge_says_so_and_nothing_else() -> None:
    rows = not_converging()
    coded = stats.relative_outcomes(frame(rows), [A, B])
    x = coded[f"{SIM}:left"].to_numpy(dtype=float)
    reference = Logit((coded["code"] == 1).to_numpy(dtype=float), np.column_stack([np.ones(len(x)), x]))
    with pytest.warns(Warning):  # statsmodels' ConvergenceWarning, which the note replaces
        fit = reference.fit(disp=0, cov_type="cluster", cov_kwds={"groups": np.arange(len(x))})
    assert not fit.mle_retvals["converged"]
    logistic = logistic_of(rows)
    assert (logistic.n_ratings, logistic.n_neurons) == (22, 22)
    assert logistic.note == "the fit did not converge"
    assert logistic.slope == pytest.approx(fit.params[1])
    one = logistic_of(not_converging(neurons=1))
    assert one.note == "one neuron: standard errors not clustered; the fit did not converge"


def test_the_regression_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(5)
    pairs = [(float(d), "left" if rng.random() < 1 / (1 + math.exp(-2 * d)) else "right") for d in rng.normal(size=40)]
    for rows in (rows_of(pairs), rows_of(pairs, neurons=1), not_converging(), not_converging(neurons=1)):
        assert logistic_of(rows).slope is not None
    assert capsys.readouterr() == ("", "")


def test_an_infinite_score_difference_counts_as_missing() -> None:
    # An infinite difference (a score read from a file, no scorer's) once reached statsmodels, which failed on it.
    pairs = [(0.1, "left"), (0.5, "right"), (0.2, "left"), (0.9, "left"), (0.3, "right"), (0.6, "right")]
    finite = logistic_of(rows_of(pairs))
    for infinite in (math.inf, -math.inf):
        with_infinite = logistic_of(rows_of([*pairs, (infinite, "left")]))
        assert with_infinite.n_ratings == 6 and with_infinite.slope == pytest.approx(finite.slope)
        assert with_infinite.slope_ci == pytest.approx(finite.slope_ci)


def test_the_human_choice_against_the_scores_reads_text_that_is_not_a_number_as_missing() -> None:
    rows = [rating(i, "ann", choice, left_score=left, right_score=right) for i, (choice, left, right) in
            enumerate([("left", 0.9, 0.1), ("right", 0.2, 0.8), ("left", 0.3, 0.7), ("left", "n/a", 0.5),
                       ("right", 0.5, "n/a")])]  # fmt: skip
    as_text = frame(rows).astype({"left_score": str, "right_score": str})
    numbers = frame(rows).replace({"left_score": {"n/a": math.nan}, "right_score": {"n/a": math.nan}})
    result = stats.human_vs_automated(as_text)
    assert result == stats.human_vs_automated(numbers)
    assert (result.successes, result.n, result.n_score_ties) == (2, 3, 0)


def test_explanations_without_an_id_are_each_their_own() -> None:
    # Three of A's explanations without ids (as a file may carry them), scoring 0.9, 0.1 and 0.5: A's mean is 0.5.
    rows = [
        rating(i, "ann", "left", left=A, right=B, **{f"{SIM}:left": score, f"{SIM}:right": 0.2})
        | {"left_explanation_id": None, "right_explanation_id": 7}
        for i, score in enumerate([0.9, 0.1, 0.5])
    ]
    assert stats.arm_mean_scores(frame(rows), "score", "hf:my-model·all_at_once") == {
        A: pytest.approx(0.5),
        B: pytest.approx(0.2),
    }


# --- scores read back as text ------------------------------------------------------------------------------------


def test_scores_read_back_as_text_are_numbers_and_what_is_not_a_number_is_missing() -> None:
    # A CSV export keeps a column as text when one cell is not a number (core.export._read_csv).
    scores = [(0.6, 0.2), (0.1, 0.7), ("n/a", 0.3), (0.4, "n/a"), (0.9, 0.5), (0.2, 0.8), (0.7, 0.1), (0.3, 0.6)]
    choices = ["left", "right", "left", "right", "left", "left", "right", "right"]
    arms = [(A, B), (B, A), (A, B), (B, C), (C, A), (A, C), (B, C), (C, B)]

    def ratings(as_text: bool) -> pd.DataFrame:
        rows = []
        for item, ((left, right), choice, pair) in enumerate(zip(scores, choices, arms, strict=True)):
            values = [str(value) if as_text else (math.nan if value == "n/a" else value) for value in (left, right)]
            columns = {f"{SIM}:left": values[0], f"{SIM}:right": values[1]}
            rows.append(rating(item, "ann", choice, left=pair[0], right=pair[1], **columns))
        return frame(rows)

    text, numbers = ratings(as_text=True), ratings(as_text=False)
    assert not pd.api.types.is_numeric_dtype(text[f"{SIM}:left"])
    strengths = {A: 0.5, B: 0.0, C: -0.5}
    assert stats.automated_comparisons(text, [A, B, C], strengths) == stats.automated_comparisons(
        numbers, [A, B, C], strengths
    )
    means = stats.arm_mean_scores(text, "score", "hf:my-model·all_at_once")
    # Without explanation ids each item's side is an explanation. A: 0.6, 0.7, n/a, 0.5, 0.2; B: 0.2, 0.1, 0.3, 0.4,
    # 0.7, 0.6; C: n/a, 0.9, 0.8, 0.1, 0.3.
    assert means == {
        A: pytest.approx((0.6 + 0.7 + 0.5 + 0.2) / 4),
        B: pytest.approx((0.2 + 0.1 + 0.3 + 0.4 + 0.7 + 0.6) / 6),
        C: pytest.approx((0.9 + 0.8 + 0.1 + 0.3) / 4),
    }


# --- the whole study ---------------------------------------------------------------------------------------------


def test_a_study_of_three_arms_says_its_p_values_are_holm_adjusted() -> None:
    rows = three_arm_ratings()
    as_json = stats.summary_from_ratings(rows, [A, B, C]).to_json()
    assert len(as_json["neuron_pairs"]) == 3
    assert as_json["multiple_pairs"] == "p_value_holm: Holm-adjusted over the study's pairs"
