"""The frozen analysis plan and live rater quality control, on a real SQLite file with synthetic raters."""

from __future__ import annotations

import dataclasses
import json
import sqlite3

import pandas as pd
import pytest

from core import db as dbmod
from core import export, human_eval, quality
from core.__main__ import main
from core.errors import InputError
from core.plan import PlanFile, StoredPlan, StudyPlan
from tests.simulated_study import add_raters, explain_neurons
from tests.test_human_eval import ARMS, A, B, make_study


def plan(**settings) -> StudyPlan:
    return StudyPlan(**{"primary_pair": (A, B), "target_neurons": 10, "ratings_per_item": 2, **settings})


def rate_all(db, study: str, rater: str, choose=lambda item: "left", seconds: float = 20.0) -> int:
    """Rate what the rater is offered, as they see it, until nothing is offered; returns how many were rated."""
    admin = {row["item_id"]: row for row in human_eval.study_items(db, study)}
    rater_id = dbmod.get_rater(db, rater)["id"]
    count = 0
    while (item := human_eval.next_item(db, study, rater)) is not None:
        seen = human_eval.as_seen(admin[item.item_id], dbmod.shown_layout(db, item.item_id, rater_id)[0])
        human_eval.submit_rating(db, study, rater, item.item_id, choose(seen), seconds=seconds)
        count += 1
    return count


def right_on_gold(choice_on_regular: str = "left"):
    def choose(item: dict) -> str:
        return item["gold_choice"] if item["is_gold"] else choice_on_regular

    return choose


def varied(item: dict) -> str:
    """Right on gold items; on the others, a side that depends on the item, so never straight-lining."""
    return item["gold_choice"] if item["is_gold"] else ("left", "right")[item["item_id"] % 2]


def wrong_on_gold(item: dict) -> str:
    if item["is_gold"]:
        return "left" if item["gold_choice"] == "right" else "right"
    return "left"


# --- the plan -----------------------------------------------------------------------------------------------------


def test_a_plan_is_fixed_once_before_the_first_rating_and_never_changes(db) -> None:
    make_study(db, neurons=6)
    stored = human_eval.set_plan(db, "S", plan())
    assert stored.sha256 == plan().sha256() and len(stored.sha256) == 64
    assert human_eval.get_plan(db, "S") == stored
    with pytest.raises(InputError, match="already fixed"):
        human_eval.set_plan(db, "S", plan(alpha=0.01))
    with pytest.raises(sqlite3.DatabaseError, match="frozen"):
        db.conn.execute("UPDATE study_plans SET plan = '{}'")
    with pytest.raises(sqlite3.DatabaseError, match="frozen"):
        db.conn.execute("DELETE FROM study_plans")
    human_eval.create_study(db, "T", ARMS, "0:0,0:1", 2, seed=1)
    add_raters(db, ["ann"])
    human_eval.submit_rating(db, "T", "ann", human_eval.next_item(db, "T", "ann").item_id, "left")
    with pytest.raises(InputError, match="before the first rating"):
        human_eval.set_plan(db, "T", plan())


def test_a_plan_must_fit_its_study(db) -> None:
    explain_neurons(db, 2)
    with pytest.raises(InputError, match="not an arm of the study"):
        human_eval.create_study(db, "S", ARMS, "0:0,0:1", 2, seed=1, plan=plan(primary_pair=(A, "avhs")))
    with pytest.raises(InputError, match="3 ratings per item"):
        human_eval.create_study(db, "S", ARMS, "0:0,0:1", 2, seed=1, plan=plan(ratings_per_item=3))
    for bad in ({"alpha": 0.7}, {"interim": "peek"}, {"primary_pair": (A, A)}, {"target_neurons": 0}):
        with pytest.raises(InputError):
            plan(**bad)
    with pytest.raises(InputError, match="unknown plan field"):
        StudyPlan.from_json({**plan().to_json(), "peeking": True})
    created = human_eval.create_study(db, "S", ARMS, "0:0,0:1", 2, seed=1, plan=plan())
    assert human_eval.get_plan(db, created.study.name).plan == plan()


