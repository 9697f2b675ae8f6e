"""Prompts and explanations: `prompt`, `explain`, `import-explanations`, `explanations` (and `explanations show`),
and `import-openai`."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from core.cli.base import Command, F, Group, option
from core.cli.options import (
    cutoff_flags,
    db_option,
    explainer_flags,
    format_options,
    format_variant_flags,
    json_option,
    load_records,
    model_option,
    neuron_flags,
    read_json,
    records_flags,
    split_list,
)
from core.cli.output import print_json
from core.errors import InputError

if TYPE_CHECKING:
    from core.explain import ExplainOptions
    from core.prompts import FormatOptions
    from core.records import NeuronId


def _prompt_format_option(f: F) -> F:
    from core import prompts

    formats = click.Choice(list(prompts.FORMATS))
    return option("--format", "format_name", required=True, type=formats, help="prompt format")(f)


def _tokenizer_option(f: F) -> F:
    from core import tokens

    return option(
        "--tokenizer",
        default=tokens.CL100K,
        help=f"cl100k_base or a Hugging Face tokenizer path/id (default: {tokens.CL100K})",
    )(f)


@click.command(
    "prompt", cls=Command, help="build the explanation prompt for some activation records and count its tokens"
)
@db_option
@_prompt_format_option
@records_flags("the neuron's train records and stats, exactly as `explain` shows them")
@option("--few-shot", default=None, help="few-shot JSON file, or `none` (default: the bundled examples)")
@cutoff_flags("quantile level, fraction of the max, or raw value (default per mode)")
@_tokenizer_option
@option("--stats", default=None, help="neuron stats JSON with quantiles (default with --neuron: the stored stats)")
@format_variant_flags(format_options)
def prompt_command(
    db: str | None,
    format_name: str,
    records: str | None,
    neuron: str | None,
    model: str,
    few_shot: str | None,
    cutoff_mode: str | None,
    cutoff: str | None,
    tokenizer: str,
    stats: str | None,
    format_options: FormatOptions,
) -> None:
    from core import prompts, tokens
    from core.explain import PROMPT_SPLIT

    found, stored_stats = load_records(db, records, neuron, model, PROMPT_SPLIT)
    examples = prompts.load_few_shot(few_shot)
    chosen = prompts.Cutoff.parse(cutoff_mode, cutoff)
    neuron_stats = prompts.stats_from_json(read_json(stats, "stats")) if stats else stored_stats
    messages = prompts.build_messages(
        format_name, found, few_shot=examples, cutoff=chosen, stats=neuron_stats, options=format_options
    )
    threshold = prompts.resolve_threshold(format_name, found, chosen, neuron_stats)
    print_json(
        {
            "messages": messages,
            tokens.input_tokens_column(tokenizer): tokens.count_chat_tokens(messages, tokenizer),
            "tokenizer": tokenizer,
            "cutoff": {**chosen.to_json(), "threshold": threshold},
        }
    )


@click.command(
    "explain",
    cls=Command,
    help="explain neurons under prompt formats with an LLM and store the explanations (reruns resume)",
)
@db_option
@model_option(help="subject model the neurons belong to")
@neuron_flags(required=True)
@explainer_flags
def explain_command(
    db: str | None,
    model: str,
    selected_neurons: list[NeuronId],
    formats: str,
    explainer: str,
    explain_options: ExplainOptions,
) -> int:
    from tqdm import tqdm

    from core import db as dbmod
    from core import explain
    from core.models import resolve_model_name

    database = dbmod.connect(db, create=False)
    bars: list[tqdm] = []  # opened at the first progress call, so an early error prints no empty bar

    def progress(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, unit="expl", desc="explain", file=sys.stderr))
        bars[0].update(done - bars[0].n)

    try:
        report = explain.explain_neurons(
            database,
            resolve_model_name(model),
            selected_neurons,
            split_list(formats),
            explainer,
            explain_options,
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


@click.command(
    "import-explanations",
    cls=Command,
    help="import explanations from a CSV with columns Layer, Neuron, Original, Summary, Highlight, "
    "HighlightSummary, AVHS (the layout of Lee et al.'s results)",
)
@db_option
@click.argument("file", help="the CSV file")
@option("--explainer", required=True, help="who wrote them, e.g. gpt-4 or gpt-3.5-turbo")
@model_option(default="gpt2-xl", help="subject model of the neurons (gpt2-xl)")
def import_explanations_command(db: str | None, file: str, explainer: str, model: str) -> int:
    from core import db as dbmod
    from core.explain import import_explanations_csv
    from core.models import resolve_model_name

    model = resolve_model_name(model)
    report = import_explanations_csv(dbmod.connect(db), file, explainer, model)
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if report.total == 0:
        print(f"nothing imported: every format cell of {file} is empty")
    elif report.written == 0:
        print(f"nothing new: all {report.unchanged} explanations of {file} are already stored")
    else:
        already = f"; {report.unchanged} already stored" if report.unchanged else ""
        print(f"imported {report.written} explanation(s) of {model} by {explainer} from {file}{already}")
    return 0


@click.group(
    "explanations",
    cls=Group,
    invoke_without_command=True,
    subcommand_metavar="[show ID]",
    help="list stored explanations: id, neuron, format, explainer, source, text, tokens and every score; "
    "`explanations show ID` for one",
)
@db_option
@model_option(default=None, help="subject model, or 'default' (MiniLM) (default: all models)")
@neuron_flags(required=False)
@option("--formats", default=None, help="comma-separated formats (default: all)")
@option("--explainers", default=None, help="comma-separated explainers, exactly as stored")
@option("--limit", type=int, default=None, help="at most this many explanations")
@option("--width", type=int, default=100, help="wrap explanation texts at this many characters")
@json_option("print the explanations as JSON")
@click.pass_context
def explanations_command(
    ctx: click.Context,
    db: str | None,
    model: str | None,
    selected_neurons: list[NeuronId] | None,
    formats: str | None,
    explainers: str | None,
    limit: int | None,
    width: int,
    as_json: bool,
) -> int:
    from core import catalog
    from core import db as dbmod
    from core.models import resolve_model_name

    if ctx.invoked_subcommand is not None:  # `explanations show ID`
        return 0
    entries = catalog.list_entries(
        dbmod.connect(db, create=False),
        resolve_model_name(model) if model else None,
        selected_neurons,
        split_list(formats) or None,
        split_list(explainers) or None,
        limit,
    )
    if as_json:
        print_json([entry.to_json() for entry in entries])
        return 0
    if not entries:
        print("no explanations match; `python -m core explanations` without filters lists them all")
        return 0
    for entry in entries:
        print("\n".join(catalog.entry_lines(entry, max(20, width))))
    sets = sorted({(entry.format, entry.explainer, entry.source) for entry in entries})
    print(f"{len(entries)} explanation(s) in {len(sets)} set(s); a study arm names one as FORMAT@EXPLAINER#SOURCE")
    return 0


@explanations_command.command("show", help="print one explanation, its prompt's token counts and its scores (JSON)")
@db_option
@click.argument(
    "explanation_id", metavar="ID", type=int, help="the explanation's id (the first column of `explanations`)"
)
def explanations_show_command(db: str | None, explanation_id: int) -> int:
    from core import catalog
    from core import db as dbmod

    print_json(catalog.show_entry(dbmod.connect(db, create=False), explanation_id))
    return 0


def spread_values(flag: str, args: list[str]) -> list[str]:
    """`FLAG A B …` as `FLAG A FLAG B …`: every value up to the next flag, as argparse's nargs='*' took them."""
    spread: list[str] = []
    taking = False
    for index, arg in enumerate(args):
        if arg == "--":
            spread += args[index:]
            break
        if arg == flag:
            taking = True
        elif arg.startswith("-") and len(arg) > 1:
            taking = False
            spread.append(arg)
        else:
            spread += [flag, arg] if taking else [arg]
    return spread


