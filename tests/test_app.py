"""The Streamlit app, page by page, with streamlit.testing.v1.AppTest against a real SQLite file ($EVAL_DB).

No model is loaded here: neurons are written with core.db.write_neurons, explanations are inserted or come from
the fake OpenAI server (tests/fake_openai.py), and prompt previews count tokens with cl100k_base offline.
"""

from __future__ import annotations

import html
import io
import os
import re
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import ClassVar

import pandas as pd
import pytest
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.testing.v1 import AppTest

from core import config, costs, export, human_eval, prompts, raters, render, scoring, simulate, tokens
from core import db as dbmod
from core.models import DEFAULT_MODEL_NAME
from core.records import ActivationRecord, NeuronId, NeuronRecord, NeuronStats
from tests.fake_openai import default_chat_reply
from tests.simulated_study import ARM_WORDS, EXPLAINERS
from tests.simulated_study import explain_neurons as explain_for_study
from ui import elements, studies

REPO_ROOT = Path(__file__).resolve().parent.parent
PAGES = {
    "home": REPO_ROOT / "app.py",
    "neurons": REPO_ROOT / "pages" / "1_Neurons.py",
    "explain": REPO_ROOT / "pages" / "2_Explain.py",
    "rate": REPO_ROOT / "pages" / "3_Rate.py",
    "results": REPO_ROOT / "pages" / "4_Results.py",
}
TIMEOUT = 60
MODEL = DEFAULT_MODEL_NAME
ADMIN, ADMIN_CODE = "admin", "admin-code"
RATER, RATER_CODE = "rita", "rita-code"
HOSTILE_TOKENS = ("<script>alert(1)</script>", " &amp;", " **bold**", "# heading", " [x](y)", " $x$", "\n", "\t")
STUDY = "pilot"


# --- data --------------------------------------------------------------------------------------------------------


def _record(seed: int, length: int = 12) -> ActivationRecord:
    words = (*HOSTILE_TOKENS, " the", " cat", " sat", " on", " mat", ".")
    tokens_ = tuple(words[(seed * 7 + i * 3) % len(words)] for i in range(length))
    activations = tuple(round(((seed * 13 + i * 5) % 17) / 4 - 0.5, 2) for i in range(length))
    return ActivationRecord(tokens_, activations)


def _neuron(layer: int, index: int) -> NeuronRecord:
    top = tuple(sorted((_record(layer * 100 + index * 20 + i) for i in range(20)), key=lambda r: -r.max_activation))
    random = tuple(_record(1000 + layer * 100 + index * 20 + i) for i in range(15))
    quantiles = {0.5: 1.0, 0.9: 2.0, 0.99: 3.0, 0.999: 3.5}
    return NeuronRecord(
        MODEL, NeuronId(layer, index), top, random, NeuronStats(0.2, 0.5, top[0].max_activation, quantiles)
    )


def write_default_data(db) -> list[NeuronRecord]:
    """Two layers of three neurons, with hostile tokens in their excerpts."""
    neurons = [_neuron(layer, index) for layer in (0, 1) for index in range(3)]
    dbmod.write_neurons(db, MODEL, neurons, source="test")
    return neurons


def write_scored_explanations(db, neuron: NeuronRecord) -> list[int]:
    """Two explanations of `neuron` with stored scores and predictions (simulator "hf:tiny")."""
    ids = []
    records = neuron.split("valid")
    for variant, (format_name, text) in enumerate(
        (("summary", "finds $x$ and **bold** <script>alert(3)</script>"), ("original", "cats on mats"))
    ):
        explanation_id = dbmod.insert_explanation(
            db,
            model=MODEL,
            layer=neuron.neuron.layer,
            neuron=neuron.neuron.index,
            format=format_name,
            explainer="openai:gpt-4",
            explanation=text,
            input_tokens=900 + variant * 500,
            output_tokens=12,
        )
        predictions = [[max(0.0, a) * (3 - variant) for a in record.activations] for record in records]
        scores = scoring.score_records(records, predictions)
        dbmod.save_score(db, explanation_id, "hf:tiny", "all_at_once", "valid", False, scores, predictions, "ok")
        ids.append(explanation_id)
    return ids


def write_study(db, arms: str = "summary,original", **options) -> human_eval.Study:
    """A study of four neurons, summary against original, with one admin and one rater."""
    neurons = explain_for_study(db, 4, model=MODEL)
    raters.add_rater(db, ADMIN, ADMIN_CODE, admin=True)
    raters.add_rater(db, RATER, RATER_CODE)
    created = human_eval.create_study(db, STUDY, arms, neurons, ratings_per_item=1, seed=3, model=MODEL, **options)
    human_eval.assign_studies(db, RATER, [STUDY])
    return created.study


# --- driving pages -----------------------------------------------------------------------------------------------


def run(page: str, query: dict[str, str] | None = None) -> AppTest:
    at = AppTest.from_file(str(PAGES[page]), default_timeout=TIMEOUT)
    at.query_params.update(query or {})
    at.run()
    assert_no_crash(at)
    return at


def assert_no_crash(at: AppTest) -> None:
    """Neither an exception nor the one line elements.errors_shown puts in place of an unexpected one."""
    assert not at.exception, [e.message for e in at.exception]
    assert elements.UNEXPECTED_ERROR not in [element.value for element in at.error]


def sign_in(at: AppTest, name: str, code: str) -> AppTest:
    at.text_input(key="sign_in_name").input(name)
    next(w for w in at.text_input if w.label == "Access code").input(code)
    next(b for b in at.button if b.label == "Sign in").click().run()
    assert_no_crash(at)
    return at


def page_text(at: AppTest) -> str:
    """Every element of the page as its protobuf text: values, labels, help texts and HTML bodies."""
    return "\n".join(str(getattr(node, "proto", "")) for root in (at.main, at.sidebar) for node in root)


