"""The command line: `python -m core <command> --help`. Argument parsing only; the work is done in core modules.

Each command is a pair: `_add_<name>(commands)` declares its flags and `cmd_<name>(args)` calls core and prints.
Errors of ours are printed as one line on stderr with exit status 2; tracebacks go to the log only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sqlite3
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from core import config
from core.errors import InputError, NotFoundError, WorkbenchError

if TYPE_CHECKING:  # the commands import what they run, when they run it
    import pandas as pd

    from core.activations import CollectOptions
    from core.explain import ExplainOptions
    from core.llm import ApiOptions, LocalModelOptions
    from core.pipeline import RunReport
    from core.puzzles import PuzzleReport
    from core.scorers import ScorerOptions
    from core.simulate import SimulatorOptions

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
    """`value` (dataclasses, numpy scalars and all: core.values.to_jsonable) as indented JSON on stdout."""
    from core.values import to_jsonable

    json.dump(to_jsonable(value), sys.stdout, ensure_ascii=False, indent=2, default=str)
    sys.stdout.write("\n")


def _read_json(path: str, what: str) -> Any:
    from pathlib import Path

    from core.errors import InputError

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"cannot read {what} file {path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{what} file {path} is not valid JSON: {exc}") from None


def _subcommand(
    commands: argparse._SubParsersAction, name: str, func: Callable[[argparse.Namespace], int | None], help: str
) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=help, description=help)
    _db_flag(parser)
    parser.set_defaults(func=func)
    return parser


def _split_list(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def _neurons_from_file(path: str) -> list:
    """Neurons from a CSV with columns layer,neuron (or Layer,Neuron)."""
    from pathlib import Path

    from core.errors import InputError
    from core.records import neurons_from_csv

    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read neuron file {path}: {exc}") from None
    return neurons_from_csv(text, path)


def _neuron_flags(parser: argparse.ArgumentParser, required: bool) -> None:
    which = parser.add_mutually_exclusive_group(required=required)
    which.add_argument("--neurons", help="layer:index list, e.g. 3:17,3:42")
    which.add_argument("--neuron-file", help="CSV with columns layer,neuron")


def _neurons(args: argparse.Namespace) -> list | None:
    from core.records import parse_neurons

    if args.neurons:
        return parse_neurons(args.neurons)
    if args.neuron_file:
        return _neurons_from_file(args.neuron_file)
    return None


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
    _subject_device_flag(parser, "the subject model")
    parser.add_argument("--dtype", default=None, help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16")
    parser.add_argument(
        "--device-map",
        default=None,
        help="spread the model over several GPUs: auto, balanced, sequential, or a JSON object module → device"
        " (needs accelerate; not with torchrun)",
    )
    parser.add_argument(
        "--replace", action="store_true", help="overwrite layers that hold neurons collected with other settings"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def _collect_options(args: argparse.Namespace) -> CollectOptions:
    """The CollectOptions of `collect`'s flags; `run` collects a missing layer with its --collect-tokens and --device
    (its --max-tokens and --seed are the explainer's), the rest as collect's defaults."""
    from core.activations import CollectOptions

    if args.command == "run":
        return CollectOptions(max_tokens=args.collect_tokens, device=args.device)
    return CollectOptions(
        max_tokens=args.max_tokens,
        excerpt_len=args.excerpt_len,
        top_k=args.top_k,
        random_k=args.random_k,
        seed=args.seed,
        batch_size=args.batch_size,
        quantile_sample=args.quantile_sample,
        device=args.device,
        dtype=args.dtype,
        device_map=args.device_map,
    )


def cmd_collect(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from core import db as dbmod
    from core.activations import collect
    from core.distributed import World

    options = _collect_options(args)
    world = World.from_env()  # under torchrun, rank 0 alone opens the database and reports
    database = dbmod.connect(args.db) if world.is_main else None
    bars: list[tqdm] = []  # made on the first batch, so that it does not sit at 0% while the model loads

    def progress(done: int, total: int | None) -> None:
        if not bars:
            bars.append(tqdm(total=total, unit="tok", unit_scale=True, desc="collect", file=sys.stderr))
        bars[0].update(done - bars[0].n)

    def terminate(_signum: int, _frame: Any) -> None:
        # SIGTERM (a service stop, `kill`) ends the run the way Ctrl-C does: transactions roll back and the spill
        # folder is removed on the way out.
        raise KeyboardInterrupt

    in_main_thread = threading.current_thread() is threading.main_thread()  # only there can a handler be set
    previous = signal.signal(signal.SIGTERM, terminate) if in_main_thread else None
    try:
        report = collect(
            database,
            args.model,
            args.layers,
            args.corpus,
            options,
            progress=progress if world.is_main else None,
            replace=args.replace,
        )
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
        for bar in bars:
            bar.close()
    if not world.is_main:
        return 0
    if args.json:
        _print_json(report.to_json())
    elif not report.layers:
        print(f"{report.model}: layers {_join(report.skipped_layers)} already collected with these settings")
    else:
        print(
            f"{report.model}: collected layers {_join(report.layers)} over {report.n_tokens:,} tokens "
            f"({report.n_excerpts:,} excerpts) in {report.seconds:.1f}s, {report.tokens_per_second:,.0f} tokens/s"
            + (f" on {report.world_size} processes" if report.world_size > 1 else "")
        )
    return 0


def _join(values: list[int]) -> str:
    return ",".join(map(str, values)) or "none"


@command
def _add_neuron(commands: argparse._SubParsersAction) -> None:
    parser = _subcommand(commands, "neuron", cmd_neuron, "show one neuron's stats and top and random records")
    parser.add_argument("--model", default=config.DEFAULT_MODEL)
    parser.add_argument("--layer", type=int, default=None, help="the layer (or write --neuron LAYER:INDEX)")
    parser.add_argument("--neuron", required=True, help="LAYER:INDEX, e.g. 3:17, or INDEX with --layer")
    parser.add_argument("--width", type=int, default=150, help="wrap excerpts at this many characters (%(default)s)")
    parser.add_argument("--json", action="store_true", help="print {stats, top, random} as JSON")


def _neuron_id(layer: int | None, neuron: str) -> Any:
    """The neuron of `--neuron 3:17`, or of `--layer 3 --neuron 17`."""
    from core.records import NeuronId

    text = neuron.strip()
    if ":" in text:
        found = NeuronId.parse(text)
        if layer is not None and layer != found.layer:
            raise InputError(f"--layer {layer} and --neuron {text} name different layers; give one of them")
        return found
    if layer is None:
        raise InputError(f"--neuron {text!r} needs its layer: write --neuron LAYER:INDEX (e.g. 3:{text}) or --layer")
    try:
        return NeuronId(layer, int(text))
    except ValueError:
        raise InputError(f"--neuron {text!r} is not LAYER:INDEX or a whole number") from None


def cmd_neuron(args: argparse.Namespace) -> int:
    from core import db as dbmod
    from core.models import resolve_model_name
    from core.render import excerpt_lines

    neuron = _neuron_id(args.layer, args.neuron)
    record = dbmod.get_neuron(dbmod.connect(args.db, create=False), resolve_model_name(args.model), neuron)
    if args.json:
        data = record.to_json()
        _print_json({"stats": data["stats"], "top": data["top"], "random": data["random"]})
        return 0
    stats = record.stats
    print(f"{record.model} {record.neuron}: mean {stats.mean:.4f}  variance {stats.variance:.4f}  max {stats.max:.4f}")
    print("quantiles of per-excerpt max: " + "  ".join(f"{q}: {v:.4f}" for q, v in sorted(stats.quantiles.items())))
    print("top excerpts, the peak token of each marked ⟦so⟧:")
    for rank, rec in enumerate(record.top[:5]):
        print(f"  top {rank} (max {rec.max_activation:.3f}):")
        print("\n".join(excerpt_lines(rec, args.width)))
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
    parser.add_argument(
        "--model", default="gpt2-xl", help="model name to store them under, or 'default' (MiniLM) (%(default)s)"
    )


def cmd_import_openai(args: argparse.Namespace) -> int:
    from core import db as dbmod
    from core import openai_import
    from core.errors import InputError
    from core.models import resolve_model_name
    from core.records import parse_neurons

    sources, explanation_sources = list(args.sources), list(args.explanations)
    if args.neurons:
        for neuron in parse_neurons(args.neurons):
            sources.append(openai_import.RECORDS_URL.format(layer=neuron.layer, neuron=neuron.index))
            explanation_sources.append(openai_import.EXPLANATIONS_URL.format(layer=neuron.layer, neuron=neuron.index))
    if not sources and not explanation_sources:
        raise InputError("nothing to import: give NeuronRecord files, --explanations FILES, or --neurons L:N,…")
    model = resolve_model_name(args.model)
    database = dbmod.connect(args.db)
    if sources:
        before = sum(count for _, count in dbmod.list_layers(database, model))
        neurons = openai_import.import_neuron_records(database, sources, model)
        added = sum(count for _, count in dbmod.list_layers(database, model)) - before
        if added == 0:
            print(f"nothing new: all {len(neurons)} neuron record(s) of {model} were already stored (refreshed)")
        else:
            already = f"; {len(neurons) - added} already stored" if len(neurons) > added else ""
            print(f"imported {added} new neuron record(s) of {model}{already}")
    if explanation_sources:
        report = openai_import.import_explanations(database, explanation_sources, model)
        if report.written == 0:
            print(f"nothing new: all {report.unchanged} reference explanations of {model} are already stored")
        else:
            already = f"; {report.unchanged} already stored" if report.unchanged else ""
            print(f"imported {report.written} reference explanation(s) of {model}{already}")
    return 0


# --- prompts and explanations ------------------------------------------------------------------------------------


@command
def _add_prompt(commands: argparse._SubParsersAction) -> None:
    from core import prompts, tokens

    parser = _subcommand(
        commands, "prompt", cmd_prompt, "build the explanation prompt for some activation records and count its tokens"
    )
    parser.add_argument("--format", required=True, choices=list(prompts.FORMATS), help="prompt format")
    _records_flags(parser, "the neuron's train records and stats, exactly as `explain` shows them")
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
        "--stats", default=None, help="neuron stats JSON with quantiles (default with --neuron: the stored stats)"
    )
    _format_variant_flags(parser)


def _records_flags(parser: argparse.ArgumentParser, neuron_help: str) -> None:
    """--records FILE, or --neuron L:N (with --model) to read a stored neuron's records instead."""
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--records", help='JSON file: {"records": [{"tokens": [...], "activations": [...]}, ...]}, or a list'
    )
    which.add_argument("--neuron", help=f"layer:index of a stored neuron: {neuron_help}")
    parser.add_argument("--model", default=config.DEFAULT_MODEL, help="subject model of --neuron (default: MiniLM)")


