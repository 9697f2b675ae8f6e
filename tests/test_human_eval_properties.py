"""Properties of how a study's items are drawn, laid out and handed out, on core/human_eval.py's pure functions
(no database), as mutation testing (`make mutation MODULE=assignment`, tests/README.md) asked for: the left/right
balance with a fair coin for an odd item out, gold items against another neuron's text, the overlap share rounded
up, the order in which a rater gets items, the side that evens out a rater's and an item's layouts, and the
progress a rater sees."""

from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest
from scipy import stats as scipy_stats

from core import human_eval
from core.errors import InputError
from core.plan import StudyPlan
from core.records import NeuronId

A, B, C = "summary", "original", "highlight"


def study(**settings) -> human_eval.Study:
    values = {
        "id": 1, "name": "S", "instructions": "", "model": "m", "arms": (A, B), "neurons": (), "ratings_per_item": 1,
        "allow_tie": True, "allow_both_bad": True, "overlap_share": 0.0, "gold_share": 0.0, "seed": 7,
        "created_at": "2026-01-01",
    }  # fmt: skip
    return human_eval.Study(**{**values, **settings})


# --- drawing the items ---------------------------------------------------------------------------------------------


def test_sides_are_balanced_and_an_odd_item_out_is_a_fair_coin() -> None:
    for count in range(9):
        flags = human_eval._balanced_sides(count, random.Random(count))
        assert len(flags) == count and abs(2 * sum(flags) - count) <= 1
    # The odd one out goes to the first arm about half the time: a two-sided binomial test over 400 seeds.
    first_left = sum(sum(human_eval._balanced_sides(5, random.Random(seed))) == 3 for seed in range(400))
    assert scipy_stats.binomtest(first_left, 400).pvalue > 0.001
    # The flags are shuffled: every position is the first arm's in some draws and not in others.
    by_position = [sum(human_eval._balanced_sides(4, random.Random(seed))[i] for seed in range(200)) for i in range(4)]
    assert all(60 < count < 140 for count in by_position)


def explanation(row_id: int, text: str, fmt: str = "summary", neuron: int = 0) -> dict:
    return {"id": row_id, "explanation": text, "format": fmt, "explainer": "gpt-4", "source": "imported",
            "layer": 0, "neuron": neuron, "status": "ok", "created_at": "2026-01-01", "source_file": None}  # fmt: skip


def test_an_item_carries_both_sides_texts_stripped_and_is_not_gold() -> None:
    item = human_eval._item(
        "m", NeuronId(2, 5), ("summary", explanation(11, "  left text \n")), ("original", explanation(12, "right"))
    )
    assert item == {
        "model": "m", "layer": 2, "neuron": 5, "left_arm": "summary", "right_arm": "original",
        "left_explanation_id": 11, "right_explanation_id": 12, "left_text": "left text", "right_text": "right",
        "is_gold": 0, "gold_choice": None,
    }  # fmt: skip


def picked_explanations(count: int) -> dict[NeuronId, dict[human_eval.Arm, dict]]:
    arm = human_eval.Arm.parse("summary")
    return {NeuronId(0, i): {arm: explanation(100 + i, f"theme {i}")} for i in range(count)}


