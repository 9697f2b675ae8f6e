"""A simulated study for human-evaluation tests: explained neurons in a real SQLite file and synthetic raters."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import sqlite_utils

from core import db as dbmod
from core import human_eval
from core.raters import add_rater

MODEL = "toy-model"
# One imported explainer label for every format: arms name explainers exactly as stored (`gpt-4` is not
# `openai:gpt-4`), so the studies' `FORMAT@gpt-4` arms resolve to these rows alone.
EXPLAINERS = {"summary": "gpt-4", "original": "gpt-4", "highlight": "gpt-4", "avhs": "gpt-4"}
# Words that name arms, formats or explainers; none of them may reach a rater.
ARM_WORDS = ("summary", "original", "highlight", "avhs", "gpt", "openai", "truth", "decoy", "arm", "format")

Chooser = Callable[[dict[str, Any]], str]


def explain_neurons(
    db: sqlite_utils.Database,
    count: int,
    formats: Sequence[str] = ("summary", "original"),
    layer: int = 0,
    model: str = MODEL,
) -> list[str]:
    """Store one ok explanation per neuron and format (texts name neither) and return the neurons as `layer:index`."""
    for index in range(count):
        for variant, name in enumerate(formats):
            dbmod.insert_explanation(
                db,
                model=model,
                layer=layer,
                neuron=index,
                format=name,
                explainer=EXPLAINERS[name],
                explanation=f"words about theme {index}, variant {variant}",
                source="imported",
            )
    return [f"{layer}:{index}" for index in range(count)]


def prefers(arm: str, share: float, rng: random.Random) -> Chooser:
    """A synthetic rater who picks `arm` with probability `share` (never ties) and answers gold items right."""

    def choose(item: dict[str, Any]) -> str:
        if item["is_gold"]:
            return item["gold_choice"]
        wants_arm = rng.random() < share
        return "left" if (item["left_arm"] == arm) == wants_arm else "right"

    return choose


def run_raters(db: sqlite_utils.Database, study: str, raters: dict[str, Chooser]) -> int:
    """Let each rater take turns asking for the next item and rating it until every one is done; the choosers see
    the admin's unblinded item. Returns the number of ratings written."""
    admin_view = {item["item_id"]: item for item in human_eval.study_items(db, study)}
    for name in raters:
        human_eval.assign_studies(db, name, [study])
    active, written = list(raters), 0
    while active:
        for name in list(active):
            item = human_eval.next_item(db, study, name)
            if item is None:
                active.remove(name)
                continue
            rater = dbmod.get_rater(db, name)
            assert rater is not None, f"{name} was added by add_raters"
            seen = human_eval.as_seen(admin_view[item.item_id], dbmod.shown_layout(db, item.item_id, rater["id"])[0])
            human_eval.submit_rating(db, study, name, item.item_id, raters[name](seen))
            written += 1
    return written


def add_raters(db: sqlite_utils.Database, names: Sequence[str]) -> None:
    """Raters assigned to every study there is (a rater rates only the studies they are assigned to)."""
    studies = [row["name"] for row in human_eval.list_studies(db)]
    for name in names:
        add_rater(db, name, f"code-of-{name}")
        if studies:
            human_eval.assign_studies(db, name, studies)


def count_ratings(db: sqlite_utils.Database) -> int:
    return db["ratings"].count


def rate_until_done(db_path: str, study: str, rater: str, choice: str = "left") -> int:
    """Worker for concurrency tests: its own connection, one rater, rate every item offered. Returns the count."""
    database = dbmod.connect(db_path)
    written = 0
    try:
        while (item := human_eval.next_item(database, study, rater)) is not None:
            human_eval.submit_rating(database, study, rater, item.item_id, choice)
            written += 1
    finally:
        database.conn.close()
    return written


# --- simulated ratings without a database: calibration of the study statistics (tests/test_stats.py, bench/stats.py)

from dataclasses import dataclass  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

# The spread of Beta(2, 2), whose mean is 1/2: sd = sqrt(1/20). A neuron's latent share then lies mostly in 0.1–0.9.
BETA_2_2_SPREAD = 0.05**0.5
SIMULATED_ARMS = ("summary", "original")