def html_bodies(at: AppTest) -> str:
    return "\n".join(element.proto.body for element in at.html)


def shown(text: str) -> str:
    """Markdown text as a reader sees it: our messages escape every markdown character with a backslash."""
    return re.sub(r"\\(.)", r"\1", text)


def errors(at: AppTest) -> list[str]:
    return [shown(element.value) for element in at.error]


def successes(at: AppTest) -> list[str]:
    return [shown(element.value) for element in at.success]


def test_pages_stay_thin_and_render_html_only_through_core_render() -> None:
    for path in PAGES.values():
        source = path.read_text(encoding="utf-8")
        assert not re.search(r"\b(SELECT|INSERT|UPDATE|DELETE)\b|\.execute\(|sqlite3|import torch", source), path
        assert "unsafe_allow_html" not in source, path
        calls = re.findall(r"st\.html\((.{0,20})", source)
        assert all(argument.startswith("render.styled(") for argument in calls), (path, calls)


_NO_MODEL_SCRIPT = """
import sys
from streamlit.testing.v1 import AppTest
from core.raters import Rater
for page in sys.argv[1:]:
    at = AppTest.from_file(page, default_timeout=60)
    at.session_state["signed_in_rater"] = Rater(1, "admin", "admin")
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    assert "Something went wrong" not in [element.value for element in at.error]
    if page.endswith("2_Explain.py"):
        at.toggle(key="explain_preview").set_value(True).run()
        assert at.code, "no prompt preview"
print("loaded:", sorted(name for name in ("torch", "transformers", "sentence_transformers") if name in sys.modules))
"""


def test_no_page_loads_a_model_library(app_db) -> None:
    """Browsing, previewing and rating import neither torch nor transformers (fresh interpreter, every page)."""
    write_default_data(app_db)
    write_study(app_db)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", _NO_MODEL_SCRIPT, *map(str, PAGES.values())],
        capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "loaded: []" in done.stdout.splitlines(), done.stdout[-2000:]


# --- every page, three states of the database --------------------------------------------------------------------


@pytest.mark.parametrize("state", ["empty", "default data", "study"])
@pytest.mark.parametrize("page", list(PAGES))
def test_every_page_renders(app_db, page: str, state: str) -> None:
    if state != "empty":
        write_default_data(app_db)
    if state == "study":
        write_study(app_db)
    else:
        raters.add_rater(app_db, ADMIN, ADMIN_CODE, admin=True)
    at = run(page)
    if any(w.key == "sign_in_name" for w in at.text_input):
        sign_in(at, ADMIN, ADMIN_CODE)
    assert not errors(at)
    assert at.title


# --- home --------------------------------------------------------------------------------------------------------


def test_home_counts_what_is_stored(app_db) -> None:
    write_default_data(app_db)
    write_study(app_db)
    at = run("home")
    metrics = {shown(m.label): m.value for m in at.metric}
    assert metrics["Models"] == "1" and metrics["Layers"] == "2" and metrics["Neurons"] == "6"
    assert metrics["Explanations"] == str(len(dbmod.list_explanations(app_db)))
    assert metrics["Studies"] == "1" and metrics["Ratings"] == "0"
    assert len(at.code) == 3  # the three getting-started steps


def test_every_page_lists_the_pages_with_home_first(app_db) -> None:
    """Each page draws the sidebar's page list (ui/nav.py): "Home" for app.py, never the file's name, then the
    pages/ files; switching to each runs that page."""
    write_default_data(app_db)
    at = run("home")
    assert [title.value for title in at.title] == ["Neuron explanation workbench"]
    links = [(link.proto.page, link.proto.label) for link in at.sidebar.get("page_link")]
    assert [label for _, label in links] == ["Home", "Neurons", "Explain", "Rate", "Results"]
    for path, title in (
        ("pages/1_Neurons.py", "Neurons"),
        ("pages/2_Explain.py", "Explain neurons"),
        ("pages/3_Rate.py", "Rate explanations"),
        ("pages/4_Results.py", "Results"),
    ):
        at.switch_page(path).run()
        assert_no_crash(at)
        assert [element.value for element in at.title] == [title], path
        assert next(link.proto.label for link in at.sidebar.get("page_link")) == "Home", path


def test_home_says_whether_a_key_is_set_and_never_shows_it(app_db, monkeypatch) -> None:
    at = run("home")
    assert "not set" in page_text(at)
    secret = "sk-live-0123456789abcdefVERYSECRET"
    monkeypatch.setenv(config.ENV_API_KEY, secret)
    monkeypatch.setenv(config.ENV_API_BASE, "https://user:password@llm.example.org/v1?token=abc")
    text = page_text(run("home"))
    assert "VERYSECRET" not in text and "password" not in text and "token=abc" not in text
    assert "https://llm.example.org/v1" in text
    assert str(config.db_path()) in text


# --- neurons -----------------------------------------------------------------------------------------------------


def test_neurons_deep_link_shows_the_neuron_escaped(app_db) -> None:
    neurons = write_default_data(app_db)
    at = run("neurons", {"model": MODEL, "layer": "1", "neuron": "2"})
    assert at.selectbox(key="neurons_layer").value == 1 and at.selectbox(key="neurons_neuron").value == 2
    assert at.query_params == {"model": MODEL, "layer": "1", "neuron": "2"}
    record = next(n for n in neurons if n.neuron == NeuronId(1, 2))
    assert at.metric[0].value == f"{record.stats.max:.4g}"
    bodies = html_bodies(at)
    assert "&#60;script&#62;" in bodies and "<script>" not in bodies
    assert "**" not in bodies and "$x$" not in bodies
    assert f'title="{__import__("core.render").render.exact_value(record.top[0].activations[0])}"' in bodies
    assert "⏎" in bodies and "⇥" in bodies
    assert len(at.get("plotly_chart")) == 1


