"""Study exports, their re-import, CSV import of outside ratings, and the admin's export-then-purge."""

from __future__ import annotations

import json
import random
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import sqlite_utils

from core import db as dbmod
from core import export, human_eval, raters
from core.errors import InputError
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
    recomputed = export.reproduce_summary(loaded)
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


def test_a_csv_roundtrip_keeps_numeric_looking_rater_names(db) -> None:
    neurons = explain_neurons(db, 4)
    human_eval.create_study(db, "S", f"{A},{B}", neurons, 1, seed=1, overlap_share=0.0)
    raters.add_rater(db, "007", "code-007")
    run_raters(db, "S", {"007": prefers(A, 1.0, random.Random(0))})
    loaded = export.load_export(export.export_study(db, "S", "csv"))
    assert list(loaded.ratings["rater"].unique()) == ["007"]
    assert export.reproduce_summary(loaded)["per_rater"][0]["rater"] == "007"


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
    with pytest.raises(Exception, match="export-then-purge"):
        dbmod.delete_study_ratings(rated, human_eval.get_study(rated, "Pilot study").id)


def test_import_ratings_writes_good_rows_and_reports_bad_ones_by_line(db, tmp_path: Path) -> None:
    neurons = explain_neurons(db, 3)
    human_eval.create_study(db, "S", f"{A},{B}", neurons, 2, seed=1, allow_both_bad=False)
    human_eval.create_study(db, "Other", f"{A},{B}", neurons, 2, seed=2)
    add_raters(db, ["ann"])
    items = [item["item_id"] for item in human_eval.study_items(db, "S")]
    foreign = human_eval.study_items(db, "Other")[0]["item_id"]
    path = tmp_path / "ratings.csv"
    path.write_text(
        "item_id,rater,choice,confidence,seconds,comment,extra\n"
        f"{items[0]},ann,left,4,12.5,fine,x\n"  # line 2: ok
        f"{items[1]},ann,sideways,,,,\n"  # line 3: bad choice
        f'{items[1]},ann,right,,,"two\nlines",\n'  # lines 4-5: ok
        f"{foreign},ann,left,,,,\n"  # line 6: item of another study
        f"{items[2]},zed,left,,,,\n"  # line 7: unknown rater
        f"{items[2]},ann,both_bad,,,,\n"  # line 8: not allowed in this study
        f"{items[2]},ann,tie,9,,,\n"  # line 9: confidence out of range
        f"x{items[2]},ann,tie,,,,\n"  # line 10: bad item id
        f"{items[0]},ann,right,,,,\n",  # line 11: replaces line 2
        encoding="utf-8",
    )
    report = export.import_ratings(db, "S", path)
    assert (report.written, report.replaced) == (3, 1)
    assert [line for line, _ in report.errors] == [3, 6, 7, 8, 9, 10]
    messages = dict(report.errors)
    assert "sideways" in messages[3] and "not part of study 'S'" in messages[6]
    assert "zed" in messages[7] and "both_bad" in messages[8] and "outside 1–5" in messages[9]
    assert count_ratings(db) == 2
    assert db["rating_audit"].count == 1
    assert human_eval.rater_progress(db, "S", "ann").rated == 2  # imported ratings count as seen
    assert db["raters"].count == 1
    created = export.import_ratings(db, "S", path, create_raters=True)
    assert created.created_raters == ("zed",)
    path.write_text("item,rater\n1,ann\n")
    with pytest.raises(InputError, match="item_id, choice"):
        export.import_ratings(db, "S", path)
