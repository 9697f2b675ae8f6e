"""The local transformers backend (core/llm/hf.py), built through the registry with a tiny local chat model."""

from __future__ import annotations

import pytest

from core import llm
from core.errors import LLMError, ModelError
from core.llm import Completion, LocalModelOptions, Sampling


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "Explain neurons."}, {"role": "user", "content": text}]


def test_hf_backend_generates_and_counts_with_its_own_tokenizer(tiny_chat_model, db):
    from transformers import AutoTokenizer

    backend = llm.get_backend(f"hf:{tiny_chat_model}", LocalModelOptions(device="cpu", batch_size=2), db=db)
    requests = [chat("The cat sat."), chat("A much longer request about rivers and cities and music."), chat("x")]
    results = backend.complete(requests, Sampling(max_tokens=12, seed=1))
    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_model)
    for request, result in zip(requests, results, strict=True):
        assert isinstance(result, Completion), result
        rendered = tokenizer.apply_chat_template(request, tokenize=False, add_generation_prompt=True)
        assert result.input_tokens == len(tokenizer.encode(rendered, add_special_tokens=False))
        assert 1 <= result.output_tokens <= 12
        assert result.finish_reason in ("stop", "length")
        assert (result.finish_reason == "length") == (result.output_tokens == 12)
    assert backend.tokenizer == str(tiny_chat_model)

    again = llm.get_backend(f"hf:{tiny_chat_model}", LocalModelOptions(device="cpu", batch_size=2), use_cache=False)
    repeat = again.complete(requests, Sampling(max_tokens=12, seed=1))
    assert [r.text for r in repeat] == [r.text for r in results]  # seeded sampling is reproducible
    cached = backend.complete(requests, Sampling(max_tokens=12, seed=1))
    assert all(r.cached for r in cached)


def test_hf_backend_errors_are_for_people(tiny_chat_model, tmp_path):
    with pytest.raises(ModelError, match="missing-model does not exist") as caught:
        llm.get_backend(f"hf:{tmp_path / 'missing-model'}", LocalModelOptions(device="cpu"))
    print("user sees:", caught.value)

    from transformers import AutoTokenizer

    plain = tmp_path / "no-template"
    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_model)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(plain)
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        if (tiny_chat_model / name).exists():
            (plain / name).write_bytes((tiny_chat_model / name).read_bytes())
    with pytest.raises(ModelError, match="no chat template"):
        llm.get_backend(f"hf:{plain}", LocalModelOptions(device="cpu"))

    backend = llm.get_backend(f"hf:{tiny_chat_model}", LocalModelOptions(device="cpu"))
    [too_long] = backend.complete([chat("word " * 9000)], Sampling(max_tokens=5))
    assert isinstance(too_long, LLMError) and "at most 8192" in str(too_long)


def test_hf_backend_checks_the_device_before_loading(tiny_chat_model):
    from core.errors import InputError

    with pytest.raises(InputError, match="unknown device 'tpu'"):
        llm.get_backend(f"hf:{tiny_chat_model}", LocalModelOptions(device="tpu"))
