"""Blinding that holds: study states, raters' studies, what visitors see, study names and text tells."""

from __future__ import annotations

import json

import pytest

from core import blinding, human_eval, raters
from core import db as dbmod
from core.__main__ import main
from core.errors import InputError
from core.records import NeuronId
from tests.simulated_study import EXPLAINERS, MODEL, explain_neurons
from tests.test_app import (
    ADMIN,
    ADMIN_CODE,
    RATER,
    RATER_CODE,
    STUDY,
    assert_no_crash,
    page_text,
    run,
    sign_in,
    write_default_data,
    write_scored_explanations,
    write_study,
)
from tests.test_app import MODEL as APP_MODEL
from tests.test_human_eval import ARMS, make_study

# --- names ---------------------------------------------------------------------------------------------------------


def test_study_names_are_normalised_and_near_duplicates_refused() -> None:
    assert blinding.normalise_name("  pilot \t study\u200b ") == "pilot study"
    assert blinding.normalise_name("ＰＩＬＯＴ") == "PILOT"  # NFKC folds full-width letters
    for clash in ("pilot", "Pilot", "PI\u200bLOT", "\ufeffpilot", "ｐｉｌｏｔ", " pilot ", "pi\u202elot"):
        with pytest.raises(InputError, match="pilot"):
            blinding.check_new_name(clash, ["pilot"])
    assert blinding.check_new_name("pilot 2", ["pilot"]) == "pilot 2"
    with pytest.raises(InputError, match="visible characters"):
        blinding.check_new_name("\u200b \u2060", [])


def test_create_study_refuses_a_name_that_differs_only_by_case_or_invisible_characters(db) -> None:
    explain_neurons(db, 4)
    human_eval.create_study(db, " Pilot ", ARMS, "0:0,0:1,0:2,0:3", 1, seed=1)
    assert human_eval.get_study(db, "Pilot").name == "Pilot"
    for name in ("pilot", "Pi\u200blot", "PILOT\ufeff"):
        with pytest.raises(InputError, match=r"(already exists|too close to the existing study 'Pilot')"):
            human_eval.create_study(db, name, ARMS, "0:0,0:1", 1, seed=1)
    assert [row["name"] for row in human_eval.list_studies(db)] == ["Pilot"]


# --- text tells and identical pairs ----------------------------------------------------------------------------------


def _pair(texts_a: list[str], texts_b: list[str]) -> blinding.ArmTexts:
    return blinding.ArmTexts("original", "summary", tuple(texts_a), tuple(texts_b))


def test_text_tells_flag_a_length_gap_and_a_word_one_arm_uses() -> None:
    short = [f"numbers {i}" for i in range(10)]
    long = [f"token numbers in lists {i}" for i in range(10)]
    tells = blinding.text_tells(_pair(long, short))
    kinds = [tell.kind for tell in tells]
    assert kinds[0] == "length" and "original explanations are" in tells[0].message
    words = {tell.message.split("'")[1] for tell in tells if tell.kind == "word"}
    assert words == {"token", "in", "lists"}
    assert "appears in 10 of 10 original explanations but 0 of 10 summary ones" in tells[1].message


def test_text_tells_stay_quiet_on_balanced_arms() -> None:
    texts_a = [f"dates and years {i}" if i % 2 else f"numbers in lists {i}" for i in range(12)]
    texts_b = [f"numbers in lists {i}" if i % 2 else f"dates and years {i}" for i in range(12)]
    assert blinding.text_tells(_pair(texts_a, texts_b)) == []
    # At the threshold: 20% longer is not a tell, more is (the same words, so only the length differs).
    five, six, seven = "a b c d e", "a b c d e a", "a b c d e a b"
    assert [t.kind for t in blinding.text_tells(_pair([six] * 5, [five] * 5))] == []
    assert [t.kind for t in blinding.text_tells(_pair([seven] * 5, [five] * 5))] == ["length"]


def test_a_word_rare_in_both_arms_is_no_tell() -> None:
    texts_a = ["token here"] * 2 + ["plain words"] * 18
    texts_b = ["plain words"] * 20
    assert not [t for t in blinding.text_tells(_pair(texts_a, texts_b)) if t.kind == "word"]