def test_neurons_link_to_a_missing_neuron_falls_back(app_db) -> None:
    write_default_data(app_db)
    at = run("neurons", {"model": MODEL, "layer": "0", "neuron": "999"})
    assert at.selectbox(key="neurons_neuron").value == 0
    assert at.query_params["neuron"] == "0"
    assert [shown(w.value) for w in at.warning] == [f"{MODEL} · 0:999 has no stored excerpts; showing {MODEL} · 0:0."]
    at.run()
    assert not at.warning  # said once


def test_neurons_follow_the_pickers_into_the_address(app_db) -> None:
    write_default_data(app_db)
    at = run("neurons")
    at.selectbox(key="neurons_layer").set_value(1).run()
    at.selectbox(key="neurons_neuron").set_value(1).run()
    assert at.query_params == {"model": MODEL, "layer": "1", "neuron": "1"}


def test_neurons_explanations_scores_and_simulation(app_db) -> None:
    neurons = write_default_data(app_db)
    ids = write_scored_explanations(app_db, neurons[0])
    at = run("neurons", {"model": MODEL, "layer": "0", "neuron": "0"})
    table = at.dataframe[-1].value
    assert sorted(table["id"]) == sorted(ids)
    stored = {row["explanation_id"]: row["score"] for row in dbmod.scores_for_neuron(app_db, MODEL, NeuronId(0, 0))}
    for explanation_id, score in zip(table["id"], table["hf:tiny · all_at_once"], strict=True):
        assert score == pytest.approx(stored[explanation_id])
    assert set(table["input_tokens_unknown"]) == {900, 1400}  # stored without saying what counted them
    bodies = html_bodies(at)
    assert "simulated (0–10)" in html.unescape(bodies) and "&#60;script&#62;alert" in bodies
    assert "<script>alert(3)" not in bodies


def test_neurons_show_every_scorer_in_its_own_column(app_db) -> None:
    from core.db import scores as score_queries

    neurons = write_default_data(app_db)
    ids = write_scored_explanations(app_db, neurons[0])
    score_queries.save_scorer_score(
        app_db, ids[0], scorer="embedding", simulator="embedding:minilm", method="auroc", status="ok", score=0.875
    )
    score_queries.save_scorer_score(
        app_db, ids[1], scorer="detection", simulator="detection:openai:gpt-4o-mini", method="balanced_accuracy",
        status="ok", score=0.625, input_tokens=300, output_tokens=20,
    )  # fmt: skip
    at = run("neurons", {"model": MODEL, "layer": "0", "neuron": "0"})
    table = at.dataframe[-1].value.set_index("id")
    assert {
        "hf:tiny · all_at_once",
        "embedding:minilm · auroc",
        "detection:openai:gpt-4o-mini · balanced_accuracy",
    } <= set(table.columns)
    assert table.loc[ids[0], "embedding:minilm · auroc"] == pytest.approx(0.875)
    assert pd.isna(table.loc[ids[1], "embedding:minilm · auroc"])
    assert table.loc[ids[1], "detection:openai:gpt-4o-mini · balanced_accuracy"] == pytest.approx(0.625)
    assert table["hf:tiny · all_at_once"].notna().all()


def test_neurons_filter_by_score(app_db) -> None:
    neurons = write_default_data(app_db)
    write_scored_explanations(app_db, neurons[1])  # neuron 0:1 is the only scored one
    at = run("neurons")
    at.checkbox(key="neurons_filter").check().run()
    # Switched on, the filter lists every scored neuron, whatever its score.
    assert at.slider(key="neurons_min_score").value == -1.0
    assert at.selectbox(key="neurons_neuron").options == ["1  (best score 1.00)"]
    assert at.selectbox(key="neurons_neuron").value == 1
    assert at.query_params["neuron"] == "1"
    # Layer 1 has no scored neuron: the page says so where the neuron would be, and how to get one.
    at.selectbox(key="neurons_layer").set_value(1).run()
    assert not any(w.key == "neurons_neuron" for w in at.selectbox)
    assert [i.value for i in at.main.info] == [
        "No neuron of layer 1 has a score from this simulator yet. Score explanations on the Explain page or with "
        "`python -m core score`, or pick another layer or simulator."
    ]
    at.selectbox(key="neurons_layer").set_value(0).run()
    best = dbmod.neuron_overview(app_db, MODEL, 0, "hf:tiny")[1]["best_score"]
    at.slider(key="neurons_min_score").set_value(0.95).run()
    assert at.selectbox(key="neurons_neuron").value == 1 and best >= 0.95


def test_neurons_wordpiece_text_reads_naturally(app_db) -> None:
    """A BERT neuron's excerpts ("don", " '", " t", " .") read "don't." on the page; the tokens keep their values."""
    tokens_ = (" we", " don", " '", " t", " call", " f", " (", " x", " )", " .")
    top = tuple(ActivationRecord(tokens_, tuple(float(i + rank) for i in range(10))) for rank in range(20))
    stats = NeuronStats(0.1, 0.2, top[-1].max_activation, {0.5: 1.0})
    dbmod.write_neurons(app_db, MODEL, [NeuronRecord(MODEL, NeuronId(0, 0), top[::-1], top[:15], stats)], "test")
    at = run("neurons")
    text = html.unescape(re.sub(r"<[^>]*>", "", html_bodies(at)))
    assert "we don't call f (x)." in text and "don ' t" not in text


