"""Tokens per explanation prompt of every format on the same neurons: the fixed part (system message and few-shot
examples) and the per-neuron part, in two units, next to Lee et al.'s figures (docs/METHOD.md §5).

    .venv/bin/python -m bench.tokens [--db FILE] [--model NAME] [--n 50] [--tokenizer cl100k_base]

Neurons come from the database filled by `make data` / `python -m core collect`; each prompt shows the neuron's
train split (docs/METHOD.md §1) after the few-shot examples. Units:
- input: the prompt's tokens, which is what a format controls;
- input + completion: what Lee et al. counted (the API's `usage.total_tokens`). Without a model to call, the
  completion is the mean output tokens of the stored explanations of each format, else `--completion-tokens`.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys

import sqlite_utils

from core import config, db, prompts, tokens
from core.errors import NotFoundError, WorkbenchError
from core.records import NeuronId, NeuronRecord

# docs/METHOD.md §5: Lee et al.'s published Original ÷ format, tokens per neuron (prompt + completion), of
# gpt-3.5-turbo on 5 GPT-2 XL test neurons.
PAPER_RATIOS = {"original": 1.00, "summary": 2.47, "highlight": 2.69, "highlight_summary": 2.32, "avhs": 1.87}
# docs/METHOD.md §5: the fixed part (system + few-shot, input tokens, cl100k_base) of each format in Lee et al.'s
# code with its own few-shot examples; ours are reshaped to land within 5% of these.
PAPER_FIXED = {"original": 918, "summary": 484, "highlight": 451, "highlight_summary": 520, "avhs": 626}
# About the mean cl100k length of gpt-3.5-turbo's published one-sentence explanations (Lee et al.'s results).
DEFAULT_COMPLETION_TOKENS = 15
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
) -> dict[str, list[tokens.PromptCost]]:
    """Fixed and per-neuron input tokens of each format's prompt, per neuron, in the order of `neurons`."""
    costs: dict[str, list[tokens.PromptCost]] = {name: [] for name in prompts.FORMATS}
    for neuron in neurons:
        records = neuron.split("train")
        for name in prompts.FORMATS:
            messages = prompts.build_messages(name, records, few_shot=few_shot, cutoff=cutoff, stats=neuron.stats)
            costs[name].append(tokens.prompt_cost(messages, tokenizer))
    return costs


def completion_tokens(database: sqlite_utils.Database, model: str, default: int) -> dict[str, tuple[float, str]]:
    """Per format, the completion tokens to add for the paper's unit: the mean output tokens of the stored ok
    explanations of that format, else `default`; each with where it came from."""
    found: dict[str, list[int]] = {}
    for row in db.list_explanations(database, model):
        if row.get("output_tokens") is not None and row.get("source") != "imported":
            found.setdefault(row["format"], []).append(int(row["output_tokens"]))
    return {
        name: (statistics.mean(found[name]), f"mean of {len(found[name])} stored")
        if found.get(name)
        else (float(default), "assumed")
        for name in prompts.FORMATS
    }


def _signed_percent(value: float, reference: float) -> str:
    return f"{100 * (value / reference - 1):+.1f}%"


def input_table(costs: dict[str, list[tokens.PromptCost]]) -> str:
    """Input tokens: the fixed part next to the paper's, the per-neuron part, the total and Original ÷ format."""
    original = statistics.mean(c.total for c in costs["original"])
    lines = [
        f"{'format':<18} {'fixed':>6} {'paper':>6} {'Δ':>7} {'per neuron':>10} {'min':>6} {'max':>6} "
        f"{'total':>7} {'Original ÷ format':>17}"
    ]
    for name, values in costs.items():
        fixed = statistics.mean(c.fixed for c in values)
        per_neuron = [c.per_neuron for c in values]
        total = statistics.mean(c.total for c in values)
        paper = PAPER_FIXED.get(name)
        lines.append(
            f"{name:<18} {fixed:>6.0f} {paper if paper is not None else '-':>6} "
            f"{_signed_percent(fixed, paper) if paper else '-':>7} {statistics.mean(per_neuron):>10.1f} "
            f"{min(per_neuron):>6} {max(per_neuron):>6} {total:>7.1f} {original / total:>17.2f}"
        )
    return "\n".join(lines)


def total_table(costs: dict[str, list[tokens.PromptCost]], completion: dict[str, tuple[float, str]]) -> str:
    """Input + completion tokens (the paper's unit): fixed, per neuron (target + completion), total, ratios."""
    totals = {name: statistics.mean(c.total for c in values) + completion[name][0] for name, values in costs.items()}
    lines = [
        f"{'format':<18} {'fixed':>6} {'per neuron':>10} {'completion':>10} {'total':>7} {'Original ÷ format':>17} "
        f"{'paper':>6}"
    ]
    for name, values in costs.items():
        fixed = statistics.mean(c.fixed for c in values)
        extra, _ = completion[name]
        paper = PAPER_RATIOS.get(name)
        lines.append(
            f"{name:<18} {fixed:>6.0f} {totals[name] - fixed:>10.1f} {extra:>10.1f} {totals[name]:>7.1f} "
            f"{totals['original'] / totals[name]:>17.2f} {f'{paper:.2f}' if paper is not None else '-':>6}"
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
    parser.add_argument(
        "--completion-tokens",
        type=int,
        default=DEFAULT_COMPLETION_TOKENS,
        help="completion tokens per explanation for the paper's unit when none are stored (default: %(default)s)",
    )
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
        few_shot = prompts.load_few_shot(args.few_shot)
        costs = measure(neurons, args.tokenizer, cutoff, few_shot)
        completion = completion_tokens(database, model, args.completion_tokens)
    except WorkbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    shown = "none" if args.few_shot == "none" else (args.few_shot or "bundled")
    subject_tokens = sum(len(r.tokens) for example in few_shot for r in example.records)
    print(
        f"Tokens per explanation prompt: {len(neurons)} neurons of {model}, train split, tokenizer {args.tokenizer}, "
        f"cutoff {cutoff.mode} {cutoff.value}, few-shot {shown} ({len(few_shot)} neurons, "
        f"{sum(len(e.records) for e in few_shot)} records, {subject_tokens} subject tokens)"
    )
    print("\ninput tokens (fixed = system + few-shot; per neuron = the target's message and the reply priming)")
    print(input_table(costs))
    print("paper: the fixed part of Lee et al.'s code with its own few-shot examples (146 subject tokens), cl100k_base")
    stored = [name for name, (_, source) in completion.items() if source != "assumed"]
    assumed = [name for name in completion if name not in stored]
    sources = [f"the mean output tokens of stored explanations for {', '.join(stored)}"] if stored else []
    if assumed:
        which = "every format" if not stored else ", ".join(assumed)
        sources.append(f"{args.completion_tokens} assumed for {which}")
    print(
        "\ninput + completion, the paper's unit (usage.total_tokens); completion per explanation: " + "; ".join(sources)
    )
    print(total_table(costs, completion))
    print(
        "paper: Lee et al.'s published Original ÷ format, prompt + completion of gpt-3.5-turbo on 5 GPT-2 XL test "
        "neurons (docs/METHOD.md §5)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
