"""LLM backends against real things: the real `openai` client talking to a local fake server (the local transformers
backend is tested in test_llm_hf.py). The client retries on its own; the fake has it wait 10 ms (Retry-After-Ms)."""

from __future__ import annotations

import logging
import math
import threading
import time

import openai
import pytest

from core import config, llm
from core import db as dbmod
from core.errors import InputError, LLMError
from core.llm import ApiOptions, Completion, LocalModelOptions, Sampling
from tests.fake_openai import (
    CUSTOM_SHAPED_KEY,
    TEST_API_KEY,
    everything_shown,
    fake_completion_tokens,
    fake_prompt_tokens,
)


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "Explain neurons."}, {"role": "user", "content": text}]


def echo_handler(request: dict) -> str:
    return " echo " + request["messages"][-1]["content"]


# --- the fake server itself --------------------------------------------------------------------------------------


def test_fake_server_speaks_embeddings_and_echo_completions(fake_openai):
    client = openai.OpenAI(base_url=fake_openai.base_url, api_key="sk-any", max_retries=0)
    vectors = client.embeddings.create(model="e", input=["red cats", "red cats sleep", "stock prices"]).data
    cosine = [sum(a * b for a, b in zip(vectors[0].embedding, v.embedding, strict=True)) for v in vectors]
    assert math.isclose(cosine[0], 1.0, rel_tol=1e-5)
    assert cosine[1] > 0.5 > cosine[2]

    answer = client.completions.create(model="m", prompt="dog\t10\ncat\t", echo=True, logprobs=5, max_tokens=0)
    logprobs = answer.choices[0].logprobs
    assert answer.choices[0].text == "dog\t10\ncat\t"
    assert "".join(logprobs.tokens) == "dog\t10\ncat\t"
    assert logprobs.token_logprobs[0] is None and set(logprobs.top_logprobs[1]) == {str(v) for v in range(11)}

    fake_openai.completions_handler = lambda request: {
        "id": "x", "object": "text_completion", "created": 0, "model": "m",
        "choices": [{"index": 0, "text": "programmed", "finish_reason": "stop", "logprobs": None}],
    }  # fmt: skip
    assert client.completions.create(model="m", prompt="p").choices[0].text == "programmed"
    assert [path for path, _ in fake_openai.calls] == ["/v1/embeddings", "/v1/completions", "/v1/completions"]


# --- the OpenAI backend ------------------------------------------------------------------------------------------


def test_happy_path_records_usage_input_and_output_separately(openai_env, db):
    openai_env.chat_handler = echo_handler
    backend = llm.get_backend("openai:gpt-4o-mini", db=db)
    requests = [chat("alpha"), chat("beta gamma")]
    results = backend.complete(requests, Sampling(seed=7))

    assert [r.text for r in results] == [" echo alpha", " echo beta gamma"]
    for request, result in zip(requests, results, strict=True):
        assert result.input_tokens == fake_prompt_tokens(request)
        assert result.output_tokens == fake_completion_tokens(result.text)
        assert result.input_tokens != result.input_tokens + result.output_tokens  # never total_tokens
        assert result.cached is False and result.latency_s > 0
        assert result.finish_reason == "stop" and result.model == "gpt-4o-mini"
    sent = openai_env.requests[0]
    assert sent["model"] == "gpt-4o-mini" and sent["max_tokens"] == 60 and sent["seed"] == 7
    assert sent["temperature"] == 1.0 and sent["top_p"] == 1.0 and "n" not in sent
    assert openai_env.auth_headers[0] == f"Bearer {TEST_API_KEY}"
    assert backend.name == "openai:gpt-4o-mini" and backend.tokenizer == "cl100k_base"


def test_results_stay_in_request_order_under_concurrency(openai_env):
    openai_env.chat_handler = echo_handler
    backend = llm.get_backend("openai:m", ApiOptions(concurrency=4))
    seen: list[tuple[int, str]] = []
    main = threading.get_ident()
    requests = [chat(f"request {i}") for i in range(12)]

    def on_result(index: int, result: Completion | LLMError) -> None:
        assert threading.get_ident() == main  # callers may write to SQLite here
        seen.append((index, result.text))

    results = backend.complete(requests, on_result=on_result)
    assert [r.text for r in results] == [f" echo request {i}" for i in range(12)]
    assert sorted(seen) == [(i, f" echo request {i}") for i in range(12)]


