"""Rater quality: qualification and continuous gold checks, speeders, straight-lining and per-rater caps, applied
as a study's plan (core.plan) says, before and during rating and again in the analysis.

Nothing here deletes a rating: a paused rater gets no more items, and the analysis leaves flagged ratings out and
counts them. Pure functions over rating rows (dicts or a DataFrame), as core.db.study_ratings and core.export
produce them: rater, is_gold, choice, gold_choice, seconds, confidence, winner_arm, left_arm, right_arm. Results are
frozen dataclasses; core.values.to_jsonable turns them into JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from core.plan import MIN_GOLD_FOR_PAUSE, STRAIGHT_LINE_MIN_ITEMS, STRAIGHT_LINE_SHARE, StudyPlan


@dataclass(frozen=True)
class Standing:
    """Whether a rater may go on: `paused` (failed qualification or fell below the gold threshold) or `capped`
    (reached the plan's cap), with a message written for the rater."""

    paused: bool = False
    capped: bool = False
    message: str | None = None

    @property
    def may_rate(self) -> bool:
        return not (self.paused or self.capped)


def _gold_correct(row: dict[str, Any]) -> bool:
    return row["choice"] == row["gold_choice"]


def standing(rows: Sequence[dict[str, Any]], plan: StudyPlan | None) -> Standing:
    """A rater's standing from their own ratings in a study, in the order they were made."""
    if plan is None:
        return Standing()
    gold = [row for row in rows if row["is_gold"]]
    k = plan.qualification_items
    if k and len(gold) >= k and sum(map(_gold_correct, gold[:k])) < plan.qualification_threshold * k:
        return Standing(
            paused=True,
            message="Thank you for your time. The first items are a short check of the task, and your answers "
            "did not match ours closely enough, so we will not ask you for more ratings in this study.",
        )
    threshold = plan.min_gold_accuracy
    checked = len(gold) >= max(k, MIN_GOLD_FOR_PAUSE)
    if threshold is not None and checked and sum(map(_gold_correct, gold)) < threshold * len(gold):
        return Standing(
            paused=True,
            message="Thank you for your ratings. Your answers on our check items have drifted from what we "
            "expect, so your ratings are paused for now; the study's admin may get in touch.",
        )
    regular = [row for row in rows if not row["is_gold"]]
    if plan.rater_cap is not None and len(regular) >= plan.rater_cap:
        return Standing(capped=True, message=f"You have rated this study's limit of {plan.rater_cap} items. Thank you!")
    return Standing()


def _straight_lining(regular: pd.DataFrame) -> bool:
    sides = regular["choice"][regular["choice"].isin(("left", "right"))]
    if len(sides) < STRAIGHT_LINE_MIN_ITEMS:
        return False
    return bool(sides.value_counts().iloc[0] >= STRAIGHT_LINE_SHARE * len(sides))


@dataclass(frozen=True)
class RaterFlags:
    """One rater's quality signals: regular and gold ratings, gold accuracy, median seconds, ratings faster than the
    plan's minimum, the share of left choices, straight-lining, ratings beyond the cap, and whether they are paused."""

    rater: str
    n_ratings: int
    n_gold: int
    gold_accuracy: float | None
    median_seconds: float | None
    n_fast: int
    left_share: float | None
    straight_lining: bool
    n_over_cap: int
    paused: bool


def rater_flags(ratings: pd.DataFrame, plan: StudyPlan | None) -> list[RaterFlags]:
    """Per rater: regular and gold ratings, gold accuracy, median seconds, how many ratings were faster than the
    plan's minimum, the share of left choices, whether they straight-lined, how many ratings lie beyond the cap,
    and whether they are paused."""
    rows = []
    for rater, theirs in ratings.groupby("rater", sort=True):
        theirs = theirs.sort_values("rating_id") if "rating_id" in theirs else theirs
        regular = theirs[theirs["is_gold"] == 0]
        gold = theirs[theirs["is_gold"] == 1]
        seconds = pd.to_numeric(regular["seconds"], errors="coerce")
        sides = regular["choice"].isin(("left", "right"))
        rows.append(
            RaterFlags(
                rater=rater,
                n_ratings=len(regular),
                n_gold=len(gold),
                gold_accuracy=float((gold["choice"] == gold["gold_choice"]).mean()) if len(gold) else None,
                median_seconds=float(seconds.median()) if seconds.notna().any() else None,
                n_fast=int((seconds < plan.min_seconds).sum()) if plan and plan.min_seconds is not None else 0,
                left_share=float((regular["choice"][sides] == "left").mean()) if sides.any() else None,
                straight_lining=_straight_lining(regular),
                n_over_cap=max(0, len(regular) - plan.rater_cap) if plan and plan.rater_cap else 0,
                paused=standing(theirs.to_dict("records"), plan).paused,
            )
        )
    return rows


@dataclass(frozen=True)
class Exclusions:
    """What the plan's rules left out of the analysis: raters (paused or straight-lining) and single ratings
    (too fast, or beyond a rater's cap), with the number of regular ratings each rule removed."""

    paused_raters: tuple[str, ...] = ()
    straight_lining_raters: tuple[str, ...] = ()
    n_paused: int = 0
    n_straight_lining: int = 0
    n_fast: int = 0
    n_over_cap: int = 0


def apply_plan(ratings: pd.DataFrame, plan: StudyPlan | None) -> tuple[pd.DataFrame, Exclusions]:
    """The ratings the plan keeps, and what it left out. Without a plan, everything is kept."""
    if plan is None or ratings.empty:
        return ratings, Exclusions()
    flags = {row.rater: row for row in rater_flags(ratings, plan)}
    paused = sorted(rater for rater, row in flags.items() if row.paused)
    lining = sorted(rater for rater, row in flags.items() if row.straight_lining and not row.paused)
    regular = ratings["is_gold"] == 0
    drop_rater = ratings["rater"].isin(paused + lining if plan.exclude_straight_lining else paused)
    seconds = pd.to_numeric(ratings["seconds"], errors="coerce")
    fast = regular & ~drop_rater & (seconds < plan.min_seconds if plan.min_seconds is not None else False)
    over_cap = pd.Series(False, index=ratings.index)
    if plan.rater_cap is not None:
        order = ratings[regular].sort_values("rating_id") if "rating_id" in ratings else ratings[regular]
        rank = order.groupby("rater").cumcount()
        over_cap.loc[rank.index] = rank >= plan.rater_cap
        over_cap &= ~drop_rater & ~fast
    kept = ratings[~(drop_rater | fast | over_cap)]
    return kept, Exclusions(
        paused_raters=tuple(paused),
        straight_lining_raters=tuple(lining if plan.exclude_straight_lining else ()),
        n_paused=int((regular & ratings["rater"].isin(paused)).sum()),
        n_straight_lining=int((regular & ratings["rater"].isin(lining)).sum()) if plan.exclude_straight_lining else 0,
        n_fast=int(fast.sum()),
        n_over_cap=int(over_cap.sum()),
    )


@dataclass(frozen=True)
class ConfidenceWinRate:
    """Arm A's share of the decisive ratings of a pair given at one confidence level ('none' when not given)."""

    confidence: str
    n: int
    wins_a: int
    win_rate: float


def by_confidence(ratings: pd.DataFrame, arm_a: str, arm_b: str) -> list[ConfidenceWinRate]:
    """Arm A's share of decisive ratings of the pair at each confidence level (1–5; 'none' when not given)."""
    pair = ratings[
        (ratings["is_gold"] == 0)
        & ratings["left_arm"].isin((arm_a, arm_b))
        & ratings["right_arm"].isin((arm_a, arm_b))
        & ratings["winner_arm"].isin((arm_a, arm_b))
    ]
    levels = pd.Series(
        ["none" if pd.isna(value) else str(int(value)) for value in pair["confidence"]], index=pair.index, dtype=str
    )
    rows = []
    for level, group in pair.groupby(levels, sort=True):
        wins = int((group["winner_arm"] == arm_a).sum())
        rows.append(ConfidenceWinRate(str(level), len(group), wins, wins / len(group)))
    return rows


def median_seconds(ratings: pd.DataFrame) -> float | None:
    values = pd.to_numeric(ratings.loc[ratings["is_gold"] == 0, "seconds"], errors="coerce").dropna()
    return float(np.median(values)) if len(values) else None