@dataclass(frozen=True)
class SimulatedStudies:
    """Many simulated studies of one pair of arms, one item per neuron (as `plan_items` makes them). Arrays are
    indexed [study, neuron] or [study, neuron, rating]; outcome is 1 (A won), 0 (B won), -1 (tie), -2 (both bad)."""

    outcome: np.ndarray
    a_left: np.ndarray
    rater: np.ndarray
    latent: np.ndarray

    @property
    def wins_a(self) -> np.ndarray:
        return (self.outcome == 1).sum(axis=2)

    @property
    def decisive(self) -> np.ndarray:
        return (self.outcome >= 0).sum(axis=2)


def simulate_outcomes(
    studies: int,
    *,
    neurons: int = 30,
    ratings_per_neuron: int = 4,
    raters: int = 8,
    latent_spread: float = 0.0,
    position_bias: float = 0.0,
    preference: float = 0.5,
    rater_spread: float = 0.0,
    undecided: float = 0.0,
    seed: int = 0,
) -> SimulatedStudies:
    """Draw `studies` studies at once. Each neuron's latent share p_n (that A beats B) is Beta with mean `preference`
    and sd `latent_spread` (0: every neuron is `preference`); a rating picks A with probability
    expit(logit p_n ± position_bias + rater shift), + when A is on the left, the rater's shift ~ N(0, rater_spread).
    A share `undecided` of ratings are ties or both-bad (half each). Half the neurons show A on the left; each
    neuron's ratings come from distinct raters when ratings_per_neuron ≤ raters."""
    rng = np.random.default_rng(seed)
    shape = (studies, neurons)
    if latent_spread > 0:
        variance = latent_spread**2
        if variance >= preference * (1 - preference):
            raise ValueError(f"latent_spread {latent_spread} is too wide for a mean of {preference}")
        concentration = preference * (1 - preference) / variance - 1
        latent = rng.beta(preference * concentration, (1 - preference) * concentration, size=shape)
    else:
        latent = np.full(shape, preference)
    a_left = rng.permuted(np.broadcast_to(np.arange(neurons) % 2 == 0, shape), axis=1)
    offset = rng.integers(0, raters, size=shape)
    rater = (offset[..., None] + np.arange(ratings_per_neuron)) % raters
    rater_shift = np.take_along_axis(
        rng.normal(0.0, rater_spread, size=(studies, raters)), rater.reshape(studies, -1), axis=1
    ).reshape(rater.shape)
    clipped = np.clip(latent, 1e-9, 1 - 1e-9)
    log_odds = np.log(clipped / (1 - clipped)) + position_bias * np.where(a_left, 1.0, -1.0)
    p_a = 1 / (1 + np.exp(-(log_odds[..., None] + rater_shift)))
    outcome = (rng.random(rater.shape) < p_a).astype(np.int8)
    undecided_draw = rng.random(rater.shape)
    outcome[undecided_draw < undecided] = -1
    outcome[undecided_draw < undecided / 2] = -2
    return SimulatedStudies(outcome, a_left, rater, latent)


def study_frame(
    simulated: SimulatedStudies, study: int = 0, arms: Sequence[str] = SIMULATED_ARMS, model: str = MODEL
) -> pd.DataFrame:
    """One simulated study as a ratings frame shaped like an export's (item_id, model, neuron `0:index`, rater,
    choice, left_arm, right_arm, winner_arm, is_gold, gold_choice): what core.stats reads."""
    arm_a, arm_b = arms
    outcome, a_left, rater = simulated.outcome[study], simulated.a_left[study], simulated.rater[study]
    rows = []
    for index, (item_outcomes, left_is_a, item_raters) in enumerate(zip(outcome, a_left, rater, strict=True)):
        left, right = (arm_a, arm_b) if left_is_a else (arm_b, arm_a)
        for result, who in zip(item_outcomes, item_raters, strict=True):
            if result < 0:
                choice, winner = ("tie" if result == -1 else "both_bad"), None
            else:
                winner = arm_a if result == 1 else arm_b
                choice = "left" if winner == left else "right"
            rows.append(
                {
                    "item_id": index + 1,
                    "model": model,
                    "neuron": f"0:{index}",
                    "rater": f"rater{who}",
                    "choice": choice,
                    "left_arm": left,
                    "right_arm": right,
                    "winner_arm": winner,
                    "is_gold": 0,
                    "gold_choice": None,
                }
            )
    return pd.DataFrame(rows)


def simulate_study(arms: Sequence[str] = SIMULATED_ARMS, **settings: Any) -> pd.DataFrame:
    """One simulated study's ratings frame; `settings` are those of `simulate_outcomes` (seed included)."""
    return study_frame(simulate_outcomes(1, **settings), 0, arms)
