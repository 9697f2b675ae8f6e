"""Sample sizes and detectable effects of the neuron-level sign test, against known values, brute force and
simulated studies; and the `study power` command."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from core import human_eval, power, stats
from core.__main__ import main as cli_main
from core.errors import InputError
from tests.simulated_study import (
    BETA_2_2_SPREAD,
    SIMULATED_ARMS,
    add_raters,
    explain_neurons,
    prefers,
    run_raters,
    simulate_outcomes,
    simulate_study,
    study_frame,
)


@pytest.mark.parametrize(("win_rate", "expected"), [(0.60, 199), (0.65, 90), (0.70, 49)])
def test_independent_decisive_comparisons_need_the_known_numbers(win_rate: float, expected: int) -> None:
    # One decisive rating per neuron and no neuron variation: the exact binomial test's textbook sample sizes.
    needed = power.neurons_needed(win_rate, icc=0.0, ratings_per_item=1, tie_share=0.0)
    assert needed.n_neurons == pytest.approx(expected, abs=2)
    assert needed.achieved_power >= 0.8
    assert power.neurons_needed(1 - win_rate, 0.0, 1, 0.0).n_neurons == needed.n_neurons  # either side of 1/2


def brute_force(win_rate: float, design: power.Design, limit: int = 400) -> int:
    """The first n whose exact sign-test power reaches the target, by summing over every outcome of n neurons."""
    lean_a, lean_b = power.leaning_probabilities(win_rate, design)
    for n in range(1, limit):
        total = 0.0
        for leaning in range(n + 1):
            k = np.arange(leaning + 1)
            p_values = stats.sign_tests(k, np.full_like(k, leaning))  # scipy's binomtest, many at once
            reject = scipy_stats.binom.pmf(k, leaning, lean_a / (lean_a + lean_b))[p_values <= design.alpha].sum()
            total += scipy_stats.binom.pmf(leaning, n, lean_a + lean_b) * reject
        if total >= design.power:
            return n
    raise AssertionError("no n below the limit")


@pytest.mark.parametrize(
    ("win_rate", "icc", "ratings_per_item", "tie_share"), [(0.75, 0.0, 2, 0.3), (0.8, 0.2, 3, 0.1), (0.7, 0.1, 1, 0.2)]
)
def test_the_search_finds_the_first_n_that_brute_force_finds(
    win_rate: float, icc: float, ratings_per_item: int, tie_share: float
) -> None:
    design = power.Design(icc, ratings_per_item, tie_share)
    needed = power.neurons_needed(win_rate, icc, ratings_per_item, tie_share)
    assert needed.n_neurons == brute_force(win_rate, design)


def test_leaning_probabilities_by_hand() -> None:
    # Two ratings, no ties, p = 0.7 for every neuron: leans A on AA (0.49), B on BB (0.09), drops the split.
    lean_a, lean_b = power.leaning_probabilities(0.7, power.Design(0.0, 2, 0.0))
    assert (lean_a, lean_b) == (pytest.approx(0.49), pytest.approx(0.09))
    # One rating with 20% ties: leans A 0.8·0.7, B 0.8·0.3.
    assert power.leaning_probabilities(0.7, power.Design(0.0, 1, 0.2)) == pytest.approx((0.56, 0.24))
    # ICC 1/3 makes p_n ~ Beta(1.4, 0.6) (concentration 2): P(AA) = E[p²] = 0.7·(1.4 + 1)/(2 + 1) = 0.56.
    assert power.leaning_probabilities(0.7, power.Design(1 / 3, 2, 0.0))[0] == pytest.approx(0.56)


def test_design_effect_figure_and_what_raises_the_sample_size() -> None:
    needed = power.neurons_needed(0.65, icc=0.1, ratings_per_item=3, tie_share=0.2)
    assert needed.design.decisive_per_neuron == pytest.approx(2.4)
    assert needed.design.design_effect == pytest.approx(1 + 1.4 * 0.1)
    z = scipy_stats.norm.ppf(0.975) * 0.5 + scipy_stats.norm.ppf(0.8) * math.sqrt(0.65 * 0.35)
    assert needed.n_neurons_design_effect == math.ceil((z / 0.15) ** 2 * 1.14 / 2.4)
    assert power.neurons_needed(0.65, 0.3, 3, 0.2).n_neurons > needed.n_neurons  # neurons differ more
    assert power.neurons_needed(0.65, 0.1, 3, 0.5).n_neurons > needed.n_neurons  # more ties
    assert power.neurons_needed(0.65, 0.1, 3, 0.2, power=0.9).n_neurons > needed.n_neurons
    assert power.neurons_needed(0.65, 0.1, 3, 0.2, alpha=0.01).n_neurons > needed.n_neurons
    as_json = json.loads(json.dumps(needed.to_json()))
    assert as_json["n_neurons"] == needed.n_neurons and as_json["design_effect"] == pytest.approx(1.14)


def test_detectable_effect_inverts_neurons_needed() -> None:
    needed = power.neurons_needed(0.65, 0.1, 3, 0.2)
    effect = power.detectable_effect(needed.n_neurons, 0.1, 3, 0.2)
    assert 0.5 < effect.win_rate <= 0.65 + 1e-4
    assert effect.achieved_power == pytest.approx(0.8, abs=0.01)
    assert power.detectable_effect(needed.n_neurons * 4, 0.1, 3, 0.2).win_rate < effect.win_rate
    # Five neurons can never reach p < 0.05 (the smallest two-sided p is 2/32).
    hopeless = power.detectable_effect(5, 0.0, 1, 0.0)
    assert hopeless.win_rate is None and hopeless.note == (
        "even a win rate of 1 reaches only power 0.00 with 5 neurons: the sign test needs more neurons that lean "
        "one way"
    )


@pytest.mark.parametrize(
    "arguments",
    [(0.5, 0.1, 3, 0.2), (1.2, 0.1, 3, 0.2), (0.6, 1.0, 3, 0.2), (0.6, 0.1, 0, 0.2), (0.6, 0.1, 3, 1.0)],
)
def test_impossible_designs_are_input_errors(arguments: tuple) -> None:
    with pytest.raises(InputError):
        power.neurons_needed(*arguments)


@pytest.mark.parametrize(
    ("win_rate", "icc", "ratings_per_item", "tie_share"), [(0.65, 0.1, 3, 0.2), (0.7, 0.3, 5, 0.1)]
)
def test_simulated_studies_of_the_computed_size_reach_the_power(
    win_rate: float, icc: float, ratings_per_item: int, tie_share: float
) -> None:
    n_neurons = power.neurons_needed(win_rate, icc, ratings_per_item, tie_share).n_neurons
    # The same model, simulated: each neuron's latent share is Beta with sd sqrt(ICC·p(1 − p)).
    simulated = simulate_outcomes(
        400,
        neurons=n_neurons,
        ratings_per_neuron=ratings_per_item,
        latent_spread=math.sqrt(icc * win_rate * (1 - win_rate)),
        preference=win_rate,
        undecided=tie_share,
        seed=3,
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = simulated.wins_a / simulated.decisive
    leaning_a, leaning_b = (shares > 0.5).sum(axis=1), (shares < 0.5).sum(axis=1)
    rejected = stats.sign_tests(leaning_a, leaning_a + leaning_b) < 0.05
    assert rejected.mean() >= 0.75
    # The same test as the study's primary analysis runs it, on the first studies.
    for study in range(3):
        primary = stats.neuron_level(study_frame(simulated, study), *SIMULATED_ARMS)
        assert (primary.p_value < 0.05) == rejected[study]


def test_anova_icc_by_hand_and_on_simulated_studies() -> None:
    # Groups {1, 1, 1}, {0, 0, 0}: all variance between groups → 1, clipped to 0.99.
    outcomes = pd.Series([1, 1, 1, 0, 0, 0])
    assert power.anova_icc(outcomes, pd.Series([0, 0, 0, 1, 1, 1])) == pytest.approx(0.99)
    # Groups {1, 0}, {1, 0}: MSB = 0, MSW = 1/2 → negative, clipped to 0.
    assert power.anova_icc(pd.Series([1, 0, 1, 0]), pd.Series([0, 0, 1, 1])) == 0.0
    # Groups {1, 1, 1, 0}, {1, 0, 0, 0}: means 3/4, 1/4, grand mean 1/2. MSB = 4·(1/4)²·2 / 1 = 1/2; within sums of
    # squares 2·(3·(1/4)² + (3/4)²) = 3/2 over 6 → MSW = 1/4; n₀ = 4: ICC = (1/2 − 1/4)/(1/2 + 3·1/4) = 0.2.
    outcomes, groups = pd.Series([1, 1, 1, 0, 1, 0, 0, 0]), pd.Series([0, 0, 0, 0, 1, 1, 1, 1])
    assert power.anova_icc(outcomes, groups) == pytest.approx(0.2)
    assert power.anova_icc(pd.Series([1, 0]), pd.Series([0, 0])) is None
    ratings = simulate_study(neurons=300, ratings_per_neuron=6, latent_spread=BETA_2_2_SPREAD, seed=4)
    decisive = ratings[ratings["choice"].isin(stats.DECISIVE)]
    # Beta(2, 2): variance 1/20 over p(1 − p) = 1/4 → ICC 0.2.
    estimate = power.anova_icc(decisive["winner_arm"] == SIMULATED_ARMS[0], decisive["neuron"])
    assert estimate == pytest.approx(0.2, abs=0.07)


def test_detectable_from_data_reads_the_design_from_the_ratings() -> None:
    ratings = simulate_study(
        neurons=40, ratings_per_neuron=3, latent_spread=BETA_2_2_SPREAD, undecided=0.25, preference=0.6, seed=5
    )
    found = power.detectable_from_data(ratings, *SIMULATED_ARMS)
    assert (found.n_neurons, found.mean_ratings_per_neuron) == (40, 3.0)
    assert found.tie_share == pytest.approx(0.25, abs=0.08)
    assert found.effect.win_rate == pytest.approx(
        power.detectable_effect(40, found.icc, 3, found.tie_share).win_rate, abs=1e-9
    )
    json.dumps(found.to_json())
    missing = power.detectable_from_data(ratings, SIMULATED_ARMS[0], "avhs")
    assert missing.effect is None and "no rating" in missing.note


def test_the_power_command_plans_and_reads_a_study(db, db_path, capsys) -> None:
    argv = ["study", "power", "--win-rate", "0.65", "--icc", "0", "--ratings-per-item", "1", "--db", str(db_path)]
    assert cli_main(argv) == 0
    assert capsys.readouterr().out.splitlines()[0] == "neurons needed: 90"
    assert cli_main([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_neurons"] == 90
    assert cli_main(["study", "power", "--win-rate", "0.65", "--db", str(db_path)]) == 2
    assert "--icc" in capsys.readouterr().err
    neurons = explain_neurons(db, 12)
    human_eval.create_study(db, "S", "summary,original", neurons, 3, seed=2)
    add_raters(db, ["ann", "bob", "cyd"])
    rng = random.Random(6)
    run_raters(db, "S", {name: prefers("summary", 0.7, rng) for name in ("ann", "bob", "cyd")})
    assert cli_main(["study", "power", "S", "--db", str(db_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("study 'S', summary over original: smallest detectable win rate")
    assert "12 neurons" in out
    assert cli_main(["study", "power", "S", "--json", "--db", str(db_path)]) == 0
    assert json.loads(capsys.readouterr().out)["n_neurons"] == 12
    assert cli_main(["study", "power", "S", "--win-rate", "0.6", "--db", str(db_path)]) == 2


def test_large_samples_are_found_by_bisection_near_the_normal_approximation() -> None:
    needed = power.neurons_needed(0.51, 0.0, 1, 0.0)
    assert needed.n_neurons > power._EXACT_SCAN_LIMIT
    assert needed.n_neurons == pytest.approx(needed.n_neurons_design_effect, rel=0.02)
    assert needed.achieved_power >= 0.8
