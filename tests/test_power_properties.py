"""Properties of the sample-size search and the exact power that mutation testing (`make mutation MODULE=power`,
tests/README.md) showed untested: the search returns the first n that reaches the power on curves made to test it,
the exact rejection probability is the sign test's at every level (those it reaches exactly included), and every
boundary of the inputs and every field of the results."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from core import power, stats
from core.errors import InputError
from tests.test_stats import A, B, frame, rating

# --- the search ------------------------------------------------------------------------------------------------


class StepCurve:
    """A power curve that is exactly `target` from `first` neurons on and lower before: the answer is `first`. It
    takes only whole numbers of neurons, and none so large that the real curve would build arrays of more than
    twice the search's limit."""

    def __init__(self, first: int, target: float = 0.8) -> None:
        self.first, self.target = first, target

    def __call__(self, n_neurons: int) -> float:
        assert isinstance(n_neurons, int), n_neurons
        assert 0 <= n_neurons <= 2 * power._MAX_NEURONS + 2, n_neurons
        return self.target if n_neurons >= self.first else self.target / 2


@pytest.mark.parametrize(
    ("first", "guess"),
    [
        (1, 1), (1, 10), (2, 3), (7, 100), (500, 100), (2999, 2000),  # stepping near the guess
        (20_000, 1000),  # past 4 × 3000 while stepping: bisection takes over
        (4321, 5000), (4320, 5000), (2, 5000), (4321, 20_000), (20_000, 5000),  # bisection, guesses either side
        (999_999, 62_499),  # doubling lands exactly on the limit, which is still searched
        (800_000, 2e8),  # a guess far beyond the limit is searched within it
    ],
)  # fmt: skip
def test_the_search_returns_the_first_n_that_reaches_the_target(first: int, guess: float) -> None:
    assert power._first_reaching(StepCurve(first), 0.8, guess) == first


@pytest.mark.parametrize(("first", "guess"), [(1_000_001, 5000), (2_000_000, 62_499), (10**9, 2e8)])
def test_the_search_gives_up_beyond_a_million_neurons(first: int, guess: float) -> None:
    assert power._first_reaching(StepCurve(first), 0.8, guess) is None


@pytest.mark.parametrize("alpha", [0.05, 2 / 32, 2 / 64, 0.01, 0.2])
def test_the_exact_rejection_probability_is_the_sign_tests_at_every_level(alpha: float) -> None:
    # At alpha = 2/32 the test rejects 5 of 5 exactly (p = 2/32): the level itself must count as rejecting.
    leaning = np.arange(0, 15)
    for share in (0.5, 0.8):
        expected = []
        for count in leaning:
            k = np.arange(count + 1)
            p_values = stats.sign_tests(k, np.full_like(k, count))  # scipy's binomtest, many at once
            expected.append(scipy_stats.binom.pmf(k, count, share)[p_values <= alpha].sum())
        assert power._rejection(leaning, share, alpha) == pytest.approx(expected, abs=1e-12)
    assert power.detectable_effect(5, 0.0, 1, 0.0, alpha=2 / 32).win_rate is not None


def test_the_power_curve_gives_the_same_power_whatever_it_computed_before() -> None:
    design = power.Design(0.1, 3, 0.2)
    curve = power._PowerCurve(0.7, design)
    sequence = [10, 65, 3, 200, 65, 0, 131]
    assert [curve(n) for n in sequence] == pytest.approx([power._PowerCurve(0.7, design)(n) for n in sequence])
    assert curve(0) == 0.0


# --- inputs and results ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"alpha": 0.0}, "alpha 0.0 must be between 0 and 1"),
        ({"alpha": 1.0}, "alpha 1.0 must be between 0 and 1"),
        ({"alpha": 1.5}, "alpha 1.5 must be between 0 and 1"),
        ({"power": 0.0}, "power 0.0 must be between 0 and 1"),
        ({"power": 1.0}, "power 1.0 must be between 0 and 1"),
        ({"power": 1.5}, "power 1.5 must be between 0 and 1"),
        ({"icc": 1.0, "ratings_per_item": 0},
         "icc 1.0 must be at least 0 and below 1; ratings per item 0 must be a whole number, at least 1"),
    ],
)  # fmt: skip
def test_a_design_refuses_levels_outside_0_1_and_names_every_problem(settings: dict, message: str) -> None:
    with pytest.raises(InputError, match=f"^{message}$"):
        power.Design(**{"icc": 0.1, "ratings_per_item": 2, "tie_share": 0.2, **settings})


def test_win_rates_of_0_and_1_and_fewer_than_one_neuron_are_refused() -> None:
    for win_rate in (0.0, 1.0, 0.5):
        with pytest.raises(InputError, match=f"^win rate {win_rate} must be between 0 and 1 and not 1/2"):
            power.neurons_needed(win_rate, 0.0, 1, 0.0)
    with pytest.raises(InputError, match=r"^0 neurons: the number of neurons must be at least 1$"):
        power.detectable_effect(0, 0.0, 1, 0.0)
    one = power.detectable_effect(1, 0.0, 1, 0.0)
    assert (one.n_neurons, one.win_rate, one.achieved_power) == (1, None, None)
    assert one.note.startswith("even a win rate of 1 reaches only power 0.00 with 1 neurons")