def test_neurons_search_by_explanation_opens_the_neuron(app_db) -> None:
    neurons = write_default_data(app_db)
    write_scored_explanations(app_db, neurons[4])  # 1:1
    at = run("neurons")
    at.text_input(key="neurons_search").input("CATS ON").run()
    results = at.dataframe[0].value
    assert list(results["explanation"]) == ["cats on mats"]
    at.selectbox(key="neurons_open").set_value(f"{MODEL} · 1:1").run()
    assert at.query_params == {"model": MODEL, "layer": "1", "neuron": "1"} and not at.warning
    dbmod.insert_explanation(  # a neuron with an explanation but no stored excerpts
        app_db, model="elsewhere", layer=0, neuron=0, format="summary", explainer="e", explanation="cats too"
    )
    at.text_input(key="neurons_search").input("cats").run()
    at.selectbox(key="neurons_open").set_value("elsewhere · 0:0").run()
    assert [shown(w.value) for w in at.warning] == [f"elsewhere · 0:0 has no stored excerpts; showing {MODEL} · 0:0."]
    at.text_input(key="neurons_search").input("100%_nothing").run()
    assert any("No explanation contains" in i.value for i in at.info)


def test_neurons_empty_database_says_what_to_do(app_db) -> None:
    at = run("neurons")
    assert "core collect" in at.info[0].value


# --- explain -----------------------------------------------------------------------------------------------------


def test_explain_refuses_a_rater(app_db) -> None:
    write_default_data(app_db)
    raters.add_rater(app_db, RATER, RATER_CODE)
    at = sign_in(run("explain"), RATER, RATER_CODE)
    assert errors(at) == [f"{RATER} is a rater, not an admin: only admins may explain neurons."]
    assert not any(b.key == "explain_run" for b in at.button)


def test_sign_in_without_any_rater_says_how_to_add_one(app_db) -> None:
    write_default_data(app_db)
    neurons = explain_for_study(app_db, 2, model=MODEL)
    human_eval.create_study(app_db, STUDY, "summary,original", neurons, 1, seed=3, model=MODEL)
    for page in ("explain", "rate", "results"):
        at = run(page)
        assert not any(w.key == "sign_in_name" for w in at.text_input), page
        assert any("python -m core rater add --name NAME --admin" in i.value for i in at.info), page


def test_explain_without_neurons_says_so_before_asking_for_a_code(app_db) -> None:
    raters.add_rater(app_db, ADMIN, ADMIN_CODE, admin=True)
    at = run("explain")
    assert not any(w.key == "sign_in_name" for w in at.text_input)
    assert "core collect" in at.info[0].value


def test_explain_wrong_code_is_one_error_line(app_db) -> None:
    write_default_data(app_db)
    raters.add_rater(app_db, ADMIN, ADMIN_CODE, admin=True)
    at = sign_in(run("explain"), ADMIN, "not-the-code")
    assert errors(at) == ["unknown rater name or wrong access code; check both, or ask the study's admin"]
    assert "signed_in_rater" not in at.session_state


def test_explain_preview_shows_exact_prompts_and_token_counts(app_db) -> None:
    neurons = write_default_data(app_db)
    raters.add_rater(app_db, ADMIN, ADMIN_CODE, admin=True)
    at = sign_in(run("explain"), ADMIN, ADMIN_CODE)
    at.toggle(key="explain_preview").set_value(True).run()
    assert not errors(at)
    records = neurons[0].split("train")
    expected = [
        prompts.build_messages(name, records, cutoff=prompts.DEFAULT_CUTOFF, stats=neurons[0].stats)
        for name in prompts.FORMATS
    ]
    # st.code drops one final newline, which render_messages writes after the last message.
    assert [c.value for c in at.code] == [prompts.render_messages(m).removesuffix("\n") for m in expected]
    counts = [tokens.count_chat_tokens(m, tokens.CL100K) for m in expected]
    table = at.dataframe[0].value
    assert list(table["format"]) == list(prompts.FORMATS) and list(table["input_tokens_cl100k"]) == counts
    assert table["original_over_format"].tolist() == pytest.approx([counts[0] / count for count in counts])
    assert dbmod.list_explanations(app_db) == []  # nothing was spent


def test_explain_preview_estimates_explaining_and_scoring_with_prices(app_db, tmp_path, monkeypatch) -> None:
    """The estimate adds the chosen scorer's tokens (counted from the prompts it would send) to the prompts', and
    prices them from the price list; without a price list it says how to get dollars."""
    neurons = write_default_data(app_db)
    raters.add_rater(app_db, ADMIN, ADMIN_CODE, admin=True)
    monkeypatch.setenv(config.ENV_PRICES, str(tmp_path / "prices.toml"))
    at = sign_in(run("explain"), ADMIN, ADMIN_CODE)
    at.toggle(key="explain_preview").set_value(True).run()
    captions = [caption.value.replace("\\", "") for caption in at.caption]  # markdown escapes removed
    assert any("copy prices.example.toml to prices.toml to see dollars" in caption for caption in captions)
    (tmp_path / "prices.toml").write_text(
        '[models."gpt-4o-mini"]\ninput_per_million = 1.0\noutput_per_million = 2.0\n'
        '[models."judge"]\ninput_per_million = 10.0\noutput_per_million = 10.0\n'
    )
    at.selectbox(key="explain_scorer").set_value("simulation").run()
    at.text_input(key="explain_simulator").input("openai:judge").run()
    assert not errors(at)
    estimate = at.dataframe[1].value
    assert list(estimate["part"]) == ["explain", "score", "total"]
    prompt_tokens = sum(at.dataframe[0].value["input_tokens_cl100k"])
    explain, score, total = estimate.to_dict("records")
    assert explain["input_tokens_per_neuron"] == prompt_tokens and explain["output_tokens_per_neuron"] == 5 * 60
    scoring = costs.scoring_tokens(neurons[0], "simulation", method="chat_logprobs")
    assert (score["input_tokens_per_neuron"], score["output_tokens_per_neuron"]) == (
        5 * scoring.input,
        5 * scoring.output,
    )
    assert explain["usd_per_neuron"] == pytest.approx((prompt_tokens * 1 + 300 * 2) / 1e6)
    assert score["usd_per_neuron"] == pytest.approx(5 * scoring.total * 10 / 1e6)
    assert total["usd_in_all"] == pytest.approx(explain["usd_per_neuron"] + score["usd_per_neuron"])  # one neuron
    assert dbmod.list_explanations(app_db) == []