def test_create_study_skips_identical_pairs_and_reports_tells(db) -> None:
    for index in range(6):
        same = index < 2
        for format_name, text in (
            ("summary", f"theme {index}"),
            ("original", f"theme {index}" if same else f"the token theme {index} in long running text"),
        ):
            dbmod.insert_explanation(
                db, model=MODEL, layer=0, neuron=index, format=format_name, explainer=EXPLAINERS[format_name],
                explanation=text if format_name == "summary" or not same else f"  Theme {index} ",
            )  # fmt: skip
    created = human_eval.create_study(db, "S", ARMS, ",".join(f"0:{i}" for i in range(6)), 1, seed=1)
    assert created.n_identical == 2 and created.n_items == 4
    assert sum("explanations are identical" in reason for reason in created.skipped) == 2
    assert {tell.kind for tell in created.tells} == {"length", "word"}
    items = human_eval.study_items(db, "S")
    assert {item["neuron"] for item in items} == {f"0:{i}" for i in range(2, 6)}
    assert blinding.study_tells(items) == list(created.tells)


def test_study_create_cli_prints_tells_and_the_identical_count(capsys, db_path) -> None:
    database = dbmod.connect(db_path)
    for index in range(4):
        for format_name, text in (("summary", "same words"), ("original", "same words" if index == 0 else "x y z")):
            dbmod.insert_explanation(
                database, model=MODEL, layer=0, neuron=index, format=format_name, explainer="e", explanation=text
            )
    argv = ["study", "create", "--name", "S", "--arms", "summary,original", "--neurons", "0:0,0:1,0:2,0:3"]
    assert main([*argv, "--db", str(db_path)]) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert result["n_identical_skipped"] == 1 and result["n_items"] == 3
    assert "skipped 1 pairs whose two explanations are identical" in err
    assert "warning: text tell:" in err and result["text_tells"]


# --- who rates what ------------------------------------------------------------------------------------------------


def test_a_rater_rates_only_the_open_studies_they_are_assigned_to(db) -> None:
    make_study(db, neurons=4, ratings_per_item=1)  # "S"
    human_eval.create_study(db, "T", ARMS, "0:0,0:1", 1, seed=2)
    raters.add_rater(db, "ann", "code-of-ann")
    with pytest.raises(InputError, match="ann is not assigned to study 'S'"):
        human_eval.next_item(db, "S", "ann")
    assert human_eval.studies_for_rater(db, "ann") == []
    assert human_eval.assign_studies(db, "ann", ["S"]) == ["S"]
    assert [study.name for study in human_eval.studies_for_rater(db, "ann")] == ["S"]
    item = human_eval.next_item(db, "S", "ann")
    human_eval.submit_rating(db, "S", "ann", item.item_id, "left")
    with pytest.raises(InputError, match="not assigned to study 'T'"):
        human_eval.next_item(db, "T", "ann")
    # Closed: no more ratings, not even of an item already handed out.
    second = human_eval.next_item(db, "S", "ann")
    assert human_eval.set_state(db, "S", "closed").state == "closed"
    with pytest.raises(InputError, match="study 'S' is closed"):
        human_eval.submit_rating(db, "S", "ann", second.item_id, "left")
    assert human_eval.studies_for_rater(db, "ann") == []
    human_eval.set_state(db, "S", "open")
    human_eval.submit_rating(db, "S", "ann", second.item_id, "left")
    assert human_eval.assign_studies(db, "ann", ["S"], remove=True) == []
    with pytest.raises(InputError, match="not assigned"):
        human_eval.next_item(db, "S", "ann")
    assert db["ratings"].count == 2  # unassigning keeps what was rated


