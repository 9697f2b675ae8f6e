"""Cost estimates count exactly what the scorers send, and the arithmetic of runs and tables is right."""

from __future__ import annotations

import math
import re

import pytest

from core import config, costs, tokens
from core import db as dbmod
from core.activations import CollectOptions, collect
from core.errors import InputError
from core.pricing import ModelPrice, Prices
from core.records import NeuronId
from core.scorers import ScorerOptions, get_scorer
from core.simulate import SimulatorOptions, get_simulator
from tests import tiny_models
from tests.fake_openai import TEST_API_KEY, LogprobsFakeOpenAIServer

LAYER = 2
SCORING = ScorerOptions(activating_quantile=0.9, n_activating=6, n_non_activating=6)


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    """One neuron of a tiny GPT-2, collected with the scorers' excerpts."""
    folder = tmp_path_factory.mktemp("costs")
    model = tiny_models.build("gpt2", folder / "gpt2")
    corpus = folder / "corpus.txt"
    corpus.write_text(tiny_models.TEXT * 4)
    database = dbmod.connect(folder / "collected.db")
    options = CollectOptions(max_tokens=1600, excerpt_len=16, top_k=20, random_k=15, batch_size=7, seed=3)
    collect(database, str(model), [LAYER], str(corpus), options)
    found = dbmod.get_neuron(database, str(model), NeuronId(LAYER, 0))
    database.conn.close()
    return found


@pytest.fixture
def server(monkeypatch):
    with LogprobsFakeOpenAIServer() as fake:
        monkeypatch.setenv(config.ENV_API_BASE, fake.base_url)
        monkeypatch.setenv(config.ENV_API_KEY, TEST_API_KEY)
        yield fake


def answer_every_token(request: dict) -> str:
    """A chat simulation answer: every `token<TAB>unknown` line of the target excerpt back with a value."""
    from core import simulate

    content = request["messages"][-1]["content"]
    excerpt = content[content.index(simulate.START) :]
    return re.sub(rf"^(.*)\t{simulate.UNKNOWN}$", lambda m: f"{m.group(1)}\t1", excerpt, flags=re.M)


def sent_chat_tokens(server) -> int:
    return sum(
        tokens.count_chat_tokens(body["messages"], tokens.CL100K)
        for route, body in server.calls
        if route == "/v1/chat/completions"
    )


@pytest.mark.parametrize("kind", ["detection", "fuzzing"])
def test_a_classifier_estimate_counts_the_requests_the_scorer_sends(record, server, kind) -> None:
    explanation = "water and rivers"
    server.chat_handler = lambda request: "[1, 0, 1, 0, 1]"
    scorer = get_scorer(kind, "openai:fake-model", options=SCORING)
    scorer.score(explanation, record)
    estimate = costs.scoring_tokens(record, kind, options=SCORING, explanation=explanation)
    assert estimate.input == sent_chat_tokens(server) > 0
    calls = len([1 for route, _ in server.calls if route == "/v1/chat/completions"])
    assert estimate.output >= calls  # at least one token of answer per call


def test_a_chat_simulation_estimate_counts_the_requests_the_simulator_sends(record, server) -> None:
    explanation = "water and rivers"
    server.chat_handler = answer_every_token
    simulator = get_simulator("openai:fake-model", "chat_parse", SimulatorOptions())
    assert simulator.simulate(explanation, record.split("valid")).ok
    estimate = costs.scoring_tokens(record, "simulation", method="chat_parse", explanation=explanation)
    assert estimate.input == sent_chat_tokens(server) > 0
    # Every token of every excerpt comes back with a value: at least as many output tokens as excerpt tokens.
    assert estimate.output >= sum(len(r.tokens) for r in record.split("valid"))


def test_all_at_once_reads_without_writing_and_embedding_asks_no_llm(record) -> None:
    echo = costs.scoring_tokens(record, "simulation", method="all_at_once")
    assert echo.input > 0 and echo.output == 0
    assert costs.scoring_tokens(record, "embedding") == costs.Tokens(0, 0)
    with pytest.raises(InputError, match="unknown scorer"):
        costs.scoring_tokens(record, "vibes")
    with pytest.raises(InputError, match="unknown simulation method"):
        costs.scoring_tokens(record, "simulation", method="guess")


