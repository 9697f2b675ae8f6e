"""Input tokens per neuron of every prompt format, on the same neurons, next to the paper's ratios (SPEC.md §5).

    .venv/bin/python bench/tokens.py [--db FILE] [--model NAME] [--n 50] [--tokenizer cl100k_base]

Neurons come from the database filled by `make data` / `python -m core collect`; each prompt shows the neuron's
train split (SPEC.md §1) after the few-shot examples. The paper's ratios are of prompt + completion tokens of
gpt-3.5-turbo on 5 GPT-2 XL neurons; ours are input (prompt) tokens only, which is what a format controls.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import sqlite_utils

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core import config, db, prompts, tokens
from core.errors import NotFoundError, WorkbenchError
from core.records import NeuronId, NeuronRecord

# SPEC.md §5: Original ÷ format, tokens per neuron (prompt + completion), gpt-3.5-turbo, 5 GPT-2 XL test neurons.
PAPER_RATIOS = {"original": 1.00, "summary": 2.47, "highlight": 2.69, "highlight_summary": 2.32, "avhs": 1.87}
DEFAULT_BENCH_MODEL = "all-MiniLM-L6-v2"


def pick_model(database: sqlite_utils.Database, requested: str | None) -> str | None:
    """The requested model, else the default model if collected, else the first collected one."""
    if requested:
        return requested
    models = db.list_models(database)
    for preferred in (DEFAULT_BENCH_MODEL, config.DEFAULT_MODEL):
        if preferred in models:
            return preferred
    return models[0] if models else None


def pick_neurons(database: sqlite_utils.Database, model: str, n: int) -> list[NeuronRecord]:
    """Up to n neurons spread evenly over the collected layers and, within a layer, over its indices."""
    layers = db.list_layers(database, model)
    if not layers or n <= 0:
        return []
    per_layer = math.ceil(n / len(layers))
    picked: list[NeuronRecord] = []
    for layer, count in layers:
        step = max(1, count // per_layer)
        for index in range(0, count, step)[:per_layer]:
            try:
                neuron = db.get_neuron(database, model, NeuronId(layer, index))
            except NotFoundError:  # indices of a partially collected layer need not be contiguous
                continue
            if neuron.split("train"):
                picked.append(neuron)
    return picked[:n]


def measure(
    neurons: list[NeuronRecord],
    tokenizer: str,
    cutoff: prompts.Cutoff,
    few_shot: tuple[prompts.FewShotExample, ...],
) -> dict[str, list[int]]:
    """Input tokens of each format's prompt, per neuron, in the order of `neurons`."""
    counts: dict[str, list[int]] = {name: [] for name in prompts.FORMATS}
    for neuron in neurons:
        records = neuron.split("train")
        for name in prompts.FORMATS:
            messages = prompts.build_messages(name, records, few_shot=few_shot, cutoff=cutoff, stats=neuron.stats)
            counts[name].append(tokens.count_chat_tokens(messages, tokenizer))
    return counts


def table(counts: dict[str, list[int]]) -> str:
    """Mean, min and max tokens per format, the Original ÷ format ratio and the paper's ratio."""
    original = statistics.mean(counts["original"])
    lines = [
        f"{'format':<18} {'tokens/neuron':>13} {'min':>6} {'max':>6} {'Original ÷ format':>17} {'paper':>6}",
    ]
    for name, values in counts.items():
        mean = statistics.mean(values)
        paper = PAPER_RATIOS.get(name)
        lines.append(
            f"{name:<18} {mean:>13.1f} {min(values):>6} {max(values):>6} {original / mean:>17.2f} "
            f"{f'{paper:.2f}' if paper is not None else '-':>6}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default=None, help="SQLite file (default: $EVAL_DB, else evaluations.db)")
    parser.add_argument("--model", default=None, help=f"model name in the DB (default: {DEFAULT_BENCH_MODEL})")
    parser.add_argument("--n", type=int, default=50, help="number of neurons (default: %(default)s)")
    parser.add_argument(
        "--tokenizer", default=tokens.CL100K, help="cl100k_base or a HF tokenizer (default: %(default)s)"
    )
    parser.add_argument("--cutoff-mode", default=None, choices=prompts.CUTOFF_MODES)
    parser.add_argument("--cutoff", default=None, help="cutoff value (default per mode)")
    parser.add_argument("--few-shot", default=None, help="few-shot JSON file or `none` (default: bundled)")
    args = parser.parse_args(argv)
    try:
        path = config.db_path(args.db)
        # Opening a missing file would create an empty database; there is nothing to measure in it anyway.
        database = db.connect(path) if path.exists() else None
        model = pick_model(database, args.model) if database else None
        neurons = pick_neurons(database, model, args.n) if model else []
        if not neurons:
            print(
                f"no neurons{f' of {model!r}' if model else ''} in {path}: run `make data` "
                "(or `python -m core collect`) first",
                file=sys.stderr,
            )
            return 1
        cutoff = prompts.Cutoff.parse(args.cutoff_mode, args.cutoff)
        counts = measure(neurons, args.tokenizer, cutoff, prompts.load_few_shot(args.few_shot))
    except WorkbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    few_shot = "none" if args.few_shot == "none" else (args.few_shot or "bundled")
    print(
        f"Input tokens per explanation prompt: {len(neurons)} neurons of {model}, train split, "
        f"tokenizer {args.tokenizer}, cutoff {cutoff.mode} {cutoff.value}, few-shot {few_shot}"
    )
    print(table(counts))
    print(
        "paper: Lee et al. 2023 (SPEC.md §5), prompt + completion tokens of gpt-3.5-turbo on 5 GPT-2 XL neurons; "
        "ours: input tokens only"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
