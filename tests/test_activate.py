"""A neuron on your own text (core.activations.activate_text and the `activate` command): the text is processed as
collection processes an excerpt, so a stored top excerpt's own text gives back its stored activations."""

from __future__ import annotations

import difflib
import json
from pathlib import Path

import numpy as np
import pytest

from core import db as dbmod
from core import render
from core.__main__ import main
from core.activations import MAX_TEXT_TOKENS, CollectOptions, activate_text, collect
from core.errors import InputError
from core.models import DEFAULT_MODEL_NAME
from core.records import ActivationRecord, NeuronId
from tests import tiny_models

OPTIONS = CollectOptions(max_tokens=1600, excerpt_len=16, top_k=6, random_k=5, batch_size=7, seed=3)


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(tiny_models.TEXT * 4)
    return path


def matched_correlation(stored: ActivationRecord, fresh: ActivationRecord) -> tuple[float, float]:
    """(correlation of the activations on the tokens both tokenisations share, share of stored tokens matched)."""
    matcher = difflib.SequenceMatcher(a=stored.tokens, b=fresh.tokens, autojunk=False)
    pairs = [(a + i, b + i) for a, b, size in matcher.get_matching_blocks() for i in range(size)]
    if len(pairs) < 3:
        return float("nan"), len(pairs) / len(stored.tokens)
    x = np.array([stored.activations[i] for i, _ in pairs])
    y = np.array([fresh.activations[j] for _, j in pairs])
    if np.allclose(x, y, atol=1e-5):
        return 1.0, len(pairs) / len(stored.tokens)
    return float(np.corrcoef(x, y)[0, 1]), len(pairs) / len(stored.tokens)


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_a_stored_top_excerpt_gives_back_its_activations(family, corpus_file, db, tmp_path) -> None:
    model = str(tiny_models.build(family, tmp_path / family))
    collect(db, model, [1], str(corpus_file), OPTIONS)
    same, correlations = 0, []
    for index in range(0, tiny_models.INTERMEDIATE, 4):
        stored = dbmod.get_neuron(db, model, NeuronId(1, index)).top[0]
        fresh = activate_text(model, 1, "".join(stored.tokens), device="cpu").record(index)
        # "Up to tokenisation": an excerpt cut from the token stream can start inside a word (or a UTF-8 character,
        # shown as \xNN), and its text then tokenises otherwise; in a causal model every later token sees that.
        if fresh.tokens == stored.tokens:
            same += 1
            correlations.append(matched_correlation(stored, fresh)[0])
    assert same >= 6 and min(correlations) >= 0.95, (same, correlations)


def test_the_bundled_model_agrees_with_its_stored_excerpts(db) -> None:
    collect(db, "default", [0], "default", CollectOptions(max_tokens=6400))
    for index in (3, 91, 500, 1000):
        stored = dbmod.get_neuron(db, DEFAULT_MODEL_NAME, NeuronId(0, index)).top[0]
        fresh = activate_text("default", 0, "".join(stored.tokens), device="cpu").record(index)
        correlation, share = matched_correlation(stored, fresh)
        assert correlation >= 0.95 and share >= 0.9, (index, correlation, share)


def test_activate_command(tmp_path: Path, capsys) -> None:
    model = str(tiny_models.build("gpt2", tmp_path / "gpt2"))
    text = "The river rose through the night."
    assert main(["activate", "--model", model, "--layer", "1", "--neuron", "5", "--text", text, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "".join(out["tokens"]) == text and len(out["activations"]) == len(out["tokens"]) and out["neuron"] == 5
    assert main(["activate", "--model", model, "--layer", "1", "--top", "3", "--text", text, "--json"]) == 0
    top = json.loads(capsys.readouterr().out)["top"]
    maxima = [item["max_activation"] for item in top]
    assert len(top) == 3 and maxima == sorted(maxima, reverse=True) and max(top[0]["activations"]) == maxima[0]
    assert main(["activate", "--model", model, "--layer", "1", "--neuron", "5", "--text", text]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{model} neuron 1:5 on {len(out['tokens'])} tokens") and len(lines) == 1 + len(
        out["tokens"]
    )
    file = tmp_path / "text.txt"
    file.write_text(text)
    assert main(["activate", "--model", model, "--layer", "1", "--top", "1", "--text-file", str(file)]) == 0
    assert "the 1 neurons that fire most" in capsys.readouterr().out
    assert main(["activate", "--model", model, "--layer", "9", "--neuron", "1", "--text", text]) == 2
    assert "layer 9 out of range" in capsys.readouterr().err
    assert main(["activate", "--model", model, "--layer", "1", "--neuron", "480", "--text", text]) == 2
    assert main(["activate", "--model", model, "--layer", "1", "--neuron", "1", "--text", "  "]) == 2


def test_long_text_is_cut_at_the_cap_and_says_so(tmp_path: Path, capsys) -> None:
    model = str(tiny_models.build("bert", tmp_path / "bert"))
    text = "the river rose " * 100  # 400 tokens (" ri", "ver"); the tiny model takes 128 with [CLS] and [SEP]
    result = activate_text(model, 0, text, device="cpu")
    assert len(result.tokens) == 126 and result.dropped_tokens == 400 - 126
    assert activate_text(model, 0, text, device="cpu", max_tokens=10).dropped_tokens == 390
    assert main(["activate", "--model", model, "--layer", "0", "--neuron", "0", "--text", text, "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["dropped_tokens"] == 274 and "only the first 126 were run" in captured.err
    assert MAX_TEXT_TOKENS == 512
    with pytest.raises(InputError, match="give some text"):
        activate_text(model, 0, "", device="cpu")


# --- The Neurons page's "Try your own text" tab (AppTest, a real $EVAL_DB) ------------------------------------------


def test_try_your_own_text_on_the_neurons_page(app_db, corpus_file, tmp_path: Path) -> None:
    from streamlit.testing.v1 import AppTest

    model = str(tiny_models.build("gpt2", tmp_path / "gpt2"))
    collect(app_db, model, [1], str(corpus_file), OPTIONS)
    page = Path(__file__).resolve().parent.parent / "pages" / "1_Neurons.py"
    at = AppTest.from_file(str(page), default_timeout=60)
    at.query_params.update({"model": model, "layer": "1", "neuron": "5"})
    at.run()
    assert not at.exception and not at.error
    text = "The river rose through the night."
    at.text_area(key="neurons_own_text").input(text)
    next(b for b in at.button if b.label == "Run the model").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    expected = activate_text(model, 1, text, device="cpu").record(5)
    bodies = "\n".join(element.proto.body for element in at.html)
    # The neuron's activations on the text, under the label with its max, through the one renderer.
    assert render.escape_text(f"your text · max {render.exact_value(expected.max_activation)}") in bodies
    assert all(f'title="{render.exact_value(value)}"' in bodies for value in expected.activations)
    captions = " ".join(element.value for element in at.caption)
    assert "0.99 quantile of the per-excerpt max" in captions and "Your text's max" in captions
    # Past the cap (here the tiny model's 128 positions): the first 128 tokens run, and the page says so.
    at.text_area(key="neurons_own_text").input("the river rose " * 100)
    next(b for b in at.button if b.label == "Run the model").click().run()
    assert any("only the first 128 were run" in element.value for element in at.warning), at.warning
