"""Collection cost against a bare forward pass of the same model on the same batches, side by side in one run.

    .venv/bin/python bench/collect.py                       # the default MiniLM on CPU, real corpus
    .venv/bin/python bench/collect.py --config gpt2-xl --device cuda --dtype bf16   # random GPT-2 XL, all 307,200

Tokenisation is done once up front and shared, so both sides time only the model and, for collection, the hooks and
all tracking (top-k with per-token activations, random sample, moments, quantile sample). Repetitions alternate
bare/collect to spread machine noise evenly; the medians and their ratio are printed.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.activations import CollectOptions, stream_pass
from core.corpus import batched, load_corpus, special_token_layout, token_excerpts
from core.models import ARCHITECTURES, SubjectModel, load_subject_model, torch_dtype


def random_gpt2_xl(device: str, dtype: str) -> SubjectModel:
    """GPT-2 XL's shape (48 × 6400 neurons) with random weights: speed does not depend on the values."""
    from transformers import GPT2Config, GPT2Model

    config = GPT2Config(n_layer=48, n_embd=1600, n_head=25, n_positions=1024, vocab_size=50257)
    with torch.device(device):
        model = GPT2Model(config).to(torch_dtype(dtype, device)).eval()
    return SubjectModel("gpt2-xl (random)", model, None, ARCHITECTURES["gpt2"], 48, 6400, 1024, None, device)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bare_forward(subject: SubjectModel, batches: list[list[list[int]]], prefix: list[int], suffix: list[int]) -> float:
    device = subject.device
    sync(device)
    started = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            inputs = torch.tensor([prefix + row + suffix for row in batch], device=device)
            subject.model(input_ids=inputs, attention_mask=torch.ones_like(inputs))
    sync(device)
    return time.perf_counter() - started


def tracked_forward(subject: SubjectModel, batches: list[list[list[int]]], options: CollectOptions) -> float:
    with tempfile.TemporaryDirectory() as spill:
        sync(subject.device)
        started = time.perf_counter()
        result = stream_pass(subject, list(range(subject.n_layers)), iter(batches), options, Path(spill))
        sync(subject.device)
        seconds = time.perf_counter() - started
    state_bytes = sum(
        t.numel() * t.element_size() for tr in result.trackers.values() for t in vars(tr).values()
        if isinstance(t, torch.Tensor)
    )  # fmt: skip
    tracked_forward.state_bytes = state_bytes  # type: ignore[attr-defined]
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--config", choices=["gpt2-xl"], default=None, help="random weights of a named shape")
    parser.add_argument("--tokens", type=int, default=65_536, help="tokens per repetition")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None)
    args = parser.parse_args()

    options = CollectOptions(max_tokens=args.tokens, batch_size=args.batch_size)
    if args.config:
        subject = random_gpt2_xl(args.device, args.dtype or "bf16")
        generator = torch.Generator().manual_seed(0)
        excerpts = torch.randint(
            0, 50257, (args.tokens // options.excerpt_len, options.excerpt_len), generator=generator
        )
        batches = list(batched(excerpts.tolist(), args.batch_size))
        prefix, suffix = [], []
    else:
        subject = load_subject_model(args.model, args.device, args.dtype)
        excerpts = token_excerpts(load_corpus("default"), subject.tokenizer, options.excerpt_len, args.tokens)
        batches = list(batched(excerpts, args.batch_size))
        prefix, suffix = special_token_layout(subject.tokenizer)
    n_tokens = sum(len(b) for b in batches) * options.excerpt_len
    neurons = subject.n_layers * subject.n_neurons
    print(f"model {subject.name}: {subject.n_layers} layers × {subject.n_neurons} = {neurons:,} neurons tracked")
    print(f"device {args.device}, threads {torch.get_num_threads()}, {n_tokens:,} tokens per repetition")

    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    bare_forward(subject, batches[:2], prefix, suffix)  # warm-up
    bare, tracked = [], []
    for _ in range(args.repeats):
        bare.append(bare_forward(subject, batches, prefix, suffix))
        tracked.append(tracked_forward(subject, batches, options))
    bare_s, tracked_s = statistics.median(bare), statistics.median(tracked)
    ratios = [round(t / b, 2) for t, b in zip(tracked, bare, strict=True)]
    print(f"bare forward     median {bare_s:7.2f}s  {n_tokens / bare_s:>10,.0f} tokens/s")
    print(f"collection       median {tracked_s:7.2f}s  {n_tokens / tracked_s:>10,.0f} tokens/s")
    print(f"collection ÷ bare forward: {tracked_s / bare_s:.2f}×  (each run: {ratios})")
    state_mib = tracked_forward.state_bytes / 2**20  # type: ignore[attr-defined]
    print(f"tracking state: {state_mib:,.0f} MiB (independent of corpus size)")
    if args.device.startswith("cuda"):
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    with contextlib.suppress(Exception):
        print(f"peak process RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
