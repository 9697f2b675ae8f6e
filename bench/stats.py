"""Calibration of the study's primary test, two ways side by side, on simulated studies where no arm is better:

- rating level: every rating an independent trial (`core.stats.win_rate`: binomial sign test, Wilson CI),
- neuron level: one share per neuron (`core.stats.neuron_level`: sign test over neurons, cluster-bootstrap CI).

    .venv/bin/python -m bench.stats                  # 500 studies per setting, about 20 s on 2 CPU cores
    .venv/bin/python -m bench.stats --studies 2000

For each setting it prints the false-positive rate at nominal 5% (how often p < 0.05 although the arms are equal)
and the CI coverage (how often the 95% CI holds the truth, 1/2). Neuron variation means each neuron has its own
latent share p_n ~ Beta(2, 2) that A beats B, mean 1/2; without it every rating is a fair coin. Studies come from
tests/simulated_study.py: one item per neuron, A on the left for half of them, each neuron rated by distinct raters.

Then three short checks: the power that simulated studies of core.power's computed size reach (target 80%), rater
agreement at chance with three arms, coded by the arm chosen (the old coding) and relative to the item's pair
(`core.stats.agreement`, the coding the summary uses), and the Bradley–Terry bootstrap's refits: choix one resample
at a time against core.stats.mm_strengths on all resamples at once (why the bootstrap keeps its own MM fit).
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from collections.abc import Sequence

import choix
import numpy as np
import pandas as pd

from core import power, stats
from tests.simulated_study import BETA_2_2_SPREAD, SIMULATED_ARMS, simulate_outcomes, study_frame

NOMINAL = 0.05
TRUTH = 0.5
# (label, ratings per neuron, sd of the neurons' latent shares)
SETTINGS = [
    ("4 ratings, no neuron variation", 4, 0.0),
    ("4 ratings, neuron variation", 4, BETA_2_2_SPREAD),
    ("8 ratings, neuron variation", 8, BETA_2_2_SPREAD),
]


def covers(interval: Sequence[float | None] | None) -> bool:
    if interval is None or interval[0] is None or interval[1] is None:
        return False
    return interval[0] <= TRUTH <= interval[1]


def calibrate(
    studies: int, neurons: int, ratings_per_neuron: int, spread: float, raters: int, seed: int
) -> dict[str, float]:
    """False positives and CI coverage of both tests over `studies` simulated studies of one setting."""
    simulated = simulate_outcomes(
        studies,
        neurons=neurons,
        ratings_per_neuron=ratings_per_neuron,
        raters=raters,
        latent_spread=spread,
        seed=seed,
    )
    counts = {"rating_fp": 0, "rating_cover": 0, "neuron_fp": 0, "neuron_cover": 0}
    for study in range(studies):
        ratings = study_frame(simulated, study)
        rating_level = stats.win_rate(ratings, *SIMULATED_ARMS)
        neuron_level = stats.neuron_level(ratings, *SIMULATED_ARMS, seed=study)
        counts["rating_fp"] += rating_level.binomial_p is not None and rating_level.binomial_p < NOMINAL
        counts["rating_cover"] += covers(rating_level.wilson_ci)
        counts["neuron_fp"] += neuron_level.p_value is not None and neuron_level.p_value < NOMINAL
        counts["neuron_cover"] += covers(neuron_level.ci)
    return {key: value / studies for key, value in counts.items()}


# (win rate, ICC, ratings per item, tie share) of the power check
POWER_DESIGNS = [(0.65, 0.1, 3, 0.2), (0.6, 0.0, 1, 0.0), (0.7, 0.3, 5, 0.1)]


def simulated_power(
    studies: int, win_rate: float, icc: float, ratings: int, ties: float, seed: int
) -> tuple[int, float]:
    """core.power's neurons needed, and how often the sign test over that many simulated neurons rejects at 5%."""
    n_neurons = power.neurons_needed(win_rate, icc, ratings, ties).n_neurons
    assert n_neurons is not None, "every power design here is reachable"
    simulated = simulate_outcomes(
        studies,
        neurons=n_neurons,
        ratings_per_neuron=ratings,
        latent_spread=math.sqrt(icc * win_rate * (1 - win_rate)),
        preference=win_rate,
        undecided=ties,
        seed=seed,
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = simulated.wins_a / simulated.decisive
    leaning_a, leaning_b = (shares > 0.5).sum(axis=1), (shares < 0.5).sum(axis=1)
    return n_neurons, float(np.mean(stats.sign_tests(leaning_a, leaning_a + leaning_b) < NOMINAL))


def chance_agreement(items: int, seed: int) -> tuple[float, float]:
    """Krippendorff's α of three raters choosing left, right or tie at random on items of random pairs of three
    arms: coded by the arm chosen, and relative to the pair."""
    arms, rng, rows = ["summary", "original", "highlight"], random.Random(seed), []
    for item in range(items):
        left, right = rng.sample(arms, 2)
        for rater in range(3):
            choice = rng.choice(["left", "right", "tie"])
            winner = {"left": left, "right": right}.get(choice)
            rows.append(
                {
                    "item_id": item,
                    "rater": f"r{rater}",
                    "choice": choice,
                    "left_arm": left,
                    "right_arm": right,
                    "winner_arm": winner,
                    "is_gold": 0,
                }
            )
    ratings = pd.DataFrame(rows)
    by_arm = pd.DataFrame(
        {"unit": ratings["item_id"], "rater": ratings["rater"], "label": stats.outcome_labels(ratings)}
    )
    relative = stats.agreement(ratings, arms, resamples=200).krippendorff_alpha
    return stats.krippendorff_alpha(by_arm), math.nan if relative is None else relative


def bootstrap_refits(arms: int, resamples: int, seed: int) -> tuple[float, float, float]:
    """Seconds to refit `resamples` Bradley–Terry win matrices of `arms` arms with choix (one call each) and with
    core.stats.mm_strengths (one call for all), and the largest difference between their strengths."""
    rng = np.random.default_rng(seed)
    wins = rng.integers(0, 40, size=(resamples, arms, arms)) + stats.BT_PRIOR
    wins *= 1 - np.eye(arms)
    started = time.perf_counter()
    by_choix = np.array([choix.ilsr_pairwise_dense(matrix, tol=1e-9, max_iter=10_000) for matrix in wins])
    choix_seconds = time.perf_counter() - started
    started = time.perf_counter()
    by_mm = stats.mm_strengths(wins, tolerance=1e-9)
    return choix_seconds, time.perf_counter() - started, float(np.max(np.abs(by_choix - by_mm)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=500, help="simulated studies per setting (%(default)s)")
    parser.add_argument("--neurons", type=int, default=30, help="neurons per study (%(default)s)")
    parser.add_argument("--raters", type=int, default=8, help="raters per study (%(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first setting; +1 per setting")
    args = parser.parse_args(argv)

    print(f"{args.studies} studies per setting, {args.neurons} neurons, {args.raters} raters, no true preference")
    print(f"{'setting':<34}{'FPR rating':>11}{'FPR neuron':>11}{'÷':>7}{'cover rating':>14}{'cover neuron':>14}")
    started = time.perf_counter()
    for offset, (label, ratings_per_neuron, spread) in enumerate(SETTINGS):
        result = calibrate(args.studies, args.neurons, ratings_per_neuron, spread, args.raters, args.seed + offset)
        ratio = result["rating_fp"] / result["neuron_fp"] if result["neuron_fp"] else float("inf")
        print(
            f"{f'{args.neurons} × {label}':<34}{result['rating_fp']:>11.1%}{result['neuron_fp']:>11.1%}"
            f"{ratio:>6.1f}×{result['rating_cover']:>14.1%}{result['neuron_cover']:>14.1%}"
        )
    print(
        f"nominal: FPR {NOMINAL:.0%}, coverage {1 - NOMINAL:.0%}; ÷ is rating-level FPR over neuron-level FPR "
        f"({time.perf_counter() - started:.0f} s)"
    )
    print(f"\npower at core.power's sample size, {args.studies} simulated studies each (target 80%)")
    print(f"{'win rate · ICC · ratings · ties':<34}{'neurons':>9}{'power':>9}")
    for offset, (win_rate, icc, ratings, ties) in enumerate(POWER_DESIGNS):
        n_neurons, reached = simulated_power(args.studies, win_rate, icc, ratings, ties, args.seed + offset)
        print(f"{f'{win_rate} · {icc} · {ratings} · {ties:.0%}':<34}{n_neurons:>9}{reached:>9.1%}")
    by_arm, relative = chance_agreement(600, args.seed)
    print(f"\nα of raters at chance, 3 arms, 600 items: by arm {by_arm:.3f}, relative to the pair {relative:.3f}")
    resamples = stats.BOOTSTRAP_RESAMPLES
    print(f"\nBradley–Terry refits of {resamples} bootstrap resamples (the summary's bootstrap)")
    print(f"{'arms':<34}{'choix':>9}{'MM':>9}{'÷':>7}{'max diff':>10}")
    for arms in (3, 5, 8):
        by_choix, by_mm, difference = bootstrap_refits(arms, resamples, args.seed)
        print(f"{arms:<34}{by_choix:>8.2f}s{by_mm:>8.2f}s{by_choix / by_mm:>6.0f}×{difference:>10.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