def test_gold_items_pair_a_truth_with_another_neurons_text_on_balanced_sides() -> None:
    picked = picked_explanations(6)
    texts = {neuron: rows[human_eval.Arm.parse("summary")]["explanation"] for neuron, rows in picked.items()}
    items = human_eval._gold_items("m", picked, 4, random.Random(3))
    assert len(items) == 4
    assert Counter(item["gold_choice"] for item in items) == {"left": 2, "right": 2}
    for item in items:
        truth, decoy = ("left", "right") if item["gold_choice"] == "left" else ("right", "left")
        neuron = NeuronId(item["layer"], item["neuron"])
        assert (item["is_gold"], item[f"{truth}_arm"], item[f"{decoy}_arm"]) == (1, "truth:summary", "decoy:summary")
        assert item[f"{truth}_text"] == texts[neuron] != item[f"{decoy}_text"]
        assert item[f"{decoy}_text"] in texts.values()
    # A chooser picks the decoy among the other neurons' texts, given the truth's text.
    seen = []

    def last(truth: str, candidates: list[str]) -> int:
        seen.append((truth, list(candidates)))
        return len(candidates) - 1

    (chosen,) = human_eval._gold_items("m", picked_explanations(3), 1, random.Random(1), last)
    truth, candidates = seen[0]
    assert truth not in candidates and len(candidates) == 2
    decoy_side = "right" if chosen["gold_choice"] == "left" else "left"
    assert chosen[f"{decoy_side}_text"] == candidates[-1]
    # A truth whose arm no other neuron has is skipped, and the others still get their gold items.
    lonely = {**picked_explanations(3), NeuronId(1, 0): {human_eval.Arm.parse("original"): explanation(9, "own")}}
    for seed in range(8):
        assert len(human_eval._gold_items("m", lonely, 4, random.Random(seed))) == 3, seed
    # A neuron whose text every other neuron shares has no decoy, and one without explanations is no truth.
    same = {NeuronId(0, i): {human_eval.Arm.parse("summary"): explanation(i, "same")} for i in range(3)}
    assert human_eval._gold_items("m", {**same, NeuronId(1, 0): {}}, 3, random.Random(0)) == []


def test_plan_items_balance_each_pairs_sides_and_skip_what_cannot_be_compared() -> None:
    arms = human_eval.parse_arms("summary,original,highlight")
    explanations = {
        NeuronId(0, i): [
            explanation(10 * i + 1, f"s {i}", "summary", i),
            explanation(10 * i + 2, f"o {i}", "original", i),
            explanation(10 * i + 3, f"h {i}" if i else "S 0", "highlight", i),
        ]
        for i in range(5)
    }  # fmt: skip
    items, skipped = human_eval.plan_items("m", explanations, arms, seed=4)
    assert skipped == ["0:0: summary and highlight " + human_eval.IDENTICAL]
    assert sorted(item["position"] for item in items) == list(range(len(items))) and len(items) == 14
    for first, second in itertools.combinations([A, B, C], 2):
        pair = [item for item in items if {item["left_arm"], item["right_arm"]} == {first, second}]
        assert abs(2 * sum(item["left_arm"] == first for item in pair) - len(pair)) <= 1
    # Gold items come on top of the regular ones, a share of them rounded up: ceil(0.1 × 14) = 2, their decoys
    # chosen by the chooser given.
    calls = []

    def first(truth: str, candidates: list[str]) -> int:
        calls.append(truth)
        return 0

    with_gold, _ = human_eval.plan_items("m", explanations, arms, seed=4, gold_share=0.1, choose_decoy=first)
    assert sum(item["is_gold"] for item in with_gold) == 2 and len(with_gold) == 16 and len(calls) == 2
    # Every neuron without an arm's explanation is reported, and two arms that select one explanation are skipped.
    missing = {**explanations, NeuronId(1, 0): explanations[NeuronId(0, 1)][:1],
               NeuronId(1, 1): explanations[NeuronId(0, 2)][1:2]}  # fmt: skip
    _, skipped = human_eval.plan_items("m", missing, arms, seed=4)
    assert [reason for reason in skipped if "no " in reason] == [
        "1:0: no original explanation", "1:0: no highlight explanation",
        "1:1: no summary explanation", "1:1: no highlight explanation",
    ]  # fmt: skip
    same = human_eval.parse_arms("summary,summary@gpt-4,original")
    items, skipped = human_eval.plan_items("m", explanations, same, seed=4)
    assert skipped == [f"0:{i}: summary and summary@gpt-4 select the same explanation" for i in range(5)]
    assert len(items) == 10
    # An arm that matches nothing stops the plan, naming the model and what there is.
    with pytest.raises(InputError, match=r"^arm highlight@gpt-9 matches no explanation of my-model for these neurons"):
        human_eval.plan_items("my-model", explanations, human_eval.parse_arms("summary,highlight@gpt-9"), seed=4)


