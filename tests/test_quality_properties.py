"""Properties of the analysis plan and of rater quality control that mutation testing (`make mutation
MODULE=quality`, tests/README.md) showed untested: every threshold at its boundary (a rater exactly at the gold
threshold stays, exactly three gold answers are enough to judge, nine of ten on one side is straight-lining), which
qualification answers count, every field of a rater's flags, and every check of a plan."""

from __future__ import annotations

import hashlib
import math

import pandas as pd
import pytest

from core import quality
from core.errors import InputError
from core.plan import INTERIM_CHOICES, MIN_GOLD_FOR_PAUSE, PRIMARY_TEST, StoredPlan, StudyPlan, check_against_study

A, B = "summary@gpt-4", "original@gpt-4"


def plan(**settings) -> StudyPlan:
    return StudyPlan(**{"primary_pair": (A, B), "target_neurons": 10, "ratings_per_item": 2, **settings})


def gold(right: bool) -> dict:
    return {"is_gold": 1, "gold_choice": "left", "choice": "left" if right else "right"}


REGULAR = {"is_gold": 0, "gold_choice": None, "choice": "left"}


# --- standing while rating -----------------------------------------------------------------------------------------


def test_without_a_plan_everyone_may_rate() -> None:
    assert quality.standing([gold(False)] * 10, None) == quality.Standing()
    assert quality.Standing().may_rate
    assert not quality.Standing(paused=True).may_rate and not quality.Standing(capped=True).may_rate


def test_qualification_is_judged_on_the_first_k_gold_answers_once_all_are_in() -> None:
    strict = plan(qualification_items=2)  # no gold threshold: both must be right
    assert quality.standing([gold(False)], strict).may_rate  # one of two in: not judged yet
    failed = quality.standing([gold(True), gold(False)], strict)
    assert failed.paused and failed.message == (
        "Thank you for your time. The first items are a short check of the task, and your answers did not match "
        "ours closely enough, so we will not ask you for more ratings in this study."
    )
    assert quality.standing([gold(True), gold(True), gold(False)], strict).may_rate  # later answers are not these
    # With a threshold of 0.5, one of two right is exactly the threshold: passed.
    half = plan(qualification_items=2, min_gold_accuracy=0.5)
    assert quality.standing([gold(True), gold(False), REGULAR], half).may_rate
    assert quality.standing([gold(False), gold(False)], half).paused
    # Regular ratings in between do not count as qualification answers.
    assert quality.standing([REGULAR, gold(True), REGULAR, gold(True)], strict).may_rate
    assert strict.qualification_threshold == 1.0 and half.qualification_threshold == 0.5


def test_continuous_gold_checks_start_at_three_answers_and_keep_a_rater_exactly_at_the_threshold() -> None:
    checks = plan(min_gold_accuracy=2 / 3)
    assert MIN_GOLD_FOR_PAUSE == 3
    assert quality.standing([gold(False), gold(False)], checks).may_rate  # two answers: too few to judge
    drifted = quality.standing([gold(False), gold(False), gold(True)], checks)
    assert drifted.paused and drifted.message == (
        "Thank you for your ratings. Your answers on our check items have drifted from what we expect, so your "
        "ratings are paused for now; the study's admin may get in touch."
    )
    assert quality.standing([gold(True), gold(False), gold(True)], checks).may_rate  # exactly 2/3
    # With qualification items, the continuous check waits for at least that many answers.
    later = plan(min_gold_accuracy=0.9, qualification_items=4)
    assert quality.standing([gold(True), gold(True), gold(False)], later).may_rate
    assert quality.standing([gold(True), gold(True), gold(True), gold(True), gold(False)], later).paused


def test_the_cap_counts_regular_ratings_only() -> None:
    capped = plan(rater_cap=2)
    assert quality.standing([REGULAR, gold(True), gold(True)], capped).may_rate
    stopped = quality.standing([REGULAR, gold(True), REGULAR], capped)
    assert (stopped.capped, stopped.paused) == (True, False)
    assert stopped.message == "You have rated this study's limit of 2 items. Thank you!"


# --- flags and exclusions in the analysis --------------------------------------------------------------------------