def test_explain_neurons_from_a_list_and_a_file(app_db) -> None:
    write_default_data(app_db)
    raters.add_rater(app_db, ADMIN, ADMIN_CODE, admin=True)
    at = sign_in(run("explain"), ADMIN, ADMIN_CODE)
    at.radio(key="explain_how").set_value("a list").run()
    at.text_area(key="explain_list").input("0:1, 1:2\n0:1 # again").run()
    assert "2 neuron(s) × 5 format(s)" in page_text(at)
    at.text_area(key="explain_list").input("0:1, oops").run()
    assert errors(at) == ["neuron 'oops' is not of the form layer:index, e.g. 3:17"]
    at.radio(key="explain_how").set_value("a file").run()
    at.file_uploader(key="explain_file").upload("neurons.csv", b"layer,neuron\n0,2\n1,0\n1,1\n", "text/csv").run()
    assert "3 neuron(s) × 5 format(s)" in page_text(at)


def answer_simulations(request: dict) -> str:
    """Explanation requests get the fake's usual reply; simulation requests (token<TAB>unknown lines, docs/METHOD.md §3
    fallback b) get every line back with a value that depends on the token, so the correlation is defined."""
    content = request["messages"][-1]["content"]
    if f"\t{simulate.UNKNOWN}\n" not in content:
        return default_chat_reply(request)
    excerpt = content[content.index(simulate.START) :]
    return re.sub(
        rf"^(.*)\t{simulate.UNKNOWN}$", lambda m: f"{m.group(1)}\t{len(m.group(1)) % 11}", excerpt, flags=re.M
    )


def test_explain_run_stores_explanations_and_scores(app_db, openai_env) -> None:
    openai_env.chat_handler = answer_simulations
    write_default_data(app_db)
    raters.add_rater(app_db, ADMIN, ADMIN_CODE, admin=True)
    at = sign_in(run("explain"), ADMIN, ADMIN_CODE)
    at.multiselect(key="explain_formats").set_value(["original", "summary"]).run()
    at.text_input(key="explain_explainer").input("openai:fake-model").run()
    at.text_input(key="explain_simulator").input("openai:fake-model").run()
    at.selectbox(key="explain_method").set_value("chat_parse").run()
    at.button(key="explain_run").click().run()
    assert_no_crash(at)
    stored = dbmod.list_explanations(app_db, MODEL, NeuronId(0, 0))
    assert sorted(row["format"] for row in stored) == ["original", "summary"]
    assert all(row["explainer"] == "openai:fake-model" and row["input_tokens"] for row in stored)
    assert "2 explained, 0 already done, 0 failed (of 2)" in successes(at)
    live = at.dataframe[0].value
    assert sorted(live["id"]) == sorted(row["id"] for row in stored)
    scores = dbmod.scores_for_neuron(app_db, MODEL, NeuronId(0, 0))
    assert {row["explanation_id"] for row in scores} == {row["id"] for row in stored}
    assert all(row["status"] == "ok" and row["predictions"] for row in scores), [row["error"] for row in scores]
    assert any("Scored with openai:fake-model (chat_parse): 2 ok" in text for text in successes(at))


def test_explain_run_scores_with_the_chosen_scorer(app_db, openai_env) -> None:
    write_default_data(app_db)
    raters.add_rater(app_db, ADMIN, ADMIN_CODE, admin=True)
    at = sign_in(run("explain"), ADMIN, ADMIN_CODE)
    at.multiselect(key="explain_formats").set_value(["summary"]).run()
    at.text_input(key="explain_explainer").input("openai:fake-model").run()
    at.selectbox(key="explain_scorer").set_value("detection").run()
    assert_no_crash(at)
    assert not at.get("selectbox") or "explain_method" not in [w.key for w in at.selectbox]  # simulation only
    captions = " ".join(c.value for c in at.caption)
    assert "scorer's balanced accuracy" in captions and "unknown method" not in captions
    at.text_input(key="explain_simulator").input("openai:fake-model").run()
    at.button(key="explain_run").click().run()
    assert_no_crash(at)
    assert any("Scored with detection:openai:fake-model (balanced_accuracy): 0 ok" in t for t in successes(at))


def test_explain_simulates_a_hand_written_explanation(app_db, openai_env) -> None:
    openai_env.chat_handler = answer_simulations
    neurons = write_default_data(app_db)
    raters.add_rater(app_db, ADMIN, ADMIN_CODE, admin=True)
    at = sign_in(run("explain"), ADMIN, ADMIN_CODE)
    at.text_input(key="explain_own_text").input("cats <b>and</b> $x$")
    at.text_input(key="explain_own_simulator").input("openai:fake-model")
    at.selectbox(key="explain_own_method").set_value("chat_parse").run()
    at.button(key="explain_own_run").click().run()
    assert not errors(at)
    records = neurons[0].split("valid")
    predictions = [[len(simulate.escape_token(t)) % 11 for t in r.tokens] for r in records]
    expected = scoring.score_records(records, predictions).score
    assert at.metric[-1].value == f"{expected:.3f}"
    assert html.unescape(html_bodies(at)).count("simulated (0–10)") == len(records)
    assert dbmod.list_explanations(app_db) == []  # a try-out stores nothing


# --- rate --------------------------------------------------------------------------------------------------------


def _rate_page(app_db, **study_options) -> AppTest:
    write_default_data(app_db)
    write_study(app_db, **study_options)
    return sign_in(run("rate"), RATER, RATER_CODE)


