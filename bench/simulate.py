"""Benchmark of the local all-at-once simulator (core/simulate/local.py), three methods measured side by side:

- all-at-once with the shared prefix cached (system + few-shot once per simulator, explanation once per neuron),
- all-at-once recomputing the whole prompt for every batch (`reuse_prefix=False`),
- one call per token: one forward pass of the prompt up to each slot (how a simulator without the all-at-once
  trick works), timed on `--per-token-excerpts` excerpts and reported per excerpt.

    .venv/bin/python -m bench.simulate                          # small random Llama on CPU
    .venv/bin/python -m bench.simulate --config llama3-8b       # Llama-3-8B-sized, random weights, bf16 on cuda
    .venv/bin/python -m bench.simulate --model PATH --device cuda --dtype bf16

One neuron is 10 excerpts × 64 tokens (the valid split, METHOD.md §1); every neuron gets its own explanation, so the
per-neuron cache is rebuilt each time while the few-shot cache is shared, as in `python -m core score`.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from typing import Any

import torch

from core.records import ActivationRecord
from core.simulate import few_shot_pieces, load_few_shot
from core.simulate.local import LocalAllAtOnceSimulator
from tests.tiny_models import bpe_tokenizer, random_llama

WORDS = [
    "the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "was", "with", "be", "by", "on", "not",
    "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an", "they", "you", "were", "her",
    "she", "there", "been", "one", "all", "we", "their", "has", "would", "when", "if", "more", "will", "so", "no",
    "what", "up", "out", "about", "who", "them", "river", "city", "music", "number", "water", "red", "green",
    "blue", "Monday", "Friday", "function", "return", "value", "neuron", "cat", "dog", "house", "year",
]  # fmt: skip
DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
DTYPES |= {"fp32": torch.float32, "float32": torch.float32}


def build_tokenizer(vocab_size: int) -> Any:
    """A byte-level BPE tokenizer trained here on the prompt's own text and random excerpts (nothing downloaded)."""
    rng = random.Random(0)
    prompt_text = "".join(piece.text for piece in few_shot_pieces(load_few_shot()))
    lines = prompt_text.split("\n") * 5
    lines += [" ".join(rng.choice(WORDS) for _ in range(12)) + "\tunknown\n" for _ in range(2000)]
    lines += [f"{word}\t{value}\n" for word in WORDS for value in range(11)]
    special = ["<pad>", "<s>", "</s>"]
    return bpe_tokenizer(lines, vocab_size, special, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def build_model(config_name: str, vocab_size: int, device: str, dtype: torch.dtype) -> Any:
    """A random-weight LlamaForCausalLM: `small` (CPU-friendly) or `llama3-8b` (the real model's shapes)."""
    from transformers import LlamaConfig

    if config_name == "llama3-8b":
        config = LlamaConfig(
            vocab_size=128_256,
            hidden_size=4096,
            intermediate_size=14_336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            max_position_embeddings=8192,
            rope_theta=500_000.0,
        )
    else:
        config = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=256,
            intermediate_size=688,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=8192,
        )
    # Built in the target dtype on the device: an 8B model in float32 would double peak memory.
    return random_llama(config, seed=0, dtype=dtype, device=device).eval()


def neuron_records(rng: random.Random, n_excerpts: int, n_tokens: int) -> list[ActivationRecord]:
    return [
        ActivationRecord(
            tuple((" " if i else "") + rng.choice(WORDS) for i in range(n_tokens)),
            tuple(rng.random() for _ in range(n_tokens)),
        )
        for _ in range(n_excerpts)
    ]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_all_at_once(
    simulator: LocalAllAtOnceSimulator, neurons: list[list[ActivationRecord]], device: str
) -> list[float]:
    """Seconds per neuron, each neuron with a new explanation."""
    seconds = []
    for number, records in enumerate(neurons):
        _sync(device)
        start = time.perf_counter()
        result = simulator.simulate(f"words about topic number {number}", records)
        _sync(device)
        seconds.append(time.perf_counter() - start)
        if not result.ok:
            raise SystemExit(f"simulation failed: {result.error}")
    return seconds