def frame(rows: list[dict]) -> pd.DataFrame:
    base = {"is_gold": 0, "gold_choice": None, "confidence": None, "left_arm": A, "right_arm": B, "seconds": 10.0}
    ratings = pd.DataFrame([{**base, "rating_id": number, **row} for number, row in enumerate(rows)])
    ratings["winner_arm"] = [{"left": A, "right": B}.get(choice) for choice in ratings["choice"]]
    return ratings


def test_a_raters_flags_by_hand() -> None:
    rows = [{"rater": "ann", "choice": side, "seconds": seconds} for side, seconds in
            [("left", 1.0), ("right", 2.0), ("left", 3.0), ("tie", 20.0), ("left", None)]]  # fmt: skip
    rows += [{"rater": "ann", "choice": "left", "is_gold": 1, "gold_choice": "left", "seconds": 99.0},
             {"rater": "ann", "choice": "tie", "is_gold": 1, "gold_choice": "right", "seconds": 99.0}]  # fmt: skip
    (flags,) = quality.rater_flags(frame(rows), plan(min_seconds=2.0, rater_cap=3))
    assert flags == quality.RaterFlags(
        rater="ann", n_ratings=5, n_gold=2, gold_accuracy=0.5, median_seconds=2.5, n_fast=1,
        left_share=0.75, straight_lining=False, n_over_cap=2, paused=False,
    )  # fmt: skip
    (plain,) = quality.rater_flags(frame(rows), None)
    assert (plain.n_fast, plain.n_over_cap) == (0, 0)
    quiet = frame([{"rater": "bob", "choice": "tie", "seconds": None}])
    (bob,) = quality.rater_flags(quiet, plan(rater_cap=3))
    assert (bob.gold_accuracy, bob.median_seconds, bob.left_share, bob.n_over_cap) == (None, None, None, 0)


def test_flags_come_by_rater_name_and_judge_each_raters_answers_in_rating_order() -> None:
    # cyd's first two gold answers, in rating order, are wrong: paused by a qualification of 2, however the frame
    # lists them, and with or without rating ids (then the frame's order is the rating order).
    rows = [
        {"rater": "cyd", **gold(True), "rating_id": 9},
        {"rater": "cyd", **gold(False), "rating_id": 1},
        {"rater": "ann", "choice": "left", "rating_id": 5},
        {"rater": "cyd", **gold(False), "rating_id": 2},
    ]
    ratings = frame(rows).assign(rating_id=[9, 1, 5, 2])
    flags = quality.rater_flags(ratings, plan(qualification_items=2))
    assert [(row.rater, row.paused) for row in flags] == [("ann", False), ("cyd", True)]
    in_order = ratings.sort_values("rating_id").drop(columns="rating_id")
    assert [row.paused for row in quality.rater_flags(in_order, plan(qualification_items=2))] == [False, True]
    # At a threshold of 1/2 only the order decides: the first gold answer by rating id is wrong, the first listed is
    # right (two answers are too few for the continuing check).
    first_wrong = frame([{"rater": "cyd", **gold(True)}, {"rater": "cyd", **gold(False)}]).assign(rating_id=[9, 1])
    lenient = plan(qualification_items=1, min_gold_accuracy=0.5)
    assert [row.paused for row in quality.rater_flags(first_wrong, lenient)] == [True]
    assert [row.paused for row in quality.rater_flags(first_wrong.assign(rating_id=[1, 9]), lenient)] == [False]
    # The cap keeps each rater's first ratings by rating id, not by their place in the frame.
    capped = frame([{"rater": "ann", "choice": "left"}] * 3).assign(rating_id=[30, 10, 20])
    kept, exclusions = quality.apply_plan(capped, plan(rater_cap=2))
    assert sorted(kept["rating_id"]) == [10, 20] and exclusions.n_over_cap == 1


