"""Properties of study exports that mutation testing (`make mutation MODULE=export`, tests/README.md) showed
untested: every score and source sits on the side of its own explanation (in a rater's layout too), exports are
written whole and named safely, and every refusal of an import row sits at its boundary. (The exact agreement an
export reports and the plan's part in the analysis are in tests/test_export.py.)"""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import sqlite_utils

from core import db as dbmod
from core import export, human_eval, provenance, raters
from core.plan import StudyPlan
from tests.simulated_study import MODEL, add_raters, explain_neurons
from tests.test_export import A, B, rate


class LengthEmbedder:
    """A stand-in for a sentence embedder: a text's vector is its length and 1, normalised."""

    def embed(self, texts: list[str]) -> np.ndarray:
        vectors = np.array([[len(text), 1.0] for text in texts])
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture
def scored(db: sqlite_utils.Database) -> sqlite_utils.Database:
    """Study "S" (with gold items) rated by two raters, whose every explanation has its own simulation score
    (100 + its id) and similarity (its id / 100) and a source of its own file."""
    for index in range(6):
        for variant, (fmt, source) in enumerate((("summary", "file:aaa"), ("original", "file:bbb"))):
            dbmod.insert_explanation(
                db, model=MODEL, layer=0, neuron=index, format=fmt, explainer="gpt-4", source=source,
                explanation=f"words about theme {index}, variant {variant}",
            )  # fmt: skip
    human_eval.create_study(db, "S", f"{A},{B}", [f"0:{i}" for i in range(6)], 2, seed=3, gold_share=0.3,
                            decoy_embedder=LengthEmbedder())  # fmt: skip
    add_raters(db, ["ann", "bob"])
    rate(db, "S", "ann", dict.fromkeys(range(20), "A"))
    rate(db, "S", "bob", dict.fromkeys(range(20), "B"))
    base = {"split": "valid", "status": "ok", "created_at": "x", "simulator": "hf:tiny", "method": "all_at_once"}
    for row in dbmod.list_explanations(db, MODEL):
        db["scores"].insert({**base, "explanation_id": row["id"], "calibrated": 0, "score": 100.0 + row["id"]})
        dbmod.save_similarity(db, row["id"], "reference", f"ref {row['id']}", "mini", row["id"] / 100)
    return db


def test_every_score_and_source_sits_on_the_side_of_its_own_explanation(scored) -> None:
    data = export.study_data(scored, "S")
    sources = {row["id"]: provenance.source_key(row) for row in dbmod.list_explanations(scored, MODEL)}
    layouts = set()
    for frame in (data.ratings, data.items):
        assert frame["is_gold"].sum() > 0
        for row in frame.to_dict(orient="records"):
            for side in ("left", "right"):
                explanation = row[f"{side}_explanation_id"]
                assert row[f"{side}_score"] == 100.0 + explanation, (side, row)
                assert row[f"score:hf:tiny·all_at_once:{side}"] == 100.0 + explanation
                assert row[f"similarity:mini:{side}"] == pytest.approx(explanation / 100)
                assert row[f"{side}_source"] == sources[explanation]
            layouts.add(row["left_arm"])
    assert {A, B} <= layouts  # both layouts occur, so a swap of sides would show
    assert data.simulator == "hf:tiny"
    kinds = ["score:hf:tiny·all_at_once:left", "score:hf:tiny·all_at_once:right", "similarity:mini:left",
             "similarity:mini:right"]  # fmt: skip
    assert list(data.ratings.columns) == [*export.RATING_COLUMNS, *kinds]
    assert list(data.items.columns)[: len(export.ITEM_COLUMNS) + 4] == [*export.ITEM_COLUMNS, *kinds]
    # Another simulator's scores, of which there are none: no score, and the summary says whose they were.
    other = export.study_data(scored, "S", "hf:other")
    assert other.simulator == "hf:other" and other.ratings["left_score"].isna().all()
    files = export.export_study(scored, "S", "json", simulator="hf:other", min_gold_accuracy=0.5)
    summary = json.loads(files["S.json"])["summary"]
    assert summary["options"] == {"simulator": "hf:other", "min_gold_accuracy": 0.5}
    assert summary["gold"]["min_accuracy"] == 0.5 and summary["human_vs_automated"] is None
    with pytest.raises(export.InputError, match=r"^export format 'xls' is not one of csv, json, parquet$"):
        export.export_study(scored, "S", "xls")
    ratings = data.ratings.set_index("rating_id")
    for rating in dbmod.study_ratings(scored, human_eval.get_study(scored, "S").id):
        row = ratings.loc[rating["rating_id"]]
        assert (row["left_explanation_id"], row["winner_arm"]) == (rating["left_explanation_id"], rating["winner_arm"])
        assert row["neuron"] == f"{rating['layer']}:{rating['neuron']}"
    items = data.items.set_index("item_id")
    for item in dbmod.list_items(scored, human_eval.get_study(scored, "S").id):
        assert items.loc[item["id"], "left_explanation_id"] == item["left_explanation_id"]
        assert items.loc[item["id"], "n_ratings"] == 2 or items.loc[item["id"], "is_gold"]