def test_429_then_success_is_retried(openai_env):
    openai_env.inject("429", "429")
    backend = llm.get_backend("openai:m", ApiOptions(max_attempts=3))
    [result] = backend.complete([chat("x")])
    assert isinstance(result, Completion)
    assert len(openai_env.requests) == 3


def test_500s_exhaust_attempts_and_the_other_request_continues(openai_env):
    openai_env.inject("500", "500", "500")
    backend = llm.get_backend("openai:m", ApiOptions(max_attempts=3, concurrency=1))
    failed, ok = backend.complete([chat("first"), chat("second")])
    assert isinstance(failed, LLMError) and isinstance(ok, Completion)
    print("user sees:", failed)
    assert str(failed).startswith("openai:m: HTTP 500 after 3 attempts: the server failed")
    assert len(openai_env.requests) == 4


def test_timeout_is_retried_then_reported(openai_env):
    openai_env.inject("timeout", "timeout")
    backend = llm.get_backend("openai:m", ApiOptions(timeout_s=0.3, max_attempts=2))
    [result] = backend.complete([chat("x")])
    print("user sees:", result)
    assert isinstance(result, LLMError)
    assert "no answer within 0.3s after 2 attempts" in str(result)

    openai_env.inject("timeout")
    [result] = backend.complete([chat("y")])
    assert isinstance(result, Completion)


def test_malformed_json_and_empty_choices_are_clear_errors_not_crashes(openai_env):
    openai_env.inject("malformed_json", "empty_choices")
    backend = llm.get_backend("openai:m", ApiOptions(concurrency=1))
    malformed, empty, fine = backend.complete([chat("a"), chat("b"), chat("c")])
    print("user sees:", malformed, empty, sep="\n")
    assert isinstance(malformed, LLMError) and "not valid JSON" in str(malformed)
    assert isinstance(empty, LLMError) and "no choices" in str(empty)
    assert isinstance(fine, Completion)
    assert len(openai_env.requests) == 3  # neither is retried: the same server would answer the same way


def test_rejected_key_error_names_the_variable_and_hides_the_key(openai_env):
    openai_env.inject("401")
    backend = llm.get_backend("openai:m")
    [result] = backend.complete([chat("x")])
    print("user sees:", result)
    assert isinstance(result, LLMError)
    assert config.ENV_API_KEY in str(result) and "HTTP 401" in str(result)
    assert TEST_API_KEY not in str(result) and "SECRET" not in str(result)
    assert len(openai_env.requests) == 1  # a bad key is not retried


def test_connection_refused_is_reported_with_the_url(monkeypatch):
    monkeypatch.setenv(config.ENV_API_KEY, TEST_API_KEY)
    backend = llm.get_backend("openai:m", ApiOptions(base_url="http://127.0.0.1:9/v1", max_attempts=2))
    [result] = backend.complete([chat("x")])
    print("user sees:", result)
    assert isinstance(result, LLMError) and "cannot connect to http://127.0.0.1:9/v1 after 2 attempts" in str(result)


def test_missing_key_is_a_clear_error_but_local_servers_need_none(fake_openai, monkeypatch):
    monkeypatch.delenv(config.ENV_API_KEY, raising=False)
    monkeypatch.delenv(config.ENV_API_BASE, raising=False)
    with pytest.raises(LLMError, match=f"no API key: set {config.ENV_API_KEY}") as caught:
        llm.get_backend("openai:gpt-4o-mini")
    print("user sees:", caught.value)

    backend = llm.get_backend("openai:m", ApiOptions(base_url=fake_openai.base_url))
    [result] = backend.complete([chat("x")])
    assert isinstance(result, Completion)
    assert fake_openai.auth_headers == [f"Bearer {llm.LOCAL_SERVER_KEY}"]