def test_admins_do_not_rate_unless_the_study_allows_it(db) -> None:
    make_study(db, neurons=4, ratings_per_item=1)
    raters.add_rater(db, "boss", "code-of-boss", admin=True)
    human_eval.assign_studies(db, "boss", ["S"])
    with pytest.raises(InputError, match="admins can see unblinded results"):
        human_eval.next_item(db, "S", "boss")
    assert human_eval.set_admin_ratings(db, "S", True).allow_admin_ratings
    assert human_eval.next_item(db, "S", "boss") is not None
    explain_neurons(db, 2, layer=1)
    created = human_eval.create_study(db, "A", ARMS, "1:0,1:1", 1, seed=1, allow_admin_ratings=True)
    assert created.study.allow_admin_ratings


def test_study_and_rater_commands(capsys, db_path) -> None:
    database = dbmod.connect(db_path)
    make_study(database, neurons=4, ratings_per_item=1)
    database.conn.close()
    db = ["--db", str(db_path)]

    def cli(*argv: str) -> tuple[int, str, str]:
        code = main([*argv, *db])
        out, err = capsys.readouterr()
        return code, out, err

    assert cli("rater", "add", "--name", "ann", "--code", "code-of-ann")[0] == 0
    code, out, _ = cli("rater", "assign", "--name", "ann", "--studies", "S")
    assert code == 0 and json.loads(out) == {"name": "ann", "studies": ["S"]}
    code, out, _ = cli("rater", "add", "--name", "bob", "--code", "code-of-bob", "--studies", "S")
    assert code == 0 and json.loads(out)["studies"] == ["S"]
    code, _, err = cli("rater", "add", "--name", "cyd", "--code", "code-of-cyd", "--studies", "S,Nope")
    assert code == 2 and "no study named 'Nope'" in err
    listed = {row["name"]: row["studies"] for row in json.loads(cli("rater", "list")[1])}
    assert listed == {"ann": ["S"], "bob": ["S"]}  # cyd was not added
    code, out, _ = cli("study", "close", "S")
    assert code == 0 and json.loads(out) == {"name": "S", "state": "closed"}
    code, out, _ = cli("study", "list")
    assert [(row["name"], row["state"], row["raters"]) for row in json.loads(out)] == [("S", "closed", ["ann", "bob"])]
    assert json.loads(cli("study", "open", "S")[1])["state"] == "open"
    code, out, _ = cli("study", "set", "--name", "S", "--allow-admin-ratings")
    assert code == 0 and json.loads(out)["allow_admin_ratings"] is True
    code, _, err = cli("rater", "assign", "--name", "ann", "--studies", "Nope")
    assert code == 2 and "no study named 'Nope'" in err
    code, out, _ = cli("rater", "unassign", "--name", "ann", "--studies", "S")
    assert json.loads(out)["studies"] == []


# --- what visitors see -------------------------------------------------------------------------------------------


def test_queries_hide_open_studies_neurons_from_visitors(db) -> None:
    explain_neurons(db, 4)
    human_eval.create_study(db, "S", ARMS, "0:0,0:1", 1, seed=1)
    assert dbmod.blinded_neurons(db) == {(MODEL, NeuronId(0, 0)), (MODEL, NeuronId(0, 1))}
    every = dbmod.search_explanations(db, "theme")
    visible = dbmod.search_explanations(db, "theme", hide_blinded=True)
    assert len(every) == 8 and {(row["layer"], row["neuron"]) for row in visible} == {(0, 2), (0, 3)}
    assert len(dbmod.explanation_costs(db, MODEL, hide_blinded=True)) == 4
    assert {row["neuron"] for row in dbmod.score_rows(db, MODEL, hide_blinded=True)} == {"0:2", "0:3"}
    human_eval.set_state(db, "S", "closed")
    assert dbmod.blinded_neurons(db) == frozenset()
    assert len(dbmod.search_explanations(db, "theme", hide_blinded=True)) == 8