# --- who gets what -------------------------------------------------------------------------------------------------


def test_the_overlap_share_of_items_is_rounded_up_and_drawn_with_the_studys_seed() -> None:
    ids = list(range(100, 110))
    for share, wanted, expected in ((0.25, 1, 3), (0.3, 1, 3), (0.05, 1, 1), (0.0, 1, 0), (1.0, 1, 10), (0.25, 3, 0)):
        targets = human_eval.item_targets(ids, study(overlap_share=share, ratings_per_item=wanted))
        assert sorted(targets) == ids
        assert sum(target == 2 for target in targets.values()) == expected, (share, wanted)
        assert all(target == max(wanted, 2) or target == wanted for target in targets.values())
    assert set(human_eval.item_targets(ids, study(ratings_per_item=3, overlap_share=0.5)).values()) == {3}

    def overlap(item_ids: list[int], seed: int) -> frozenset[int]:
        targets = human_eval.item_targets(item_ids, study(overlap_share=0.3, seed=seed))
        return frozenset(item_id for item_id, target in targets.items() if target == 2)

    draws = {seed: overlap(ids, seed) for seed in range(20)}
    assert draws[3] == overlap(list(reversed(ids)), 3)
    assert len(set(draws.values())) > 10


def state(items: list[tuple[int, int, int]], assigned: list[tuple[int, bool]] = ()) -> dict:
    """An assignment state: items as (id, is_gold, filled), the rater's assignments as (item id, rated)."""
    return {
        "items": [{"id": i, "position": i, "is_gold": gold, "filled": filled} for i, gold, filled in items],
        "assigned": [{"item_id": i, "rated": rated, "assigned_at": ""} for i, rated in assigned],
    }


def test_a_rater_gets_their_unrated_item_then_the_least_filled_one_they_have_not_seen() -> None:
    record = study(ratings_per_item=2)
    assert human_eval.choose_item(state([(1, 0, 0), (2, 0, 0)], [(2, False)]), record, 5) == 2
    three = study(ratings_per_item=3)
    assert human_eval.choose_item(state([(1, 0, 2), (2, 0, 0), (3, 0, 2)], [(4, True)]), three, 5) == 2
    # Seen items and full items are not handed out; nothing left is None.
    assert human_eval.choose_item(state([(1, 0, 0), (2, 0, 1), (3, 0, 2)], [(1, True)]), record, 5) == 2
    assert human_eval.choose_item(state([(1, 0, 2), (2, 0, 0)], [(2, True)]), record, 5) is None
    # Among equally filled items each rater has an order of their own.
    equal = state([(i, 0, 0) for i in range(1, 21)])
    firsts = {human_eval.choose_item(equal, record, rater) for rater in range(1, 11)}
    assert len(firsts) > 3
    assert human_eval.choose_item(equal, record, 3) == human_eval.choose_item(equal, record, 3)


def test_an_overlap_item_with_one_rating_goes_first_so_that_pairs_form_early() -> None:
    record = study(ratings_per_item=1, overlap_share=1.0)  # every item wants 2 ratings
    # Item 3 has one rating: completing its pair comes before starting items 1 and 2.
    assert human_eval.choose_item(state([(1, 0, 0), (2, 0, 0), (3, 0, 1)]), record, 9) == 3
    plain = study(ratings_per_item=2)  # two wanted anyway: the same rule holds
    assert human_eval.choose_item(state([(1, 0, 0), (2, 0, 1)]), plain, 9) == 2
    # Without overlap one rating fills an item and the empty one goes first.
    single = study(ratings_per_item=1, overlap_share=0.0)
    assert human_eval.choose_item(state([(1, 0, 0), (2, 0, 1)], []), single, 9) == 1