def test_rate_shows_one_item_and_the_allowed_choices(app_db) -> None:
    at = _rate_page(app_db)
    assert [p.proto.text for p in at.get("progress")] == ["Item 1 of 4"]
    labels = [b.label for b in at.button if b.key and b.key.startswith("rate_")]
    assert labels == ["Explanation 1", "Explanation 2", "Equally good", "Both bad"]
    bodies = html_bodies(at)
    assert "words about theme" in bodies and "&#60;script&#62;" in bodies and "<script>" not in bodies


def test_rate_without_a_study_says_so_before_asking_for_a_code(app_db) -> None:
    raters.add_rater(app_db, RATER, RATER_CODE)
    at = run("rate")
    assert [i.value for i in at.info] == ["No study is open yet. Please come back later."]
    assert not any(w.key == "sign_in_name" for w in at.text_input)


def test_rate_excerpts_show_positive_activations_and_instructions_fold(app_db) -> None:
    at = _rate_page(app_db)
    assert at.expander[0].proto.expanded  # before the first rating
    item = human_eval.next_item(app_db, STUDY, RATER)
    excerpts = studies.rating_excerpts(dbmod.get_neuron(app_db, MODEL, NeuronId.parse(item.neuron)))
    assert any(a < 0 for excerpt in excerpts for a in excerpt.activations)  # there are negatives to leave out
    negative = "rgba({}, {}, {}".format(*render.NEGATIVE_RGB)
    assert "nw-tok" in html_bodies(at) and negative not in html_bodies(at)
    at.button(key="rate_left").click().run()
    assert not at.expander[0].proto.expanded  # folded once the rater has started


def test_rate_offers_only_what_the_study_allows(app_db) -> None:
    at = _rate_page(app_db, allow_tie=False, allow_both_bad=False)
    labels = [b.label for b in at.button if b.key and b.key.startswith("rate_")]
    assert labels == ["Explanation 1", "Explanation 2"]


def test_rate_submission_lands_in_the_database(app_db) -> None:
    at = _rate_page(app_db)
    item = human_eval.next_item(app_db, STUDY, RATER)
    at.radio(key="rate_confidence").set_value(4)
    at.text_area(key="rate_comment").input("close call")
    at.button(key="rate_right").click().run()
    assert not errors(at)
    rows = (
        sqlite3.connect(config.db_path())
        .execute("SELECT item_id, choice, confidence, comment, seconds FROM ratings")
        .fetchall()
    )
    assert len(rows) == 1
    item_id, choice, confidence, comment, seconds = rows[0]
    assert (item_id, choice, confidence, comment) == (item.item_id, "right", 4, "close call")
    assert 0 <= seconds < TIMEOUT
    assert [p.proto.text for p in at.get("progress")] == ["Item 2 of 4"]


def test_rate_resumes_where_the_rater_left_off(app_db) -> None:
    at = _rate_page(app_db)
    at.button(key="rate_left").click().run()
    shown = human_eval.next_item(app_db, STUDY, RATER)
    again = sign_in(run("rate"), RATER, RATER_CODE)  # a new browser session
    assert [p.proto.text for p in again.get("progress")] == ["Item 2 of 4"]
    assert shown.explanation_1 in html_bodies(again) and shown.explanation_2 in html_bodies(again)


def test_rate_to_the_end(app_db) -> None:
    at = _rate_page(app_db)
    for _ in range(3):
        at.button(key="rate_tie").click().run()
        assert [toast.value for toast in at.toast] == ["Saved. Here is the next item."]
    at.button(key="rate_tie").click().run()
    assert [toast.value for toast in at.toast] == ["Saved. That was your last item in this study."]
    assert any("rated every item" in text for text in successes(at))
    assert sqlite3.connect(config.db_path()).execute("SELECT COUNT(*) FROM ratings").fetchone()[0] == 4


def test_rate_page_reveals_no_arm_format_or_explainer(app_db) -> None:
    at = _rate_page(app_db, gold_share=0.5)
    study = human_eval.get_study(app_db, STUDY)
    forbidden = {*ARM_WORDS, *study.arms, *prompts.FORMATS, *EXPLAINERS.values()} - {"arm", "format"}
    for _ in range(3):
        # Proto field names ("format: info" on an info box) are not page text.
        text = re.sub(r"^format: \w+$", "", page_text(at).lower(), flags=re.MULTILINE)
        assert "words about theme" in text and "explanation 1" in text  # the scan sees the item itself
        for word in forbidden:
            assert word.lower() not in text, word
        for word in ("arm", "arms", "format", "formats"):
            assert not re.search(rf"\b{word}\b", text), word
        at.button(key="rate_left").click().run()


# --- results -----------------------------------------------------------------------------------------------------


def test_results_per_format_scores_and_costs(app_db) -> None:
    neurons = write_default_data(app_db)
    write_scored_explanations(app_db, neurons[0])
    at = run("results")
    summary, differences, costs, with_scoring = (frame.value for frame in at.dataframe)
    assert list(summary["format"]) == ["original", "summary"]  # registry order, as in the charts
    assert set(summary["n"]) == {1}
    assert "mean_similarity" not in summary  # nothing was compared to a reference: no empty columns
    rows = dbmod.score_rows(app_db, MODEL, split="valid", calibrated=False)
    expected = scoring.paired_format_differences(rows, "original", simulator="hf:tiny")
    pd.testing.assert_frame_equal(differences, expected)
    assert list(differences["format"]) == ["summary"] and list(differences["n"]) == [1]
    assert set(costs.index) == {"original", "summary"}
    assert list(with_scoring["format"]) == ["original", "summary"]
    assert len(at.get("plotly_chart")) == 3