def _records(args: argparse.Namespace, split: str) -> tuple[list, Any]:
    """(records, stats or None) from --records, or the `split` records and stats of the stored --neuron."""
    from core import db as dbmod
    from core.models import resolve_model_name
    from core.records import NeuronId, records_from_json

    if args.records:
        return records_from_json(_read_json(args.records, "records")), None
    database = dbmod.connect(args.db, create=False)
    record = dbmod.get_neuron(database, resolve_model_name(args.model), NeuronId.parse(args.neuron))
    return record.split(split), record.stats


def cmd_prompt(args: argparse.Namespace) -> None:
    from core import prompts, tokens
    from core.explain import PROMPT_SPLIT

    records, stored_stats = _records(args, PROMPT_SPLIT)
    few_shot = prompts.load_few_shot(args.few_shot)
    cutoff = prompts.Cutoff.parse(args.cutoff_mode, args.cutoff)
    stats = prompts.stats_from_json(_read_json(args.stats, "stats")) if args.stats else stored_stats
    messages = prompts.build_messages(
        args.format, records, few_shot=few_shot, cutoff=cutoff, stats=stats, options=_format_options(args)
    )
    threshold = prompts.resolve_threshold(args.format, records, cutoff, stats)
    _print_json(
        {
            "messages": messages,
            tokens.input_tokens_column(args.tokenizer): tokens.count_chat_tokens(messages, args.tokenizer),
            "tokenizer": args.tokenizer,
            "cutoff": {**cutoff.to_json(), "threshold": threshold},
        }
    )


def _explainer_flags(parser: argparse.ArgumentParser) -> None:
    """Formats, explainer, sampling, cutoff and API flags, shared by `explain` and `run`."""
    from core import llm, prompts

    parser.add_argument(
        "--formats", default=",".join(prompts.FORMATS), help="comma-separated prompt formats (default: all)"
    )
    parser.add_argument(
        "--explainer",
        required=True,
        help=f"{' or '.join(b.spec for b in llm.BACKENDS.values())}, e.g. openai:gpt-4o-mini or hf:./my-chat-model",
    )
    parser.add_argument("--samples", type=int, default=1, help="explanations per neuron and format (%(default)s)")
    defaults = llm.Sampling()
    parser.add_argument(
        "--temperature", type=float, default=defaults.temperature, help="0 = greedy (default %(default)s)"
    )
    parser.add_argument("--top-p", type=float, default=defaults.top_p, help="nucleus sampling (default %(default)s)")
    parser.add_argument(
        "--max-tokens", type=int, default=defaults.max_tokens, help="explanation length limit (default %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=None, help="sampling seed; sample k uses seed + k")
    parser.add_argument(
        "--cutoff-mode",
        default=None,
        choices=prompts.CUTOFF_MODES,
        help=f"how highly activating tokens are chosen (default: {prompts.DEFAULT_CUTOFF.mode})",
    )
    parser.add_argument("--cutoff", default=None, help="quantile level, fraction of the max, or raw value")
    parser.add_argument("--few-shot", default=None, help="few-shot JSON file, or `none` (default: bundled examples)")
    _format_variant_flags(parser)
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="ask the LLM again for jobs still to do, even when its answer is cached (stored explanations are kept)",
    )
    parser.add_argument(
        "--concurrency", type=int, default=None, help=f"parallel API requests (default {llm.DEFAULT_CONCURRENCY})"
    )
    parser.add_argument(
        "--timeout", type=float, default=None, help=f"seconds per API request ({llm.DEFAULT_TIMEOUT_S:g})"
    )
    parser.add_argument(
        "--max-attempts", type=int, default=None, help=f"attempts per API request ({llm.DEFAULT_MAX_ATTEMPTS})"
    )
    _explainer_device_flag(parser)


def _explainer_device_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--explainer-device", default=None, help="hf: explainers: cpu, cuda … (default: cuda when available)"
    )