def test_an_export_never_replaces_a_file_unless_allowed_and_names_its_files_safely(tmp_path) -> None:
    files = {"a_summary.json": b"{}", "a_ratings.csv": b"x\r\n"}
    written = export.write_export(files, tmp_path / "out")
    assert sorted(path.name for path in written) == sorted(files)
    assert export.write_export(files, tmp_path / "out")  # replaced: allowed by default
    with pytest.raises(export.InputError, match="already exists and would be replaced"):
        export.write_export(files, tmp_path / "out", overwrite=False)
    (single,) = export.write_export({"a.json": b"[]"}, tmp_path / "single.json")
    assert single.read_bytes() == b"[]"
    assert export.file_stem(" Pilot study: v2/3 ") == "Pilot_study_v2_3"
    assert export.file_stem("...") == "study" and export.file_stem(".hidden.") == "hidden"
    assert export.file_stem("Xylo X") == "Xylo_X"
    nested = export.write_export({"a.json": b"{}"}, tmp_path / "deep" / "er" / "a.json")
    assert [path.read_bytes() for path in nested] == [b"{}"]
    assert not list(tmp_path.glob("**/.*.partial"))


def test_a_zip_export_is_compressed_and_a_write_that_fails_says_why(tmp_path) -> None:
    files = {"a_summary.json": b"{}", "a_ratings.csv": b"item_id,choice\r\n" + b"1,left\r\n" * 500}
    (archive,) = export.write_export(files, tmp_path / "out.zip")
    with zipfile.ZipFile(archive) as opened:
        assert {info.filename: info.compress_type for info in opened.infolist()} == dict.fromkeys(
            files, zipfile.ZIP_DEFLATED
        )
        assert archive.stat().st_size < len(files["a_ratings.csv"]) / 4
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(export.InputError) as refused:
        export.write_export(files, blocker / "out")
    assert str(refused.value) == f"cannot write the export to {blocker / 'out'}: Not a directory"
    assert blocker.read_text() == "" and not list(tmp_path.glob("**/.*.partial"))


def test_text_that_reads_as_missing_stays_text_through_csv_and_json_keeps_unicode() -> None:
    frame = export.pd.DataFrame({"comment": ["NA", "null", "None", "n/a", "nan", "", None], "n": [1, 2, 3, 4, 5, 6, 7]})
    back = export._read_csv(export.csv_bytes(frame))
    assert back["comment"].tolist()[:5] == ["NA", "null", "None", "n/a", "nan"]
    assert back["comment"].isna().tolist()[5:] == [True, True] and back["n"].tolist() == list(range(1, 8))
    assert "ünïcödé ✓".encode() in export._json_bytes({"text": "ünïcödé ✓"})


def test_a_damaged_or_partial_export_is_refused_by_what_it_lacks(tmp_path) -> None:
    with pytest.raises(export.InputError, match=r"^cannot read the export .*missing.zip"):
        export.load_export(tmp_path / "missing.zip")
    summary = json.dumps({"arms": [A, B]}).encode()
    with pytest.raises(export.InputError, match=r"^the export has no summary \(\*_summary\.json\)$"):
        export.load_export({"S_ratings.csv": b"a\r\n1\r\n", "S_items.csv": b"a\r\n1\r\n"})
    with pytest.raises(export.InputError, match=r"^the export has no ratings file \(\*_ratings\.csv or"):
        export.load_export({"S_summary.json": summary, "S_items.csv": b"a\r\n1\r\n"})
    with pytest.raises(export.InputError, match=r"^the export is damaged or not one of ours: "):
        export.load_export({"S_summary.json": b"{not json", "S_items.csv": b"a\r\n", "S_ratings.csv": b"a\r\n"})
    # A JSON bundle of one rating: our columns first, in order, then those it carries beside them.
    rating = {column: None for column in export.RATING_COLUMNS} | {"rater": "ann", "is_gold": 0, "score:x:left": 0.5}
    bundle = {"summary": {"arms": [A, B]}, "items": [{"item_id": 1, "is_gold": 0}], "ratings": [rating]}
    loaded = export.load_export({"S.json": json.dumps(bundle).encode()})
    assert list(loaded.ratings.columns) == [*export.RATING_COLUMNS, "score:x:left"]
    assert loaded.ratings["is_gold"].tolist() == [0] and loaded.summary == {"arms": [A, B]}
    # is_gold comes back as whole numbers, whatever the file held (JSON true/false, as other tools write it).
    flagged = {**bundle, "ratings": [rating | {"is_gold": True}, rating | {"is_gold": False}]}
    loaded = export.load_export({"S.json": json.dumps(flagged).encode()})
    assert loaded.ratings["is_gold"].dtype == np.int64 and loaded.ratings["is_gold"].tolist() == [1, 0]


