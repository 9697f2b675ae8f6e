"""The local all-at-once simulator (core/simulate/local.py): slot alignment, prefix-cache reuse, batching and "10"
split across tokens, against tiny random models."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from core.records import ActivationRecord
from core.simulate import SimulationResult, Simulator, escape_token
from core.simulate.local import LocalAllAtOnceSimulator, value_tokens
from tests.simulation_records import sample_records
from tests.tiny_models import bpe_tokenizer, build_tiny_tokenizer, random_llama


def _model(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    # A large init spread makes the random model's value distributions differ from token to token, so equality
    # checks between code paths compare varied numbers rather than a flat ~5.
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        initializer_range=0.5,
    )
    return random_llama(config, seed=seed).eval()


@pytest.fixture(scope="module")
def lm():
    tokenizer = build_tiny_tokenizer()
    return _model(len(tokenizer)), tokenizer


def _split_ten_tokenizer():
    """A byte-level BPE tokenizer whose vocabulary has single digits but no "10"."""
    words = [
        "the", "cat", "sat", "on", "a", "mat", "unknown", "neuron", "activation", "explanation", "find",
        "tokens", "start", "end", "day", "words",
    ]  # fmt: skip
    lines = [f"{w} {words[(i * 5) % len(words)]}\t{i % 10}\n" for i, w in enumerate(words * 4)]
    lines += [f"{d} {d}{d}\t{d}" for d in "23456789"] * 5  # digits, but never a 1 followed by a 0
    return bpe_tokenizer(lines, 400, ["<pad>", "</s>"], eos_token="</s>", pad_token="<pad>")


@pytest.fixture(scope="module")
def split_lm():
    tokenizer = _split_ten_tokenizer()
    return _model(len(tokenizer), seed=1), tokenizer


def _flat(result: SimulationResult) -> list[float]:
    assert result.ok, result.error
    return [v for row in result.predictions for v in row]


# --- local all-at-once ---------------------------------------------------------------------------------------------


def test_local_slots_are_exactly_after_each_token_and_tab(lm) -> None:
    model, tokenizer = lm
    simulator = LocalAllAtOnceSimulator(model, tokenizer)
    record = sample_records()[0]
    encoded = simulator.encode_excerpt(record)
    assert len(encoded.slots) == len(record.tokens)
    for token, slot in zip(record.tokens, encoded.slots, strict=True):
        # The text up to and including the slot ends with this token's line and its tab, and the slot is the last
        # position of that text: the next token the model predicts is the value.
        assert tokenizer.decode(list(encoded.ids[: slot + 1])).endswith("\n" + escape_token(token) + "\t")
    result = simulator.simulate("words about cats", sample_records())
    assert result.ok and result.method == "all_at_once" and isinstance(simulator, Simulator)
    assert [len(p) for p in result.predictions] == [len(r.tokens) for r in sample_records()]
    assert all(0.0 <= v <= 10.0 for v in _flat(result))


def test_prefix_cache_reuse_gives_the_same_predictions(lm) -> None:
    model, tokenizer = lm
    reused = _flat(LocalAllAtOnceSimulator(model, tokenizer).simulate("words about cats", sample_records()))
    fresh = _flat(
        LocalAllAtOnceSimulator(model, tokenizer, reuse_prefix=False).simulate("words about cats", sample_records())
    )
    assert torch.allclose(torch.tensor(reused), torch.tensor(fresh), atol=1e-4)
    assert max(reused) - min(reused) > 0.1  # the comparison is between varied values, not a constant


def test_batches_equal_one_by_one_and_the_shared_cache_is_not_mutated(lm) -> None:
    model, tokenizer = lm
    records = sample_records()
    batched = LocalAllAtOnceSimulator(model, tokenizer, batch_size=4)
    single = LocalAllAtOnceSimulator(model, tokenizer, batch_size=1)
    first = _flat(batched.simulate("words about cats", records))
    assert torch.allclose(
        torch.tensor(first), torch.tensor(_flat(single.simulate("words about cats", records))), atol=1e-4
    )
    one_at_a_time = [v for record in records for v in _flat(batched.simulate("words about cats", [record]))]
    assert torch.allclose(torch.tensor(first), torch.tensor(one_at_a_time), atol=1e-4)
    # Another neuron in between must leave the few-shot cache as it was.
    other = _flat(batched.simulate("numbers in code", records))
    assert other != first
    assert torch.allclose(torch.tensor(first), torch.tensor(_flat(batched.simulate("words about cats", records))))


def test_tokenizer_without_ten_gets_p10_from_the_position_after_one(split_lm) -> None:
    model, tokenizer = split_lm
    # No few-shot examples: a short prompt, so that attending to one position too many would show in the numbers.
    simulator = LocalAllAtOnceSimulator(model, tokenizer, batch_size=3, few_shot=())
    values = value_tokens(simulator.encode)
    assert values.ten_split and values.ten is None and "10" not in tokenizer.get_vocab()
    records = sample_records()[:3]
    explanation = "days of the week"
    result = simulator.simulate(explanation, records)
    no_reuse = LocalAllAtOnceSimulator(model, tokenizer, few_shot=(), reuse_prefix=False).simulate(explanation, records)
    assert torch.allclose(torch.tensor(_flat(result)), torch.tensor(_flat(no_reuse)), atol=1e-4)
    # By hand, with plain forward passes: the distribution after the tab, and the one after an appended "1".
    prefix = [*simulator.prefix_ids, *simulator.explanation_ids(explanation)]
    one, zero = values.digits[1], values.digits[0]
    for record, predicted in zip(records, result.predictions, strict=True):
        encoded = simulator.encode_excerpt(record)
        for slot, ev in zip(encoded.slots, predicted, strict=True):
            ids = prefix + list(encoded.ids[: slot + 1])
            with torch.no_grad():
                after_tab = model(torch.tensor([ids])).logits[0, -1].softmax(-1)
                after_one = model(torch.tensor([[*ids, one]])).logits[0, -1].softmax(-1)
            p = [float(after_tab[values.digits[v]]) for v in range(10)]
            q = float(after_one[zero])
            by_hand = [p[0], p[1] * (1 - q), *p[2:], p[1] * q]
            assert ev == pytest.approx(sum(v * w for v, w in enumerate(by_hand)) / sum(by_hand), abs=1e-4)


def _by_hand_evs(model, simulator: LocalAllAtOnceSimulator, explanation: str, records) -> list[float]:
    """EVs from plain forward passes, one per slot (and one more with "1" appended for a split "10")."""
    values = value_tokens(simulator.encode)
    prefix = [*simulator.prefix_ids, *simulator.explanation_ids(explanation)]
    evs = []
    for record in records:
        encoded = simulator.encode_excerpt(record)
        for slot in encoded.slots:
            ids = prefix + list(encoded.ids[: slot + 1])
            with torch.no_grad():
                after_tab = model(torch.tensor([ids])).logits[0, -1].float().softmax(-1)
                p = [float(after_tab[values.digits[v]]) for v in range(10)]
                if values.ten_split:
                    after_one = model(torch.tensor([[*ids, values.digits[1]]])).logits[0, -1].float().softmax(-1)
                    q = float(after_one[values.digits[0]])
                    p = [p[0], p[1] * (1 - q), *p[2:], p[1] * q]
                else:
                    p.append(float(after_tab[values.ten]))
            evs.append(sum(v * w for v, w in enumerate(p)) / sum(p))
    return evs


@pytest.mark.parametrize("family", ["mistral", "qwen2"])
def test_split_ten_mask_keeps_the_models_sliding_window(split_lm, family: str) -> None:
    # The prompt (~400 tokens) is far longer than the window (12), so attending past the window would show.
    from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

    _, tokenizer = split_lm
    shape = {
        "vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "sliding_window": 12, "initializer_range": 0.5,
    }  # fmt: skip
    if family == "mistral":  # every layer slides
        config, model_class = MistralConfig(**shape), MistralForCausalLM
    else:  # one full layer, one sliding layer: the mask goes in as a mapping per layer type
        config, model_class = Qwen2Config(**shape, use_sliding_window=True, max_window_layers=1), Qwen2ForCausalLM
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = model_class(config).eval()
    simulator = LocalAllAtOnceSimulator(model, tokenizer, batch_size=2, few_shot=())
    assert simulator.values.ten_split
    records = sample_records()[1:3]
    predicted = _flat(simulator.simulate("days of the week", records))
    expected = _by_hand_evs(model, simulator, "days of the week", records)
    assert torch.allclose(torch.tensor(predicted), torch.tensor(expected), atol=1e-4)


def test_attention_windows_refuse_what_a_causal_mask_cannot_describe() -> None:
    from transformers import LlamaConfig

    from core.errors import ModelError
    from core.simulate.local import attention_windows

    assert attention_windows(LlamaConfig()) == {"full_attention": None}
    flash = LlamaConfig()
    flash._attn_implementation = "flash_attention_2"
    with pytest.raises(ModelError, match="attn_implementation='sdpa'"):
        attention_windows(flash)
    chunked = LlamaConfig()
    chunked.layer_types = ["full_attention", "chunked_attention"]
    with pytest.raises(ModelError, match="'chunked_attention' layers"):
        attention_windows(chunked)


@pytest.mark.parametrize("split", [False, True])
def test_a_prompt_longer_than_the_models_positions_is_a_failure_with_the_reason(lm, split_lm, split: bool) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    _, tokenizer = split_lm if split else lm
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=600, n_embd=16, n_layer=1, n_head=2)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = GPT2LMHeadModel(config).eval()
    simulator = LocalAllAtOnceSimulator(model, tokenizer, few_shot=())
    short = ActivationRecord((" the", " cat"), (0.0, 1.0))
    assert simulator.simulate("cats", [short]).ok
    long = ActivationRecord(tuple(f" w{i}" for i in range(200)), (0.0,) * 200)
    result = simulator.simulate("cats", [short, long])
    assert not result.ok and result.predictions is None
    assert "record 1" in result.error and "more than the 600" in result.error and "shorter excerpts" in result.error
    # Exactly at the limit still runs: the check counts the positions the forward pass really uses.
    encoded = simulator.encode_excerpt(short)
    needed = len(simulator.prefix_ids) + len(simulator.explanation_ids("cats")) + len(encoded.ids) + int(split)
    exact = LocalAllAtOnceSimulator(
        GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=needed, n_embd=16, n_layer=1, n_head=2)),
        tokenizer,
        few_shot=(),
    )
    assert exact.simulate("cats", [short]).ok


def test_a_bfloat16_model_gives_float32_evs_of_its_own_logits(split_lm) -> None:
    _, tokenizer = split_lm
    half = _model(len(tokenizer), seed=1).to(torch.bfloat16)
    simulator = LocalAllAtOnceSimulator(half, tokenizer, batch_size=2, few_shot=())
    records = sample_records()[1:3]
    predicted = _flat(simulator.simulate("days of the week", records))
    assert all(math.isfinite(v) and 0 <= v <= 10 for v in predicted)
    expected = _by_hand_evs(half, simulator, "days of the week", records)
    # bf16 batched and cached arithmetic rounds differently from single passes, hence the loose tolerance.
    assert max(abs(a - b) for a, b in zip(predicted, expected, strict=True)) < 0.3


def test_empty_explanations_are_refused(lm) -> None:
    from core.errors import InputError

    model, tokenizer = lm
    simulator = LocalAllAtOnceSimulator(model, tokenizer, few_shot=())
    for text in ("", "  \t\n", "...", " . "):
        with pytest.raises(InputError, match=r"explanation .* is empty"):
            simulator.simulate(text, sample_records()[1:2])
    # Tabs and newlines inside an explanation become spaces: they cannot break the prompt's lines.
    assert simulator.explanation_ids("cats\tand\ndogs.") == simulator.explanation_ids("cats and dogs")