def test_straight_lining_needs_ten_sided_ratings_nine_tenths_on_one_side() -> None:
    def lining(sides: str) -> bool:
        rows = [{"rater": "r", "choice": {"L": "left", "R": "right", "T": "tie"}[side]} for side in sides]
        return quality.rater_flags(frame(rows), None)[0].straight_lining

    assert lining("LLLLLLLLLR") and lining("RRRRRRRRRR") and lining("RRRRRRRRRL")
    assert not lining("LLLLLLLLRR")  # 8 of 10
    assert not lining("LLLLLLLLL") and not lining("LLLLLLLLLTTT")  # 9 sided ratings: too few; ties do not count
    assert lining("LLLLLLLLLLTTTTT") and not lining("LLLLLLLLLLRRT")  # 10 of 12 sided: below 0.9


def test_a_paused_rater_is_dropped_whole_and_the_cap_keeps_each_raters_first_ratings() -> None:
    rows = [{"rater": "bad", **gold(False)} for _ in range(3)] + [{"rater": "bad", "choice": "left"}] * 2
    rows += [{"rater": "ann", "choice": side} for side in ("left", "right", "left")]
    rows += [{"rater": "ann", **gold(True)}]
    ratings = frame(rows)
    kept, exclusions = quality.apply_plan(ratings, plan(min_gold_accuracy=0.5, rater_cap=2))
    assert exclusions == quality.Exclusions(
        paused_raters=("bad",), straight_lining_raters=(), n_paused=2, n_straight_lining=0, n_fast=0, n_over_cap=1
    )
    assert list(kept["rating_id"]) == [5, 6, 8]  # ann's third regular rating lies beyond the cap; gold stays
    assert quality.apply_plan(ratings.iloc[0:0], plan())[1] == quality.Exclusions()
    # Without rating ids the cap follows the frame's order.
    kept, _ = quality.apply_plan(ratings.drop(columns="rating_id").iloc[::-1], plan(rater_cap=2))
    assert sorted(kept.index[kept["rater"] == "ann"]) == [6, 7, 8]


def test_straight_liners_are_kept_but_named_when_the_plan_keeps_them() -> None:
    rows = [{"rater": "liner", "choice": "left"} for _ in range(10)] + [{"rater": "ann", "choice": "right"}]
    kept, exclusions = quality.apply_plan(frame(rows), plan(exclude_straight_lining=False))
    assert len(kept) == 11 and exclusions.straight_lining_raters == () and exclusions.n_straight_lining == 0
    kept, exclusions = quality.apply_plan(frame(rows), plan())
    assert list(kept["rater"]) == ["ann"] and exclusions.straight_lining_raters == ("liner",)
    # A paused rater who also straight-lines is counted once, as paused.
    paused = rows[:10] + [{"rater": "liner", **gold(False)} for _ in range(3)]
    _, exclusions = quality.apply_plan(frame(paused), plan(min_gold_accuracy=0.5))
    assert (exclusions.paused_raters, exclusions.straight_lining_raters) == (("liner",), ())


def test_win_rate_by_confidence_counts_only_the_pairs_decisive_ratings() -> None:
    rows = [
        {"rater": "a", "choice": "left", "confidence": 4.0},
        {"rater": "a", "choice": "right", "confidence": 4.0},
        {"rater": "a", "choice": "left", "confidence": 4.0, "is_gold": 1},
        {"rater": "a", "choice": "left", "confidence": 2.0, "left_arm": "avhs"},
    ]
    ratings = frame(rows)
    ratings.loc[3, "winner_arm"] = "avhs"
    assert quality.by_confidence(ratings, A, B) == [quality.ConfidenceWinRate("4", 2, 1, 0.5)]
    levels = frame([{"rater": "a", "choice": "left", "confidence": level} for level in (5.0, None, 1.0, 5.0)])
    assert [(row.confidence, row.n) for row in quality.by_confidence(levels, A, B)] == [("1", 1), ("5", 2), ("none", 1)]
    assert quality.median_seconds(ratings.iloc[0:0]) is None
    assert quality.median_seconds(frame([{"rater": "a", "choice": "left", "is_gold": 1, "seconds": 5.0}])) is None