def test_a_plan_file_is_read_field_by_field_and_keeps_its_numbers_as_written(db, tmp_path) -> None:
    assert list(PlanFile.model_fields) == [field.name for field in dataclasses.fields(StudyPlan)]
    written = {"primary_pair": [A, B], "target_neurons": 10, "ratings_per_item": 2, "min_seconds": 2}
    read = StudyPlan.from_json(written)
    assert read == plan(min_seconds=2) and read.to_json()["min_seconds"] == 2  # an int stays an int: same hash
    assert read.sha256() == plan(min_seconds=2).sha256() != plan(min_seconds=2.0).sha256()
    for bad, message in (
        ({"target_neurons": "ten"}, r"^plan\.json: target_neurons: Input should be a valid integer"),
        ({"primary_pair": [A, A]}, "needs two different arms"),
        ({"primary_pair": [A, B, "avhs"]}, "needs two different arms"),
        ({"interim": "peek"}, "interim must be one of banner, hide"),
        ({"exclude_straight_lining": "maybe"}, r"exclude_straight_lining: Input should be a valid boolean"),
    ):
        with pytest.raises(InputError, match=message):
            StudyPlan.from_json({**written, **bad}, "plan.json")
    with pytest.raises(InputError, match=r"^plan\.json: ratings_per_item: Field required"):
        StudyPlan.from_json({key: value for key, value in written.items() if key != "ratings_per_item"}, "plan.json")
    with pytest.raises(InputError, match=r"^plan\.json: Input should be a valid dictionary"):
        StudyPlan.from_json([A, B], "plan.json")
    # Fixed from a file with an int, it reads back from the database under the same hash.
    make_study(db, neurons=2)
    stored = human_eval.set_plan(db, "S", read)
    assert human_eval.get_plan(db, "S") == stored and stored.plan.min_seconds == 2
    assert StoredPlan.from_json(stored.to_json()) == stored


def test_a_tampered_plan_is_refused(db) -> None:
    make_study(db, neurons=2)
    human_eval.set_plan(db, "S", plan())
    db.conn.execute("DROP TRIGGER study_plans_frozen")
    db.conn.execute("UPDATE study_plans SET plan = replace(plan, '\"alpha\":0.05', '\"alpha\":0.1')")
    with pytest.raises(InputError, match="does not match its hash"):
        human_eval.get_plan(db, "S")


def test_study_plan_cli_fixes_and_shows_the_plan(capsys, db_path, tmp_path) -> None:
    database = dbmod.connect(db_path)
    make_study(database, neurons=4)
    database.conn.close()
    argv = ["study", "plan", "S", "--db", str(db_path)]
    assert main(argv) == 2 and "has no plan yet" in capsys.readouterr().err
    assert main([*argv, "--target-neurons", "30", "--min-seconds", "2", "--interim", "hide"]) == 0
    fixed = json.loads(capsys.readouterr().out)
    assert fixed["plan"]["target_neurons"] == 30 and fixed["plan"]["primary_pair"] == [A, B]
    assert main(argv) == 0 and json.loads(capsys.readouterr().out) == fixed
    assert main([*argv, "--target-neurons", "40"]) == 2
    assert "already fixed" in capsys.readouterr().err
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan(target_neurons=5).to_json()), encoding="utf-8")
    database = dbmod.connect(db_path)
    explain_neurons(database, 2, layer=1)
    database.conn.close()
    create = ["study", "create", "--name", "P", "--arms", ARMS, "--neurons", "1:0,1:1", "--ratings-per-item", "2"]
    assert main([*create, "--plan", str(path), "--db", str(db_path)]) == 0
    assert json.loads(capsys.readouterr().out)["study"]["name"] == "P"
    assert main(["study", "plan", "P", "--db", str(db_path)]) == 0
    assert json.loads(capsys.readouterr().out)["plan"]["target_neurons"] == 5


# --- qualification, gold checks and caps while rating ----------------------------------------------------------------


def test_qualification_items_come_first_and_a_rater_who_fails_them_is_paused(db) -> None:
    make_study(db, neurons=12, gold_share=0.5, ratings_per_item=2)
    human_eval.set_plan(db, "S", plan(qualification_items=2, min_gold_accuracy=0.5))
    add_raters(db, ["good", "bad"])
    for name in ("good", "bad"):  # the first two items of each rater are gold
        first = [human_eval.next_item(db, "S", name)]
        human_eval.submit_rating(db, "S", name, first[0].item_id, "left")
        first.append(human_eval.next_item(db, "S", name))
        gold = {row["item_id"]: row["is_gold"] for row in human_eval.study_items(db, "S")}
        assert all(gold[item.item_id] for item in first), name
        human_eval.submit_rating(db, "S", name, first[1].item_id, "left")
    # Restart both from scratch with answers that pass or fail.
    db.conn.execute("DELETE FROM rating_audit")
    db.conn.execute("DELETE FROM ratings")
    db.conn.execute("DELETE FROM assignments")
    assert rate_all(db, "S", "good", right_on_gold()) > 2
    assert rate_all(db, "S", "bad", wrong_on_gold) == 2  # the two qualification items, then nothing
    standing = human_eval.rater_standing(db, "S", "bad")
    assert standing.paused and "Thank you" in standing.message
    assert human_eval.rater_standing(db, "S", "good").may_rate


