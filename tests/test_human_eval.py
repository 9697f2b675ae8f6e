"""Studies, blinded items, assignment and ratings on a real SQLite file, including concurrent raters."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import random
import sqlite3
import threading
from collections import Counter

import pytest
import sqlite_utils

from core import db as dbmod
from core import human_eval
from core.errors import InputError, NotFoundError
from core.export import study_summary
from core.records import NeuronId
from tests.simulated_study import (
    ARM_WORDS,
    MODEL,
    add_raters,
    count_ratings,
    explain_neurons,
    prefers,
    rate_until_done,
    run_raters,
)

ARMS = "summary@gpt-4,original@gpt-4"
A, B = "summary@gpt-4", "original@gpt-4"


def make_study(db: sqlite_utils.Database, neurons: int = 10, name: str = "S", **options) -> human_eval.StudyCreated:
    explained = explain_neurons(db, neurons)
    settings = {"ratings_per_item": 2, "seed": 7, **options}
    return human_eval.create_study(db, name, ARMS, ",".join(explained), **settings)


# --- arms and study creation -------------------------------------------------------------------------------------


def test_arm_parsing_and_exact_explainer_matching() -> None:
    arm = human_eval.Arm.parse(" summary@gpt-4 ")
    assert (arm.format, arm.explainer, arm.source, str(arm)) == ("summary", "gpt-4", None, "summary@gpt-4")
    row = {"format": "summary", "explainer": "gpt-4", "explanation": "x", "source": "imported"}
    assert arm.matches(row)
    # Names are kept as written: an import's `gpt-4` and a generated `openai:gpt-4` are different explainers.
    assert not arm.matches({**row, "explainer": "openai:gpt-4"})
    assert not human_eval.Arm.parse("summary@openai:gpt-4").matches(row)
    assert not arm.matches({**row, "explanation": "  "})
    assert human_eval.Arm.parse("summary").matches({**row, "explainer": "anything"})
    sourced = human_eval.Arm.parse("summary@gpt-4#file:0123456789ab")
    assert (sourced.source, str(sourced)) == ("file:0123456789ab", "summary@gpt-4#file:0123456789ab")
    in_file = {**row, "params": {"sha256": "0123456789ab" + "f" * 52, "file": "a.csv", "path": "/x/a.csv"}}
    assert sourced.matches(in_file) and not sourced.matches({**in_file, "params": {"sha256": "f" * 64}})
    for written in ("file:01234567", "a.csv", "/x/a.csv"):
        assert human_eval.Arm.parse(f"summary#{written}").matches(in_file), written
    assert not human_eval.Arm.parse("summary#file:0123").matches(in_file)  # too short a prefix to be sure
    for bad in ("", "@gpt-4", "summary@", "summary@gpt-4#"):
        with pytest.raises(InputError, match=r"FORMAT\[@EXPLAINER\]\[#SOURCE\]"):
            human_eval.Arm.parse(bad)
    with pytest.raises(InputError, match="two different arms"):
        human_eval.parse_arms("summary,summary")


def _import_csv(db, tmp_path, name: str, texts: dict[int, tuple[str, str]], explainer: str = "gpt-4") -> None:
    from core.explain import import_explanations_csv

    lines = ["layer,neuron,summary,original"] + [f"0,{n},{a},{b}" for n, (a, b) in texts.items()]
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    import_explanations_csv(db, path, explainer, MODEL)


def test_a_bare_arm_over_two_sources_is_refused_with_the_candidates(db, tmp_path) -> None:
    _import_csv(db, tmp_path, "paper.csv", {n: (f"paper summary {n}", f"paper original {n}") for n in range(4)})
    # An OpenAI reference for the same neurons, stored as openai:gpt-4, source `reference`.
    for n in range(4):
        dbmod.insert_explanation(
            db, model=MODEL, layer=0, neuron=n, format="original", explainer="openai:gpt-4", source="reference",
            explanation=f"reference words {n}", job_key=f"ref-{n}",
        )  # fmt: skip
    neurons = [f"0:{n}" for n in range(4)]
    with pytest.raises(InputError) as refused:
        human_eval.create_study(db, "S", "summary,original", neurons, 1, seed=1)
    message = str(refused.value)
    assert "\n" not in message and "arm original matches explanations of 2 explainers or sources" in message
    assert "original@gpt-4#file:" in message and "original@openai:gpt-4#reference" in message
    assert "paper.csv, 4 neurons" in message
    # Named exactly, each arm resolves to one explainer and one source, as `study show` says.
    created = human_eval.create_study(db, "S", "summary,original@openai:gpt-4", neurons, 1, seed=1)
    assert created.n_items == 4
    sources = {source.arm: source for source in created.arms}
    assert (sources["summary"].explainer, sources["summary"].origin, sources["summary"].n_explanations) == (
        "gpt-4",
        "paper.csv",
        4,
    )
    assert sources["summary"].source.startswith("file:")
    reference = sources["original@openai:gpt-4"]
    assert (reference.explainer, reference.source, reference.n_explanations) == ("openai:gpt-4", "reference", 4)
    shown = human_eval.show_study(db, "S")
    assert shown["arm_sources"] == [source.to_json() for source in created.arms]
    for item in human_eval.study_items(db, "S"):
        texts = {item["left_text"], item["right_text"]}
        assert any(text.startswith("paper summary") for text in texts)
        assert any(text.startswith("reference words") for text in texts)


def test_an_explainer_arm_over_two_files_is_refused_until_the_file_is_named(db, tmp_path) -> None:
    _import_csv(db, tmp_path, "run_a.csv", {n: (f"a summary {n}", f"a original {n}") for n in range(3)})
    _import_csv(db, tmp_path, "run_b.csv", {n: (f"b summary {n}", f"b original {n}") for n in range(3)})
    neurons = [f"0:{n}" for n in range(3)]
    with pytest.raises(InputError, match=r"arm summary@gpt-4 matches explanations of 2 .*run_a\.csv.*run_b\.csv"):
        human_eval.create_study(db, "S", "summary@gpt-4,original@gpt-4", neurons, 1, seed=1)
    created = human_eval.create_study(db, "S", "summary@gpt-4#run_a.csv,original@gpt-4#run_b.csv", neurons, 1, seed=1)
    assert [(source.origin, source.n_explanations) for source in created.arms] == [("run_a.csv", 3), ("run_b.csv", 3)]
    for item in human_eval.study_items(db, "S"):
        texts = sorted((item["left_text"], item["right_text"]))
        assert texts[0].startswith("a summary") and texts[1].startswith("b original")


def test_create_study_makes_one_item_per_neuron_with_balanced_sides(db) -> None:
    created = make_study(db, neurons=11)
    assert (created.n_items, created.n_gold, created.skipped) == (11, 0, ())
    study = created.study
    assert (study.model, study.arms, study.seed, study.ratings_per_item) == (MODEL, (A, B), 7, 2)
    items = human_eval.study_items(db, "S")
    assert sorted(item["position"] for item in items) == list(range(11))
    assert {item["neuron"] for item in items} == {f"0:{i}" for i in range(11)}
    left_a = sum(item["left_arm"] == A for item in items)
    assert left_a in (5, 6)
    for item in items:
        assert {item["left_arm"], item["right_arm"]} == {A, B}
    # The same seed gives the same items; another seed another arrangement.
    again = human_eval.plan_items(
        MODEL, {n: dbmod.list_explanations(db, MODEL, n) for n in map(NeuronId.parse, study.neurons)},
        human_eval.parse_arms(ARMS), seed=7,
    )[0]  # fmt: skip
    same = [(i["neuron"], i["left_arm"]) for i in sorted(again, key=lambda i: i["position"])]
    stored = [(int(i["neuron"].split(":")[1]), i["left_arm"]) for i in items]
    assert same == stored


def test_left_right_is_balanced_within_every_pair_of_three_arms(db) -> None:
    neurons = explain_neurons(db, 9, formats=("summary", "original", "highlight"))
    created = human_eval.create_study(db, "three", "summary,original,highlight", neurons, 1, seed=3)
    assert created.n_items == 27
    by_pair = Counter()
    for item in human_eval.study_items(db, "three"):
        by_pair[tuple(sorted((item["left_arm"], item["right_arm"]))), item["left_arm"]] += 1
    for (pair, left), count in by_pair.items():
        other = by_pair[pair, pair[0] if left == pair[1] else pair[1]]
        assert abs(count - other) <= 1


def test_missing_explanations_are_skipped_and_reported(db) -> None:
    neurons = explain_neurons(db, 3)
    explain_neurons(db, 1, formats=("summary",), layer=1)
    created = human_eval.create_study(db, "S", ARMS, [*neurons, "1:0"], 2, seed=1)
    assert created.n_items == 3
    assert created.skipped == ("1:0: no original@gpt-4 explanation",)  # the CLI and the app print these


def test_an_arm_picks_the_newest_explanation_of_its_one_set(db) -> None:
    explain_neurons(db, 1)
    newest = dbmod.insert_explanation(
        db, model=MODEL, layer=0, neuron=0, format="summary", explainer="gpt-4", explanation="later words",
        source="imported",
    )  # fmt: skip
    human_eval.create_study(db, "S", "summary,original", "0:0", 1, seed=1)
    (item,) = human_eval.study_items(db, "S")
    side = "left" if item["left_arm"] == "summary" else "right"
    assert item[f"{side}_explanation_id"] == newest
    assert item[f"{side}_text"] == "later words"
    # Another explainer's summary makes the bare arm ambiguous.
    dbmod.insert_explanation(
        db, model=MODEL, layer=0, neuron=0, format="summary", explainer="openai:gpt-4o", explanation="other words"
    )
    with pytest.raises(InputError, match=r"summary@gpt-4#imported .*summary@openai:gpt-4o#generated"):
        human_eval.create_study(db, "T", "summary,original", "0:0", 1, seed=1)


def test_study_creation_errors_are_clear(db) -> None:
    neurons = explain_neurons(db, 2)
    with pytest.raises(InputError, match=r"arm highlight matches no explanation.*summary@gpt-4#imported"):
        human_eval.create_study(db, "S", "summary,highlight", neurons, 2, seed=1)
    explain_neurons(db, 2, model="other-model")
    with pytest.raises(InputError, match=r"several models.*--model"):
        human_eval.create_study(db, "S", ARMS, neurons, 2, seed=1)
    with pytest.raises(NotFoundError, match="explain"):
        human_eval.create_study(db, "S", ARMS, "5:5", 2, seed=1)
    with pytest.raises(InputError, match="at least 1"):
        human_eval.create_study(db, "S", ARMS, neurons, 0, seed=1, model=MODEL)
    human_eval.create_study(db, "S", ARMS, neurons, 2, seed=1, model=MODEL)
    with pytest.raises(InputError, match="already exists"):
        human_eval.create_study(db, "S", ARMS, neurons, 2, seed=1, model=MODEL)
    with pytest.raises(NotFoundError, match=r"no study named 'T'.*S"):
        human_eval.get_study(db, "T")


def test_gold_items_pair_a_true_explanation_with_another_neurons(db) -> None:
    created = make_study(db, neurons=10, gold_share=0.2)
    assert created.n_gold == 2
    texts = {
        (row["layer"], row["neuron"], row["explanation"])
        for row in dbmod.list_explanations(db, MODEL)
    }  # fmt: skip
    for item in human_eval.study_items(db, "S"):
        if not item["is_gold"]:
            continue
        layer, index = map(int, item["neuron"].split(":"))
        truth, decoy = ("left", "right") if item["gold_choice"] == "left" else ("right", "left")
        assert item[f"{truth}_arm"].startswith("truth:") and item[f"{decoy}_arm"].startswith("decoy:")
        assert (layer, index, item[f"{truth}_text"]) in texts
        assert (layer, index, item[f"{decoy}_text"]) not in texts


# --- assignment --------------------------------------------------------------------------------------------------


def test_the_rater_view_reveals_no_arm(db) -> None:
    make_study(db, neurons=4)
    add_raters(db, ["ann"])
    item = human_eval.next_item(db, "S", "ann")
    view = json.dumps(dataclasses.asdict(item)).lower()
    for word in ARM_WORDS:
        assert word not in view, word
    assert set(dataclasses.asdict(item)) == {
        "item_id", "model", "neuron", "explanation_1", "explanation_2", "choices", "progress", "previous_choice"
    }  # fmt: skip
    assert item.explanation_1.startswith("words about theme")
    assert item.choices == ("left", "right", "tie", "both_bad")


def test_next_item_repeats_until_rated_and_never_shows_an_item_twice(db) -> None:
    make_study(db, neurons=6, ratings_per_item=3)
    add_raters(db, ["ann"])
    first = human_eval.next_item(db, "S", "ann")
    assert human_eval.next_item(db, "S", "ann").item_id == first.item_id
    assert first.progress == human_eval.RaterProgress(rated=0, remaining=6)
    seen = []
    while (item := human_eval.next_item(db, "S", "ann")) is not None:
        seen.append(item.item_id)
        human_eval.submit_rating(db, "S", "ann", item.item_id, "left")
    assert len(seen) == len(set(seen)) == 6
    assert human_eval.rater_progress(db, "S", "ann") == human_eval.RaterProgress(rated=6, remaining=0)


def test_items_fill_evenly_toward_the_wanted_count(db) -> None:
    make_study(db, neurons=8, ratings_per_item=2, overlap_share=0.0)
    add_raters(db, ["ann", "bob", "cyd"])
    run_raters(db, "S", {name: prefers(A, 0.5, random.Random(1)) for name in ("ann", "bob")})
    counts = [item["n_ratings"] for item in human_eval.study_items(db, "S")]
    assert counts == [2] * 8
    assert human_eval.next_item(db, "S", "cyd") is None  # every item has its ratings


def test_an_overlap_share_of_items_gets_two_raters_even_with_one_wanted(db) -> None:
    make_study(db, neurons=10, ratings_per_item=1, overlap_share=0.3)
    add_raters(db, ["ann", "bob"])
    # Early in the study, not only at its end: after four items, the second rater pairs up first.
    for _ in range(2):
        for name in ("ann", "bob"):
            item = human_eval.next_item(db, "S", name)
            human_eval.submit_rating(db, "S", name, item.item_id, "left")
    assert Counter(Counter(item["n_ratings"] for item in human_eval.study_items(db, "S")).elements())[2] >= 1
    run_raters(db, "S", {name: prefers(A, 0.5, random.Random(2)) for name in ("ann", "bob")})
    status = human_eval.study_status(db, "S")
    assert status["items_by_rating_count"] == {"1": 7, "2": 3}
    assert status["wanted_ratings"] == status["n_ratings"] == 13
    assert status["complete_items"] == 10


def test_gold_items_are_mixed_in_at_the_gold_share(db) -> None:
    make_study(db, neurons=20, ratings_per_item=1, overlap_share=0.0, gold_share=0.25)
    add_raters(db, ["ann"])
    admin = {item["item_id"]: item for item in human_eval.study_items(db, "S")}
    shown, totals = [], set()
    while (item := human_eval.next_item(db, "S", "ann")) is not None:
        shown.append(bool(admin[item.item_id]["is_gold"]))
        totals.add(item.progress.rated + item.progress.remaining)
        human_eval.submit_rating(db, "S", "ann", item.item_id, "left")
    assert shown.count(True) == 5 and shown.count(False) == 20
    assert totals == {25}  # "item k of 25" from the first item to the last: gold items to come are counted
    # Spread through the session rather than bunched at one end.
    assert 0 < shown.index(True) < 6 and any(shown[-6:])


def test_concurrent_raters_never_overfill_or_lose_ratings(db_path) -> None:
    database = dbmod.connect(db_path)
    make_study(database, neurons=30, ratings_per_item=1, overlap_share=0.0)
    names = [f"r{i}" for i in range(8)]
    add_raters(database, names)
    barrier = threading.Barrier(len(names))
    results: dict[str, int] = {}

    def work(name: str) -> None:
        barrier.wait()
        results[name] = rate_until_done(str(db_path), "S", name)

    threads = [threading.Thread(target=work, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(results.values()) == count_ratings(database) == 30
    assert all(item["n_ratings"] == 1 for item in human_eval.study_items(database, "S"))


def test_ratings_from_many_processes_at_once_are_all_kept(db_path) -> None:
    database = dbmod.connect(db_path)
    make_study(database, neurons=12, ratings_per_item=4)
    names = [f"p{i}" for i in range(4)]
    add_raters(database, names)
    with multiprocessing.get_context("spawn").Pool(len(names)) as pool:
        written = pool.starmap(rate_until_done, [(str(db_path), "S", name, "right") for name in names])
    assert sum(written) == count_ratings(database) == 48
    assert {item["n_ratings"] for item in human_eval.study_items(database, "S")} == {4}


# --- ratings -----------------------------------------------------------------------------------------------------


def test_a_rating_maps_sides_to_arms_and_a_resubmission_is_audited(db) -> None:
    make_study(db, neurons=2)
    add_raters(db, ["ann"])
    item = human_eval.next_item(db, "S", "ann")
    admin = {row["item_id"]: row for row in human_eval.study_items(db, "S")}[item.item_id]
    first = human_eval.submit_rating(db, "S", "ann", item.item_id, "left", confidence=4, comment=" ok ", seconds=3.5)
    assert not first.replaced
    stored = db["ratings"].get(first.rating_id)
    assert (stored["winner_arm"], stored["confidence"], stored["comment"]) == (admin["left_arm"], 4, "ok")
    again = human_eval.submit_rating(db, "S", "ann", item.item_id, "both-bad")
    assert (again.rating_id, again.replaced) == (first.rating_id, True)
    stored = db["ratings"].get(first.rating_id)
    assert (stored["choice"], stored["winner_arm"], stored["confidence"]) == ("both_bad", None, None)
    (audit,) = db["rating_audit"].rows
    assert (audit["choice"], audit["winner_arm"], audit["confidence"]) == ("left", admin["left_arm"], 4)
    assert count_ratings(db) == 1
    assert human_eval.item_for_rater(db, "S", "ann", item.item_id).previous_choice == "both_bad"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"study": "nope"}, "no study named 'nope'"),
        ({"rater": "nobody"}, "no rater named 'nobody'"),
        ({"choice": "maybe"}, "choice 'maybe' is not allowed; use one of left, right, both_bad"),
        ({"choice": "tie"}, "choice 'tie' is not allowed in this study"),
        ({"confidence": 6}, "confidence 6 is outside 1–5"),
        ({"confidence": "high"}, "confidence 'high' is not a number"),
        ({"seconds": -1}, "seconds -1.0 must be a finite number"),
        ({"other_item": True}, "was not assigned to this rater"),
        ({"item_id": 10_000}, "item 10000 is not part of study 'S'"),
    ],
)
def test_bad_ratings_get_a_clear_error_and_write_nothing(db, change, message) -> None:
    make_study(db, neurons=3, allow_tie=False)
    add_raters(db, ["ann", "bob"])
    item = human_eval.next_item(db, "S", "ann")
    other = human_eval.next_item(db, "S", "bob")
    if other.item_id == item.item_id:  # bob was paired with ann's item: take one only bob was given
        human_eval.submit_rating(db, "S", "bob", other.item_id, "left")
        other = human_eval.next_item(db, "S", "bob")
    before = (count_ratings(db), db["rating_audit"].count)
    args = {"study": "S", "rater": "ann", "item_id": item.item_id, "choice": "left", "confidence": None}
    args.update({key: value for key, value in change.items() if key != "other_item"})
    if change.get("other_item"):
        args["item_id"] = other.item_id
    with pytest.raises((InputError, NotFoundError), match=message):
        human_eval.submit_rating(db, args.pop("study"), args.pop("rater"), **args)
    assert (count_ratings(db), db["rating_audit"].count) == before
    with pytest.raises(InputError, match="not assigned"):
        human_eval.item_for_rater(db, "S", "ann", other.item_id)


# --- a simulated study -------------------------------------------------------------------------------------------


def test_simulated_raters_who_prefer_arm_a_70_percent(db) -> None:
    make_study(db, neurons=60, ratings_per_item=4, seed=11)
    names = ["ann", "bob", "cyd", "dan", "eve"]
    add_raters(db, names)
    rng = random.Random(5)
    written = run_raters(db, "S", {name: prefers(A, 0.7, rng) for name in names})
    assert written == 240
    summary = study_summary(db, "S")
    low, high = summary["wilson_ci"]
    assert low < 0.7 < high
    assert summary["win_rate"] == pytest.approx(0.7, abs=0.08)
    assert summary["binomial_p"] < 0.001
    assert summary["wins"][A] + summary["wins"][B] == summary["n_ratings"] == 240
    # Position balance: arms are on the left equally often and raters who ignore position show no bias.
    items = human_eval.study_items(db, "S")
    assert abs(sum(item["left_arm"] == A for item in items) - 30) <= 1
    assert summary["position_bias"]["p_value"] > 0.01
    # Independent raters with the same 70% preference agree only by chance.
    assert abs(summary["agreement"]["krippendorff_alpha"]) < 0.15


def test_identical_raters_agree_perfectly_and_random_ones_do_not(db) -> None:
    make_study(db, neurons=40, ratings_per_item=3, seed=2)
    add_raters(db, ["ann", "bob", "cyd"])
    verdicts = {}

    def same_mind(item: dict) -> str:
        # Everyone gives the same verdict on an item, whichever side they see each arm on; verdicts differ between
        # items.
        verdict = verdicts.setdefault(item["item_id"], random.Random(item["item_id"]).choice(["A", "B", "tie"]))
        if verdict == "tie":
            return "tie"
        arm = sorted([item["left_arm"], item["right_arm"]])[verdict == "B"]
        return "left" if item["left_arm"] == arm else "right"

    run_raters(db, "S", dict.fromkeys(("ann", "bob", "cyd"), same_mind))
    agreement = study_summary(db, "S")["agreement"]
    assert agreement["krippendorff_alpha"] == pytest.approx(1.0)
    assert agreement["fleiss_kappa"] == pytest.approx(1.0)

    neurons = ",".join(f"0:{i}" for i in range(40))
    human_eval.create_study(db, "R", ARMS, neurons, 3, seed=9)
    rng = random.Random(8)
    run_raters(db, "R", dict.fromkeys(("ann", "bob", "cyd"), lambda item: rng.choice(["left", "right", "tie"])))
    agreement = study_summary(db, "R")["agreement"]
    assert abs(agreement["krippendorff_alpha"]) < 0.2
    assert abs(agreement["fleiss_kappa"]) < 0.2


# --- status, migration and scores --------------------------------------------------------------------------------


def test_study_status_reports_progress_per_rater(db) -> None:
    make_study(db, neurons=4, ratings_per_item=2, gold_share=0.25)
    add_raters(db, ["ann", "bob"])
    item = human_eval.next_item(db, "S", "ann")
    human_eval.submit_rating(db, "S", "ann", item.item_id, "right")
    human_eval.next_item(db, "S", "bob")
    status = human_eval.study_status(db, "S")
    assert (status["n_items"], status["n_gold_items"], status["wanted_ratings"]) == (4, 1, 8)
    assert status["n_ratings"] == 1
    raters = {row["rater"]: row for row in status["raters"]}
    assert (raters["ann"]["assigned"], raters["ann"]["rated"]) == (1, 1)
    assert (raters["bob"]["assigned"], raters["bob"]["rated"]) == (1, 0)
    assert [row["name"] for row in human_eval.list_studies(db)] == ["S"]


def test_migration_from_v1_keeps_ratings_and_records_them_as_assigned(db_path) -> None:
    database = dbmod.connect(db_path)
    make_study(database, neurons=3, ratings_per_item=1, overlap_share=0.0)
    add_raters(database, ["ann"])
    rated = human_eval.next_item(database, "S", "ann").item_id
    human_eval.submit_rating(database, "S", "ann", rated, "left")
    database.conn.close()
    # Write the same data into a schema-v1 file: v1's tables, only v1's columns (later migrations add the rest).
    old_path = db_path.with_name("v1.db")
    old = sqlite3.connect(old_path, isolation_level=None)
    dbmod.MIGRATIONS[0](old)
    old.execute("PRAGMA user_version = 1")
    old.execute("ATTACH DATABASE ? AS current", [str(db_path)])
    tables = [row[0] for row in old.execute("SELECT name FROM main.sqlite_master WHERE type = 'table'")]
    for table in tables:
        columns = ", ".join(row[1] for row in old.execute(f"PRAGMA main.table_info({table})"))
        old.execute(f"INSERT INTO main.{table} ({columns}) SELECT {columns} FROM current.{table}")
    old.execute("DETACH DATABASE current")
    old.close()
    db_path = old_path
    migrated = dbmod.connect(db_path)
    assert dbmod.schema_version(migrated) == dbmod.SCHEMA_VERSION >= 3
    assert migrated["assignments"].count == 1
    # v3 keeps every existing rater on every existing study, open.
    assert human_eval.get_study(migrated, "S").state == "open"
    assert [study.name for study in human_eval.studies_for_rater(migrated, "ann")] == ["S"]
    assert count_ratings(migrated) == 1
    # … and the one layout every rating had before v3.
    (before,) = dbmod.study_ratings(migrated, human_eval.get_study(migrated, "S").id)
    assert before["shown_left"] == before["default_left_arm"] == before["left_arm"]
    offered = set()
    while (item := human_eval.next_item(migrated, "S", "ann")) is not None:
        offered.add(item.item_id)
        human_eval.submit_rating(migrated, "S", "ann", item.item_id, "left")
    assert rated not in offered and len(offered) == 2


def test_scores_for_explanations_never_mix_simulators(db) -> None:
    explain_neurons(db, 3)
    ids = [row["id"] for row in dbmod.list_explanations(db, MODEL)]
    rows = [
        {"explanation_id": ids[0], "simulator": "hf:small", "score": 0.1},
        {"explanation_id": ids[1], "simulator": "hf:small", "score": 0.2},
        {"explanation_id": ids[2], "simulator": "hf:small", "score": None},
        {"explanation_id": ids[0], "simulator": "hf:big", "score": 0.9},
        {"explanation_id": ids[1], "simulator": "hf:small", "score": 0.7, "split": "test"},
        {"explanation_id": ids[3], "simulator": "hf:small", "score": 0.3, "status": "error"},
    ]
    base = {"method": "all_at_once", "split": "valid", "status": "ok", "created_at": dbmod.now()}
    db["scores"].insert_all([{**base, **row} for row in rows])
    assert dbmod.scores_for_explanations(db, ids) == ("hf:small", {ids[0]: 0.1, ids[1]: 0.2})
    assert dbmod.scores_for_explanations(db, ids, "hf:big") == ("hf:big", {ids[0]: 0.9})
    assert dbmod.scores_for_explanations(db, []) == (None, {})


# --- left and right per rater ------------------------------------------------------------------------------------


def _a_left(rows: list[dict]) -> int:
    return sum(row["left_arm"] == A for row in rows)


def test_layouts_are_drawn_per_rater_and_balanced_within_raters_and_items(db) -> None:
    make_study(db, neurons=20, ratings_per_item=4, overlap_share=0.0, seed=5)
    names = [f"r{index}" for index in range(8)]
    add_raters(db, names)
    run_raters(db, "S", dict.fromkeys(names, lambda item: "left"))
    ratings = dbmod.study_ratings(db, human_eval.get_study(db, "S").id)
    assert len(ratings) == 80
    for name in names:  # each rater: arm A on the left for half of their items, give or take one
        mine = [row for row in ratings if row["rater"] == name]
        assert abs(2 * _a_left(mine) - len(mine)) <= 2, name
    for item_id in {row["item_id"] for row in ratings}:  # each item: A on the left for half of its raters
        theirs = [row for row in ratings if row["item_id"] == item_id]
        assert abs(2 * _a_left(theirs) - len(theirs)) <= 2, item_id
    # Layouts really differ between raters of one item, and each rating keeps the arm its rater saw on the left.
    assert any(len({row["left_arm"] for row in ratings if row["item_id"] == item}) == 2 for item in range(1, 21))
    assert all(row["shown_left"] == row["left_arm"] == row["winner_arm"] for row in ratings)
    # Raters who always click "left" split their wins evenly between the arms: position is not preference.
    summary = study_summary(db, "S")
    assert summary["wins"][A] == summary["wins"][B] == 40
    assert summary["primary"]["estimate"] == pytest.approx(0.5, abs=0.1)


def test_a_rater_sees_and_rates_their_own_layout(db) -> None:
    make_study(db, neurons=6, ratings_per_item=2, overlap_share=0.0)
    add_raters(db, ["ann", "bob"])
    seen = {}
    for name in ("ann", "bob"):
        item = human_eval.next_item(db, "S", name)
        view = {row["item_id"]: row for row in human_eval.study_items(db, "S", rater=name)}[item.item_id]
        default = {row["item_id"]: row for row in human_eval.study_items(db, "S")}[item.item_id]
        assert view["assigned"] and (item.explanation_1, item.explanation_2) == (view["left_text"], view["right_text"])
        assert {view["left_arm"], view["right_arm"]} == {default["left_arm"], default["right_arm"]}
        human_eval.submit_rating(db, "S", name, item.item_id, "right")
        seen[name] = view
    ratings = {row["rater"]: row for row in dbmod.study_ratings(db, human_eval.get_study(db, "S").id)}
    for name, view in seen.items():
        assert ratings[name]["winner_arm"] == view["right_arm"]
        assert ratings[name]["left_text"] == view["left_text"]
    unassigned = [row for row in human_eval.study_items(db, "S", rater="ann") if not row["assigned"]]
    assert len(unassigned) == 5


def test_imported_ratings_follow_shown_left_or_say_they_assumed_the_default(db, tmp_path) -> None:
    from core import export, raters

    make_study(db, neurons=3, ratings_per_item=1, overlap_share=0.0)
    raters.add_rater(db, "ann", "code-of-ann")
    items = human_eval.study_items(db, "S")
    path = tmp_path / "ratings.csv"
    rows = [f"{item['item_id']},ann,left,{item['right_arm']}" for item in items]
    path.write_text("item_id,rater,choice,shown_left\n" + "\n".join(rows) + "\n", encoding="utf-8")
    report = export.import_ratings(db, "S", path)
    assert not report.default_layout and "default layout" not in report.summary_line("S")
    stored = dbmod.study_ratings(db, human_eval.get_study(db, "S").id)
    right_arms = {item["item_id"]: item["right_arm"] for item in items}
    assert all(row["winner_arm"] == right_arms[row["item_id"]] == row["shown_left"] for row in stored)
    bare = tmp_path / "bare.csv"
    bare.write_text("item_id,rater,choice\n" + f"{items[0]['item_id']},ann,left\n", encoding="utf-8")
    report = export.import_ratings(db, "S", bare)
    assert report.default_layout and "default layout was assumed" in report.summary_line("S")
    bad = tmp_path / "bad.csv"
    bad.write_text("item_id,rater,choice,shown_left\n" + f"{items[0]['item_id']},ann,left,avhs\n", encoding="utf-8")
    with pytest.raises(InputError, match="shown_left 'avhs' is neither arm"):
        export.import_ratings(db, "S", bad)