def test_cache_answers_repeats_without_http_and_keeps_token_counts(openai_env, db):
    backend = llm.get_backend("openai:m", db=db)
    [first] = backend.complete([chat("x")])
    [second] = backend.complete([chat("x")])
    assert len(openai_env.requests) == 1
    assert second.cached and second.latency_s == 0.0
    assert (second.text, second.input_tokens, second.output_tokens) == (
        first.text,
        first.input_tokens,
        first.output_tokens,
    )

    # Other sampling, or use_cache=False, goes to the server again.
    backend.complete([chat("x")], Sampling(temperature=0.5))
    llm.get_backend("openai:m", db=db, use_cache=False).complete([chat("x")])
    assert len(openai_env.requests) == 3


def test_cache_separates_samples_only_when_sampling_is_random(openai_env, db):
    backend = llm.get_backend("openai:m", db=db)
    backend.complete([chat("x"), chat("x")], Sampling(temperature=1.0), samples=[0, 1])
    backend.complete([chat("x"), chat("x")], Sampling(temperature=1.0), samples=[0, 1])
    assert len(openai_env.requests) == 2  # two samples, both cached the second time

    assert llm.cache_key("openai", "m", chat("x"), Sampling(temperature=0), 0) == llm.cache_key(
        "openai", "m", chat("x"), Sampling(temperature=0), 3
    )
    assert llm.cache_key("openai", "m", chat("x"), Sampling(), 0) != llm.cache_key(
        "openai", "m", chat("x"), Sampling(), 1
    )


def test_failures_are_not_cached(openai_env, db):
    openai_env.inject("empty_choices")
    backend = llm.get_backend("openai:m", db=db)
    [failed] = backend.complete([chat("x")])
    [ok] = backend.complete([chat("x")])
    assert isinstance(failed, LLMError) and isinstance(ok, Completion) and not ok.cached
    assert db.conn.execute("SELECT COUNT(*) FROM llm_cache").fetchone()[0] == 1


def test_key_never_lands_in_the_database_file(openai_env, db, db_path):
    openai_env.inject("401")
    backend = llm.get_backend("openai:m", db=db)
    backend.complete([chat("x"), chat("y")])
    db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert db.conn.execute("SELECT COUNT(*) FROM llm_cache").fetchone()[0] == 1
    for path in db_path.parent.glob(db_path.name + "*"):
        assert TEST_API_KEY.encode() not in path.read_bytes(), path
    assert TEST_API_KEY not in repr(backend)


def test_scrub_secrets_hides_keys_and_bearer_tokens():
    text = "bad key sk-proj-abcdefgh12345 and Authorization: Bearer tok_12345678 and mine=s3cr3t!!"
    scrubbed = llm.scrub_secrets(text, ["s3cr3t!!"])
    assert scrubbed == "bad key *** and Authorization: Bearer *** and mine=***"


def _one_neuron_db(path) -> None:
    from core.records import ActivationRecord, NeuronId, NeuronRecord, NeuronStats

    def record(peak: float) -> ActivationRecord:
        return ActivationRecord((" the", " cat", " sat"), (0.0, peak, 0.1))

    top = tuple(record(5.0 - 0.1 * rank) for rank in range(20))
    stats = NeuronStats(0.2, 0.5, 5.0, {0.5: 0.3, 0.9: 1.0, 0.99: 2.5, 0.999: 4.0})
    database = dbmod.connect(path)
    dbmod.write_neurons(database, "toy", [NeuronRecord("toy", NeuronId(0, 1), top, (record(0.1),) * 15, stats)], "t")
    database.conn.close()