def test_results_costs_add_the_chosen_scorers_tokens_and_price_them(app_db, tmp_path, monkeypatch) -> None:
    """Token cost with scoring: the simulator's recorded tokens per explanation, explaining + scoring in dollars from
    the price list, and the score per 1k tokens."""
    monkeypatch.setenv(config.ENV_PRICES, str(tmp_path / "prices.toml"))
    (tmp_path / "prices.toml").write_text(
        '[models."gpt-4"]\ninput_per_million = 30\noutput_per_million = 60\n'
        '[models."judge"]\ninput_per_million = 1\noutput_per_million = 2\n'
    )
    neurons = write_default_data(app_db)
    records = neurons[0].split("valid")
    expected = {}
    for format_name, tokens_in, scorer_in, factor in (("original", 900, 300, 1.0), ("summary", 400, 200, 0.5)):
        explanation_id = dbmod.insert_explanation(
            app_db, model=MODEL, layer=0, neuron=0, format=format_name, explainer="openai:gpt-4",
            explanation=f"cats ({format_name})", input_tokens=tokens_in, output_tokens=10,
        )  # fmt: skip
        predictions = [[max(0.0, a) * factor + (i % 2) for i, a in enumerate(r.activations)] for r in records]
        scores = scoring.score_records(records, predictions)
        dbmod.save_score(app_db, explanation_id, "openai:judge", "chat_parse", "valid", False, scores, predictions,
                         "ok", input_tokens=scorer_in, output_tokens=50)  # fmt: skip
        total = tokens_in + 10 + scorer_in + 50
        dollars = (tokens_in * 30 + 10 * 60 + scorer_in * 1 + 50 * 2) / 1e6
        expected[format_name] = (scorer_in, total, dollars, 1000 * scores.score / total)
    at = run("results")
    assert_no_crash(at)
    table = next(frame.value for frame in at.dataframe if "mean_usd" in frame.value)
    for row in table.to_dict("records"):
        scorer_in, total, dollars, per_1k = expected[row["format"]]
        assert row["mean_scorer_input_tokens"] == scorer_in and row["mean_scorer_output_tokens"] == 50
        assert row["mean_total_tokens_with_scoring"] == total
        assert row["mean_usd"] == pytest.approx(dollars)
        assert row["mean_score_per_1k_tokens"] == pytest.approx(per_1k)


def test_results_split_formats_by_explainer_and_source_and_name_the_scorer(app_db) -> None:
    neurons = write_default_data(app_db)
    write_scored_explanations(app_db, neurons[0])
    # The same neuron explained by another explainer, imported from a file: a second set, never pooled.
    records = neurons[0].split("valid")
    for format_name, factor in (("summary", 1.0), ("original", 0.5)):
        explanation_id = dbmod.insert_explanation(
            app_db, model=MODEL, layer=0, neuron=0, format=format_name, explainer="gpt-4", source="imported",
            params={"file": "paper.csv", "sha256": "ab" * 32}, explanation=f"imported {format_name}",
            input_tokens=5000, output_tokens=40,
        )  # fmt: skip
        predictions = [[factor * (i % 3) for i, _ in enumerate(record.activations)] for record in records]
        scores = scoring.score_records(records, predictions)
        dbmod.save_score(app_db, explanation_id, "hf:tiny", "all_at_once", "valid", False, scores, predictions, "ok")
    at = run("results")
    markdown = [shown(element.value) for element in at.markdown]
    score_headers = [text for text in markdown if "scores by" in text]
    assert len(score_headers) == 2
    assert any("gpt-4 · file:abababababab (paper.csv)" in text for text in score_headers)
    assert any("openai:gpt-4 · generated" in text for text in score_headers)
    assert all("hf:tiny · all_at_once" in text for text in score_headers)
    frames = [frame.value for frame in at.dataframe]
    summaries = [frame for frame in frames if "mean_score" in frame]
    assert len(summaries) == 2 and all(list(frame["n"]) == [1, 1] for frame in summaries)  # one set each
    costs = [frame for frame in frames if "mean_input_tokens_unknown" in frame and "mean_score" not in frame]
    assert sorted(frame.loc["summary", "mean_input_tokens_unknown"] for frame in costs) == [900, 5000]


def test_results_keep_two_methods_of_one_simulator_apart(app_db) -> None:
    neurons = write_default_data(app_db)
    ids = write_scored_explanations(app_db, neurons[0])
    records = neurons[0].split("valid")
    constant = [[1.0] * len(record.activations) for record in records]  # a second method that scores nothing
    for explanation_id in ids:
        scores = scoring.score_records(records, constant)
        dbmod.save_score(app_db, explanation_id, "hf:tiny", "chat_parse", "valid", False, scores, constant, "ok")
    at = run("results")
    assert not at.exception and not errors(at)
    assert at.selectbox(key="results_simulator").options == [
        "hf:tiny · all_at_once (simulation)", "hf:tiny · chat_parse (simulation)"
    ]  # fmt: skip
    assert list(at.dataframe[0].value["n"]) == [1, 1]  # one method's scores, not two mixed
    at.selectbox(key="results_simulator").select("hf:tiny · chat_parse").run()
    assert at.dataframe[0].value["mean_score"].isna().all()  # constant predictions: undefined, never 0


def test_results_offer_every_scorer_with_its_metric(app_db) -> None:
    from core.db import scores as score_queries

    neurons = write_default_data(app_db)
    ids = write_scored_explanations(app_db, neurons[0])
    for explanation_id, value in zip(ids, (0.75, 0.5), strict=True):
        score_queries.save_scorer_score(
            app_db, explanation_id, scorer="embedding", simulator="embedding:minilm", method="auroc", status="ok",
            score=value,
        )  # fmt: skip
    at = run("results")
    picker = at.selectbox(key="results_simulator")
    assert picker.options == ["embedding:minilm · auroc (embedding)", "hf:tiny · all_at_once (simulation)"]
    picker.select("embedding:minilm · auroc").run()
    assert_no_crash(at)
    text = page_text(at)
    assert "unknown method" not in text and "AUROC" in text
    summary = at.dataframe[0].value
    assert list(summary["n"]) == [1, 1]
    assert sorted(summary["mean_score"]) == pytest.approx([0.5, 0.75])  # the embedding scores alone


