"""Properties of study exports that mutation testing (`make mutation MODULE=export`, tests/README.md) showed
untested: every score and source sits on the side of its own explanation (in a rater's layout too), exports are
written whole and named safely, and every refusal of an import row sits at its boundary. (The exact agreement an
export reports and the plan's part in the analysis are in tests/test_export.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import sqlite_utils

from core import db as dbmod
from core import export, human_eval, provenance, raters
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
    assert not list(tmp_path.glob("**/.*.partial"))


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
        ("{a},ann,left,,,,nobody", "shown_left 'nobody' is neither arm of item"),
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
