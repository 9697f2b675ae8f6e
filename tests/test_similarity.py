"""Explanation similarity (core/similarity.py, METHOD.md §4): the real all-MiniLM-L6-v2, the embedder registry and an
OpenAI-compatible embeddings endpoint on the fake server."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from core import similarity
from core.errors import InputError, LLMError
from tests.fake_openai import CUSTOM_SHAPED_KEY, FakeOpenAIServer, everything_shown


@pytest.fixture(scope="module")
def minilm():
    embedder = similarity.get_embedder("minilm")
    embedder.embed(["warm up"])  # loads the model once for the module
    return embedder


def test_identical_texts_have_similarity_one(minilm):
    assert similarity.similarity("words related to the weather", "words related to the weather", minilm) == (
        pytest.approx(1.0, abs=1e-6)
    )


def test_related_explanations_are_closer_than_unrelated(minilm):
    truth = "names of animals such as dogs and cats"
    related, unrelated = similarity.similarities(
        [("mentions of pets and other animals", truth), ("closing parentheses in source code", truth)], minilm
    )
    assert related > unrelated + 0.2
    assert -1.0 <= unrelated <= 1.0


def test_minilm_matches_sentence_transformers(minilm):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    texts = ["the word 'the' after a verb", "days of the week", "x " * 400]  # the last one is truncated
    expected = sentence_transformers.SentenceTransformer(minilm.path, device="cpu").encode(texts)
    vectors = minilm.embed(texts)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)


def test_similarities_embed_each_distinct_text_once():
    class CountingEmbedder:
        """A real embedder of our own: one-hot vectors per first letter, counting the texts it is asked for."""

        name = "first-letter"

        def __init__(self) -> None:
            self.seen: list[str] = []

        def embed(self, texts):
            self.seen.extend(texts)
            vectors = np.zeros((len(texts), 26))
            for i, text in enumerate(texts):
                vectors[i, ord(text[0].lower()) - ord("a")] = 1.0
            return vectors

    embedder = CountingEmbedder()
    values = similarity.similarities([("apple", "avocado"), ("banana", "apple"), ("apple", "banana")], embedder)
    assert values == [1.0, 0.0, 0.0]
    assert sorted(embedder.seen) == ["apple", "avocado", "banana"]
    assert similarity.similarities([], embedder) == []
    with pytest.raises(InputError, match="pair 1 has an empty"):
        similarity.similarities([("a", "b"), ("", "b")], embedder)


def test_embedder_registry_errors():
    assert set(similarity.EMBEDDERS) == {"minilm", "openai"}
    with pytest.raises(InputError, match="unknown embedder 'ada'"):
        similarity.get_embedder("ada")
    with pytest.raises(InputError, match="name the embedding model"):
        similarity.get_embedder("openai:")


def test_openai_embedder_against_a_local_server(monkeypatch):
    with FakeOpenAIServer() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        embedder = similarity.get_embedder("openai:text-embedding-fake")
        assert embedder.name == "openai:text-embedding-fake"
        values = similarity.similarities(
            [
                ("words about cats", "words about cats"),
                ("words about cats", "words about dogs"),
                ("words about cats", "closing brackets"),
            ],
            embedder,
        )
        assert values[0] == pytest.approx(1.0)
        assert values[0] > values[1] > values[2]
        path, body = server.calls[-1]
        assert path == "/v1/embeddings"
        assert body["model"] == "text-embedding-fake"
        assert len(body["input"]) == 3  # distinct texts only

        server.inject("401")
        with pytest.raises(LLMError, match="embedding request to text-embedding-fake failed"):
            embedder.embed(["anything"])
        server.inject("empty_choices")
        with pytest.raises(LLMError, match="text-embedding-fake failed: No embedding data"):
            embedder.embed(["anything"])


def test_openai_embedder_without_key_says_what_to_set(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(LLMError, match="OPENAI_API_KEY is not set"):
        similarity.similarity("a", "b", "openai:text-embedding-3-small")


def test_a_key_of_any_shape_quoted_back_is_never_shown_by_the_embedder(monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    with FakeOpenAIServer(require_key="the-key-the-server-wants") as server:  # answers 401, quoting the key it got
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", CUSTOM_SHAPED_KEY)
        with pytest.raises(
            LLMError, match=r"text-embedding-fake failed: .*Incorrect API key provided: \*\*\*"
        ) as caught:
            similarity.similarity("cats", "dogs", "openai:text-embedding-fake")
    logging.getLogger("test").info("shown to the user: %s", caught.value, exc_info=caught.value)  # as the app logs it
    assert CUSTOM_SHAPED_KEY not in everything_shown(caught.value) + caplog.text


def test_a_similarity_is_named_by_its_embedder():
    # docs/METHOD.md §4: the paper's measure used ada-002; ours is named for the embedder that made it.
    assert similarity.similarity_label("minilm") == "cos·MiniLM"
    assert similarity.similarity_label() == "cos·MiniLM"
    assert similarity.similarity_label("openai:text-embedding-3-small") == "cos·text-embedding-3-small"
    assert "AdaCS" not in (similarity.__doc__ or "")