def test_the_configured_key_whatever_its_shape_is_never_shown_by_chat_explain(
    fake_openai, monkeypatch, db_path, capsys, caplog
):
    """One place (llm.scrub_secrets, via llm.api_error) redacts the configured key for every backend; here the
    chat path, which quotes it back on a 401 like OpenAI does."""
    from core.__main__ import main

    monkeypatch.setenv(config.ENV_API_BASE, fake_openai.base_url)
    monkeypatch.setenv(config.ENV_API_KEY, CUSTOM_SHAPED_KEY)
    quoted = f"Incorrect API key provided: {CUSTOM_SHAPED_KEY}. Find your key in your account settings."
    assert llm.scrub_secrets(quoted) == "Incorrect API key provided: ***. Find your key in your account settings."
    assert str(llm.api_error(quoted)) == llm.scrub_secrets(quoted)
    caplog.set_level(logging.DEBUG)
    fake_openai.require_key = "the-key-the-server-wants"  # every request is answered 401, quoting the key it got
    backend = llm.get_backend("openai:m")
    [result] = backend.complete([chat("x")])
    assert isinstance(result, LLMError) and "HTTP 401" in str(result)
    assert "Incorrect API key provided: ***" in str(result)
    assert CUSTOM_SHAPED_KEY not in everything_shown(result)

    # The explain command as a user runs it, with -v so that debug logs and tracebacks go out too.
    _one_neuron_db(db_path)
    argv = ["-v", "explain", "--db", str(db_path), "--model", "toy", "--neurons", "0:1", "--formats", "summary",
            "--explainer", "openai:m", "--max-attempts", "1"]  # fmt: skip
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert "HTTP 401" in err
    assert CUSTOM_SHAPED_KEY not in out + err + caplog.text
    stored = dbmod.connect(db_path)
    stored.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    stored.conn.close()
    for path in db_path.parent.glob(db_path.name + "*"):
        assert CUSTOM_SHAPED_KEY.encode() not in path.read_bytes(), path


def test_the_client_waits_as_the_server_says_and_backs_off_without_a_word(openai_env):
    backend = llm.get_backend("openai:m", ApiOptions(max_attempts=2))
    openai_env.retry_after_ms = 400
    openai_env.inject("503")
    started = time.monotonic()
    [result] = backend.complete([chat("x")])
    assert isinstance(result, Completion) and time.monotonic() - started >= 0.4
    openai_env.retry_after_ms = None  # no Retry-After: the client's own backoff, about half a second at first
    openai_env.inject("429")
    started = time.monotonic()
    [result] = backend.complete([chat("y")])
    assert isinstance(result, Completion) and time.monotonic() - started >= 0.3
    assert len(openai_env.requests) == 4


def test_a_model_that_takes_max_completion_tokens_is_asked_once_more_with_it(openai_env):
    openai_env.reject_max_tokens = True
    [result] = llm.get_backend("openai:o-model").complete([chat("x")], Sampling(max_tokens=33))
    assert isinstance(result, Completion)
    refused, accepted = openai_env.requests
    assert refused["max_tokens"] == 33 and "max_completion_tokens" not in refused
    assert accepted["max_completion_tokens"] == 33 and "max_tokens" not in accepted


def test_backend_specs_and_options_are_checked(openai_env):
    with pytest.raises(InputError, match=r"known backend \(openai:MODEL, hf:ID_OR_PATH\)") as caught:
        llm.get_backend("anthropic:claude")
    print("user sees:", caught.value)
    for spec in ("gpt-4", "openai:", ""):
        with pytest.raises(InputError):
            llm.get_backend(spec)
    with pytest.raises(InputError, match="openai:MODEL backends take ApiOptions, not LocalModelOptions"):
        llm.get_backend("openai:m", LocalModelOptions(batch_size=4))
    with pytest.raises(InputError, match="concurrency 0 must be at least 1"):
        ApiOptions(concurrency=0)
    with pytest.raises(InputError, match="unknown dtype 'fp8'"):
        LocalModelOptions(dtype="fp8")
    local = llm.backend_options("hf:m", ApiOptions(concurrency=2), LocalModelOptions(batch_size=4))
    assert local == LocalModelOptions(batch_size=4)
    assert llm.public_url("http://user:secret@gpu-box:8000/v1/") == "http://gpu-box:8000/v1"
    with pytest.raises(InputError, match="several samples"):
        llm.get_backend("openai:m").complete([chat("x")], Sampling(n=2))
    with pytest.raises(InputError, match="temperature"):
        Sampling(temperature=-1)
    assert Sampling.from_json(Sampling(seed=3).to_json()) == Sampling(seed=3)


def test_cache_functions_round_trip(db):
    assert dbmod.cache_get(db, "k") is None
    dbmod.cache_put(db, "k", "openai", "m", {"messages": []}, {"text": "hi", "input_tokens": 3})
    dbmod.cache_put(db, "k", "openai", "m", {"messages": []}, {"text": "hello", "input_tokens": 4})
    assert dbmod.cache_get(db, "k") == {"text": "hello", "input_tokens": 4}
