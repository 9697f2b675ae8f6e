"""The command line: `python -m core <command> --help`. Argument parsing only; the work is done in core modules.

Each command is a pair: `_add_<name>(commands)` declares its flags and `cmd_<name>(args)` calls core and prints.
Errors of ours are printed as one line on stderr with exit status 2; tracebacks go to the log only.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

from core import config
from core.errors import WorkbenchError

log = logging.getLogger("core")

COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


def command(add: Callable[[argparse._SubParsersAction], None]) -> Callable[[argparse._SubParsersAction], None]:
    """Register a `_add_<name>` function; the CLI lists commands in registration order."""
    COMMANDS.append(add)
    return add


def _db_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db", default=None, help=f"SQLite file (default: ${config.ENV_DB}, else evaluations.db at the repo root)"
    )


def _print_json(value: Any) -> None:
    json.dump(value, sys.stdout, ensure_ascii=False, indent=2, default=str)
    sys.stdout.write("\n")


def _subcommand(
    commands: argparse._SubParsersAction, name: str, func: Callable[[argparse.Namespace], int | None], help: str
) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=help, description=help)
    _db_flag(parser)
    parser.set_defaults(func=func)
    return parser


# --- collection and neurons --------------------------------------------------------------------------------------


def _layers(text: str | None) -> list[int] | None:
    if text in (None, "", "all"):
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"layers must be comma-separated integers or 'all', got {text!r}") from exc


@command
def _add_collect(commands: argparse._SubParsersAction) -> None:
    parser = _subcommand(
        commands, "collect", cmd_collect, "collect top-activating and random excerpts for every neuron of some layers"
    )
    parser.add_argument("--model", default=config.DEFAULT_MODEL, help="hub id, local path, or 'default' (MiniLM)")
    parser.add_argument("--layers", type=_layers, default=None, help="comma-separated, e.g. 0,3 (default: all)")
    parser.add_argument(
        "--corpus", default=config.DEFAULT_CORPUS, help="'default', a .txt/.jsonl file or folder, or hf:NAME"
    )
    parser.add_argument("--max-tokens", type=int, default=config.DEFAULT_MAX_TOKENS, help="token budget (%(default)s)")
    parser.add_argument("--excerpt-len", type=int, default=config.DEFAULT_EXCERPT_LEN, help="tokens per excerpt")
    parser.add_argument("--top-k", type=int, default=config.DEFAULT_TOP_K, help="top excerpts kept per neuron")
    parser.add_argument("--random-k", type=int, default=config.DEFAULT_RANDOM_K, help="random excerpts per neuron")
    parser.add_argument("--seed", type=int, default=config.DEFAULT_SEED)
    parser.add_argument("--batch-size", type=int, default=config.DEFAULT_BATCH_SIZE, help="excerpts per forward pass")
    parser.add_argument(
        "--quantile-sample",
        type=int,
        default=config.DEFAULT_QUANTILE_SAMPLE,
        help="excerpt maxima kept per neuron for quantiles: exact up to this many excerpts, sampled beyond",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda when available)")
    parser.add_argument("--dtype", default=None, help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def cmd_collect(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from core import db as dbmod
    from core.activations import CollectOptions, collect

    options = CollectOptions(
        max_tokens=args.max_tokens,
        excerpt_len=args.excerpt_len,
        top_k=args.top_k,
        random_k=args.random_k,
        seed=args.seed,
        batch_size=args.batch_size,
        quantile_sample=args.quantile_sample,
        device=args.device,
        dtype=args.dtype,
    )
    database = dbmod.connect(args.db)
    with tqdm(total=args.max_tokens, unit="tok", unit_scale=True, desc="collect", file=sys.stderr) as bar:

        def progress(done: int, _total: int | None) -> None:
            bar.update(done - bar.n)

        report = collect(database, args.model, args.layers, args.corpus, options, progress=progress)
    if args.json:
        _print_json(report.to_json())
    elif not report.layers:
        print(f"{report.model}: layers {_join(report.skipped_layers)} already collected with these settings")
    else:
        print(
            f"{report.model}: collected layers {_join(report.layers)} over {report.n_tokens:,} tokens "
            f"({report.n_excerpts:,} excerpts) in {report.seconds:.1f}s, {report.tokens_per_second:,.0f} tokens/s"
        )
    return 0


def _join(values: list[int]) -> str:
    return ",".join(map(str, values)) or "none"


@command
def _add_neuron(commands: argparse._SubParsersAction) -> None:
    parser = _subcommand(commands, "neuron", cmd_neuron, "show one neuron's stats and top and random records")
    parser.add_argument("--model", default=config.DEFAULT_MODEL)
    parser.add_argument("--layer", type=int, required=True)
    parser.add_argument("--neuron", type=int, required=True)
    parser.add_argument("--json", action="store_true", help="print {stats, top, random} as JSON")


def cmd_neuron(args: argparse.Namespace) -> int:
    from core import db as dbmod
    from core.models import resolve_model_name
    from core.records import NeuronId

    record = dbmod.get_neuron(dbmod.connect(args.db), resolve_model_name(args.model), NeuronId(args.layer, args.neuron))
    if args.json:
        data = record.to_json()
        _print_json({"stats": data["stats"], "top": data["top"], "random": data["random"]})
        return 0
    stats = record.stats
    print(f"{record.model} {record.neuron}: mean {stats.mean:.4f}  variance {stats.variance:.4f}  max {stats.max:.4f}")
    print("quantiles of per-excerpt max: " + "  ".join(f"{q}: {v:.4f}" for q, v in sorted(stats.quantiles.items())))
    for rank, rec in enumerate(record.top[:5]):
        text = "".join(rec.tokens).replace("\n", "⏎")
        print(f"  top {rank} (max {rec.max_activation:.3f}): {text[:150]}")
    return 0


@command
def _add_import_openai(commands: argparse._SubParsersAction) -> None:
    parser = _subcommand(
        commands,
        "import-openai",
        cmd_import_openai,
        "import OpenAI's public GPT-2 XL NeuronRecord JSON and explanation JSONL/CSV (files, folders or URLs)",
    )
    parser.add_argument("sources", nargs="*", help="NeuronRecord .json files or folders, or URLs")
    parser.add_argument(
        "--explanations", nargs="*", default=[], help="explanation .jsonl, or a layer,neuron,score,explanation .csv"
    )
    parser.add_argument("--neurons", default=None, help="layer:index list to fetch from OpenAI's bucket (online)")
    parser.add_argument("--model", default="gpt2-xl", help="model name to store them under (%(default)s)")


def cmd_import_openai(args: argparse.Namespace) -> int:
    from core import db as dbmod
    from core import openai_import
    from core.errors import InputError
    from core.records import parse_neurons

    sources, explanation_sources = list(args.sources), list(args.explanations)
    if args.neurons:
        for neuron in parse_neurons(args.neurons):
            sources.append(openai_import.RECORDS_URL.format(layer=neuron.layer, neuron=neuron.index))
            explanation_sources.append(openai_import.EXPLANATIONS_URL.format(layer=neuron.layer, neuron=neuron.index))
    if not sources and not explanation_sources:
        raise InputError("nothing to import: give NeuronRecord files, --explanations FILES, or --neurons L:N,…")
    database = dbmod.connect(args.db)
    if sources:
        neurons = openai_import.import_neuron_records(database, sources, args.model)
        print(f"imported {len(neurons)} neuron record(s) of {args.model}")
    if explanation_sources:
        count = openai_import.import_explanations(database, explanation_sources, args.model)
        print(f"imported {count} reference explanation(s) of {args.model}")
    return 0




# --- prompts and explanations ------------------------------------------------------------------------------------


def _read_prompt_json(path: str, what: str) -> Any:
    from pathlib import Path

    from core.errors import InputError

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"cannot read {what} file {path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{what} file {path} is not valid JSON: {exc}") from None


@command
def _add_prompt(commands: argparse._SubParsersAction) -> None:
    from core import prompts, tokens

    parser = _subcommand(
        commands, "prompt", cmd_prompt, "build the explanation prompt for some activation records and count its tokens"
    )
    parser.add_argument("--format", required=True, choices=list(prompts.FORMATS), help="prompt format")
    parser.add_argument(
        "--records", required=True, help='JSON file: {"records": [{"tokens": [...], "activations": [...]}, ...]}'
    )
    parser.add_argument(
        "--few-shot", default=None, help="few-shot JSON file, or `none` (default: the bundled examples)"
    )
    parser.add_argument(
        "--cutoff-mode",
        default=None,
        choices=prompts.CUTOFF_MODES,
        help=f"how highly activating tokens are chosen (default: {prompts.DEFAULT_CUTOFF.mode})",
    )
    parser.add_argument(
        "--cutoff", default=None, help="quantile level, fraction of the max, or raw value (default per mode)"
    )
    parser.add_argument(
        "--tokenizer",
        default=tokens.CL100K,
        help="cl100k_base or a Hugging Face tokenizer path/id (default: %(default)s)",
    )
    parser.add_argument(
        "--stats", default=None, help="neuron stats JSON with quantiles (needed by the quantile cutoff)"
    )


def cmd_prompt(args: argparse.Namespace) -> None:
    from core import prompts, tokens
    from core.records import records_from_json

    records = records_from_json(_read_prompt_json(args.records, "records"))
    few_shot = prompts.load_few_shot(args.few_shot)
    cutoff = prompts.Cutoff.parse(args.cutoff_mode, args.cutoff)
    stats = prompts.stats_from_json(_read_prompt_json(args.stats, "stats")) if args.stats else None
    messages = prompts.build_messages(args.format, records, few_shot=few_shot, cutoff=cutoff, stats=stats)
    threshold = prompts.resolve_threshold(args.format, records, cutoff, stats)
    _print_json(
        {
            "messages": messages,
            "input_tokens": tokens.count_chat_tokens(messages, args.tokenizer),
            "tokenizer": args.tokenizer,
            "cutoff": {**cutoff.to_json(), "threshold": threshold},
        }
    )


def _neurons_from_file(path: str) -> list:
    """Neurons from a CSV with columns layer,neuron (or Layer,Neuron)."""
    import csv

    from core.errors import InputError
    from core.records import NeuronId

    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read neuron file {path}: {exc}") from None
    neurons = []
    for number, row in enumerate(rows, start=2):
        fields = {str(k).strip().lower(): (v or "").strip() for k, v in row.items() if k is not None}
        if not {"layer", "neuron"} <= set(fields):
            raise InputError(f"{path}: expected columns layer,neuron (found: {', '.join(fields) or 'none'})")
        if not fields["layer"].isdigit() or not fields["neuron"].isdigit():
            raise InputError(f"{path}, line {number}: layer and neuron must be non-negative integers")
        neurons.append(NeuronId(int(fields["layer"]), int(fields["neuron"])))
    if not neurons:
        raise InputError(f"{path} lists no neurons; expected a CSV with columns layer,neuron")
    return neurons


@command
def _add_explain(commands: argparse._SubParsersAction) -> None:
    from core import llm, prompts

    parser = _subcommand(
        commands,
        "explain",
        cmd_explain,
        "explain neurons under prompt formats with an LLM and store the explanations (reruns resume)",
    )
    parser.add_argument("--model", default=config.DEFAULT_MODEL, help="subject model the neurons belong to")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--neurons", help="layer:index list, e.g. 3:17,3:42")
    which.add_argument("--neuron-file", help="CSV with columns layer,neuron")
    parser.add_argument(
        "--formats", default=",".join(prompts.FORMATS), help="comma-separated prompt formats (default: all)"
    )
    parser.add_argument(
        "--explainer",
        required=True,
        help=f"{' or '.join(f'{name}:MODEL' for name in llm.BACKENDS)}, e.g. openai:gpt-4o-mini or hf:./my-chat-model",
    )
    parser.add_argument("--samples", type=int, default=1, help="explanations per neuron and format (%(default)s)")
    defaults = llm.Sampling()
    parser.add_argument("--temperature", type=float, default=defaults.temperature, help="(%(default)s)")
    parser.add_argument("--top-p", type=float, default=defaults.top_p, help="(%(default)s)")
    parser.add_argument("--max-tokens", type=int, default=defaults.max_tokens, help="(%(default)s)")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed; sample k uses seed + k")
    parser.add_argument(
        "--cutoff-mode",
        default=None,
        choices=prompts.CUTOFF_MODES,
        help=f"how highly activating tokens are chosen (default: {prompts.DEFAULT_CUTOFF.mode})",
    )
    parser.add_argument("--cutoff", default=None, help="quantile level, fraction of the max, or raw value")
    parser.add_argument("--few-shot", default=None, help="few-shot JSON file, or `none` (default: bundled examples)")
    parser.add_argument("--no-cache", action="store_true", help="ask the LLM again even for cached requests")
    parser.add_argument(
        "--concurrency", type=int, default=None, help=f"parallel API requests (default {llm.DEFAULT_CONCURRENCY})"
    )
    parser.add_argument(
        "--timeout", type=float, default=None, help=f"seconds per API request ({llm.DEFAULT_TIMEOUT_S:g})"
    )
    parser.add_argument(
        "--max-attempts", type=int, default=None, help=f"attempts per API request ({llm.DEFAULT_MAX_ATTEMPTS})"
    )
    parser.add_argument("--device", default=None, help="hf explainers: cpu, cuda … (default: cuda when available)")


def cmd_explain(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from core import db as dbmod
    from core import explain, llm, prompts
    from core.models import resolve_model_name
    from core.records import parse_neurons

    neurons = parse_neurons(args.neurons) if args.neurons else _neurons_from_file(args.neuron_file)
    formats = [name.strip() for name in args.formats.split(",") if name.strip()]
    sampling = llm.Sampling(args.temperature, args.top_p, args.max_tokens, seed=args.seed)
    cutoff = prompts.Cutoff.parse(args.cutoff_mode, args.cutoff)
    options = {
        "concurrency": args.concurrency,
        "timeout_s": args.timeout,
        "max_attempts": args.max_attempts,
        "device": args.device,
    }
    database = dbmod.connect(args.db)
    with tqdm(total=0, unit="expl", desc="explain", file=sys.stderr) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        report = explain.explain_neurons(
            database,
            resolve_model_name(args.model),
            neurons,
            formats,
            args.explainer,
            sampling=sampling,
            samples=args.samples,
            cutoff=cutoff,
            few_shot=args.few_shot,
            use_cache=not args.no_cache,
            progress=progress,
            backend_options=options,
        )
    print(
        f"{report.ok} explained, {report.skipped} already done, {report.failed} failed (of {report.total})",
        file=sys.stderr,
    )
    for error in report.errors[:5]:
        print(f"  failed: {error}", file=sys.stderr)
    table = explain.cost_table(report.rows(database))
    print(table.to_string(float_format=lambda value: f"{value:.2f}") if len(table) else "no explanations to cost")
    if report.failed:
        print(f"{report.failed} job(s) failed; rerun the same command to retry them", file=sys.stderr)
        return 1
    return 0


@command
def _add_import_explanations(commands: argparse._SubParsersAction) -> None:
    parser = _subcommand(
        commands,
        "import-explanations",
        cmd_import_explanations,
        "import explanations from a CSV with columns Layer, Neuron, Original, Summary, Highlight, "
        "HighlightSummary, AVHS (the layout of Lee et al.'s results)",
    )
    parser.add_argument("file", help="the CSV file")
    parser.add_argument("--explainer", required=True, help="who wrote them, e.g. gpt-4 or gpt-3.5-turbo")
    parser.add_argument("--model", default="gpt2-xl", help="subject model of the neurons (%(default)s)")


def cmd_import_explanations(args: argparse.Namespace) -> int:
    from core import db as dbmod
    from core.explain import import_explanations_csv
    from core.models import resolve_model_name

    model = resolve_model_name(args.model)
    count = import_explanations_csv(dbmod.connect(args.db), args.file, args.explainer, model)
    print(f"imported {count} explanation(s) of {model} by {args.explainer} from {args.file}")
    return 0


# --- simulation and scoring --------------------------------------------------------------------------------------


# --- human evaluation --------------------------------------------------------------------------------------------


# --- entry point -------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m core",
        description=(
            "Neuron explanation workbench. Typical flow: `collect` activations, look at a `neuron`, `explain` it "
            "under several prompt formats, `score` the explanations, then run a blinded `study` with raters."
        ),
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details to stderr")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args) or 0
    except WorkbenchError as exc:
        log.debug("command failed", exc_info=True)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished work is saved; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