def test_an_export_with_a_plan_and_options_reproduces_them(db) -> None:
    neurons = explain_neurons(db, 4)
    fixed = StudyPlan(primary_pair=(B, A), target_neurons=9, ratings_per_item=2, interim="hide")
    human_eval.create_study(db, "S", f"{A},{B}", neurons, 2, seed=2, plan=fixed)
    add_raters(db, ["ann", "bob"])
    rate(db, "S", "ann", {0: "A", 1: "B", 2: "A", 3: "A"})
    rate(db, "S", "bob", {0: "A", 1: "A", 2: "tie", 3: "B"})
    files = export.export_study(db, "S", "csv", min_gold_accuracy=0.75)
    loaded = export.load_export(files)
    again = export.reproduce_summary(loaded)
    assert again.to_json() == {key: loaded.summary[key] for key in again.to_json()}
    assert (again.plan.plan, again.statistics.arms, again.statistics.gold.min_accuracy) == (fixed, (B, A), 0.75)
    assert again.interim.display == "hide" and again.statistics.primary.p_value is None


def test_only_an_admin_who_exists_may_purge_and_a_purge_says_what_it_wrote(db, tmp_path) -> None:
    neurons = explain_neurons(db, 2)
    human_eval.create_study(db, "S", f"{A},{B}", neurons, 1, seed=2)
    add_raters(db, ["ann"])
    rate(db, "S", "ann", {0: "A", 1: "B"})
    boss = raters.add_rater(db, "boss", "boss-code", admin=True)
    for impostor in (raters.Rater(999, "ghost", "admin"), raters.Rater(boss.id + 1, "boss", "admin")):
        with pytest.raises(export.InputError, match=r"^only an admin may purge ratings"):
            export.purge_study_ratings(db, "S", impostor, tmp_path / "x.json")
    result = export.purge_study_ratings(db, "S", boss, tmp_path / "purged.json")
    assert result == {"study": "S", "deleted": 2, "files": [str(tmp_path / "purged.json")]}


@pytest.fixture
def items(db: sqlite_utils.Database) -> dict[str, int]:
    neurons = explain_neurons(db, 2)
    human_eval.create_study(db, "S", f"{A},{B}", neurons, 2, seed=1)
    raters.add_rater(db, "ann", "code-of-ann")
    ids = [item["item_id"] for item in human_eval.study_items(db, "S")]
    return {"a": ids[0], "b": ids[1]}


@pytest.mark.parametrize(
    ("cells", "message"),
    [
        ("{a},ann,left,1234567,,", "confidence '1234567' is not a whole number written with the digits 0-9"),
        ("{a},ann,left,3.5,,", "confidence '3.5' is not a whole number"),
        ("{a},ann,left,,1e1234,", "seconds '1e1234' is not a decimal number written with the digits 0-9"),
        ("{a},ann,left,,1" + "0" * 40 + ",", "is not a decimal number"),
        ("1234567890123456789,ann,left,,,", "item_id '1234567890123456789' is not a whole number"),
        (",ann,left,,,", "item_id is empty"),
        ("{a},,left,,,", "rater '' is not a name of 1 to"),
        ("{a},ann,left,,,,nobody", r"shown_left 'nobody' is neither arm of item \d+ \((summary|original)@gpt-4, "),
        ("{a},ann,,,,", "choice '' is not allowed; use one of left, right, tie, both_bad"),
        ("{a},zed,left,,,", r"no rater named 'zed'; add them \(`python -m core rater add`\) or pass --create-raters"),
        ("{a}," + "r" * 101 + ",left,,,", "is not a name of 1 to 100 characters"),
    ],
)
def test_an_import_row_is_refused_at_each_limit(db, items, tmp_path, cells: str, message: str) -> None:
    path = tmp_path / "ratings.csv"
    path.write_text("item_id,rater,choice,confidence,seconds,comment,shown_left\n" + cells.format(**items) + "\n")
    with pytest.raises(export.ImportRatingsError, match=message):
        export.import_ratings(db, "S", path)


