"""Collection cost against a bare forward pass of the same model on the same batches, side by side in one run.

    .venv/bin/python -m bench.collect                       # the default MiniLM on CPU, real corpus
    .venv/bin/python -m bench.collect --config gpt2-xl --device cuda --dtype bf16   # random GPT-2 XL, all 307,200
    .venv/bin/python -m bench.collect --nproc 2             # torchrun: 2 processes against 1, the real CLI

Tokenisation is done once up front and shared, so both sides time only the model and, for collection, the hooks and
all tracking (top-k with per-token activations, random sample, moments, quantile sample). Repetitions alternate
bare/collect to spread machine noise evenly; the medians and their ratio are printed.

With --nproc N, the real command `torchrun --nproc-per-node K -m core collect --json` runs in three arms, in turn
and each into a fresh database: 1 process on one thread, N processes on one thread each (a rank per core, as a rank
per GPU), and 1 process on every core (torch's own threads). Printed: the scaling of N ranks over 1 with the same
resources per rank (what torchrun buys on N GPUs), and N ranks against one process that already uses every core
(what it buys on one CPU machine: nothing much, since torch's threads already share the work). Each for the pass
alone (tokens/s from the report, the slowest rank's pass) and end to end (wall clock, model loading and database
writes included).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from core.activations import CollectOptions, stream_pass
from core.corpus import batched, load_corpus, special_token_layout, token_excerpts
from core.models import ARCHITECTURES, SubjectModel, load_subject_model, torch_dtype

REPO_ROOT = Path(__file__).resolve().parent.parent


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
    tracked_forward.state_bytes = sum(t.nbytes() for t in result.trackers.values())  # type: ignore[attr-defined]
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
    parser.add_argument("--nproc", type=int, default=None, help="compare N processes under torchrun with 1")
    args = parser.parse_args()
    if args.nproc:
        compare_processes(args)
        return

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


def torchrun_collect(nproc: int, threads: int, args: argparse.Namespace, folder: Path, run: int) -> tuple[float, dict]:
    """One real `torchrun … -m core collect --json` into a fresh database, each process on `threads` threads:
    (wall seconds, its report)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
               "-m", "core", "collect", "--db", str(folder / f"{nproc}-{threads}-{run}.db"), "--model", args.model,
               "--corpus", "default", "--max-tokens", str(args.tokens), "--batch-size", str(args.batch_size),
               "--device", args.device, "--json"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO_ROOT)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"torchrun with {nproc} processes failed:\n{done.stderr[-3000:]}")
    return seconds, json.loads(done.stdout)


def compare_processes(args: argparse.Namespace) -> None:
    cores = os.cpu_count() or 1
    arms = {"1 rank, 1 thread": (1, 1), f"{args.nproc} ranks, 1 thread each": (args.nproc, 1),
            f"1 rank, {cores} threads": (1, cores)}  # fmt: skip
    walls: dict[str, list[float]] = {arm: [] for arm in arms}
    passes: dict[str, list[float]] = {arm: [] for arm in arms}
    reports: dict[str, dict] = {}
    print(f"model {args.model}, {args.tokens:,} tokens, batch {args.batch_size}, {cores} cores, {args.device}")
    with tempfile.TemporaryDirectory() as folder:
        for run in range(args.repeats):
            for arm, (nproc, threads) in arms.items():  # in turn, to spread machine noise over every arm
                wall, report = torchrun_collect(nproc, threads, args, Path(folder), run)
                walls[arm].append(wall)
                passes[arm].append(report["tokens_per_second"])
                reports[arm] = report
    for arm, report in reports.items():
        per_rank = ", ".join(f"{t:,.0f}" for t in report["tokens_per_second_per_rank"])
        peaks = ", ".join(f"{b / 2**20:,.0f}" for b in report["peak_memory_bytes_per_rank"])
        print(
            f"{arm:>24}: pass median {statistics.median(passes[arm]):>8,.0f} tokens/s (per rank {per_rank}),"
            f" wall median {statistics.median(walls[arm]):6.1f}s, merge {report['merge_seconds']:.2f}s,"
            f" tokens per rank {report['tokens_per_rank']}, peak MiB {peaks}"
        )
    one, many, every_core = arms
    for label, baseline in ((f"scaling of {args.nproc} ranks over 1, a core each", one),
                            (f"{args.nproc} ranks against 1 process on every core", every_core)):  # fmt: skip
        pass_ratios = [round(m / b, 2) for m, b in zip(passes[many], passes[baseline], strict=True)]
        wall_ratios = [round(b / m, 2) for m, b in zip(walls[many], walls[baseline], strict=True)]
        pass_speedup = statistics.median(passes[many]) / statistics.median(passes[baseline])
        wall_speedup = statistics.median(walls[baseline]) / statistics.median(walls[many])
        print(
            f"{label}: pass {pass_speedup:.2f}× (each run: {pass_ratios}),"
            f" end to end {wall_speedup:.2f}× (each run: {wall_ratios})"
        )


if __name__ == "__main__":
    main()