class _ImportOpenAICommand(Command):
    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, spread_values("--explanations", args))


@click.command(
    "import-openai",
    cls=_ImportOpenAICommand,
    help="import OpenAI's public GPT-2 XL NeuronRecord JSON and explanation JSONL/CSV (files, folders or URLs)",
)
@db_option
@click.argument("sources", nargs=-1, help="NeuronRecord .json files or folders, or URLs")
@option(
    "--explanations",
    multiple=True,
    metavar="FILE ...",
    help="explanation .jsonl, or a layer,neuron,score,explanation .csv",
)
@option("--neurons", default=None, help="layer:index list to fetch from OpenAI's bucket (online)")
@model_option(default="gpt2-xl", help="model name to store them under, or 'default' (MiniLM) (gpt2-xl)")
def import_openai_command(
    db: str | None, sources: tuple[str, ...], explanations: tuple[str, ...], neurons: str | None, model: str
) -> int:
    from core import db as dbmod
    from core import openai_import
    from core.models import resolve_model_name
    from core.records import parse_neurons

    record_sources, explanation_sources = list(sources), list(explanations)
    if neurons:
        for neuron in parse_neurons(neurons):
            record_sources.append(openai_import.RECORDS_URL.format(layer=neuron.layer, neuron=neuron.index))
            explanation_sources.append(openai_import.EXPLANATIONS_URL.format(layer=neuron.layer, neuron=neuron.index))
    if not record_sources and not explanation_sources:
        raise InputError("nothing to import: give NeuronRecord files, --explanations FILES, or --neurons L:N,…")
    model = resolve_model_name(model)
    database = dbmod.connect(db)
    if record_sources:
        before = sum(count for _, count in dbmod.list_layers(database, model))
        imported = openai_import.import_neuron_records(database, record_sources, model)
        added = sum(count for _, count in dbmod.list_layers(database, model)) - before
        if added == 0:
            print(f"nothing new: all {len(imported)} neuron record(s) of {model} were already stored (refreshed)")
        else:
            already = f"; {len(imported) - added} already stored" if len(imported) > added else ""
            print(f"imported {added} new neuron record(s) of {model}{already}")
    if explanation_sources:
        report = openai_import.import_explanations(database, explanation_sources, model)
        if report.written == 0:
            print(f"nothing new: all {report.unchanged} reference explanations of {model} are already stored")
        else:
            already = f"; {report.unchanged} already stored" if report.unchanged else ""
            print(f"imported {report.written} reference explanation(s) of {model}{already}")
    return 0