def test_a_run_estimate_multiplies_out_formats_samples_and_neurons() -> None:
    prices = Prices({"gpt-4o-mini": ModelPrice(1.0, 2.0), "scorer": ModelPrice(10.0, 20.0)})
    estimate = costs.estimate_run(
        neurons=3,
        prompt_tokens=[100, 50],
        samples=2,
        max_tokens=60,
        explainer="openai:gpt-4o-mini",
        scoring=costs.Tokens(10, 5),
        scorer_model="openai:scorer",
        prices=prices,
    )
    # Per neuron: 4 explanations; 300 prompt tokens, at most 240 output; scoring 40 in, 20 out.
    assert (estimate.explanations_per_neuron, estimate.explain_input, estimate.explain_output_max) == (4, 300, 240)
    assert estimate.scoring == costs.Tokens(40, 20)
    assert estimate.tokens_per_neuron == 300 + 240 + 60
    assert estimate.explain_cost == pytest.approx((300 * 1 + 240 * 2) / 1e6)
    assert estimate.scoring_cost == pytest.approx((40 * 10 + 20 * 20) / 1e6)
    total = estimate.rows()[-1]
    assert total["part"] == "total" and total["input_tokens_per_neuron"] == 340
    assert total["usd_in_all"] == pytest.approx(3 * (780 + 800) / 1e6)
    # A model without a price: no cost claimed, but the tokens still add up.
    unpriced = costs.estimate_run(neurons=3, prompt_tokens=[100], samples=1, max_tokens=60, explainer="hf:local")
    assert unpriced.cost_per_neuron is None and unpriced.rows()[-1]["usd_in_all"] is None
    with pytest.raises(InputError, match="could not be counted"):
        costs.estimate_run(neurons=1, prompt_tokens=[100, None], samples=1, max_tokens=1, explainer="openai:m")


def test_recorded_costs_per_format_add_scoring_and_price_it() -> None:
    prices = Prices({"explainer": ModelPrice(1.0, 1.0), "judge": ModelPrice(2.0, 2.0)})
    rows = [
        {
            "id": 1,
            "format": "summary",
            "explainer": "openai:explainer",
            "input_tokens_cl100k": 100,
            "output_tokens": 20,
        },
        {
            "id": 2,
            "format": "summary",
            "explainer": "openai:explainer",
            "input_tokens_cl100k": 300,
            "output_tokens": 20,
        },
        {"id": 3, "format": "original", "explainer": "openai:explainer", "input_tokens": 900, "output_tokens": 20},
        {"id": 4, "format": "original", "explainer": "openai:explainer", "status": "failed"},
    ]
    scorer_rows = [
        {"explanation_id": 1, "scorer_input_tokens": 50, "scorer_output_tokens": 10},
        {"explanation_id": 2, "scorer_input_tokens": 70, "scorer_output_tokens": 10},
        {"explanation_id": 3, "scorer_input_tokens": None, "scorer_output_tokens": None},
    ]
    scoring = costs.scoring_per_explanation(scorer_rows)
    assert scoring == {1: costs.Tokens(50, 10), 2: costs.Tokens(70, 10)}
    table = costs.add_costs(rows, scoring, scores={1: 0.5, 2: 0.2, 3: 0.9}, prices=prices, scorer_model="openai:judge")
    summary = table.loc["summary"]
    assert summary["mean_scorer_input_tokens"] == 60 and summary["mean_total_tokens_with_scoring"] == (180 + 400) / 2
    assert summary["mean_usd"] == pytest.approx(((120 + 120) + (320 + 160)) / 2 / 1e6)
    assert summary["mean_score_per_1k_tokens"] == pytest.approx((1000 * 0.5 / 180 + 1000 * 0.2 / 400) / 2)
    # No recorded scoring tokens: the format keeps its row, with nothing claimed for scoring.
    original = table.loc["original"]
    assert math.isnan(original["mean_scorer_input_tokens"]) and math.isnan(original["mean_usd"])