def _subject_device_flag(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--device", default=None, help=f"{help}: cpu, cuda, cuda:1 … (default: cuda when available)")


def _format_variant_flags(parser: argparse.ArgumentParser) -> None:
    """The project's rendering variants of the natural formats; the defaults are the paper's (docs/METHOD.md §8)."""
    parser.add_argument(
        "--distinct-lists", action="store_true", help="summary/highlight_summary/avhs lists: each token once"
    )
    parser.add_argument(
        "--merge-spans", action="store_true", help="highlight: one pair of brackets per run of marked tokens"
    )


def _format_options(args: argparse.Namespace) -> Any:
    from core import prompts

    return prompts.FormatOptions(distinct_lists=args.distinct_lists, merge_spans=args.merge_spans)


def _api_options(args: argparse.Namespace) -> ApiOptions:
    """The explainer's ApiOptions from --concurrency, --timeout and --max-attempts (None: the defaults)."""
    from core.llm import ApiOptions

    defaults = ApiOptions()
    return ApiOptions(
        timeout_s=args.timeout if args.timeout is not None else defaults.timeout_s,
        concurrency=args.concurrency if args.concurrency is not None else defaults.concurrency,
        max_attempts=args.max_attempts if args.max_attempts is not None else defaults.max_attempts,
    )


def _local_model_options(args: argparse.Namespace, role: str) -> LocalModelOptions:
    """The LocalModelOptions of the explainer (--explainer-device) or of the simulator (--simulator-device,
    --simulator-dtype, --sim-batch-size): one model, one set of flags."""
    from core.llm import LocalModelOptions

    if role == "explainer":
        return LocalModelOptions(device=args.explainer_device)
    return LocalModelOptions(device=args.simulator_device, dtype=args.simulator_dtype, batch_size=args.sim_batch_size)


def _explain_options(args: argparse.Namespace) -> ExplainOptions:
    """The ExplainOptions of `_explainer_flags` (explain, run); `puzzles` sets only --samples, --no-cache and
    --explainer-device, the rest as defaults."""
    from core import llm, prompts
    from core.explain import ExplainOptions

    local = _local_model_options(args, "explainer")
    if args.command == "puzzles":
        return ExplainOptions(samples=args.samples, use_cache=not args.no_cache, local=local)
    return ExplainOptions(
        sampling=llm.Sampling(args.temperature, args.top_p, args.max_tokens, seed=args.seed),
        samples=args.samples,
        cutoff=prompts.Cutoff.parse(args.cutoff_mode, args.cutoff),
        few_shot=args.few_shot,
        format_options=_format_options(args),
        use_cache=not args.no_cache,
        api=_api_options(args),
        local=local,
    )


@command
def _add_explain(commands: argparse._SubParsersAction) -> None:
    parser = _subcommand(
        commands,
        "explain",
        cmd_explain,
        "explain neurons under prompt formats with an LLM and store the explanations (reruns resume)",
    )
    parser.add_argument("--model", default=config.DEFAULT_MODEL, help="subject model the neurons belong to")
    _neuron_flags(parser, required=True)
    _explainer_flags(parser)


def cmd_explain(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from core import db as dbmod
    from core import explain
    from core.models import resolve_model_name

    database = dbmod.connect(args.db, create=False)
    bars: list[tqdm] = []  # opened at the first progress call, so an early error prints no empty bar

    def progress(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, unit="expl", desc="explain", file=sys.stderr))
        bars[0].update(done - bars[0].n)

    try:
        report = explain.explain_neurons(
            database,
            resolve_model_name(args.model),
            _neurons(args),
            _split_list(args.formats),
            args.explainer,
            _explain_options(args),
            progress=progress,
        )
    finally:
        for bar in bars:
            bar.close()
    print(
        f"{report.ok} explained, {report.skipped} already done, {report.failed} failed (of {report.total})",
        file=sys.stderr,
    )
    for error in report.errors[:5]:
        print(f"  failed: {error}", file=sys.stderr)
    table = explain.cost_table(explain.with_cl100k_counts(report.rows(database)))
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
    report = import_explanations_csv(dbmod.connect(args.db), args.file, args.explainer, model)
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if report.total == 0:
        print(f"nothing imported: every format cell of {args.file} is empty")
    elif report.written == 0:
        print(f"nothing new: all {report.unchanged} explanations of {args.file} are already stored")
    else:
        already = f"; {report.unchanged} already stored" if report.unchanged else ""
        print(f"imported {report.written} explanation(s) of {model} by {args.explainer} from {args.file}{already}")
    return 0


@command
def _add_explanations(commands: argparse._SubParsersAction) -> None:
    parser = _subcommand(
        commands,
        "explanations",
        cmd_explanations,
        "list stored explanations: id, neuron, format, explainer, source, text, tokens and every score; "
        "`explanations show ID` for one",
    )
    parser.add_argument("--model", default=None, help="subject model, or 'default' (MiniLM) (default: all models)")
    _neuron_flags(parser, required=False)
    parser.add_argument("--formats", default=None, help="comma-separated formats (default: all)")
    parser.add_argument("--explainers", default=None, help="comma-separated explainers, exactly as stored")
    parser.add_argument("--limit", type=int, default=None, help="at most this many explanations")
    parser.add_argument("--width", type=int, default=100, help="wrap explanation texts at this many characters")
    parser.add_argument("--json", action="store_true", help="print the explanations as JSON")
    shows = parser.add_subparsers(dest="explanations_command", metavar="show")
    show = _subcommand(
        shows, "show", cmd_explanations_show, "print one explanation, its prompt's token counts and its scores (JSON)"
    )
    show.add_argument("id", type=int, help="the explanation's id (the first column of `explanations`)")


def cmd_explanations(args: argparse.Namespace) -> int:
    from core import catalog
    from core import db as dbmod
    from core.models import resolve_model_name

    entries = catalog.list_entries(
        dbmod.connect(args.db, create=False),
        resolve_model_name(args.model) if args.model else None,
        _neurons(args),
        _split_list(args.formats) or None,
        _split_list(args.explainers) or None,
        args.limit,
    )
    if args.json:
        _print_json([entry.to_json() for entry in entries])
        return 0
    if not entries:
        print("no explanations match; `python -m core explanations` without filters lists them all")
        return 0
    for entry in entries:
        print("\n".join(catalog.entry_lines(entry, max(20, args.width))))
    sets = sorted({(entry.format, entry.explainer, entry.source) for entry in entries})
    print(f"{len(entries)} explanation(s) in {len(sets)} set(s); a study arm names one as FORMAT@EXPLAINER#SOURCE")
    return 0


def cmd_explanations_show(args: argparse.Namespace) -> int:
    from core import catalog
    from core import db as dbmod

    _print_json(catalog.show_entry(dbmod.connect(args.db, create=False), args.id))
    return 0


@command
def _add_import_scores(commands: argparse._SubParsersAction) -> None:
    parser = _subcommand(
        commands,
        "import-scores",
        cmd_import_scores,
        "import published per-neuron scores (the layout of Lee et al.'s test_neurons_results_score.csv) for stored "
        "explanations, kept apart as method 'imported'",
    )
    parser.add_argument("file", help="the CSV file: layer, neuron and format columns holding scores")
    parser.add_argument("--explainer", required=True, help="who wrote the explanations they score, e.g. gpt-3.5-turbo")
    parser.add_argument("--simulator", required=True, help="who simulated them, e.g. gpt-3.5-turbo-instruct")
    parser.add_argument("--model", default="gpt2-xl", help="subject model of the neurons (%(default)s)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def cmd_import_scores(args: argparse.Namespace) -> int:
    from core import db as dbmod
    from core.models import resolve_model_name
    from core.score_import import import_scores_csv

    model = resolve_model_name(args.model)
    report = import_scores_csv(dbmod.connect(args.db), args.file, args.explainer, args.simulator, model)
    if args.json:
        _print_json(report.to_json())
        return 0
    print(
        f"imported {report.written} published score(s) of {model} explanations by {report.explainer} from "
        f"{args.file}, as simulator {report.simulator}, method imported (not computed here)"
    )
    means = "  ".join(f"{name} {mean:.3f} (n={n})" for name, (mean, n) in report.means.items())
    print(f"mean published score per format, recomputed from the file: {means}")
    if report.unmatched:
        shown = ", ".join(report.unmatched[:5]) + (" …" if len(report.unmatched) > 5 else "")
        print(
            f"warning: {len(report.unmatched)} score(s) have no stored explanation and were skipped ({shown}); "
            "import those explanations first",
            file=sys.stderr,
        )
    if report.ambiguous:
        print(
            f"warning: {len(report.ambiguous)} score(s) matched several stored explanations; each went to the newest "
            "imported one",
            file=sys.stderr,
        )
    return 0


# --- simulation and scoring --------------------------------------------------------------------------------------


def _simulator_flags(parser: argparse.ArgumentParser, required: bool = True) -> None:
    from core.simulate import SIMULATORS

    parser.add_argument(
        "--simulator", required=required, default=None, help="hf:PATH (local model) or openai:MODEL (API server)"
    )
    parser.add_argument(
        "--method",
        default=None,
        choices=list(SIMULATORS),
        help="simulation method (default: all_at_once for hf:, chat_logprobs for openai:; "
        "completions_echo for vLLM-style servers)",
    )
    parser.add_argument(
        "--simulator-device",
        default=None,
        help="hf: simulators and hf: detection/fuzzing LLMs: cpu, cuda … (default: cuda when available)",
    )
    parser.add_argument(
        "--simulator-dtype", default=None, help="hf: simulator: auto, float32, bfloat16, float16 (default: auto)"
    )
    parser.add_argument(
        "--sim-batch-size", type=int, default=None, help="hf: simulator: excerpts per forward pass (16; LLMs 8)"
    )
    parser.add_argument("--no-prefix-cache", action="store_true", help="local simulator: recompute the shared prefix")
    parser.add_argument("--top-logprobs", type=int, default=None, help="API simulators: top logprobs to request")
    parser.add_argument(
        "--simulation-few-shot", default=None, help="simulation few-shot JSON, or `none` (default: bundled)"
    )


def _simulator_options(args: argparse.Namespace) -> SimulatorOptions:
    """The SimulatorOptions of `_simulator_flags`: the model named by --simulator reads its own part (local for
    hf:, the server's defaults and --top-logprobs for openai:)."""
    from core.simulate import SimulatorOptions

    return SimulatorOptions(
        local=_local_model_options(args, "simulator"),
        few_shot=args.simulation_few_shot,
        reuse_prefix=not args.no_prefix_cache,
        top_logprobs=args.top_logprobs,
    )


@command
def _add_simulate(commands: argparse._SubParsersAction) -> None:
    from core.records import SPLITS

    parser = _subcommand(
        commands, "simulate", cmd_simulate, "predict activations from an explanation and score them against records"
    )
    parser.add_argument("--explanation", required=True, help="the explanation text to simulate")
    _records_flags(parser, "its --split records")
    parser.add_argument("--split", default="valid", choices=list(SPLITS), help="records of --neuron (%(default)s)")
    _simulator_flags(parser)
    parser.add_argument("--json", action="store_true", help="print predictions and scores as JSON")


def cmd_simulate(args: argparse.Namespace) -> int:
    from core import pipeline
    from core.values import to_jsonable

    records, _ = _records(args, args.split)
    outcome = pipeline.simulate_text(args.explanation, records, args.simulator, args.method, _simulator_options(args))
    if args.json:
        # R² and absdev compare the simulator's 0–10 predictions with activations as they are: uncalibrated.
        _print_json({**to_jsonable(outcome), "calibrated": False})
    elif outcome.ok and outcome.scores is not None and outcome.predictions is not None:
        scores, result = outcome.scores, outcome.result
        print(
            f"score {_number(scores.score)}  R² {_number(scores.rsquared)} (uncalibrated)  absdev "
            f"{_number(scores.absdev)} (uncalibrated)  ({result.simulator}, {result.method}, {result.seconds:.2f}s)"
        )
        print(
            "  uncalibrated: R² and absdev compare 0–10 predictions with raw activations; the score (a correlation)"
            " does not depend on scale. `score --calibrate` fits a·prediction + b on the calibration split first."
        )
        for record, predicted in zip(records, outcome.predictions, strict=True):
            print("  " + " ".join(f"{t!r}:{p:.1f}" for t, p in zip(record.tokens, predicted, strict=True)))
    if not outcome.ok:
        print(f"simulation failed: {outcome.error}", file=sys.stderr)
        return 1
    return 0


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


# --- terminal tables -----------------------------------------------------------------------------------------------


def format_table(frame: pd.DataFrame | None, digits: int = 3) -> str:
    """A frame as aligned plain text for the terminal, numbers rounded, missing values as `-`."""
    import pandas as pd

    if frame is None or frame.empty:
        return "(no rows)"
    shown = frame.copy()
    for column in shown.columns:
        if pd.api.types.is_float_dtype(shown[column]) or shown[column].dtype == object:
            shown[column] = [_cell(value, digits) for value in shown[column]]
    return shown.to_string(index=False)


def _cell(value: Any, digits: int) -> str:
    import pandas as pd

    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def format_run_report(report: RunReport) -> str:
    """The end of `run`: per-format table, then paired differences, naming the simulator and method."""
    lines = [
        f"model {report.model}; scores by {report.simulator} ({report.method}); 95% bootstrap CIs over neurons",
        "",
        format_table(report.summary),
    ]
    if not report.differences.empty:
        lines += ["", "paired difference from the baseline format, same neurons:", format_table(report.differences)]
    if report.failed:
        lines += ["", f"{report.failed} step(s) failed; rerun the same command to retry them. First errors:"]
        lines += [f"  {e}" for e in [*report.explain.errors, *report.score.errors][:5]]
    return "\n".join(lines)


def format_puzzle_report(report: PuzzleReport) -> str:
    """The `puzzles` command's text: the explainer table, then the simulator's sanity rate and its losses."""
    lines = []
    if not report.explainers.empty:
        lines += ["similarity of explanations to the puzzles' true explanations:", format_table(report.explainers)]
    sanity = report.sanity
    if sanity:
        rate = sanity.get("rate")
        shown = "-" if rate is None else f"{rate:.0%}"
        lines += [
            "",
            f"simulator {report.simulator} ({report.method}): the truth out-scores every decoy in "
            f"{sanity['truth_wins']} of {sanity['n']} puzzles ({shown})",
        ]
        losses = [name for name, item in sanity["per_puzzle"].items() if not item["truth_wins"]]
        if losses:
            lines.append(f"  not won: {', '.join(losses)}")
        if sanity.get("failures"):
            lines.append(f"  simulations failed in {len(sanity['failures'])} puzzle(s); see --json for reasons")
    return "\n".join(lines).strip("\n") or "(nothing to report)"


def _scoring_flags(parser: argparse.ArgumentParser) -> None:
    from core.records import SPLITS
    from core.similarity import DEFAULT_EMBEDDER

    parser.add_argument("--split", default="valid", choices=list(SPLITS), help="records to score on (%(default)s)")
    parser.add_argument("--calibrate", action="store_true", help="fit a·EV + b on the calibration split first")
    parser.add_argument(
        "--reference", default="openai", choices=["openai", "none"], help="similarity to the imported reference"
    )
    parser.add_argument(
        "--embedder", default=DEFAULT_EMBEDDER, help="minilm or openai:EMBEDDING_MODEL (similarity; embedding scorer)"
    )


def _scorer_flags(parser: argparse.ArgumentParser) -> None:
    from core.scorers import DEFAULT_SCORER, SCORERS
    from core.scorers.base import DEFAULT_ACTIVATING, DEFAULT_EXCERPTS_PER_CALL, DEFAULT_NON_ACTIVATING

    scorers = parser.add_argument_group("scorers (docs/METHOD.md §10)")
    scorers.add_argument(
        "--scorer",
        default=DEFAULT_SCORER,
        choices=list(SCORERS),
        help="simulation (default, needs --simulator), detection or fuzzing (an LLM given by --simulator), "
        "embedding (no LLM; --embedder)",
    )
    scorers.add_argument(
        "--activating-quantile",
        type=float,
        default=0.99,
        help="an excerpt is activating when its max is above this quantile of the neuron's per-excerpt maxima "
        "(stored: 0.5, 0.9, 0.99, 0.999; default %(default)s)",
    )
    scorers.add_argument("--activating-threshold", type=float, default=None, help="… or above this raw value")
    scorers.add_argument(
        "--activating", type=int, default=DEFAULT_ACTIVATING, help="activating excerpts per neuron (%(default)s)"
    )
    scorers.add_argument(
        "--non-activating", type=int, default=DEFAULT_NON_ACTIVATING, help="non-activating excerpts (%(default)s)"
    )
    scorers.add_argument(
        "--excerpts-per-call", type=int, default=DEFAULT_EXCERPTS_PER_CALL, help="detection/fuzzing (%(default)s)"
    )
    scorers.add_argument("--scorer-seed", type=int, default=0, help="shuffles excerpts into calls (%(default)s)")
    scorers.add_argument("--scorer-prompt", default=None, help="detection/fuzzing prompt JSON (default: bundled)")
    scorers.add_argument("--no-cache", action="store_true", help="detection/fuzzing: ask the LLM again")


@command
def _add_score(commands: argparse._SubParsersAction) -> None:
    parser = _subcommand(
        commands, "score", cmd_score, "simulate and score stored explanations that have no score yet (reruns resume)"
    )
    parser.add_argument("--model", default=config.DEFAULT_MODEL, help="subject model the neurons belong to")
    _neuron_flags(parser, required=False)
    parser.add_argument("--formats", default=None, help="comma-separated formats (default: all)")
    parser.add_argument("--explainers", default=None, help="comma-separated explainers, e.g. openai:gpt-4o-mini")
    _simulator_flags(parser, required=False)
    _scoring_flags(parser)
    _scorer_flags(parser)
    parser.add_argument("--baseline", default="original", help="format the others are compared with (%(default)s)")
    parser.add_argument("--json", action="store_true", help="print the report (and every stored row) as JSON")


def _score_tables(tables: list, embedder: str | None = None) -> str:
    """Per explanation set (explainer and source), the per-format table and paired differences, each headed by
    its explainer, source, simulator · method and the similarity's embedder."""
    from core.similarity import DEFAULT_EMBEDDER, similarity_label
    from core.simulate import method_note

    lines = []
    for table in tables:
        lines += [
            "",
            f"explainer {table.explainer}, source {table.source} ({table.origin}); scores by {table.simulator} · "
            f"{method_note(table.method)}; 95% bootstrap CIs over neurons; similarity = "
            f"{similarity_label(embedder or DEFAULT_EMBEDDER)} to the reference",
            format_table(table.summary),
        ]
        if not table.differences.empty:
            lines += ["paired difference from the baseline format, same neurons:"]
            lines.append(format_table(table.differences))
    return "\n".join(lines)


def _scorer_options(args: argparse.Namespace) -> ScorerOptions:
    """The ScorerOptions of `_scorer_flags`."""
    from core.scorers import ScorerOptions

    return ScorerOptions(
        activating_quantile=args.activating_quantile,
        activating_threshold=args.activating_threshold,
        n_activating=args.activating,
        n_non_activating=args.non_activating,
        excerpts_per_call=args.excerpts_per_call,
        seed=args.scorer_seed,
    )


def _score_with_scorer(args: argparse.Namespace, database: Any, model: str) -> int:
    """`score --scorer detection|fuzzing|embedding` (core.scorers, docs/METHOD.md §10)."""
    from core import pipeline
    from core.errors import InputError
    from core.scorers import get_scorer

    options = _scorer_options(args)
    if args.scorer == "embedding":
        if args.simulator:
            raise InputError("the embedding scorer uses no LLM: give its embedder with --embedder, not --simulator")
        scorer = get_scorer("embedding", args.embedder, options=options, prompt=args.scorer_prompt)
    else:
        scorer = get_scorer(
            args.scorer,
            args.simulator,
            options=options,
            simulator_options=_simulator_options(args),
            db=database,
            use_cache=not args.no_cache,
            prompt=args.scorer_prompt,
        )
    report = pipeline.score_with_scorer(
        database,
        model,
        scorer,
        neurons=_neurons(args),
        formats=_split_list(args.formats) or None,
        explainers=_split_list(args.explainers) or None,
        progress=True,
    )
    if args.json:
        _print_json(report.to_json())
    else:
        print(
            f"{report.scorer} by {report.model} ({report.method}): {report.ok} scored, {report.skipped} already "
            f"scored, {report.replaced} rescored with new settings, {report.failed} failed (of {report.total}); "
            f"{report.input_tokens} input and {report.output_tokens} output tokens, {report.seconds:.1f}s"
        )
        print(format_table(pipeline.scorer_summary(report)))
        for error in report.errors[:5]:
            print(f"  failed: {error}", file=sys.stderr)
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 1 if report.failed else 0


def cmd_score(args: argparse.Namespace) -> int:
    from core import db as dbmod
    from core import pipeline
    from core.models import resolve_model_name

    database = dbmod.connect(args.db, create=False)
    model = resolve_model_name(args.model)
    if args.scorer != "simulation":
        return _score_with_scorer(args, database, model)
    if not args.simulator:
        from core.errors import InputError

        raise InputError("the simulation scorer needs --simulator hf:PATH or openai:MODEL")
    report = pipeline.score_explanations(
        database,
        model,
        args.simulator,
        method=args.method,
        neurons=_neurons(args),
        formats=_split_list(args.formats) or None,
        explainers=_split_list(args.explainers) or None,
        split=args.split,
        calibrate=args.calibrate,
        reference=args.reference,
        embedder=args.embedder,
        progress=True,
        simulator_options=_simulator_options(args),
    )
    tables = pipeline.score_tables(database, model, report, args.baseline, args.embedder)
    if args.json:
        from core.db.scores import scorer_score_rows

        rows = scorer_score_rows(database, report.explanation_ids, simulator=report.simulator, method=report.method)
        rows = [row for row in rows if row["split"] == report.split and row["calibrated"] == report.calibrated]
        tables_json = [table.to_json() for table in tables]
        _print_json({**report.to_json(), "tables": tables_json, "scorer": "simulation", "rows": rows})
    else:
        print(
            f"{report.simulator} ({report.method}, {report.split}{', calibrated' if report.calibrated else ''}): "
            f"{report.ok} scored, {report.skipped} already scored, {report.failed} failed (of {report.total}); "
            f"{report.similarities} similarities computed"
        )
        print(_score_tables(tables, args.embedder))
        for error in report.errors[:5]:
            print(f"  failed: {error}", file=sys.stderr)
        for warning in report.warnings:
            print(f"  warning: {warning}", file=sys.stderr)
    return 1 if report.failed else 0


# --- a neuron on your own text, and the offline demo ---------------------------------------------------------------


@command
def _add_activate(commands: argparse._SubParsersAction) -> None:
    parser = _subcommand(
        commands,
        "activate",
        cmd_activate,
        "run the subject model on your own text and print a neuron's activation on each token (as collection does)",
    )
    parser.add_argument("--model", default=config.DEFAULT_MODEL, help="hub id, local path, or 'default' (MiniLM)")
    parser.add_argument("--layer", type=int, required=True)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--neuron", type=int, help="the neuron's index in the layer")
    which.add_argument("--top", type=int, metavar="K", help="list the K neurons of the layer that fire most")
    text = parser.add_mutually_exclusive_group(required=True)
    text.add_argument("--text", help="the text")
    text.add_argument("--text-file", help="a UTF-8 file holding the text ('-' for stdin)")
    _subject_device_flag(parser, "the subject model")
    parser.add_argument("--json", action="store_true", help='print {"tokens": [...], "activations": [...]}')


def _read_text(path: str) -> str:
    from pathlib import Path

    from core.errors import InputError

    try:
        return sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the text file {path}: {exc}") from None


def _highlighted(tokens: tuple[str, ...], values: tuple[float, ...]) -> str:
    """The text with each token's background coloured by its activation (ANSI 256 colours: warm for positive, blue
    for negative, on the scale of the largest absolute value), control characters shown as escapes."""
    from core.prompts import escape_token

    scale = max((abs(v) for v in values), default=0.0) or 1.0
    warm, cold = (231, 230, 229, 222, 215, 208, 202), (231, 195, 153, 117, 75, 33)
    parts = []
    for token, value in zip(tokens, values, strict=True):
        ramp = warm if value >= 0 else cold
        colour = ramp[min(len(ramp) - 1, int(abs(value) / scale * (len(ramp) - 1) + 0.5))]
        parts.append(f"\x1b[48;5;{colour}m\x1b[38;5;16m{escape_token(token)}\x1b[0m")
    return "".join(parts)


def cmd_activate(args: argparse.Namespace) -> int:
    from core.activations import MAX_TEXT_TOKENS, activate_text

    text = args.text if args.text is not None else _read_text(args.text_file)
    result = activate_text(args.model, args.layer, text, device=args.device)
    if result.dropped_tokens:
        print(
            f"warning: the text has {len(result.tokens) + result.dropped_tokens} tokens; only the first "
            f"{len(result.tokens)} were run (the cap is {MAX_TEXT_TOKENS})",
            file=sys.stderr,
        )
    if args.top is not None:
        top = result.top_neurons(args.top)
        if args.json:
            neurons = [{"neuron": i, "max_activation": m, "activations": list(result.record(i).activations)}
                       for i, m in top]  # fmt: skip
            _print_json({**result.to_json(), "top": neurons})
        else:
            print(f"{result.model} layer {result.layer}: the {len(top)} neurons that fire most on the text")
            for index, maximum in top:
                record = result.record(index)
                peak = max(range(len(record.tokens)), key=record.activations.__getitem__)
                print(f"  {result.layer}:{index}	max {maximum:.3f}	at {record.tokens[peak]!r}")
        return 0
    record = result.record(args.neuron)
    if args.json:
        _print_json(result.to_json(args.neuron))
        return 0
    print(
        f"{result.model} neuron {result.layer}:{args.neuron} on {len(record.tokens)} tokens, "
        f"max {record.max_activation:.3f}"
    )
    if sys.stdout.isatty() and not os.environ.get("NO_COLOR"):
        print(_highlighted(record.tokens, record.activations))
    for position, (token, value) in enumerate(zip(record.tokens, record.activations, strict=True)):
        print(f"{position}\t{value:.4f}\t{token!r}")
    return 0


@command
def _add_demo(commands: argparse._SubParsersAction) -> None:
    from core import demo

    parser = _subcommand(
        commands,
        "demo",
        cmd_demo,
        "without any LLM: baseline explanations of 20 neurons, embedding scores and a small study, to click through",
    )
    parser.add_argument("--model", default=config.DEFAULT_MODEL, help="a collected model (default: the bundled one)")
    parser.add_argument("--layer", type=int, default=None, help="default: a collected layer with scoring excerpts")
    parser.add_argument("--neurons", type=int, default=demo.DEFAULT_NEURONS, help="how many (%(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--remove", action="store_true", help="delete exactly what the demo created")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def cmd_demo(args: argparse.Namespace) -> int:
    from core import db as dbmod
    from core import demo

    database = dbmod.connect(args.db)
    if args.remove:
        removed = demo.remove_demo(database)
        if args.json:
            _print_json({"removed": removed})
        elif not any(removed.values()):
            print("no demo in this database; nothing removed")
        else:
            print("removed the demo: " + ", ".join(f"{count} {kind}" for kind, count in removed.items() if count))
        return 0
    report = demo.run_demo(database, args.model, n_neurons=args.neurons, layer=args.layer, seed=args.seed)
    if args.json:
        _print_json(report.to_json())
        return 0
    print(
        f"demo: {report.explanations} baseline explanations of {len(report.neurons)} neurons of {report.model} "
        f"layer {report.layer}, {report.scores} embedding scores, study {report.study} with {report.items} items, "
        f"rater {report.rater} (code {report.rater_code})"
    )
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print("next:")
    for number, step in enumerate(report.next_steps, start=1):
        print(f"  {number}. {step}")
    return 0


@command
def _add_run(commands: argparse._SubParsersAction) -> None:
    parser = _subcommand(
        commands,
        "run",
        cmd_run,
        "collect (if needed) → explain → simulate → score, then a per-format table with CIs (reruns resume)",
    )
    parser.add_argument("--model", default=config.DEFAULT_MODEL, help="subject model: hub id, path or 'default'")
    _neuron_flags(parser, required=True)
    _explainer_flags(parser)
    _simulator_flags(parser)
    _scoring_flags(parser)
    parser.add_argument("--corpus", default=config.DEFAULT_CORPUS, help="corpus for collection, if needed")
    parser.add_argument(
        "--collect-tokens", type=int, default=config.DEFAULT_MAX_TOKENS, help="collection token budget (%(default)s)"
    )
    _subject_device_flag(parser, "the subject model, if its layers are collected")
    parser.add_argument("--baseline", default="original", help="format the others are compared with (%(default)s)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def cmd_run(args: argparse.Namespace) -> int:
    from core import db as dbmod
    from core import pipeline

    report = pipeline.run_pipeline(
        dbmod.connect(args.db),
        args.model,
        _neurons(args),
        _split_list(args.formats),
        args.explainer,
        args.simulator,
        method=args.method,
        corpus=args.corpus,
        collect_options=_collect_options(args),
        explain_options=_explain_options(args),
        split=args.split,
        calibrate=args.calibrate,
        reference=args.reference,
        embedder=args.embedder,
        baseline=args.baseline,
        simulator_options=_simulator_options(args),
        progress=True,
    )
    if args.json:
        _print_json(report)
    else:
        print(format_run_report(report))
    return 1 if report.failed else 0


@command
def _add_puzzles(commands: argparse._SubParsersAction) -> None:
    from core import prompts
    from core.similarity import DEFAULT_EMBEDDER

    parser = _subcommand(
        commands,
        "puzzles",
        cmd_puzzles,
        "neuron puzzles: explanation similarity to the known truth, and whether a simulator ranks the truth first",
    )
    parser.add_argument("--explainer", required=True, help="openai:MODEL, hf:PATH, or `none` (simulator check only)")
    parser.add_argument("--formats", default=",".join(prompts.FORMATS), help="comma-separated formats (default: all)")
    _simulator_flags(parser, required=False)
    parser.add_argument("--puzzles", default=None, help="puzzle JSON file (default: the bundled puzzles)")
    parser.add_argument("--embedder", default=DEFAULT_EMBEDDER, help="minilm or openai:EMBEDDING_MODEL")
    parser.add_argument("--samples", type=int, default=1, help="explanations per puzzle and format (%(default)s)")
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="ask the explainer again for jobs still to do, even when cached (stored explanations are kept)",
    )
    _explainer_device_flag(parser)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def cmd_puzzles(args: argparse.Namespace) -> int:
    from core import db as dbmod
    from core import puzzles
    from core.errors import InputError

    explainer = None if args.explainer.strip().lower() == "none" else args.explainer
    if explainer is None and not args.simulator:
        raise InputError("with --explainer none there is only the simulator check: give --simulator")
    report = puzzles.run_puzzles(
        dbmod.connect(args.db),
        explainer,
        _split_list(args.formats),
        args.simulator,
        method=args.method,
        puzzles_path=args.puzzles,
        embedder=args.embedder,
        explain_options=_explain_options(args),
        simulator_options=_simulator_options(args),
        progress=True,
    )
    if args.json:
        _print_json(report)
    else:
        print(format_puzzle_report(report))
    # Like `score` and `run`: failed simulations make the exit status 1, so that scripts notice them.
    return 1 if report.sanity.get("failures") else 0


# --- human evaluation --------------------------------------------------------------------------------------------


def _add_study_create(study_commands: argparse._SubParsersAction) -> None:
    parser = _subcommand(study_commands, "create", cmd_study_create, "create a blinded pairwise study and its items")
    parser.add_argument("--name", required=True)
    parser.add_argument(
        "--arms",
        required=True,
        help="two or more arms, FORMAT[@EXPLAINER][#SOURCE], e.g. summary,original@gpt-4; each must resolve to one "
        "explainer and one source (an import file or a run), as `python -m core explanations` lists them",
    )
    _neuron_flags(parser, required=True)
    parser.add_argument("--ratings-per-item", type=int, default=3, help="ratings wanted per item (%(default)s)")
    parser.add_argument("--seed", type=int, default=config.DEFAULT_SEED, help="left/right and order seed")
    parser.add_argument("--model", default=None, help="default: the one model that has explanations of the neurons")
    parser.add_argument("--instructions", default="", help="what raters are told")
    parser.add_argument("--no-tie", action="store_true", help="do not offer the 'equally good' choice")
    parser.add_argument("--no-both-bad", action="store_true", help="do not offer the 'both bad' choice")
    parser.add_argument(
        "--overlap-share", type=float, default=0.2, help="share of items rated by at least 2 raters (%(default)s)"
    )
    parser.add_argument(
        "--gold-share", type=float, default=0.0, help="attention checks per regular item, 0 for none (%(default)s)"
    )
    parser.add_argument(
        "--allow-admin-ratings",
        action="store_true",
        help="let admins rate too (by default they do not: they can see unblinded results)",
    )
    parser.add_argument(
        "--plan",
        default=None,
        metavar="FILE",
        help="the analysis plan as JSON (see `study plan --help`), fixed with the study and never changed",
    )


def cmd_study_create(args: argparse.Namespace) -> int:
    from core import db as dbmod
    from core import human_eval
    from core.models import resolve_model_name

    created = human_eval.create_study(
        dbmod.connect(args.db),
        name=args.name,
        arms=args.arms,
        neurons=_neurons(args),
        ratings_per_item=args.ratings_per_item,
        seed=args.seed,
        model=resolve_model_name(args.model) if args.model else None,
        instructions=args.instructions,
        allow_tie=not args.no_tie,
        allow_both_bad=not args.no_both_bad,
        overlap_share=args.overlap_share,
        gold_share=args.gold_share,
        allow_admin_ratings=args.allow_admin_ratings,
        plan=_plan_file(args.plan) if args.plan else None,
    )
    for skipped in created.skipped:
        print(f"warning: skipped {skipped}", file=sys.stderr)
    if created.n_identical:
        print(f"warning: skipped {created.n_identical} pairs whose two explanations are identical", file=sys.stderr)
    for tell in created.tells:
        print(f"warning: text tell: {tell.message}", file=sys.stderr)
    for source in created.arms:
        print(
            f"arm {source.arm}: {source.n_explanations} explanation(s) by {source.explainer} from {source.source}"
            f" ({source.origin})",
            file=sys.stderr,
        )
    _print_json(
        {
            "study": created.study.to_json(),
            "n_items": created.n_items,
            "n_gold_items": created.n_gold,
            "n_identical_skipped": created.n_identical,
            "text_tells": [tell.message for tell in created.tells],
            "arm_sources": [source.to_json() for source in created.arms],
        }
    )
    return 0


def _add_study_show(study_commands: argparse._SubParsersAction) -> None:
    parser = _subcommand(
        study_commands,
        "show",
        cmd_study_show,
        "print a study as JSON: settings, counts, and per arm the explainer, source and number of explanations",
    )
    parser.add_argument("study")


def cmd_study_show(args: argparse.Namespace) -> int:
    from core import db as dbmod
    from core import human_eval

    _print_json(human_eval.show_study(dbmod.connect(args.db, create=False), args.study))
    return 0


def _add_study_state(study_commands: argparse._SubParsersAction) -> None:
    for state, verb, help_text in (
        ("closed", "close", "close a study: no more ratings, and its neurons' explanations become visible to all"),
        ("open", "open", "open a study again: raters may rate it, and its neurons' explanations are hidden"),
    ):
        parser = _subcommand(study_commands, verb, cmd_study_state, help_text)
        parser.add_argument("study")
        parser.set_defaults(state=state)


def cmd_study_state(args: argparse.Namespace) -> int:
    from core import db as dbmod
    from core import human_eval

    study = human_eval.set_state(dbmod.connect(args.db, create=False), args.study, args.state)
    _print_json({"name": study.name, "state": study.state})
    return 0


def _plan_file(path: str) -> Any:
    from core.plan import StudyPlan

    value = _read_json(path, "plan")
    if not isinstance(value, dict):
        raise InputError(f'{path}: a plan is a JSON object, e.g. {{"primary_pair": ["summary", "original"], …}}')
    return StudyPlan.from_json(value)


def _add_study_plan(study_commands: argparse._SubParsersAction) -> None:
    parser = _subcommand(
        study_commands,
        "plan",
        cmd_study_plan,
        "show a study's analysis plan, or fix it once before the first rating (it never changes afterwards)",
    )
    parser.add_argument("study")
    parser.add_argument("--file", default=None, help="the plan as a JSON file")
    parser.add_argument("--primary-pair", default=None, help="A,B: the arms of the primary test (default: first two)")
    parser.add_argument("--target-neurons", type=int, default=None, help="neurons the primary test needs")
    parser.add_argument("--alpha", type=float, default=0.05, help="the primary test's level (%(default)s)")
    parser.add_argument("--min-gold-accuracy", type=float, default=None, help="pause and exclude raters below this")
    parser.add_argument("--qualification-items", type=int, default=0, help="each rater's first k items are gold")
    parser.add_argument("--min-seconds", type=float, default=None, help="exclude ratings made faster than this")
    parser.add_argument(
        "--keep-straight-lining", action="store_true", help="do not exclude raters who pick one side ≥ 90%% of the time"
    )
    parser.add_argument("--rater-cap", type=int, default=None, help="at most this many items per rater")
    parser.add_argument("--stopping-rule", default=None, help="when the study stops, in words")
    parser.add_argument(
        "--interim",
        choices=("banner", "hide"),
        default="banner",
        help="before the target: show the primary test under a banner, or hide its p-value and CI",
    )


def cmd_study_plan(args: argparse.Namespace) -> int:
    from core import db as dbmod
    from core import human_eval
    from core.plan import StudyPlan

    database = dbmod.connect(args.db, create=False)
    study = human_eval.get_study(database, args.study)
    if args.file is None and args.target_neurons is None:
        stored = human_eval.get_plan(database, study.name)
        if stored is None:
            raise NotFoundError(f"study {study.name!r} has no plan yet; fix one with --target-neurons N or --file")
        _print_json(stored.to_json())
        return 0
    if args.file is not None:
        plan = _plan_file(args.file)
    else:
        pair = _split_list(args.primary_pair) if args.primary_pair else list(study.arms[:2])
        settings = {
            "primary_pair": tuple(pair),
            "target_neurons": args.target_neurons,
            "ratings_per_item": study.ratings_per_item,
            "alpha": args.alpha,
            "min_gold_accuracy": args.min_gold_accuracy,
            "qualification_items": args.qualification_items,
            "min_seconds": args.min_seconds,
            "exclude_straight_lining": not args.keep_straight_lining,
            "rater_cap": args.rater_cap,
            "interim": args.interim,
        }
        if args.stopping_rule:
            settings["stopping_rule"] = args.stopping_rule
        plan = StudyPlan(**settings)
    _print_json(human_eval.set_plan(database, study.name, plan).to_json())
    return 0


def _add_study_set(study_commands: argparse._SubParsersAction) -> None:
    parser = _subcommand(study_commands, "set", cmd_study_set, "change a study's settings")
    parser.add_argument("--name", required=True, help="the study")
    parser.add_argument(
        "--allow-admin-ratings",
        action=argparse.BooleanOptionalAction,
        required=True,
        help="whether admins, who can see unblinded results, may rate this study",
    )


def cmd_study_set(args: argparse.Namespace) -> int:
    from core import db as dbmod
    from core import human_eval

    study = human_eval.set_admin_ratings(dbmod.connect(args.db, create=False), args.name, args.allow_admin_ratings)
    _print_json({"name": study.name, "allow_admin_ratings": study.allow_admin_ratings})
    return 0


def _add_study_items(study_commands: argparse._SubParsersAction) -> None:
    parser = _subcommand(study_commands, "items", cmd_study_items, "list a study's items, unblinded (admin view)")
    parser.add_argument("study")
    parser.add_argument(
        "--rater", default=None, help="as this rater sees them (default: each item's default layout, used by imports)"
    )
    parser.add_argument("--json", action="store_true", help="print the items as JSON")


def cmd_study_items(args: argparse.Namespace) -> int:
    from core import db as dbmod
    from core import human_eval

    items = human_eval.study_items(dbmod.connect(args.db, create=False), args.study, args.rater)
    if args.json:
        _print_json(items)
        return 0
    for item in items:
        gold = f"  gold: {item['gold_choice']}" if item["is_gold"] else ""
        print(
            f"{item['item_id']:>6}  {item['neuron']:>10}  {item['left_arm']} | {item['right_arm']}"
            f"  ratings: {item['n_ratings']}{gold}"
        )
    return 0


def _add_study_status(study_commands: argparse._SubParsersAction) -> None:
    parser = _subcommand(study_commands, "status", cmd_study_status, "show a study's progress per item and rater")
    parser.add_argument("study")


def cmd_study_status(args: argparse.Namespace) -> int:
    from core import db as dbmod
    from core import human_eval

    _print_json(human_eval.study_status(dbmod.connect(args.db, create=False), args.study))
    return 0


def _add_study_list(study_commands: argparse._SubParsersAction) -> None:
    _subcommand(study_commands, "list", cmd_study_list, "list the studies")


def cmd_study_list(args: argparse.Namespace) -> int:
    from core import db as dbmod
    from core import human_eval

    _print_json(human_eval.list_studies(dbmod.connect(args.db, create=False)))
    return 0


def _summary_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--min-gold-accuracy", type=float, default=None, help="leave out raters whose gold-item accuracy is lower"
    )
    parser.add_argument(
        "--simulator", default=None, help="whose simulation scores to compare with (default: most common)"
    )


def _add_study_summary(study_commands: argparse._SubParsersAction) -> None:
    parser = _subcommand(study_commands, "summary", cmd_study_summary, "print a study's statistics as JSON")
    parser.add_argument("study")
    _summary_flags(parser)


def cmd_study_summary(args: argparse.Namespace) -> int:
    from core import db as dbmod
    from core import export

    database = dbmod.connect(args.db, create=False)
    _print_json(export.study_summary(database, args.study, args.simulator, args.min_gold_accuracy))
    return 0


def _add_study_power(study_commands: argparse._SubParsersAction) -> None:
    parser = _subcommand(
        study_commands,
        "power",
        cmd_study_power,
        "neurons a study needs to detect a win rate; or, given a study, the smallest win rate its data can detect",
    )
    parser.add_argument("study", nargs="?", help="a study: the win rate of its first arm over its second it can detect")
    parser.add_argument("--win-rate", type=float, default=None, help="the win rate to detect (planning)")
    parser.add_argument("--icc", type=float, default=None, help="intra-class correlation of a neuron's ratings")
    parser.add_argument("--ratings-per-item", type=int, default=None, help="ratings of each neuron's item")
    parser.add_argument("--tie-share", type=float, default=0.0, help="share of ties and both-bad (%(default)s)")
    parser.add_argument("--alpha", type=float, default=0.05, help="level of the two-sided test (%(default)s)")
    parser.add_argument("--power", type=float, default=0.8, help="wanted power (%(default)s)")
    parser.add_argument("--json", action="store_true", help="print the whole result as JSON")


def cmd_study_power(args: argparse.Namespace) -> int:
    from core import power
    from core.errors import InputError

    if args.study is not None:
        if args.win_rate is not None:
            raise InputError("give a study (what its data can detect) or --win-rate (neurons needed), not both")
        from core import db as dbmod
        from core import export

        data = export.study_data(dbmod.connect(args.db, create=False), args.study)
        arm_a, arm_b = data.study.arms[:2]
        found = power.detectable_from_data(data.ratings, arm_a, arm_b, args.alpha, args.power)
        if args.json:
            _print_json(found.to_json())
            return 0
        effect = found.effect
        detectable = f"{effect.win_rate:.3f}" if effect and effect.win_rate is not None else "none"
        icc = "unknown" if found.icc is None else f"{found.icc:.3f}"
        print(f"study {data.study.name!r}, {arm_a} over {arm_b}: smallest detectable win rate {detectable}")
        if found.n_neurons:
            print(
                f"{found.n_neurons} neurons, {found.mean_ratings_per_neuron:.2f} ratings per neuron, "
                f"{found.tie_share:.0%} ties or both bad, ICC {icc}; power {args.power:g} at alpha {args.alpha:g}"
            )
        for note in (found.note, effect.note if effect else None):
            if note:
                print(f"note: {note}")
        return 0
    planning = {"--win-rate": args.win_rate, "--icc": args.icc, "--ratings-per-item": args.ratings_per_item}
    missing = [flag for flag, value in planning.items() if value is None]
    if missing:
        raise InputError(f"give a study name, or plan with {', '.join(missing)} (ICC 0: neurons do not differ)")
    needed = power.neurons_needed(
        args.win_rate, args.icc, args.ratings_per_item, args.tie_share, args.alpha, args.power
    )
    if args.json:
        _print_json(needed.to_json())
        return 0
    count = "out of reach" if needed.n_neurons is None else f"{needed.n_neurons}"
    print(f"neurons needed: {count}")
    if needed.n_neurons is not None:
        print(
            f"power {needed.achieved_power:.3f} for win rate {args.win_rate:g} at alpha {args.alpha:g} (sign test over "
            f"neurons); the design-effect approximation says {needed.n_neurons_design_effect}"
        )
    if needed.note:
        print(f"note: {needed.note}")
    return 0


def _ask_code(prompt: str, *, given: str | None = None, from_stdin: bool = False, confirm: bool = False) -> str:
    """An access code: `given` on the command line (with a warning: others can see it), else one line of stdin when
    `from_stdin` or stdin is not a terminal, else asked without echo (twice with `confirm`). A closed or empty
    stdin is an InputError, never a hang or a traceback (cron jobs, CI, `< /dev/null`)."""
    import getpass

    from core.errors import InputError

    if given:
        print(
            "warning: --code puts the access code where other users of this machine can see it (ps, shell "
            "history); leave it out to be asked, or pipe the code with --code-stdin",
            file=sys.stderr,
        )
        return given
    missing = "no access code given: pass --code CODE, pipe it on stdin, or run in a terminal to be asked"
    stdin = sys.stdin
    if stdin is None or stdin.closed:
        raise InputError(missing)
    interactive = not from_stdin and stdin.isatty()
    try:
        code = getpass.getpass(prompt) if interactive else stdin.readline()
        again = getpass.getpass("the same code again: ") if interactive and confirm and code else code
    except (EOFError, OSError, ValueError):
        raise InputError(missing) from None
    code, again = code.rstrip("\r\n"), again.rstrip("\r\n")
    if not code:
        raise InputError(missing)
    if again != code:
        raise InputError("the two access codes differ; run the command again and type the same code twice")
    return code


def _admin_code(args: argparse.Namespace) -> str:
    import os

    return args.code or os.environ.get("EVAL_ADMIN_CODE") or _ask_code(f"access code of {args.admin}: ")


def _add_study_purge(study_commands: argparse._SubParsersAction) -> None:
    parser = _subcommand(
        study_commands, "purge", cmd_study_purge, "admin: export a study's ratings to --out, then delete them"
    )
    parser.add_argument("study")
    parser.add_argument("--admin", required=True, help="an admin rater's name")
    parser.add_argument("--code", default=None, help="the admin's access code (default: $EVAL_ADMIN_CODE, or asked)")
    parser.add_argument("--out", required=True, help="where the export goes (a folder, a .zip or a .json file)")
    parser.add_argument("--format", default="json", choices=["csv", "json", "parquet"])


def cmd_study_purge(args: argparse.Namespace) -> int:
    from core import db as dbmod
    from core import export, raters

    database = dbmod.connect(args.db, create=False)
    admin = raters.authenticate(database, args.admin, _admin_code(args))
    _print_json(export.purge_study_ratings(database, args.study, admin, args.out, args.format))
    return 0


@command
def _add_study(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("study", help="blinded pairwise human evaluation studies")
    study_commands = parser.add_subparsers(dest="study_command", required=True, metavar="STUDY_COMMAND")
    for add in (
        _add_study_create,
        _add_study_show,
        _add_study_list,
        _add_study_items,
        _add_study_status,
        _add_study_summary,
        _add_study_power,
        _add_study_state,
        _add_study_set,
        _add_study_plan,
    ):
        add(study_commands)
    _add_study_purge(study_commands)


def _add_rater_add(rater_commands: argparse._SubParsersAction) -> None:
    parser = _subcommand(rater_commands, "add", cmd_rater_add, "register a rater with an access code")
    parser.add_argument("--name", required=True, help="display name, also used to sign in")
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--code-stdin", action="store_true", help="read the access code from the first line of stdin (for scripts)"
    )
    source.add_argument(
        "--code", default=None, help="the access code; visible to other users in ps and shell history, so avoid it"
    )
    parser.add_argument("--admin", action="store_true", help="may export and purge studies")
    parser.add_argument(
        "--studies", default=None, help="studies this rater may rate, comma-separated (later: `rater assign`)"
    )
    parser.epilog = "Without --code or --code-stdin the code is asked twice without echo (or read from piped stdin)."


def cmd_rater_add(args: argparse.Namespace) -> int:
    from core import db as dbmod
    from core import human_eval, raters

    database = dbmod.connect(args.db)
    studies = [human_eval.get_study(database, name).name for name in _split_list(args.studies)]  # check them first
    code = _ask_code(f"access code for {args.name}: ", given=args.code, from_stdin=args.code_stdin, confirm=True)
    rater = raters.add_rater(database, args.name, code, admin=args.admin)
    result: dict[str, Any] = {"id": rater.id, "name": rater.name, "role": rater.role}
    if studies:
        result["studies"] = human_eval.assign_studies(database, rater.name, studies)
    _print_json(result)
    return 0


def _add_rater_assign(rater_commands: argparse._SubParsersAction) -> None:
    for verb, help_text in (
        ("assign", "give a rater studies to rate"),
        ("unassign", "take studies from a rater (their ratings stay)"),
    ):
        parser = _subcommand(rater_commands, verb, cmd_rater_assign, help_text)
        parser.add_argument("--name", required=True, help="the rater")
        parser.add_argument("--studies", required=True, help="study names, comma-separated")
        parser.set_defaults(remove=verb == "unassign")


def cmd_rater_assign(args: argparse.Namespace) -> int:
    from core import db as dbmod
    from core import human_eval

    database = dbmod.connect(args.db, create=False)
    studies = human_eval.assign_studies(database, args.name, _split_list(args.studies), args.remove)
    _print_json({"name": args.name, "studies": studies})
    return 0


def cmd_rater_list(args: argparse.Namespace) -> int:
    from core import db as dbmod
    from core import raters

    database = dbmod.connect(args.db, create=False)
    studies = {row["id"]: row["name"] for row in dbmod.list_studies(database)}
    rows = raters.list_raters(database)
    for row in rows:
        row["studies"] = [studies[study_id] for study_id in dbmod.rater_study_ids(database, row["id"])]
    _print_json(rows)
    return 0


def _add_rater_remove(rater_commands: argparse._SubParsersAction) -> None:
    parser = _subcommand(
        rater_commands,
        "remove",
        cmd_rater_remove,
        "remove a rater: no more sign-ins or studies; their past ratings are kept and stay attributed",
    )
    parser.add_argument("--name", required=True, help="the rater")
    parser = _subcommand(
        rater_commands, "reset-code", cmd_rater_reset_code, "give a rater (also a removed one) a new access code"
    )
    parser.add_argument("--name", required=True, help="the rater")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--code-stdin", action="store_true", help="read the new code from the first line of stdin")
    source.add_argument("--code", default=None, help="the new code; visible to other users in ps, so avoid it")


def cmd_rater_remove(args: argparse.Namespace) -> int:
    from core import db as dbmod
    from core import raters

    _print_json(raters.remove_rater(dbmod.connect(args.db, create=False), args.name))
    return 0


def cmd_rater_reset_code(args: argparse.Namespace) -> int:
    from core import db as dbmod
    from core import raters

    database = dbmod.connect(args.db, create=False)
    raters.list_raters(database)  # a damaged database fails before the code is asked
    if dbmod.get_rater(database, args.name.strip()) is None:
        raise NotFoundError(f"no rater named {args.name!r}; `python -m core rater list` shows them")
    code = _ask_code(f"new access code for {args.name}: ", given=args.code, from_stdin=args.code_stdin, confirm=True)
    rater = raters.reset_code(database, args.name, code)
    _print_json({"id": rater.id, "name": rater.name, "role": rater.role, "code_reset": True})
    return 0


@command
def _add_rater(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("rater", help="raters of human evaluation studies")
    rater_commands = parser.add_subparsers(dest="rater_command", required=True, metavar="RATER_COMMAND")
    _add_rater_add(rater_commands)
    _add_rater_assign(rater_commands)
    _add_rater_remove(rater_commands)
    _subcommand(rater_commands, "list", cmd_rater_list, "list raters (names, roles and studies, never codes)")


@command
def _add_export(commands: argparse._SubParsersAction) -> None:
    parser = _subcommand(commands, "export", cmd_export, "export a study's ratings, items and summary, unblinded")
    parser.add_argument("--study", required=True)
    parser.add_argument("--format", default="csv", choices=["csv", "json", "parquet"])
    parser.add_argument(
        "--out", default=None, help="a folder (default: ./<study>-export), a .zip, or a .json file for --format json"
    )
    _summary_flags(parser)


def cmd_export(args: argparse.Namespace) -> int:
    from core import db as dbmod
    from core import export

    database = dbmod.connect(args.db, create=False)
    files = export.export_study(database, args.study, args.format, args.simulator, args.min_gold_accuracy)
    paths = export.write_export(files, args.out or f"{export.file_stem(args.study)}-export")
    _print_json({"study": args.study, "format": args.format, "files": [str(path) for path in paths]})
    return 0


@command
def _add_import_ratings(commands: argparse._SubParsersAction) -> None:
    parser = _subcommand(
        commands, "import-ratings", cmd_import_ratings, "import ratings collected elsewhere from a CSV file"
    )
    parser.add_argument("--study", required=True)
    parser.add_argument(
        "file",
        help="CSV with item_id, rater, choice (left|right|tie|both_bad)[, confidence, seconds, comment], e.g. a "
        "ratings CSV of `export`; all or nothing: one bad row (reported by line) and nothing is imported",
    )
    parser.add_argument("--create-raters", action="store_true", help="add unknown raters (with an unusable code)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def cmd_import_ratings(args: argparse.Namespace) -> int:
    from core import db as dbmod
    from core import export

    database = dbmod.connect(args.db, create=False)
    report = export.import_ratings(database, args.study, args.file, create_raters=args.create_raters)
    if args.json:
        _print_json(report.to_json())
    else:
        print(report.summary_line(args.study))
    return 0


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


def _new_database_note(args: argparse.Namespace, existed: bool | None) -> None:
    """Say so when a command created the database file (a mistyped --db must not pass unnoticed)."""
    if existed is False and os.environ.get("RANK", "0") == "0":
        path = config.db_path(args.db)
        if path.exists():
            print(f"created a new database at {path}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if not args.verbose:
        # Loading a model takes a second or two and needs no bar ("Loading weights" on every load); long work
        # (collection, explaining, scoring) shows its own. Read by huggingface_hub and transformers at import.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    existed = config.db_path(args.db).exists() if hasattr(args, "db") else None
    try:
        code = args.func(args) or 0
        _new_database_note(args, existed)
        return code
    except WorkbenchError as exc:
        log.debug("command failed", exc_info=True)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except sqlite3.DatabaseError as exc:
        # A damaged, read-only or full database file is the user's to fix; constraint and API errors are our bugs.
        if type(exc) not in (sqlite3.DatabaseError, sqlite3.OperationalError):
            raise
        from core.db.base import database_error

        log.debug("command failed", exc_info=True)
        print(f"error: {database_error(config.db_path(getattr(args, 'db', None)), exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished work is saved; rerun the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `python -m core study items S --json | head`; see Python's signal docs
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