def test_results_study_needs_an_admin(app_db) -> None:
    write_default_data(app_db)
    write_study(app_db)
    at = sign_in(run("results"), RATER, RATER_CODE)
    assert errors(at) == [f"{RATER} is a rater, not an admin: study results are for admins."]
    assert not at.get("download_button")


class RecordingStorage(MemoryMediaFileStorage):
    """Streamlit's in-memory media storage that also keeps what each download button would serve, by file name."""

    served: ClassVar[dict[str, bytes]] = {}

    def load_and_get_id(self, path_or_data, mimetype, kind, filename=None) -> str:
        if isinstance(path_or_data, bytes) and filename:
            RecordingStorage.served[filename] = path_or_data
        return super().load_and_get_id(path_or_data, mimetype, kind, filename)


def test_results_study_statistics_and_downloads(app_db, monkeypatch) -> None:
    import streamlit.testing.v1.app_test as app_test_module

    monkeypatch.setattr(app_test_module, "MemoryMediaFileStorage", RecordingStorage)
    RecordingStorage.served = {}
    write_default_data(app_db)
    write_study(app_db)
    for _ in range(3):
        item = human_eval.next_item(app_db, STUDY, RATER)
        human_eval.submit_rating(app_db, STUDY, RATER, item.item_id, "left")
    at = sign_in(run("results"), ADMIN, ADMIN_CODE)
    summary = export.study_summary(app_db, STUDY)
    metrics = {shown(m.label): m.value for m in at.metric}
    assert metrics["ratings"] == f"3 of {human_eval.study_status(app_db, STUDY)['wanted_ratings']}"
    primary = summary["primary"]
    assert metrics["summary over original, per neuron"].startswith(f"{primary['estimate']:.0%}")
    assert metrics["per rating (descriptive)"].startswith(f"{summary['win_rate']:.0%}")
    assert metrics["neurons"] == str(primary["n_units"])
    arms = next(frame.value for frame in at.dataframe if "n_explanations" in frame.value)
    assert arms[["arm", "explainer", "source", "n_explanations"]].values.tolist() == [
        ["summary", "gpt-4", "imported", 4], ["original", "gpt-4", "imported", 4]
    ]  # fmt: skip
    assert [d.proto.label for d in at.get("download_button")] == list(export.EXPORT_FORMATS)
    assert RecordingStorage.served[f"{STUDY}.json"] == export.export_study(app_db, STUDY, "json")[f"{STUDY}.json"]
    for fmt in ("csv", "parquet"):
        with zipfile.ZipFile(io.BytesIO(RecordingStorage.served[f"{STUDY}_{fmt}.zip"])) as archive:
            files = {name: archive.read(name) for name in archive.namelist()}
        assert len(export.load_export(files).ratings) == 3
        if fmt == "csv":
            assert files == export.export_study(app_db, STUDY, "csv")


def test_results_bradley_terry_for_three_arms(app_db) -> None:
    write_default_data(app_db)
    neurons = explain_for_study(app_db, 3, formats=("summary", "original", "highlight"), model=MODEL)
    raters.add_rater(app_db, ADMIN, ADMIN_CODE, admin=True)
    raters.add_rater(app_db, RATER, RATER_CODE)
    human_eval.create_study(
        app_db, STUDY, "summary,original,highlight", neurons, ratings_per_item=1, seed=1, model=MODEL
    )
    human_eval.assign_studies(app_db, RATER, [STUDY])
    while (item := human_eval.next_item(app_db, STUDY, RATER)) is not None:
        human_eval.submit_rating(app_db, STUDY, RATER, item.item_id, "left")
    at = sign_in(run("results"), ADMIN, ADMIN_CODE)
    assert not errors(at)
    summary = export.study_summary(app_db, STUDY)
    charts = at.get("plotly_chart")
    assert summary["bradley_terry"]
    # The token-cost charts of the formats tab come first, then the study's win rates and its strengths.
    assert len(charts) == 4
    assert "over" in charts[2].proto.spec and "log-strength" in charts[3].proto.spec
    assert all(arm in charts[3].proto.spec for arm in ("summary", "original", "highlight"))


def test_explain_job_survives_a_refresh_and_is_found_by_its_link(app_db, openai_env) -> None:
    write_default_data(app_db)
    raters.add_rater(app_db, ADMIN, ADMIN_CODE, admin=True)
    at = sign_in(run("explain"), ADMIN, ADMIN_CODE)
    at.multiselect(key="explain_formats").set_value(["original", "summary"]).run()
    at.text_input(key="explain_explainer").input("openai:fake-model").run()
    at.button(key="explain_run").click().run()
    assert_no_crash(at)
    job_id = at.session_state["explain_job"]
    assert at.query_params["job"] == job_id
    # A new browser session, as after a refresh or coming back from another page: the link finds the job.
    again = sign_in(run("explain", {"job": job_id}), ADMIN, ADMIN_CODE)
    assert not errors(again)
    assert f"Job {job_id}" in [header.value for header in again.subheader]
    assert "2 explained, 0 already done, 0 failed (of 2)" in successes(again)
    stored = dbmod.list_explanations(app_db, MODEL, NeuronId(0, 0))
    assert sorted(again.dataframe[0].value["id"]) == sorted(row["id"] for row in stored)
    assert f"?job={job_id}" in page_text(again)  # listed among the server's jobs
    # A rater with the same link sees no job.
    raters.add_rater(app_db, RATER, RATER_CODE)
    rater = sign_in(run("explain", {"job": job_id}), RATER, RATER_CODE)
    assert f"Job {job_id}" not in page_text(rater)