# --- the plan --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"alpha": 0.0}, "the plan's alpha must be between 0 and 0.5, not 0.0"),
        ({"alpha": 0.5}, "the plan's alpha must be between 0 and 0.5, not 0.5"),
        ({"target_neurons": 0}, "the plan needs a target of at least 1 neuron and at least 1 rating per item"),
        ({"ratings_per_item": 0}, "the plan needs a target of at least 1 neuron and at least 1 rating per item"),
        ({"min_gold_accuracy": -0.1}, "min_gold_accuracy must be between 0 and 1, not -0.1"),
        ({"min_gold_accuracy": 1.01}, "min_gold_accuracy must be between 0 and 1, not 1.01"),
        ({"qualification_items": -1}, "qualification_items must be ≥ 0 and rater_cap ≥ 1"),
        ({"rater_cap": 0}, "qualification_items must be ≥ 0 and rater_cap ≥ 1"),
        ({"min_seconds": -1.0}, "min_seconds must be a finite number ≥ 0, not -1.0"),
        ({"min_seconds": math.inf}, "min_seconds must be a finite number ≥ 0, not inf"),
        ({"interim": "peek"}, "interim must be one of banner, hide, not 'peek'"),
        ({"primary_pair": (A,)}, "the plan's primary pair needs two different arms, not"),
    ],
)
def test_a_plan_refuses_every_value_outside_its_range(settings: dict, message: str) -> None:
    with pytest.raises(InputError, match=f"^{message}"):
        plan(**settings)


def test_a_plan_accepts_the_ends_of_its_ranges() -> None:
    edges = plan(alpha=0.4999, target_neurons=1, ratings_per_item=1, min_gold_accuracy=0.0, qualification_items=0,
                 rater_cap=1, min_seconds=0.0, interim="hide")  # fmt: skip
    assert edges.min_gold_accuracy == 0.0 and plan(min_gold_accuracy=1.0).qualification_threshold == 1.0
    assert INTERIM_CHOICES == ("banner", "hide") and edges.test == PRIMARY_TEST


def test_a_plan_as_json_hashes_its_canonical_text() -> None:
    fixed = plan(min_seconds=2.5)
    assert fixed.to_json() == {
        "primary_pair": [A, B], "target_neurons": 10, "ratings_per_item": 2, "alpha": 0.05, "test": PRIMARY_TEST,
        "min_gold_accuracy": None, "qualification_items": 0, "min_seconds": 2.5, "exclude_straight_lining": True,
        "rater_cap": None, "stopping_rule": "stop when target_neurons neurons have decisive ratings",
        "interim": "banner",
    }  # fmt: skip
    assert fixed.canonical().startswith('{"alpha":0.05,"exclude_straight_lining":true,"interim":"banner"')
    assert " " not in fixed.canonical().replace(PRIMARY_TEST, "").replace(fixed.stopping_rule, "")
    assert fixed.sha256() == hashlib.sha256(fixed.canonical().encode()).hexdigest()
    assert plan(primary_pair=("é", B)).canonical().count("é") == 1  # kept as written, not \u escaped
    with pytest.raises(InputError, match=r"^the plan: unknown plan field\(s\): a, b; a plan has alpha, "):
        StudyPlan.from_json({**fixed.to_json(), "b": 1, "a": 2})
    stored = StoredPlan(fixed, fixed.sha256(), "2026-01-01T00:00:00")
    assert stored.to_json() == {"plan": fixed.to_json(), "sha256": fixed.sha256(), "created_at": "2026-01-01T00:00:00"}
    with pytest.raises(InputError, match=r"^the stored plan: plan: "):
        StoredPlan.from_json({**stored.to_json(), "plan": {"primary_pair": [A]}})
    with pytest.raises(InputError, match=r"^the stored plan: sha256: Field required"):
        StoredPlan.from_json({"plan": fixed.to_json(), "created_at": "2026-01-01T00:00:00"})
    assert StoredPlan.from_json(stored.to_json()) == stored


def test_a_plan_must_name_the_studys_arms_and_its_ratings_per_item() -> None:
    check_against_study(plan(), (A, B, "x"), 2)
    with pytest.raises(InputError, match=r"^the plan's primary pair names x, y, not an arm of the study \(a, b\)$"):
        check_against_study(plan(primary_pair=("x", "y")), ("a", "b"), 2)
    with pytest.raises(InputError, match=r"^the plan says 2 ratings per item but the study asks for 3$"):
        check_against_study(plan(), (A, B), 3)