def test_a_rater_who_drifts_below_the_gold_threshold_is_paused_and_excluded_not_deleted(db) -> None:
    make_study(db, neurons=20, gold_share=0.5, ratings_per_item=1, overlap_share=0.0)
    human_eval.set_plan(db, "S", plan(min_gold_accuracy=0.8, ratings_per_item=1))
    add_raters(db, ["ann", "bob"])
    rated = rate_all(db, "S", "bob", wrong_on_gold)
    assert human_eval.rater_standing(db, "S", "bob").paused
    assert db["ratings"].count == rated  # nothing deleted
    rate_all(db, "S", "ann", varied)
    summary = export.study_summary(db, "S")
    exclusions = summary["quality"]["exclusions"]
    assert exclusions["paused_raters"] == ["bob"] and exclusions["n_paused"] > 0
    flags = {row["rater"]: row for row in summary["quality"]["raters"]}
    assert flags["bob"]["paused"] and not flags["ann"]["paused"] and flags["ann"]["gold_accuracy"] == 1.0
    assert summary["n_raters"] == 1


def test_a_rater_cap_stops_a_rater_and_says_so(db) -> None:
    make_study(db, neurons=10, ratings_per_item=1, overlap_share=0.0)
    human_eval.set_plan(db, "S", plan(rater_cap=3, ratings_per_item=1))
    add_raters(db, ["ann"])
    assert rate_all(db, "S", "ann") == 3
    standing = human_eval.rater_standing(db, "S", "ann")
    assert standing.capped and "limit of 3" in standing.message


# --- exclusions in the analysis -----------------------------------------------------------------------------------


def _frame(rows: list[dict]) -> pd.DataFrame:
    base = {"is_gold": 0, "gold_choice": None, "confidence": None, "left_arm": A, "right_arm": B}
    frame = pd.DataFrame([{**base, "rating_id": number, **row} for number, row in enumerate(rows)])
    frame["winner_arm"] = [{"left": A, "right": B}.get(choice) for choice in frame["choice"]]
    return frame


def test_speeders_straight_liners_and_caps_are_excluded_and_counted() -> None:
    rows = [{"rater": "liner", "choice": "left", "seconds": 9.0} for _ in range(10)]
    mixed = [("left", 1.0), ("right", 9.0)] * 5
    rows += [{"rater": "mixed", "choice": side, "seconds": seconds} for side, seconds in mixed]
    ratings = _frame(rows)
    kept, exclusions = quality.apply_plan(ratings, plan(min_seconds=2.0, rater_cap=4))
    assert exclusions.straight_lining_raters == ("liner",) and exclusions.n_straight_lining == 10
    assert exclusions.n_fast == 5  # mixed's 1-second ratings
    # The cap counts every rating in order: mixed's ratings 5–10 lie beyond it, 3 of them not already too fast.
    assert exclusions.n_over_cap == 3
    assert len(kept) == 2 and set(kept["rater"]) == {"mixed"} and (kept["seconds"] >= 2).all()
    # At the threshold: exactly 2 seconds is not too fast, 9 of 10 on one side is straight-lining, 8 of 10 is not.
    edge = _frame([{"rater": "r", "choice": "left" if i < 8 else "right", "seconds": 2.0} for i in range(10)])
    kept, exclusions = quality.apply_plan(edge, plan(min_seconds=2.0))
    assert (len(kept), exclusions.n_fast, exclusions.straight_lining_raters) == (10, 0, ())
    nine = _frame([{"rater": "r", "choice": "left" if i < 9 else "right", "seconds": 3.0} for i in range(10)])
    assert quality.apply_plan(nine, plan())[1].n_straight_lining == 10
    assert quality.apply_plan(nine, plan(exclude_straight_lining=False))[1].n_straight_lining == 0
    assert quality.apply_plan(ratings, None)[0] is ratings


def test_win_rate_by_confidence_and_median_seconds() -> None:
    ratings = _frame(
        [
            {"rater": "a", "choice": "left", "confidence": 5, "seconds": 4.0},
            {"rater": "a", "choice": "right", "confidence": 5, "seconds": 6.0},
            {"rater": "b", "choice": "left", "confidence": 1, "seconds": 8.0},
            {"rater": "b", "choice": "tie", "confidence": 1, "seconds": 100.0},
            {"rater": "b", "choice": "left", "confidence": None, "seconds": 2.0},
        ]
    )
    levels = {row.confidence: row for row in quality.by_confidence(ratings, A, B)}
    assert (levels["5"].n, levels["5"].win_rate) == (2, 0.5)
    assert (levels["1"].n, levels["1"].win_rate) == (1, 1.0)  # the tie is not decisive
    assert levels["none"].n == 1
    assert quality.median_seconds(ratings) == 6.0
    flags = {row.rater: row for row in quality.rater_flags(ratings, None)}
    assert flags["b"].median_seconds == 8.0 and flags["a"].left_share == 0.5


