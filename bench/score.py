"""What scoring one explanation costs, per scorer, next to what explaining the neuron costs (the Summary prompt), and
how fast the embedding scorer runs on CPU (docs/METHOD.md §10).

    .venv/bin/python -m bench.score [--db FILE] [--model NAME] [--n 20] [--max-tokens 100000]

Neurons come from the database (`make data`); when it holds no layer collected with the scorers' excerpts, one layer
of the bundled model is collected into a temporary database first (`--max-tokens` of the default corpus). Tokens
are cl100k_base with OpenAI's chat accounting (core.tokens), counted offline:
- Summary explanation: the prompt of the neuron's train split with our few-shot examples, plus the completion;
- simulation: the chat fallback (`chat_logprobs`/`chat_parse`): one call per valid-split excerpt, the model writing
  every token back with its value; and the paper's all-at-once prompt (`completions_echo`), one per excerpt;
- detection and fuzzing: the scorer's calls for the neuron (5 excerpts each), answers as `[1, 0, …]`;
- embedding: no LLM tokens.
Then the embedding scorer's speed: neurons per second on CPU with the bundled MiniLM, one explanation each, after the
model is loaded (and the first, cold, neuron apart).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from core import config, costs, prompts, tokens
from core import db as dbmod
from core.activations import CollectOptions, collect
from core.db.neurons import layers_without_scoring_records
from core.llm import ApiOptions
from core.models import DEFAULT_MODEL_NAME, resolve_model_name
from core.records import NeuronId, NeuronRecord
from core.scorers import ScorerOptions, get_scorer
from core.scorers.base import MissingExcerpts
from core.simulate import SimulatorOptions

CL100K = tokens.CL100K
EXPLANATION = 'the word "time" and other words about time'  # a typical one-sentence explanation
EXPLANATION_COMPLETION = 15  # cl100k tokens of such a sentence, the explainer's answer
# The scorers are built only to count their prompts' tokens: a local URL that is never asked needs no key.
UNUSED = SimulatorOptions(api=ApiOptions(base_url="http://127.0.0.1:9/v1"))


def neurons_with_excerpts(database, model: str, n: int) -> list[NeuronRecord]:
    """Up to n neurons of the layers collected with the scorers' excerpts, spread over their indices."""
    missing = set(layers_without_scoring_records(database, model))
    found: list[NeuronRecord] = []
    for layer, count in dbmod.list_layers(database, model):
        if layer in missing:
            continue
        for index in range(0, count, max(1, count // n)):
            found.append(dbmod.get_neuron(database, model, NeuronId(layer, index)))
            if len(found) == n:
                return found
    return found


def per_neuron_tokens(record: NeuronRecord, options: ScorerOptions) -> dict[str, tuple[int, int]]:
    """(input, output) cl100k tokens of explaining and of each scorer, for one neuron and one explanation
    (core.costs: the same counts the Explain page's estimate shows)."""
    summary = prompts.build_messages("summary", record.split("train"), stats=record.stats)
    counts = {"Summary explanation": (tokens.count_chat_tokens(summary, CL100K), EXPLANATION_COMPLETION)}
    for label, scorer, method in (
        ("simulation (chat, valid split)", "simulation", "chat_logprobs"),
        ("simulation (all-at-once echo)", "simulation", "completions_echo"),
        ("detection", "detection", None),
        ("fuzzing", "fuzzing", None),
        ("embedding", "embedding", None),
    ):
        cost = costs.scoring_tokens(record, scorer, method=method, options=options, explanation=EXPLANATION)
        counts[label] = (cost.input, cost.output)
    return counts


def token_table(records: list[NeuronRecord], options: ScorerOptions) -> str:
    measured: dict[str, list[tuple[int, int]]] = {}
    skipped = 0
    for record in records:
        try:
            for name, cost in per_neuron_tokens(record, options).items():
                measured.setdefault(name, []).append(cost)
        except MissingExcerpts:
            skipped += 1
    summary_total = statistics.mean(i + o for i, o in measured["Summary explanation"])
    lines = [f"{'per neuron, one explanation':<32}{'input':>8}{'output':>8}{'total':>8}{'÷ Summary':>11}"]
    for name, counts in measured.items():
        tokens_in = statistics.mean(i for i, _ in counts)
        tokens_out = statistics.mean(o for _, o in counts)
        lines.append(
            f"{name:<32}{tokens_in:>8.0f}{tokens_out:>8.0f}{tokens_in + tokens_out:>8.0f}"
            f"{(tokens_in + tokens_out) / summary_total:>11.2f}"
        )
    scorer = get_scorer("detection", "openai:unused", options=options, simulator_options=UNUSED)
    calls = [tokens.prompt_cost(m, CL100K) for r in records for _, m in scorer.messages(EXPLANATION, r)]
    full = [c for c in calls if c.per_neuron == max(c.per_neuron for c in calls)] or calls
    per_call = statistics.mean(c.total for c in calls)
    lines.append("")
    lines.append(
        f"detection call ({options.excerpts_per_call} excerpts): {per_call:.0f} input tokens on average, of which "
        f"{calls[0].fixed} fixed ({100 * calls[0].fixed / per_call:.0f}%); delphi's: about 800, 76% fixed; "
        f"largest call {max(c.total for c in full)}"
    )
    if skipped:
        lines.append(f"({skipped} neurons had too few activating excerpts and are left out)")
    return "\n".join(lines)


def embedding_speed(records: list[NeuronRecord], options: ScorerOptions) -> str:
    scorer = get_scorer("embedding", options=options)
    started = time.perf_counter()
    scorer.embedder.embed(["warm up"])  # loads MiniLM
    load = time.perf_counter() - started
    times = []
    for record in records:
        started = time.perf_counter()
        scorer.score(EXPLANATION, record)
        times.append(time.perf_counter() - started)
    warm = times[1:] or times
    return (
        f"embedding scorer on {config.default_device()}: model load {load:.2f}s; first neuron {times[0]:.2f}s; then "
        f"{len(warm) / sum(warm):.1f} neurons/s (median {statistics.median(warm):.3f}s per neuron, "
        f"{len(records)} neurons, one explanation each)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default=None)
    parser.add_argument("--model", default=DEFAULT_MODEL_NAME)
    parser.add_argument("--n", type=int, default=20, help="neurons (%(default)s)")
    parser.add_argument("--max-tokens", type=int, default=100_000, help="for a fresh collection (%(default)s)")
    parser.add_argument("--activating-quantile", type=float, default=0.99)
    args = parser.parse_args(argv)
    model = resolve_model_name(args.model)
    options = ScorerOptions(activating_quantile=args.activating_quantile)
    path = config.db_path(args.db)
    database = dbmod.connect(path) if path.exists() else None
    records = neurons_with_excerpts(database, model, args.n) if database is not None else []
    with tempfile.TemporaryDirectory(prefix="bench_score_") as folder:
        if not records:
            print(f"no layer of {model} with the scorers' excerpts in {path}: collecting layer 3 of the bundled model, "
                  f"{args.max_tokens:,} tokens, into a temporary database")  # fmt: skip
            database = dbmod.connect(Path(folder) / "bench.db")
            model = DEFAULT_MODEL_NAME
            collect(database, "default", [3], "default", CollectOptions(max_tokens=args.max_tokens))
            records = neurons_with_excerpts(database, model, args.n)
        print(f"{model}, {len(records)} neurons; tokens are cl100k_base, counted offline")
        print(token_table(records, options))
        print()
        print(embedding_speed(records, options))
    return 0


if __name__ == "__main__":
    sys.exit(main())
