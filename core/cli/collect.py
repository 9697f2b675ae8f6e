"""Collection and neurons: `collect`, `neuron`, and `activate` (a neuron on your own text)."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from core import config
from core.cli.base import Command, F, option
from core.cli.options import collect_options, db_option, json_option, model_option, subject_device_option
from core.cli.output import highlighted, join, print_json
from core.errors import InputError

if TYPE_CHECKING:
    from core.activations import CollectOptions
    from core.records import NeuronId


def _layers(_ctx: click.Context, _param: click.Parameter, text: str | None) -> list[int] | None:
    if text in (None, "", "all"):
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"layers must be comma-separated integers or 'all', got {text!r}") from None


def _collect_option(*param_decls: str, **attrs: Any) -> Callable[[F], F]:
    return option(*param_decls, feeds=collect_options, **attrs)


@click.command(
    "collect", cls=Command, help="collect top-activating and random excerpts for every neuron of some layers"
)
@db_option
@model_option(help="hub id, local path, or 'default' (MiniLM)")
@option("--layers", default=None, callback=_layers, help="comma-separated, e.g. 0,3 (default: all)")
@option("--corpus", default=config.DEFAULT_CORPUS, help="'default', a .txt/.jsonl file or folder, or hf:NAME")
@_collect_option(
    "--max-tokens", type=int, default=config.DEFAULT_MAX_TOKENS, help=f"token budget ({config.DEFAULT_MAX_TOKENS})"
)
@_collect_option("--excerpt-len", type=int, default=config.DEFAULT_EXCERPT_LEN, help="tokens per excerpt")
@_collect_option("--top-k", type=int, default=config.DEFAULT_TOP_K, help="top excerpts kept per neuron")
@_collect_option("--random-k", type=int, default=config.DEFAULT_RANDOM_K, help="random excerpts per neuron")
@_collect_option("--seed", type=int, default=config.DEFAULT_SEED)
@_collect_option("--batch-size", type=int, default=config.DEFAULT_BATCH_SIZE, help="excerpts per forward pass")
@_collect_option(
    "--quantile-sample",
    type=int,
    default=config.DEFAULT_QUANTILE_SAMPLE,
    help="excerpt maxima kept per neuron for quantiles: exact up to this many excerpts, sampled beyond",
)
@subject_device_option("the subject model", feeds=collect_options)
@_collect_option("--dtype", default=None, help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16")
@_collect_option(
    "--device-map",
    default=None,
    help="spread the model over several GPUs: auto, balanced, sequential, or a JSON object module → device"
    " (needs accelerate; not with torchrun)",
)
@option("--replace", is_flag=True, help="overwrite layers that hold neurons collected with other settings")
@json_option("print the report as JSON")
def collect_command(
    db: str | None,
    model: str,
    layers: list[int] | None,
    corpus: str,
    collect_options: CollectOptions,
    replace: bool,
    as_json: bool,
) -> int:
    from tqdm import tqdm

    from core import db as dbmod
    from core.activations import collect
    from core.distributed import World

    world = World.from_env()  # under torchrun, rank 0 alone opens the database and reports
    database = dbmod.connect(db) if world.is_main else None
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
            model,
            layers,
            corpus,
            collect_options,
            progress=progress if world.is_main else None,
            replace=replace,
        )
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
        for bar in bars:
            bar.close()
    if not world.is_main:
        return 0
    if as_json:
        print_json(report.to_json())
    elif not report.layers:
        print(f"{report.model}: layers {join(report.skipped_layers)} already collected with these settings")
    else:
        print(
            f"{report.model}: collected layers {join(report.layers)} over {report.n_tokens:,} tokens "
            f"({report.n_excerpts:,} excerpts) in {report.seconds:.1f}s, {report.tokens_per_second:,.0f} tokens/s"
            + (f" on {report.world_size} processes" if report.world_size > 1 else "")
        )
    return 0


def neuron_id(layer: int | None, neuron: str) -> NeuronId:
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


@click.command("neuron", cls=Command, help="show one neuron's stats and top and random records")
@db_option
@model_option()
@option("--layer", type=int, default=None, help="the layer (or write --neuron LAYER:INDEX)")
@option("--neuron", required=True, help="LAYER:INDEX, e.g. 3:17, or INDEX with --layer")
@option("--width", type=int, default=150, help="wrap excerpts at this many characters (150)")
@json_option("print {stats, top, random} as JSON")
def neuron_command(db: str | None, model: str, layer: int | None, neuron: str, width: int, as_json: bool) -> int:
    from core import db as dbmod
    from core.models import resolve_model_name
    from core.render import excerpt_lines

    found = neuron_id(layer, neuron)
    record = dbmod.get_neuron(dbmod.connect(db, create=False), resolve_model_name(model), found)
    if as_json:
        data = record.to_json()
        print_json({"stats": data["stats"], "top": data["top"], "random": data["random"]})
        return 0
    stats = record.stats
    print(f"{record.model} {record.neuron}: mean {stats.mean:.4f}  variance {stats.variance:.4f}  max {stats.max:.4f}")
    print("quantiles of per-excerpt max: " + "  ".join(f"{q}: {v:.4f}" for q, v in sorted(stats.quantiles.items())))
    print("top excerpts, the peak token of each marked ⟦so⟧:")
    for rank, rec in enumerate(record.top[:5]):
        print(f"  top {rank} (max {rec.max_activation:.3f}):")
        print("\n".join(excerpt_lines(rec, width)))
    return 0


def _read_text(path: str) -> str:
    from pathlib import Path

    try:
        return sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the text file {path}: {exc}") from None


@click.command(
    "activate",
    cls=Command,
    help="run the subject model on your own text and print a neuron's activation on each token (as collection does)",
)
@db_option
@model_option(help="hub id, local path, or 'default' (MiniLM)")
@option("--layer", type=int, required=True)
@option("--neuron", type=int, default=None, one_of="which", one_required=True, help="the neuron's index in the layer")
@option(
    "--top",
    type=int,
    default=None,
    metavar="K",
    one_of="which",
    one_required=True,
    help="list the K neurons of the layer that fire most",
)
@option("--text", default=None, one_of="text", one_required=True, help="the text")
@option(
    "--text-file",
    default=None,
    one_of="text",
    one_required=True,
    help="a UTF-8 file holding the text ('-' for stdin)",
)
@subject_device_option("the subject model")
@json_option('print {"tokens": [...], "activations": [...]}')
def activate_command(
    db: str | None,
    model: str,
    layer: int,
    neuron: int | None,
    top: int | None,
    text: str | None,
    text_file: str | None,
    device: str | None,
    as_json: bool,
) -> int:
    from core.activations import MAX_TEXT_TOKENS, activate_text

    result = activate_text(model, layer, text if text is not None else _read_text(text_file or "-"), device=device)
    if result.dropped_tokens:
        print(
            f"warning: the text has {len(result.tokens) + result.dropped_tokens} tokens; only the first "
            f"{len(result.tokens)} were run (the cap is {MAX_TEXT_TOKENS})",
            file=sys.stderr,
        )
    if top is not None:
        found = result.top_neurons(top)
        if as_json:
            neurons = [{"neuron": i, "max_activation": m, "activations": list(result.record(i).activations)}
                       for i, m in found]  # fmt: skip
            print_json({**result.to_json(), "top": neurons})
        else:
            print(f"{result.model} layer {result.layer}: the {len(found)} neurons that fire most on the text")
            for index, maximum in found:
                record = result.record(index)
                peak = max(range(len(record.tokens)), key=record.activations.__getitem__)
                print(f"  {result.layer}:{index}	max {maximum:.3f}	at {record.tokens[peak]!r}")
        return 0
    assert neuron is not None  # one of --neuron and --top is required
    record = result.record(neuron)
    if as_json:
        print_json(result.to_json(neuron))
        return 0
    print(
        f"{result.model} neuron {result.layer}:{neuron} on {len(record.tokens)} tokens, max {record.max_activation:.3f}"
    )
    if sys.stdout.isatty() and not os.environ.get("NO_COLOR"):
        print(highlighted(record.tokens, record.activations))
    for position, (token, value) in enumerate(zip(record.tokens, record.activations, strict=True)):
        print(f"{position}\t{value:.4f}\t{token!r}")
    return 0