# --- interim results -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("interim", ["banner", "hide"])
def test_before_the_target_the_primary_test_is_interim_or_hidden(db, interim) -> None:
    make_study(db, neurons=6, ratings_per_item=1, overlap_share=0.0)
    human_eval.set_plan(db, "S", plan(target_neurons=6, ratings_per_item=1, interim=interim))
    add_raters(db, ["ann"])
    for _ in range(3):
        human_eval.submit_rating(db, "S", "ann", human_eval.next_item(db, "S", "ann").item_id, "left")
    summary = export.study_summary(db, "S")
    assert summary["interim"] == {"reached": False, "n_neurons": 3, "target": 6, "display": interim}
    if interim == "hide":
        assert summary["primary"]["p_value"] is None and summary["primary"]["ci"] is None
        assert summary["binomial_p"] is None and summary["wilson_ci"] is None
    else:
        assert summary["primary"]["p_value"] is not None
    rate_all(db, "S", "ann")
    final = export.study_summary(db, "S")
    assert final["interim"]["display"] == "final" and final["primary"]["p_value"] is not None
    # The plan travels with the export and the export reproduces the summary.
    loaded = export.load_export(export.export_study(db, "S", "json"))
    assert loaded.summary["plan"]["sha256"] == human_eval.get_plan(db, "S").sha256
    assert export.reproduce_summary(loaded).to_json()["primary"] == loaded.summary["primary"]


# --- gold decoys -----------------------------------------------------------------------------------------------


def test_a_gold_decoy_is_the_least_similar_explanation(db) -> None:
    texts = {
        0: "dates and years in history",
        1: "calendar years and dates",
        2: "the word cat and other pets",
        3: "years, months and calendar dates",
    }
    for index, text in texts.items():
        for format_name in ("summary", "original"):
            dbmod.insert_explanation(
                db, model="m", layer=0, neuron=index, format=format_name, explainer="gpt-4",
                explanation=f"{text} ({format_name})",
            )  # fmt: skip
    created = human_eval.create_study(db, "S", "summary,original", "0:0,0:1,0:2,0:3", 1, seed=1, gold_share=1.0)
    gold = [item for item in human_eval.study_items(db, "S") if item["is_gold"]]
    assert gold and created.n_gold == len(gold)
    for item in gold:
        truth_side = item["gold_choice"]
        truth = item[f"{truth_side}_text"]
        decoy = item[f"{'right' if truth_side == 'left' else 'left'}_text"]
        if "cat" not in truth:  # every date-like neuron's decoy is the cat one, the least similar
            assert "cat" in decoy, (truth, decoy)


# --- in the app --------------------------------------------------------------------------------------------------


def test_results_show_the_plan_the_interim_banner_quality_and_power(app_db) -> None:
    from tests.test_app import ADMIN, ADMIN_CODE, RATER, STUDY, page_text, run, sign_in, write_default_data
    from tests.test_app import write_study as write_app_study

    write_default_data(app_db)
    study = write_app_study(app_db)
    at = sign_in(run("results"), ADMIN, ADMIN_CODE)
    assert "no analysis plan" in page_text(at)
    human_eval.set_plan(
        app_db, STUDY, StudyPlan(primary_pair=study.arms[:2], target_neurons=4, ratings_per_item=1, min_seconds=1)
    )
    human_eval.submit_rating(app_db, STUDY, RATER, human_eval.next_item(app_db, STUDY, RATER).item_id, "left")
    at.run()
    text = page_text(at)
    assert "Interim: do not stop on this." in text and "1 of the planned 4 neurons" in text
    assert "Analysis plan" in text and human_eval.get_plan(app_db, STUDY).sha256[:12] in text
    assert "Rater quality" in text and "Power: what this design can detect" in text


def test_a_paused_rater_reads_a_polite_message_on_the_rate_page(app_db) -> None:
    from tests.test_app import RATER, RATER_CODE, STUDY, run, sign_in, write_default_data
    from tests.test_app import write_study as write_app_study

    write_default_data(app_db)
    study = write_app_study(app_db)
    human_eval.set_plan(
        app_db, STUDY, StudyPlan(primary_pair=study.arms[:2], target_neurons=4, ratings_per_item=1, rater_cap=1)
    )
    human_eval.submit_rating(app_db, STUDY, RATER, human_eval.next_item(app_db, STUDY, RATER).item_id, "left")
    at = sign_in(run("rate"), RATER, RATER_CODE)
    assert any("limit of 1 items" in info.value for info in at.info)
    assert not at.get("form")