def test_the_results_carry_their_design_and_inputs() -> None:
    needed = power.neurons_needed(0.65, 0.1, 3, 0.2, alpha=0.01, power=0.9)
    lean_a, lean_b = power.leaning_probabilities(0.65, needed.design)
    assert (needed.win_rate, needed.leaning_share, needed.note) == (0.65, pytest.approx(lean_a + lean_b), None)
    assert (needed.design.alpha, needed.design.power) == (0.01, 0.9)
    effect = power.detectable_effect(120, 0.1, 3, 0.2, alpha=0.01, power=0.9)
    assert (effect.n_neurons, effect.design.alpha, effect.design.power) == (120, 0.01, 0.9)
    assert effect.achieved_power >= 0.9
    assert json.loads(json.dumps(effect.to_json()))["design_effect"] == pytest.approx(1 + (2.4 - 1) * 0.1)
    hopeless = power.detectable_effect(5, 0.0, 1, 0.0)
    assert (hopeless.n_neurons, hopeless.design) == (5, power.Design(0.0, 1, 0.0))


# --- the design read from a study's ratings ----------------------------------------------------------------------


def test_anova_icc_at_its_edges() -> None:
    # One rating per group: nothing varies within groups, no estimate.
    assert power.anova_icc(pd.Series([1, 0]), pd.Series([0, 1])) is None
    # Every outcome the same: no variance at all, so no correlation.
    assert power.anova_icc(pd.Series([1, 1, 1, 1]), pd.Series([0, 0, 1, 1])) == 0.0
    # Groups {1, 1, 0}, {0, 0, 0}: MSB = 3·(1/3)²·2 = 2/3, MSW = (2/3)/4 = 1/6, n₀ = 3, so the denominator is
    # 2/3 + 2·1/6 = 1 and ICC = (2/3 − 1/6)/1 = 1/2.
    assert power.anova_icc(pd.Series([1, 1, 0, 0, 0, 0]), pd.Series([0, 0, 0, 1, 1, 1])) == pytest.approx(0.5)


def ratings_of(per_neuron: list[list[str]]) -> pd.DataFrame:
    """Ratings of A (left) against B, neuron by neuron: each choice of one neuron's list from its own rater."""
    return frame(
        [
            rating(neuron, f"r{i}", choice, model="toy", neuron=f"0:{neuron}")
            for neuron, choices in enumerate(per_neuron)
            for i, choice in enumerate(choices)
        ]
    )


def test_the_design_read_from_ratings_and_what_it_says_it_assumed() -> None:
    two_each = ratings_of([["left", "right"], ["left", "left"], ["right", "tie"], ["left", "left"]])
    found = power.detectable_from_data(two_each, A, B, power=0.9)
    icc = power.anova_icc(pd.Series([1, 0, 1, 1, 0, 1, 1]), pd.Series([0, 0, 1, 1, 2, 3, 3]))
    assert (found.arm_a, found.arm_b, found.n_neurons, found.mean_ratings_per_neuron) == (A, B, 4, 2.0)
    assert (found.tie_share, found.icc, found.icc_method, found.note) == (0.125, icc, power.ICC_METHOD, None)
    assert found.effect == power.detectable_effect(4, icc, 2, 0.125, power=0.9)
    # One rating per neuron: the ICC cannot be estimated (0 assumed), and one rating is not rounded up.
    single = power.detectable_from_data(ratings_of([["left"]] * 12 + [["right"]] * 3), A, B)
    assert single.icc is None and single.note == (
        "the ICC could not be estimated (too few neurons with decisive ratings): 0 assumed"
    )
    assert single.effect == power.detectable_effect(15, 0.0, 1, 0.0)
    # 2.5 ratings per neuron are rounded (to even) and both notes are given.
    uneven = power.detectable_from_data(ratings_of([["left", "left", "right"], ["tie", "both_bad"]]), A, B)
    assert uneven.note == (
        "the ICC could not be estimated (too few neurons with decisive ratings): 0 assumed; "
        "2.50 ratings per neuron, rounded to 2"
    )
    ties = power.detectable_from_data(ratings_of([["tie", "both_bad"], ["tie"]]), A, B)
    assert (ties.effect, ties.tie_share) == (None, 1.0)
    assert ties.note.endswith("rounded to 2; no decisive rating: nothing to detect with")
    missing = power.detectable_from_data(two_each, A, "avhs")
    assert (missing.arm_a, missing.arm_b, missing.n_neurons, missing.icc_method, missing.effect) == (
        A, "avhs", 0, power.ICC_METHOD, None
    )  # fmt: skip
    as_json = json.loads(json.dumps(found.to_json()))
    assert as_json["effect"] == json.loads(json.dumps(found.effect.to_json()))
    assert json.loads(json.dumps(ties.to_json()))["effect"] is None