def test_an_import_accepts_numbers_as_spreadsheets_write_them(db, items, tmp_path) -> None:
    path = tmp_path / "ratings.csv"
    seconds = "1" + "0" * 37 + ".5"  # 40 characters: the longest accepted
    path.write_text(
        "\ufeffitem_id,rater,choice,confidence,seconds,shown_left\n"
        f" {items['a']} ,ann,left,4.00,{seconds},\n{items['b']},ann,right,2.0,.5e-3,{B}\n",
        encoding="utf-8",
    )
    report = export.import_ratings(db, "S", path)
    assert (report.read, report.written, report.default_layout) == (2, 2, False)
    stored = {row["item_id"]: row for row in dbmod.study_ratings(db, human_eval.get_study(db, "S").id)}
    assert stored[items["a"]]["confidence"] == 4 and stored[items["a"]]["seconds"] == pytest.approx(float(seconds))
    assert stored[items["b"]]["shown_left"] == B and stored[items["b"]]["left_arm"] == B
    assert report.to_json()["created_raters"] == []
    assert (
        report.summary_line("S")
        == "study 'S': 2 rows read, 2 written (0 replacing a different rating), 0 unchanged, 0 rejected"
    )


def test_an_import_keeps_the_layout_each_row_names_on_either_side(db, items, tmp_path) -> None:
    path = tmp_path / "ratings.csv"
    study_id = human_eval.get_study(db, "S").id
    for arm in (A, B):
        path.write_text(f"item_id,rater,choice,shown_left\n{items['a']},ann,left,{arm}\n")
        export.import_ratings(db, "S", path)
        (stored,) = dbmod.study_ratings(db, study_id)
        assert (stored["shown_left"], stored["left_arm"], stored["winner_arm"]) == (arm, arm, arm)
    path.write_text("item_id,rater,choice\n ,ann,left\n")
    with pytest.raises(export.ImportRatingsError) as refused:
        export.import_ratings(db, "S", path)
    assert refused.value.errors == ((2, "item_id is empty"),)


def test_an_import_reads_rows_after_blank_lines_and_short_rows_and_names_new_raters(db, items, tmp_path) -> None:
    path = tmp_path / "ratings.csv"
    path.write_text(f"item_id,rater,choice,comment\n{items['a']},ann,left\n\n{items['b']},{'r' * 100},right,ok\n")
    report = export.import_ratings(db, "S", path, create_raters=True)
    assert (report.read, report.written, report.created_raters) == (2, 2, ("r" * 100,))
    assert report.summary_line("S").endswith(
        f"0 rejected; new raters: {'r' * 100!r}; no shown_left column, so each item's default layout was assumed"
    )
    assert export.ImportReport(2, 1, 0, 1, ("x", "y")).summary_line("S").endswith("; new raters: 'x', 'y'")
    # Unknown raters are an error unless asked for.
    path.write_text(f"item_id,rater,choice\n{items['a']},nobody,left\n")
    with pytest.raises(export.ImportRatingsError, match="no rater named 'nobody'"):
        export.import_ratings(db, "S", path)


def test_an_import_says_what_is_wrong_with_the_file_itself(db, items, tmp_path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(export.InputError, match=r"lacks the column\(s\) item_id, rater, choice; its header must"):
        export.import_ratings(db, "S", empty)
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"item_id,rater,choice\n\xff\xfe,ann,left\n")
    with pytest.raises(export.InputError, match=r"^cannot read .*binary\.csv as UTF-8 text: "):
        export.import_ratings(db, "S", binary)
    broken = tmp_path / "broken.csv"
    broken.write_text('item_id,"rater,choice\n1,ann,left\n')
    assert export.read_rating_rows(broken.read_text())[2][0] == 1  # the header itself, on line 1


def test_an_import_error_lists_ten_rows_then_how_many_more(db, items, tmp_path) -> None:
    path = tmp_path / "ratings.csv"
    path.write_text("item_id,rater,choice\n" + "".join(f"x{i},ann,left\n" for i in range(12)))
    with pytest.raises(export.ImportRatingsError) as caught:
        export.import_ratings(db, "S", path)
    message = str(caught.value)
    assert message.startswith(
        f"{path}: nothing imported, 12 bad row(s) of 12 read (fix them and import the file again): "
    )
    assert message.count("; line ") == 9 and message.endswith("; and 2 more")
    assert [line for line, _ in caught.value.errors] == list(range(2, 14))
    for bad, ending in ((10, "'x9' is not a whole number written with the digits 0-9"), (2, "digits 0-9")):
        path.write_text("item_id,rater,choice\n" + "".join(f"x{i},ann,left\n" for i in range(bad)))
        with pytest.raises(export.ImportRatingsError) as caught:
            export.import_ratings(db, "S", path)
        assert str(caught.value).endswith(ending) and str(caught.value).count("; line ") == bad - 1