def test_gold_items_come_at_the_gold_share_and_first_while_qualifying() -> None:
    items = [(1, 0, 0), (2, 0, 0), (3, 0, 0), (4, 0, 0), (10, 1, 0), (11, 1, 0)]
    record = study(gold_share=0.5, ratings_per_item=3)
    # No item seen yet: 0 gold seen is not below 0.5 × 0 regular items, so a regular item first.
    assert human_eval.choose_item(state(items), record, 2) in (1, 2, 3, 4)
    # One regular item seen: 0 gold < 0.5 × 1, a gold item next; then, with one gold and two regular, none.
    assert human_eval.choose_item(state(items, [(1, True)]), record, 2) in (10, 11)
    assert human_eval.choose_item(state(items, [(1, True), (10, True), (2, True)]), record, 2) in (3, 4)
    assert human_eval.choose_item(state(items, [(1, True), (10, True), (2, True), (3, True)]), record, 2) == 11
    # A plan's qualification items are gold items, before any regular one.
    plan = StudyPlan(primary_pair=(A, B), target_neurons=2, ratings_per_item=3, qualification_items=2)
    qualifying = human_eval.choose_item(state(items), study(ratings_per_item=3), 2, plan)
    assert qualifying in (10, 11)
    assert human_eval.choose_item(state(items, [(qualifying, True)]), study(ratings_per_item=3), 2, plan) in (10, 11)
    both_seen = state(items, [(10, True), (11, True)])
    assert human_eval.choose_item(both_seen, study(ratings_per_item=3), 2, plan) in (1, 2, 3, 4)
    # Two items seen: the qualification is over, even with a gold item left.
    two_seen = state(items, [(10, True), (1, True)])
    assert human_eval.choose_item(two_seen, study(ratings_per_item=3), 2, plan) in (2, 3, 4)
    # Gold items too come in an order of each rater's own, and of the study's seed.
    many_gold = state([(1, 0, 0), (2, 0, 0)] + [(i, 1, 0) for i in range(10, 30)], [(1, True)])
    by_rater = {human_eval.choose_item(many_gold, record, rater) for rater in range(10)}
    by_seed = {human_eval.choose_item(many_gold, study(gold_share=0.5, seed=seed), 2) for seed in range(10)}
    assert len(by_rater) > 3 and len(by_seed) > 3


def test_progress_counts_the_gold_items_still_to_come() -> None:
    items = [(i, 0, 0) for i in range(1, 9)] + [(20, 1, 0), (21, 1, 0), (22, 1, 0)]
    record = study(gold_share=0.25, ratings_per_item=1)
    # 8 regular items: gold comes while seen gold < 0.25 × seen regular, so ceil(0.25 × 7) = 2 gold items.
    fresh = human_eval._progress(state(items), record)
    assert (fresh.rated, fresh.remaining) == (0, 10)
    # Two regular items rated and one gold item handed out, not yet rated: it counts as remaining.
    underway = human_eval._progress(state(items, [(1, True), (2, True), (20, False)]), record)
    assert (underway.rated, underway.remaining) == (2, 8)
    done = human_eval._progress(state([(1, 0, 1), (20, 1, 0)], [(1, True)]), study(gold_share=0.25))
    assert (done.rated, done.remaining) == (1, 0)
    # Six regular items: ceil(0.25 × 5) = 2 gold items to come.
    six = [(i, 0, 0) for i in range(1, 7)] + [(20, 1, 0), (21, 1, 0), (22, 1, 0)]
    assert human_eval._progress(state(six), record).remaining == 8
    # No regular item left to hand out: no gold item comes either, whatever the share says.
    finished = state([(i, 0, 1) for i in range(1, 6)] + [(20, 1, 0), (21, 1, 0)], [(i, True) for i in range(1, 6)])
    assert human_eval._progress(finished, study(gold_share=0.5)).remaining == 0
    # As many gold items seen as the share asks for: none to come.
    enough = state([(i, 0, 0) for i in range(1, 5)] + [(20, 1, 0), (21, 1, 0)], [(1, True), (20, True)])
    assert human_eval._progress(enough, record).remaining == 3