def test_neuron_overview_hides_counts_and_scores_of_blinded_neurons(db) -> None:
    from tests.test_app import write_default_data as write_neurons

    neurons = write_neurons(db)
    write_scored_explanations(db, neurons[0])  # 0:0, two formats, by openai:gpt-4
    human_eval.create_study(db, "S", "summary@openai:gpt-4,original@openai:gpt-4", "0:0", 1, seed=1)
    rows = {row["neuron"]: row for row in dbmod.neuron_overview(db, APP_MODEL, 0)}
    assert rows[0]["n_explanations"] == 2 and rows[0]["best_score"] is not None
    hidden = {row["neuron"]: row for row in dbmod.neuron_overview(db, APP_MODEL, 0, hide_blinded=True)}
    assert hidden[0]["n_explanations"] == 0 and hidden[0]["best_score"] is None


@pytest.fixture
def blinded_app(app_db):
    """The app's data, with neuron 0:0 scored and explained, and a study over four neurons including it."""
    neurons = write_default_data(app_db)
    write_scored_explanations(app_db, neurons[0])  # by openai:gpt-4: the study's arms name the imported gpt-4 set
    study = write_study(app_db, arms="summary@gpt-4,original@gpt-4")
    assert "0:0" in study.neurons
    return app_db


SECRET_WORDS = ("cats on mats", "words about theme", "summary", "openai:gpt-4")


def test_a_visitor_finds_no_explanation_of_an_open_study_by_link_or_search(blinded_app) -> None:
    at = run("neurons", {"model": APP_MODEL, "layer": "0", "neuron": "0"})
    text = page_text(at)
    assert "still running" in text
    for word in SECRET_WORDS:
        assert word not in text, word
    at.text_input(key="neurons_search").input("theme").run()
    assert any("No explanation contains" in info.value for info in at.info)
    at.text_input(key="neurons_search").input("cats").run()
    assert any("No explanation contains" in info.value for info in at.info)
    # The Results page's format tables leave them out too.
    results = page_text(run("results"))
    assert "left out here while those studies run" in results
    assert "openai:gpt-4" not in results
    # A rater is a visitor too.
    at = sign_in(run("rate"), RATER, RATER_CODE)
    at = run("neurons", {"model": APP_MODEL, "layer": "0", "neuron": "0"})
    assert "cats on mats" not in page_text(at)


def test_an_admin_sees_everything_and_a_closed_study_hides_nothing(blinded_app) -> None:
    at = sign_in(run("results"), ADMIN, ADMIN_CODE)
    assert "State:" in page_text(at) and "open: taking ratings" in page_text(at)
    neurons = run_signed_in("neurons", {"model": APP_MODEL, "layer": "0", "neuron": "0"}, at)
    assert "cats on mats" in page_text(neurons)
    human_eval.set_state(blinded_app, STUDY, "closed")
    at = run("neurons", {"model": APP_MODEL, "layer": "0", "neuron": "0"})
    assert "cats on mats" in page_text(at) and "still running" not in page_text(at)
    at.text_input(key="neurons_search").input("theme").run()
    assert len(at.dataframe[0].value) == 8


def run_signed_in(page: str, query: dict[str, str], signed: object) -> object:
    """`page` in a session where the admin signed in (as `signed`, an AppTest that went through sign-in)."""
    from streamlit.testing.v1 import AppTest

    from tests.test_app import PAGES, TIMEOUT
    from ui import session as dashboard

    at = AppTest.from_file(str(PAGES[page]), default_timeout=TIMEOUT)
    at.session_state[dashboard.RATER_KEY] = signed.session_state[dashboard.RATER_KEY]
    at.query_params.update(query)
    at.run()
    assert_no_crash(at)
    return at


def test_the_rate_page_offers_only_the_raters_open_studies(blinded_app) -> None:
    raters.add_rater(blinded_app, "newbie", "code-of-newbie")
    at = sign_in(run("rate"), "newbie", "code-of-newbie")
    assert any("no open study for you" in info.value for info in at.info)
    at = sign_in(run("rate"), ADMIN, ADMIN_CODE)
    assert any("no open study for you" in info.value for info in at.info)
    at = sign_in(run("rate"), RATER, RATER_CODE)
    assert at.selectbox(key="rate_study").options == [STUDY]
    human_eval.set_state(blinded_app, STUDY, "closed")
    at = sign_in(run("rate"), RATER, RATER_CODE)
    assert any("no open study for you" in info.value for info in at.info)
