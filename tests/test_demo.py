"""The offline demo (core/demo.py, `python -m core demo`) on a tiny model's database: baseline explanations, embedding
scores on the real MiniLM, a study with a demo rater, and `--remove`, which deletes exactly what the demo made."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from core import db as dbmod
from core import demo, human_eval
from core.__main__ import main
from core.activations import CollectOptions, collect
from core.errors import InputError
from core.records import ActivationRecord, NeuronId, NeuronRecord, NeuronStats
from core.scorers import ScorerOptions
from tests import tiny_models

OPTIONS = CollectOptions(max_tokens=1600, excerpt_len=16, top_k=20, random_k=15, batch_size=7, seed=3)
SCORING = ScorerOptions(activating_quantile=0.9)
TABLES = ("explanations", "scores", "studies", "items", "raters", "study_raters", "ratings", "assignments", "demo_rows")


@pytest.fixture(scope="module")
def collected(tmp_path_factory) -> tuple[str, Path]:
    folder = tmp_path_factory.mktemp("demo")
    model = tiny_models.build("gpt2", folder / "gpt2")
    corpus = folder / "corpus.txt"
    corpus.write_text(tiny_models.TEXT * 4)
    path = folder / "collected.db"
    database = dbmod.connect(path)
    collect(database, str(model), [1, 2], str(corpus), OPTIONS)
    database.conn.close()
    return str(model), path


@pytest.fixture
def demo_db(collected, tmp_path: Path):
    model, path = collected
    copy = tmp_path / "demo.db"
    shutil.copy(path, copy)
    database = dbmod.connect(copy)
    yield model, copy, database
    database.conn.close()


def snapshot(database) -> dict[str, list]:
    return {table: database.conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall() for table in TABLES}


def test_baselines_name_the_top_tokens() -> None:
    stats = NeuronStats(0.0, 1.0, 5.0, {0.5: 0.1, 0.99: 1.0})
    top = tuple(
        ActivationRecord((" it", " was", " Monday", " or", " Friday", "."), (0, 0, 5.0 - rank / 10, 0, 2.0, 0))
        for rank in range(20)
    )
    record = NeuronRecord("m", NeuronId(0, 1), top, (), stats)
    assert demo.top_tokens_explanation(record) == 'the tokens "monday" and "friday"'
    in_context = '"monday" as in "was Monday or"; "friday" as in "or Friday."'
    assert demo.top_tokens_in_context_explanation(record) == in_context


def test_demo_then_remove_leaves_the_database_as_it_was(demo_db, capsys) -> None:
    model, path, database = demo_db
    # Real work already there: an explanation of another neuron, its score, and a study with a rater.
    for neuron in (NeuronId(1, 0), NeuronId(1, 1)):
        for fmt in ("summary", "original"):
            text = f"{fmt} words {neuron}"
            dbmod.insert_explanation(database, model=model, layer=neuron.layer, neuron=neuron.index, format=fmt,
                                     explainer="openai:x", explanation=text, status="ok")  # fmt: skip
    real = dbmod.list_explanations(database, model)[0]["id"]
    dbmod.save_imported_score(database, real, "paper", 0.4, "paper.csv")
    human_eval.create_study(database, "real", "summary,original", ["1:0", "1:1"], ratings_per_item=1, seed=0,
                            model=model)  # fmt: skip
    assert not demo.offer_demo(database)  # there are explanations already
    before = snapshot(database)

    report = demo.run_demo(database, model, n_neurons=5, layer=2, seed=1, scorer_options=SCORING)
    assert (report.layer, len(report.neurons), report.explanations, report.study) == (2, 5, 10, demo.STUDY)
    assert report.scores == 10 and 1 <= report.items <= 5 and len(report.rater_code) >= 8
    made = dbmod.list_explanations(database, model)
    baselines = [row for row in made if row["explainer"].startswith("baseline:")]
    assert len(baselines) == 10 and {row["format"] for row in baselines} == {"baseline"}
    assert {row["explainer"] for row in baselines} == {demo.TOP_TOKENS, demo.IN_CONTEXT}
    assert all(NeuronId(row["layer"], row["neuron"]) not in (NeuronId(1, 0), NeuronId(1, 1)) for row in baselines)
    simulators = {row[0] for row in database.conn.execute("SELECT DISTINCT simulator FROM scores")}
    assert simulators == {"paper", "embedding:minilm"}
    rater = dbmod.get_rater(database, demo.RATER)
    study = human_eval.get_study(database, demo.STUDY)
    assert dbmod.rater_study_ids(database, rater["id"]) == [study.id]
    assert any("Rate: sign in as demo-rater with the code" in step for step in report.next_steps)
    with pytest.raises(InputError, match="already in this database"):
        demo.run_demo(database, model, n_neurons=5, layer=2)
    # Ok explanations stay immutable, baselines included while something outside the demo points at them.
    with pytest.raises(sqlite3.DatabaseError, match="immutable"):
        database.conn.execute("DELETE FROM explanations WHERE id = ?", [real])
    dbmod.save_imported_score(database, baselines[0]["id"], "paper", 0.1, "paper.csv")
    with pytest.raises(InputError, match=r"1 score\(s\) made outside the demo"):
        demo.remove_demo(database)
    with pytest.raises(sqlite3.DatabaseError, match="immutable"):
        database.conn.execute("DELETE FROM explanations WHERE id = ?", [baselines[0]["id"]])
    database.conn.execute(
        "DELETE FROM scores WHERE explanation_id = ? AND simulator = 'paper'", [baselines[0]["id"]]
    )  # the user removes what they added

    assert main(["demo", "--db", str(path), "--remove"]) == 0
    assert "removed the demo: 10 explanations, 10 scores, 1 studies" in capsys.readouterr().out
    assert snapshot(database) == before
    assert main(["demo", "--db", str(path), "--remove"]) == 0
    assert "no demo in this database" in capsys.readouterr().out


def test_demo_command_on_a_fresh_database(demo_db, capsys) -> None:
    model, path, database = demo_db
    assert demo.offer_demo(database)
    assert main(["demo", "--db", str(path), "--model", model, "--neurons", "4", "--layer", "1"]) == 0
    out = capsys.readouterr().out
    assert "demo: 8 baseline explanations of 4 neurons" in out and "next:" in out and "demo --remove" in out
    assert not demo.offer_demo(database) and demo.demo_present(database)
    assert main(["demo", "--db", str(path), "--remove", "--json"]) == 0
    assert not demo.demo_present(database) and dbmod.list_explanations(database, model) == []


def test_demo_needs_the_scorers_excerpts(demo_db) -> None:
    model, _, database = demo_db
    old = dbmod.get_neuron(database, model, NeuronId(1, 0))
    neurons = [NeuronRecord(model, NeuronId(3, i), old.top, old.random, old.stats) for i in range(4)]
    dbmod.write_neurons(database, model, neurons, "openai")
    with pytest.raises(InputError, match=r"--layers 3 --replace"):
        demo.run_demo(database, model, layer=3)
    with pytest.raises(InputError, match=r"layer 7 .* is not collected"):
        demo.run_demo(database, model, layer=7)
    assert not demo.demo_present(database) and dbmod.list_explanations(database, model) == []


def test_the_home_page_offers_the_demo_while_there_is_no_explanation(app_db, tmp_path: Path) -> None:
    from streamlit.testing.v1 import AppTest

    model = tiny_models.build("gpt2", tmp_path / "gpt2")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(tiny_models.TEXT * 4)
    collect(app_db, str(model), [1], str(corpus), OPTIONS)
    home = Path(__file__).resolve().parent.parent / "app.py"
    at = AppTest.from_file(str(home), default_timeout=120).run()
    (button,) = [b for b in at.button if b.label.startswith("Run the offline demo")]
    button.click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("Demo ready" in element.value for element in at.success)
    assert any("demo" in element.value and "remove" in element.value for element in at.markdown)
    assert demo.demo_present(app_db) and human_eval.get_study(app_db, demo.STUDY).model == str(model)
    at.run()  # explanations now exist: no more button
    assert not [b for b in at.button if b.label.startswith("Run the offline demo")]


def test_remove_refuses_when_the_demo_rater_was_given_other_work(demo_db) -> None:
    model, _, database = demo_db
    dbmod.insert_explanation(database, model=model, layer=1, neuron=0, format="summary", explainer="openai:x",
                             explanation="cats", status="ok")  # fmt: skip
    dbmod.insert_explanation(database, model=model, layer=1, neuron=0, format="original", explainer="openai:x",
                             explanation="dogs", status="ok")  # fmt: skip
    real = human_eval.create_study(database, "real", "summary,original", ["1:0"], ratings_per_item=1, seed=0)
    demo.run_demo(database, model, n_neurons=3, layer=2, scorer_options=SCORING)
    rater = dbmod.get_rater(database, demo.RATER)
    dbmod.assign_rater_studies(database, rater["id"], [real.study.id])
    with pytest.raises(InputError, match=r"the demo rater's assignment to 1 other study"):
        demo.remove_demo(database)
    assert demo.demo_present(database) and dbmod.get_rater(database, demo.RATER) is not None