# --- left and right ------------------------------------------------------------------------------------------------


def test_arm_a_is_the_truth_or_the_arm_the_study_lists_first() -> None:
    record = study(arms=(B, A, C))
    assert human_eval.first_arm(record, A, B) == B
    assert human_eval.first_arm(record, C, A) == A
    assert human_eval.first_arm(record, "other", C) == C  # an arm the study does not list comes last
    assert human_eval.first_arm(record, "decoy:summary", "truth:summary") == "truth:summary"
    assert human_eval.first_arm(record, "truth:original", "decoy:original") == "truth:original"
    # The truth is arm A on either side, even against an arm the study lists.
    assert human_eval.first_arm(record, "truth:summary", B) == "truth:summary"
    assert human_eval.first_arm(record, B, "truth:summary") == "truth:summary"


def layout(left: str, right: str, rater: list[tuple[str, str, str]] = (), item: list[str] = ()) -> dict:
    return {
        "left_arm": left,
        "right_arm": right,
        "rater": [
            {"shown": shown, "left_arm": left_arm, "right_arm": right_arm} for shown, left_arm, right_arm in rater
        ],
        "item": list(item),
    }


def test_the_side_evens_out_the_raters_and_the_items_layouts_and_a_seeded_coin_breaks_ties() -> None:
    record = study(arms=(A, B, C))
    # The rater saw the arm A of their items' pairs on the left twice (A of A/B, B of B/C) and on the right once:
    # this item's arm B goes left.
    rater = [(A, A, B), (B, B, C), (C, B, C)]
    assert human_eval.place_left(record, 1, 5, layout(A, B, rater)) == B
    assert human_eval.place_left(record, 1, 5, layout(B, A, rater)) == B  # the item's default layout does not matter
    # The item was shown with its arm A on the right twice: A goes left, even against the rater's lean of one.
    assert human_eval.place_left(record, 1, 5, layout(A, B, rater, item=[B, B])) == A
    # Even: a coin seeded by study, rater and item, fair over many items, the same on every call.
    sides = [human_eval.place_left(record, 1, item_id, layout(A, C)) for item_id in range(200)]
    assert 70 < sides.count(A) < 130 and set(sides) == {A, C}
    assert sides == [human_eval.place_left(record, 1, item_id, layout(C, A)) for item_id in range(200)]
    assert sides != [human_eval.place_left(study(arms=(A, B, C), seed=8), 1, i, layout(A, C)) for i in range(200)]


def test_an_item_as_seen_swaps_every_side_dependent_field() -> None:
    item = {"item_id": 1, "left_arm": "truth:summary", "right_arm": "decoy:summary", "left_explanation_id": 3,
            "right_explanation_id": 4, "left_text": "t", "right_text": "d", "is_gold": True, "gold_choice": "left",
            "n_ratings": 2}  # fmt: skip
    assert human_eval.as_seen(item, "truth:summary") == item
    assert human_eval.as_seen(item, "decoy:summary") == {
        **item, "left_arm": "decoy:summary", "right_arm": "truth:summary", "left_explanation_id": 4,
        "right_explanation_id": 3, "left_text": "d", "right_text": "t", "gold_choice": "right",
    }  # fmt: skip
    regular = {**item, "left_arm": A, "right_arm": B, "is_gold": False, "gold_choice": None}
    assert human_eval.as_seen(regular, B)["gold_choice"] is None
    assert human_eval.as_seen(human_eval.as_seen(item, "decoy:summary"), "truth:summary") == item
