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
# Generated explanations carry the backend prefix, imported ones do not: arms must match both.
EXPLAINERS = {"summary": "gpt-4", "original": "openai:gpt-4", "highlight": "gpt-4", "avhs": "openai:gpt-4"}
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
    active, written = list(raters), 0
    while active:
        for name in list(active):
            item = human_eval.next_item(db, study, name)
            if item is None:
                active.remove(name)
                continue
            human_eval.submit_rating(db, study, name, item.item_id, raters[name](admin_view[item.item_id]))
            written += 1
    return written


def add_raters(db: sqlite_utils.Database, names: Sequence[str]) -> None:
    for name in names:
        add_rater(db, name, f"code-of-{name}")


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