def time_per_token(simulator: LocalAllAtOnceSimulator, records: list[ActivationRecord], device: str) -> float:
    """Seconds per excerpt when every token slot gets its own forward pass over the prompt up to it."""
    model = simulator.model
    prefix = [*simulator.prefix_ids, *simulator.explanation_ids("words about one topic")]
    _sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        for record in records:
            encoded = simulator.encode_excerpt(record)
            for slot in encoded.slots:
                ids = torch.tensor([prefix + list(encoded.ids[: slot + 1])], device=simulator.device)
                model(input_ids=ids, logits_to_keep=1)
    _sync(device)
    return (time.perf_counter() - start) / len(records)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="a local causal LM folder (default: a random Llama)")
    parser.add_argument("--config", default="small", choices=["small", "llama3-8b"], help="random model size")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda for llama3-8b, else cpu)")
    parser.add_argument("--dtype", default=None, choices=sorted(DTYPES), help="default: bf16 on cuda, fp32 on cpu")
    parser.add_argument("--neurons", type=int, default=None, help="neurons timed per method (default: 5 cpu, 10 gpu)")
    parser.add_argument("--excerpts", type=int, default=10, help="excerpts per neuron (%(default)s)")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per excerpt (%(default)s)")
    parser.add_argument("--batch-size", type=int, default=16, help="excerpts per forward pass (%(default)s)")
    parser.add_argument("--per-token-excerpts", type=int, default=1, help="excerpts timed one call per token")
    args = parser.parse_args(argv)

    device = args.device or ("cuda" if args.config == "llama3-8b" else "cpu")
    dtype = DTYPES[args.dtype or ("bf16" if device.startswith("cuda") else "fp32")]
    if args.model:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.model)
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).to(device).eval()
        label = args.model
    else:
        tokenizer = build_tokenizer(vocab_size=2000)
        model = build_model(args.config, len(tokenizer), device, dtype)
        label = f"random Llama ({args.config})"
    n_neurons = args.neurons or (10 if device.startswith("cuda") else 5)
    rng = random.Random(0)
    neurons = [neuron_records(rng, args.excerpts, args.tokens) for _ in range(n_neurons)]

    reused = LocalAllAtOnceSimulator(model, tokenizer, batch_size=args.batch_size, reuse_prefix=True)
    fresh = LocalAllAtOnceSimulator(model, tokenizer, batch_size=args.batch_size, reuse_prefix=False)
    warmup = neuron_records(random.Random(1), args.excerpts, args.tokens)
    for simulator in (reused, fresh):  # first calls pay for allocation, kernels and the few-shot cache
        simulator.simulate("a warm-up explanation", warmup)

    reuse_s = time_all_at_once(reused, neurons, device)
    fresh_s = time_all_at_once(fresh, neurons, device)
    per_token_excerpt_s = time_per_token(reused, neurons[0][: args.per_token_excerpts], device)

    excerpt = reused.encode_excerpt(neurons[0][0])
    explanation_ids = reused.explanation_ids("words about topic number 0")
    per_neuron = {
        "all-at-once, prefix cache reused": statistics.median(reuse_s),
        "all-at-once, no prefix reuse": statistics.median(fresh_s),
        "one call per token (extrapolated)": per_token_excerpt_s * args.excerpts,
    }
    print(f"model: {label} on {device} ({str(dtype).removeprefix('torch.')})")
    print(
        f"prompt: {len(reused.prefix_ids)} prefix tokens (system + few-shot), {len(explanation_ids)} explanation "
        f"tokens, {len(excerpt.ids)} tokens per excerpt; one neuron = {args.excerpts} excerpts × {args.tokens} tokens"
    )
    print(f"{'method':<36}{'s / neuron':>12}{'excerpts / s':>15}{'÷ cached':>10}")
    baseline = per_neuron["all-at-once, prefix cache reused"]
    for name, seconds in per_neuron.items():
        print(f"{name:<36}{seconds:>12.3f}{args.excerpts / seconds:>15.1f}{seconds / baseline:>9.1f}×")
    ratio_fresh = per_neuron["all-at-once, no prefix reuse"] / baseline
    ratio_token = per_neuron["one call per token (extrapolated)"] / baseline
    print(
        f"prefix reuse is {ratio_fresh:.2f}× faster than recomputing the prefix and {ratio_token:.0f}× faster than "
        "one call per token"
    )
    if args.config == "llama3-8b" and not args.model:
        verdict = "met" if baseline < 1.0 else "NOT met"
        print(f"target: one neuron under 1 s ({baseline:.3f} s): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
