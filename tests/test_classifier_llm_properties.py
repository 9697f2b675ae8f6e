"""Properties of the classifier scorers' LLM side (core/scorers/classifier.py), as mutation testing (tests/README.md)
asked for: the cache key of a request (what changes it, what does not, and its exact value), what the fake server
receives (model, max_tokens, temperature, logprobs), what a cached answer gives back and what is stored with it, the
order of answers and errors, the one-line error messages, `classifier_llm`'s spec parsing, and the prompt files'
sources and validation messages."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from core.errors import InputError, LLMError
from core.llm import ApiOptions, LocalModelOptions, get_backend
from core.scorers.classifier import (
    BackendClassifierLLM,
    OpenAIClassifierLLM,
    PromptFile,
    Reply,
    classifier_llm,
    load_prompt,
    prompt_from_json,
)
from core.simulate import SimulatorOptions
from tests import fake_openai
from tests.fake_openai import TEST_API_KEY, LogprobsFakeOpenAIServer

MODEL = "fake-model"
MAX_TOKENS = 28


def chat(text: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": "Answer with a list."}, {"role": "user", "content": text}]


def last_user(request: dict[str, Any]) -> str:
    return [m for m in request["messages"] if m["role"] == "user"][-1]["content"]


def expected_key(model: str, messages: Any, max_tokens: int, top_logprobs: int, **endpoint: Any) -> str:
    """The cache key computed by hand: sha256 of the canonical JSON of the request, temperature 0, sample 0."""
    payload = {
        "backend": "openai",
        "model": model,
        "messages": messages,
        "sampling": {"temperature": 0.0, "top_p": 1.0, "max_tokens": max_tokens, "n": 1, "seed": None},
        "sample": 0,
        "scorer_logprobs": top_logprobs,
        **endpoint,
    }
    canonical = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@pytest.fixture
def server():
    with LogprobsFakeOpenAIServer() as running:
        running.chat_handler = lambda request: "[1, 0]"
        yield running


def llm_for(server, **kwargs: Any) -> OpenAIClassifierLLM:
    options = kwargs.pop("options", ApiOptions(base_url=server.base_url, api_key=TEST_API_KEY, max_attempts=1))
    return OpenAIClassifierLLM(MODEL, options, **kwargs)


def cache_rows(db) -> list[dict[str, Any]]:
    return list(db.query("SELECT key, backend, model, request, response FROM llm_cache"))


# --- The cache key ----------------------------------------------------------------------------------------------------


def test_key_is_the_hand_computed_hash_with_the_local_endpoint(server):
    llm = llm_for(server, top_logprobs=3)
    messages = chat("a")
    assert llm._key(messages, MAX_TOKENS) == expected_key(MODEL, messages, MAX_TOKENS, 3, endpoint=server.base_url)


def test_key_for_openai_itself_names_no_endpoint():
    llm = OpenAIClassifierLLM("gpt-x", ApiOptions(base_url="https://api.openai.com/v1", api_key=TEST_API_KEY))
    assert llm._key(chat("a"), 20) == expected_key("gpt-x", chat("a"), 20, 5)


def test_key_changes_with_each_part_of_the_request_and_only_with_them(server):
    llm = llm_for(server)
    base = llm._key(chat("a"), MAX_TOKENS)
    assert llm._key(chat("a"), MAX_TOKENS) == base
    assert llm_for(server)._key(chat("a"), MAX_TOKENS) == base
    others = {
        llm._key(chat("b"), MAX_TOKENS),
        llm._key(chat("a"), MAX_TOKENS + 1),
        OpenAIClassifierLLM("other-model", llm.options)._key(chat("a"), MAX_TOKENS),
        llm_for(server, top_logprobs=0)._key(chat("a"), MAX_TOKENS),
        OpenAIClassifierLLM(MODEL, ApiOptions(base_url="http://127.0.0.1:9/v1"))._key(chat("a"), MAX_TOKENS),
    }
    assert base not in others and len(others) == 5


# --- What the server receives -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("top_logprobs", [1, 5])
def test_request_body_asks_for_logprobs_when_top_logprobs_is_positive(server, top_logprobs):
    llm_for(server, top_logprobs=top_logprobs).ask([chat("a")], MAX_TOKENS)
    (body,) = server.requests
    assert body["model"] == MODEL and body["messages"] == chat("a")
    assert body["max_tokens"] == MAX_TOKENS and body["temperature"] == 0
    assert body["logprobs"] is True and body["top_logprobs"] == top_logprobs


def test_request_body_asks_for_no_logprobs_at_zero(server):
    (reply,) = llm_for(server, top_logprobs=0).ask([chat("a")], MAX_TOKENS)
    (body,) = server.requests
    assert "logprobs" not in body and "top_logprobs" not in body
    assert body["max_tokens"] == MAX_TOKENS
    assert isinstance(reply, Reply) and reply.text == "[1, 0]" and reply.logprobs is None


def test_answers_come_back_in_request_order_and_a_failed_call_keeps_its_slot(server, monkeypatch):
    # A null `content` (the fake counts its tokens as 1) is an answer with no text: an error in its slot only.
    monkeypatch.setattr(fake_openai, "fake_completion_tokens", lambda text: 1)
    server.chat_handler = lambda request: None if last_user(request) == "c" else f"[{last_user(request)}]"
    options = ApiOptions(base_url=server.base_url, api_key=TEST_API_KEY, concurrency=3)
    llm = llm_for(server, options=options, top_logprobs=0)
    replies = llm.ask([chat(t) for t in "abcde"], MAX_TOKENS)
    assert [r.text if isinstance(r, Reply) else None for r in replies] == ["[a]", "[b]", None, "[d]", "[e]"]
    assert isinstance(replies[2], LLMError)
    assert str(replies[2]) == f"scorer openai:{MODEL}: the answer has no text"


def test_no_choices_is_an_error_with_a_one_line_message(server):
    server.inject("empty_choices")
    (reply,) = llm_for(server).ask([chat("a")], MAX_TOKENS)
    assert isinstance(reply, LLMError)
    assert str(reply) == f"scorer openai:{MODEL}: the server returned no choices"


def test_a_refused_request_raises_naming_the_scorer(server):
    server.inject("401")
    with pytest.raises(LLMError) as raised:
        llm_for(server).ask([chat("a")], MAX_TOKENS)
    message = str(raised.value)
    assert message.startswith(f"scorer openai:{MODEL}: HTTP 401") and "\n" not in message
    assert TEST_API_KEY not in message


def test_an_answer_without_usage_has_unknown_token_counts(server):
    server.chat_usage = False
    (reply,) = llm_for(server, top_logprobs=0).ask([chat("a")], MAX_TOKENS)
    assert isinstance(reply, Reply) and reply.text == "[1, 0]"
    assert reply.input_tokens is None and reply.output_tokens is None


def test_no_more_requests_in_flight_than_the_concurrency(server):
    in_flight = [0]
    most = [0]
    lock = threading.Lock()

    def answer(request: dict[str, Any]) -> str:
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        time.sleep(0.05)
        with lock:
            in_flight[0] -= 1
        return "[1]"

    server.chat_handler = answer
    llm = llm_for(server, options=ApiOptions(base_url=server.base_url, api_key=TEST_API_KEY, concurrency=1))
    replies = llm.ask([chat(t) for t in "abcd"], MAX_TOKENS)
    assert all(isinstance(r, Reply) for r in replies) and len(server.requests) == 4
    assert most[0] == 1


# --- The cache --------------------------------------------------------------------------------------------------------


def test_a_cached_answer_is_reused_whole_without_a_request(server, db):
    llm = llm_for(server, db=db, top_logprobs=2)
    (first,) = llm.ask([chat("a")], MAX_TOKENS)
    assert isinstance(first, Reply) and not first.cached and first.logprobs
    assert first.input_tokens is not None and first.output_tokens is not None
    (second,) = llm_for(server, db=db, top_logprobs=2).ask([chat("a")], MAX_TOKENS)
    assert len(server.requests) == 1
    assert second == Reply(first.text, first.logprobs, first.input_tokens, first.output_tokens, cached=True)


def test_what_is_stored_with_a_cached_answer(server, db):
    llm = llm_for(server, db=db, top_logprobs=2)
    (reply,) = llm.ask([chat("a")], MAX_TOKENS)
    (row,) = cache_rows(db)
    assert row["key"] == llm._key(chat("a"), MAX_TOKENS)
    assert (row["backend"], row["model"]) == ("openai", MODEL)
    assert json.loads(row["request"]) == {"messages": chat("a"), "max_tokens": MAX_TOKENS, "top_logprobs": 2}
    assert json.loads(row["response"]) == {
        "text": reply.text,
        "logprobs": reply.logprobs,
        "input_tokens": reply.input_tokens,
        "output_tokens": reply.output_tokens,
    }


def test_only_the_new_requests_of_a_batch_are_sent_and_errors_are_not_cached(server, db):
    server.chat_handler = lambda request: f"[{last_user(request)}]"
    llm = llm_for(server, db=db)
    llm.ask([chat("a")], MAX_TOKENS)
    server.inject("empty_choices")
    replies = llm.ask([chat("a"), chat("b")], MAX_TOKENS)
    assert [last_user(r) for r in server.requests] == ["a", "b"]
    assert isinstance(replies[0], Reply) and replies[0].cached and replies[0].text == "[a]"
    assert isinstance(replies[1], LLMError)
    assert len(cache_rows(db)) == 1
    (again,) = llm.ask([chat("b")], MAX_TOKENS)
    assert isinstance(again, Reply) and not again.cached and len(server.requests) == 3


def test_without_use_cache_the_database_is_neither_read_nor_written(server, db):
    llm_for(server, db=db).ask([chat("a")], MAX_TOKENS)
    (reply,) = llm_for(server, db=db, use_cache=False).ask([chat("a"), chat("b")], MAX_TOKENS)[:1]
    assert isinstance(reply, Reply) and not reply.cached
    assert len(server.requests) == 3 and len(cache_rows(db)) == 1


def test_without_a_database_nothing_is_cached(server):
    llm = llm_for(server)
    for _ in range(2):
        (reply,) = llm.ask([chat("a")], MAX_TOKENS)
        assert isinstance(reply, Reply) and not reply.cached
    assert len(server.requests) == 2


def test_forget_drops_the_cached_answer(server, db):
    llm = llm_for(server, db=db)
    llm.ask([chat("a"), chat("b")], MAX_TOKENS)
    llm.forget(chat("a"), MAX_TOKENS)
    assert [row["key"] for row in cache_rows(db)] == [llm._key(chat("b"), MAX_TOKENS)]
    (reply,) = llm.ask([chat("a")], MAX_TOKENS)
    assert not reply.cached and len(server.requests) == 3


# --- A core.llm backend as the scorer's LLM ---------------------------------------------------------------------------


def backend_llm(server, db, **options: Any) -> BackendClassifierLLM:
    api = ApiOptions(base_url=server.base_url, api_key=TEST_API_KEY, **options)
    return BackendClassifierLLM(get_backend(f"openai:{MODEL}", api, db=db))


def test_backend_llm_asks_at_temperature_0_with_max_tokens_and_marks_cached_answers(server, db):
    llm = backend_llm(server, db)
    assert llm.name == f"openai:{MODEL}"
    (first,) = llm.ask([chat("a")], MAX_TOKENS)
    (body,) = server.requests
    assert body["temperature"] == 0 and body["max_tokens"] == MAX_TOKENS
    assert first == Reply("[1, 0]", None, first.input_tokens, first.output_tokens, False)
    assert first.input_tokens is not None
    (second,) = llm.ask([chat("a")], MAX_TOKENS)
    assert len(server.requests) == 1 and second == Reply("[1, 0]", None, first.input_tokens, first.output_tokens, True)


def test_backend_llm_forget_drops_the_answer_it_cached(server, db):
    llm = backend_llm(server, db)
    llm.ask([chat("a")], MAX_TOKENS)
    llm.forget(chat("a"), MAX_TOKENS)
    assert cache_rows(db) == []
    (reply,) = llm.ask([chat("a")], MAX_TOKENS)
    assert not reply.cached and len(server.requests) == 2


def test_backend_llm_keeps_a_failed_call_as_its_error(server, db):
    server.inject("malformed_json")
    replies = backend_llm(server, db, max_attempts=1).ask([chat("a")], MAX_TOKENS)
    assert len(replies) == 1 and isinstance(replies[0], LLMError)


# --- classifier_llm: from a spec --------------------------------------------------------------------------------------


def test_classifier_llm_openai_takes_the_options(server, db):
    api = ApiOptions(base_url=server.base_url, api_key=TEST_API_KEY)
    llm = classifier_llm(f"openai:{MODEL}", SimulatorOptions(api=api, top_logprobs=2), db)
    assert isinstance(llm, OpenAIClassifierLLM)
    assert (llm.model, llm.options, llm.top_logprobs, llm.db, llm.use_cache) == (MODEL, api, 2, db, True)
    assert classifier_llm(f"openai:{MODEL}", SimulatorOptions(api=api)).top_logprobs == 5
    assert classifier_llm(f"openai:{MODEL}", SimulatorOptions(api=api, top_logprobs=0)).top_logprobs == 0
    assert classifier_llm(f"openai:{MODEL}", SimulatorOptions(api=api), db, use_cache=False).use_cache is False


def test_classifier_llm_hf_takes_the_local_options(tiny_chat_model: Path, db):
    local = LocalModelOptions(device="cpu", batch_size=3)
    llm = classifier_llm(f"hf:{tiny_chat_model}", SimulatorOptions(local=local), db, use_cache=False)
    assert isinstance(llm, BackendClassifierLLM)
    backend = llm.backend
    assert (backend.batch_size, backend.device, backend.db, backend.use_cache) == (3, "cpu", db, False)
    assert classifier_llm(f"hf:{tiny_chat_model}", SimulatorOptions(local=local)).backend.use_cache is True


def test_classifier_llm_refuses_an_unknown_backend():
    with pytest.raises(InputError, match="is not of the form BACKEND:MODEL"):
        classifier_llm("nope:model", SimulatorOptions())


# --- Prompt files -----------------------------------------------------------------------------------------------------

PROMPT = {
    "system": "Say 0 or 1.",
    "examples": [{"explanation": "cats", "excerpts": ["a cat", "a dog"], "answer": [1, 0]}],
}


def test_prompt_file_keeps_its_source():
    prompt = PromptFile.model_validate(PROMPT).prompt("somewhere.json")
    assert prompt.source == "somewhere.json" and prompt.system == "Say 0 or 1."
    assert [(e.explanation, e.excerpts, e.answer) for e in prompt.examples] == [("cats", ("a cat", "a dog"), (1, 0))]


def test_prompt_from_json_gives_system_and_examples():
    system, examples = prompt_from_json(PROMPT, "my prompt")
    assert system == "Say 0 or 1." and len(examples) == 1 and examples[0].answer == (1, 0)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"system": "  "}, "my prompt: system: expected a non-empty system message"),
        ({**PROMPT, "examples": [{"explanation": "x", "excerpts": ["a"], "answer": [2]}]}, "expected one 0 or 1"),
    ],
)
def test_prompt_from_json_names_where_and_what(data, message):
    with pytest.raises(InputError) as raised:
        prompt_from_json(data, "my prompt")
    assert str(raised.value).startswith("my prompt") and message in str(raised.value)


def test_load_prompt_sources(tmp_path: Path):
    assert load_prompt("detection").source == "bundled"
    assert load_prompt("fuzzing").source == "bundled"
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(PROMPT))
    mine = load_prompt("detection", path)
    assert mine.source == str(path) and mine.system == "Say 0 or 1."
    assert load_prompt("fuzzing", str(path)).source == str(path)


def test_load_prompt_errors_name_the_kind_and_the_choices(tmp_path: Path):
    with pytest.raises(InputError) as raised:
        load_prompt("simulation")
    assert str(raised.value) == "no prompt for scorer 'simulation'; the classifier scorers are detection, fuzzing"
    missing = tmp_path / "missing.json"
    with pytest.raises(InputError) as raised:
        load_prompt("fuzzing", missing)
    assert str(raised.value) == f"fuzzing prompt file {str(missing)!r} does not exist"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"system": ""}))
    with pytest.raises(InputError, match="system: expected a non-empty system message"):
        load_prompt("detection", path)
