"""Importing published per-neuron scores (core/score_import.py, `python -m core import-scores`): attached to stored
explanations, kept apart as method 'imported' with the file they came from, and the paper's means recomputed."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from core import db as dbmod
from core.__main__ import main
from core.errors import InputError, NotFoundError
from core.score_import import import_scores_csv, published_means, read_score_table
from ui import tables

NEURONS = [(0, 11), (3, 40), (7, 2)]
SCORES = {"Original": [0.1, 0.2, 0.3], "Summary": [0.4, 0.5, 0.6], "AVHS": [0.05, "", -0.2]}


def write_explanations(path: Path) -> str:
    lines = ["Layer,Neuron,Original,Summary,AVHS"]
    lines += [f"{layer},{neuron},rivers {layer}.,dates {neuron}.,names {layer}-{neuron}." for layer, neuron in NEURONS]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def write_scores(path: Path, scores: dict[str, list] = SCORES, neurons=NEURONS) -> str:
    # The published layout: an unnamed index column, lower-case layer and neuron, then one column per format.
    lines = [",layer,neuron," + ",".join(scores)]
    for i, (layer, neuron) in enumerate(neurons):
        lines.append(f"{i},{layer},{neuron}," + ",".join(str(values[i]) for values in scores.values()))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_imported_scores_attach_to_stored_explanations_apart_from_computed_ones(tmp_path, capsys):
    db_file = str(tmp_path / "x.db")
    explanations = write_explanations(tmp_path / "results.csv")
    scores = write_scores(tmp_path / "results_score.csv")
    assert cli(capsys, "import-explanations", explanations, "--explainer", "gpt-3.5-turbo", "--db", db_file)[0] == 0
    args = ["import-scores", scores, "--explainer", "gpt-3.5-turbo", "--simulator", "gpt-3.5-turbo-instruct"]
    code, out, err = cli(capsys, *args, "--db", db_file)
    assert (code, err) == (0, "")
    assert "imported 8 published score(s)" in out and "method imported (not computed here)" in out
    assert "original 0.200 (n=3)  summary 0.500 (n=3)  avhs -0.075 (n=2)" in out

    database = dbmod.connect(db_file)
    rows = pd.DataFrame(dbmod.score_rows(database, "gpt2-xl", include_unscored=False))
    assert set(rows["method"]) == {"imported"} and set(rows["simulator"]) == {"gpt-3.5-turbo-instruct"}
    assert len(rows) == 8 and set(rows["split"]) == {"valid"} and not rows["calibrated"].any()
    by_cell = {(r["neuron"], r["format"]): r for r in rows.to_dict("records")}
    assert by_cell[("3:40", "summary")]["score"] == 0.5
    assert by_cell[("3:40", "summary")]["explanation"] == "dates 40"
    [source] = database.conn.execute(
        "SELECT s.source FROM scores s JOIN explanations e ON e.id = s.explanation_id"
        " WHERE e.layer = 7 AND e.format = 'avhs'"
    ).fetchone()
    source = json.loads(source)
    assert source["file"] == "results_score.csv" and source["row"] == 3 and source["column"] == "AVHS"
    assert source["path"] == str(Path(scores).resolve()) and len(source["sha256"]) == 64
    # A scorer of its own on the Results page, and the means next to local scores.
    assert tables.scorers(rows) == ["gpt-3.5-turbo-instruct · imported"]
    means = published_means(rows)
    assert means["format"].tolist() == ["original", "summary", "avhs"]
    assert means["mean_score"].tolist() == pytest.approx([0.2, 0.5, -0.075]) and means["n"].tolist() == [3, 3, 2]

    # Importing again replaces, never duplicates.
    assert cli(capsys, *args, "--db", db_file)[0] == 0
    assert database.conn.execute("SELECT COUNT(*) FROM scores").fetchone()[0] == 8


def test_scores_without_stored_explanations_say_what_to_import_first(db, tmp_path, capsys):
    scores = write_scores(tmp_path / "s.csv")
    with pytest.raises(NotFoundError, match=r"import the explanations they score first.*import-explanations"):
        import_scores_csv(db, scores, "gpt-4", "sim")
    code, out, err = cli(capsys, "import-scores", scores, "--explainer", "gpt-4", "--simulator", "s", "--db",
                         str(tmp_path / "y.db"))  # fmt: skip
    assert (code, out) == (2, "") and err.count("\n") == 1 and "test_neurons_results.csv" in err


def test_partly_matching_scores_are_imported_and_the_rest_named(db, tmp_path):
    from core.explain import import_explanations_csv

    import_explanations_csv(db, write_explanations(tmp_path / "e.csv"), "gpt-4")
    scores = write_scores(tmp_path / "s.csv", {"Summary": [0.4, 0.5]}, neurons=[(0, 11), (9, 9)])
    report = import_scores_csv(db, scores, "gpt-4", "sim")
    assert report.written == 1 and report.unmatched == ("9:9 summary",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("layer,neuron,Summary\n0,1,words about rivers.\n", "is not a score; a table of explanations"),
        ("layer,neuron,Summary\n0,1,1.7\n", "not a correlation between -1 and 1"),
        ("layer,neuron\n0,1\n", "lacks the columns"),
        ("layer,neuron,Summary\n0,x,0.1\n", "neuron 'x' is not a non-negative integer"),
        ("layer,neuron,Summary\n0,1,\n", "holds no scores"),
    ],
)
def test_a_file_that_is_not_a_score_table_is_refused(tmp_path, text: str, message: str):
    path = tmp_path / "t.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError, match=message):
        read_score_table(path)


def test_the_papers_published_means_are_recomputed_from_its_files(tmp_path, reference_dir, capsys):
    # docs/METHOD.md §5: gpt-3.5-turbo explanations of the 5 GPT-2 XL test neurons, scored by the paper.
    folder = reference_dir / "lee2023" / "test_results"
    explanations, scores = folder / "test_neurons_results.csv", folder / "test_neurons_results_score.csv"
    if not explanations.exists() or not scores.exists():
        pytest.skip(f"{folder} lacks the test neuron files")
    db_file = str(tmp_path / "paper.db")
    assert (
        cli(capsys, "import-explanations", str(explanations), "--explainer", "gpt-3.5-turbo", "--db", db_file)[0] == 0
    )
    code, out, _ = cli(capsys, "import-scores", str(scores), "--explainer", "gpt-3.5-turbo", "--simulator",
                       "gpt-3.5-turbo-instruct", "--db", db_file)  # fmt: skip
    assert code == 0 and "imported 25 published score(s)" in out
    rows = pd.DataFrame(dbmod.score_rows(dbmod.connect(db_file), "gpt2-xl", include_unscored=False))
    means = published_means(rows).set_index("format")["mean_score"]
    expected = {"original": 0.196, "summary": 0.278, "highlight": 0.262, "highlight_summary": 0.238, "avhs": 0.236}
    assert means.to_dict() == pytest.approx(expected, abs=5e-4)
