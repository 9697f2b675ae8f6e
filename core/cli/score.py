"""Simulation and scoring: `simulate`, `score`, `import-scores`, `puzzles`, `run` (collect → explain → simulate →
score), and the offline `demo`."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from core import config
from core.cli.base import Command, F, option
from core.cli.options import (
    collect_options,
    db_option,
    explain_options,
    explainer_device_option,
    explainer_flags,
    json_option,
    load_records,
    model_option,
    neuron_flags,
    records_flags,
    scorer_flags,
    scoring_flags,
    simulator_flags,
    split_list,
    split_option,
    subject_device_option,
)
from core.cli.output import (
    format_cost_table,
    format_puzzle_report,
    format_run_report,
    format_score_tables,
    format_table,
    number,
    print_json,
)
from core.errors import InputError

if TYPE_CHECKING:
    from core.activations import CollectOptions
    from core.explain import ExplainOptions
    from core.records import NeuronId
    from core.scorers import ScorerOptions
    from core.simulate import SimulatorOptions


@click.command("simulate", cls=Command, help="predict activations from an explanation and score them against records")
@db_option
@option("--explanation", required=True, help="the explanation text to simulate")
@records_flags("its --split records")
@split_option("records of --neuron (valid)")
@simulator_flags()
@json_option("print predictions and scores as JSON")
def simulate_command(
    db: str | None,
    explanation: str,
    records: str | None,
    neuron: str | None,
    model: str,
    split: str,
    simulator: str,
    method: str | None,
    simulator_options: SimulatorOptions,
    as_json: bool,
) -> int:
    from core import pipeline
    from core.values import to_jsonable

    found, _ = load_records(db, records, neuron, model, split)
    outcome = pipeline.simulate_text(explanation, found, simulator, method, simulator_options)
    if as_json:
        # R² and absdev compare the simulator's 0–10 predictions with activations as they are: uncalibrated.
        print_json({**to_jsonable(outcome), "calibrated": False})
    elif outcome.ok and outcome.scores is not None and outcome.predictions is not None:
        scores, result = outcome.scores, outcome.result
        print(
            f"score {number(scores.score)}  R² {number(scores.rsquared)} (uncalibrated)  absdev "
            f"{number(scores.absdev)} (uncalibrated)  ({result.simulator}, {result.method}, {result.seconds:.2f}s)"
        )
        print(
            "  uncalibrated: R² and absdev compare 0–10 predictions with raw activations; the score (a correlation)"
            " does not depend on scale. `score --calibrate` fits a·prediction + b on the calibration split first."
        )
        for record, predicted in zip(found, outcome.predictions, strict=True):
            print("  " + " ".join(f"{t!r}:{p:.1f}" for t, p in zip(record.tokens, predicted, strict=True)))
    if not outcome.ok:
        print(f"simulation failed: {outcome.error}", file=sys.stderr)
        return 1
    return 0


@click.command(
    "score", cls=Command, help="simulate and score stored explanations that have no score yet (reruns resume)"
)
@db_option
@model_option(help="subject model the neurons belong to")
@neuron_flags(required=False)
@option("--formats", default=None, help="comma-separated formats (default: all)")
@option("--explainers", default=None, help="comma-separated explainers, e.g. openai:gpt-4o-mini")
@simulator_flags(required=False)
@scoring_flags
@scorer_flags
@option("--baseline", default="original", help="format the others are compared with (original)")
@json_option("print the report (and every stored row) as JSON")
def score_command(
    db: str | None,
    model: str,
    selected_neurons: list[NeuronId] | None,
    formats: str | None,
    explainers: str | None,
    simulator: str | None,
    method: str | None,
    simulator_options: SimulatorOptions,
    split: str,
    calibrate: bool,
    reference: str,
    embedder: str,
    scorer: str,
    scorer_options: ScorerOptions,
    scorer_prompt: str | None,
    no_cache: bool,
    baseline: str,
    as_json: bool,
) -> int:
    from core import db as dbmod
    from core import pipeline
    from core.models import resolve_model_name

    database = dbmod.connect(db, create=False)
    model = resolve_model_name(model)
    if scorer != "simulation":
        return _score_with_scorer(
            database,
            model,
            scorer,
            simulator,
            embedder,
            scorer_options,
            simulator_options,
            scorer_prompt=scorer_prompt,
            use_cache=not no_cache,
            neurons=selected_neurons,
            formats=split_list(formats) or None,
            explainers=split_list(explainers) or None,
            as_json=as_json,
        )
    if not simulator:
        raise InputError("the simulation scorer needs --simulator hf:PATH or openai:MODEL")
    report = pipeline.score_explanations(
        database,
        model,
        simulator,
        method=method,
        neurons=selected_neurons,
        formats=split_list(formats) or None,
        explainers=split_list(explainers) or None,
        split=split,
        calibrate=calibrate,
        reference=reference,
        embedder=embedder,
        progress=True,
        simulator_options=simulator_options,
    )
    tables = pipeline.score_tables(database, model, report, baseline, embedder)
    if as_json:
        from core.db.scores import scorer_score_rows

        rows = scorer_score_rows(database, report.explanation_ids, simulator=report.simulator, method=report.method)
        rows = [row for row in rows if row["split"] == report.split and row["calibrated"] == report.calibrated]
        tables_json = [table.to_json() for table in tables]
        print_json({**report.to_json(), "tables": tables_json, "scorer": "simulation", "rows": rows})
    else:
        print(
            f"{report.simulator} ({report.method}, {report.split}{', calibrated' if report.calibrated else ''}): "
            f"{report.ok} scored, {report.skipped} already scored, {report.failed} failed (of {report.total}); "
            f"{report.similarities} similarities computed"
        )
        print(format_score_tables(tables, embedder))
        print(_costs(database, model, report.explanation_ids, report.simulator, report.method, split, calibrate))
        for error in report.errors[:5]:
            print(f"  failed: {error}", file=sys.stderr)
        for warning in report.warnings:
            print(f"  warning: {warning}", file=sys.stderr)
    return 1 if report.failed else 0


def _score_with_scorer(
    database: Any,
    model: str,
    scorer_name: str,
    simulator: str | None,
    embedder: str,
    options: ScorerOptions,
    simulator_options: SimulatorOptions,
    *,
    scorer_prompt: str | None,
    use_cache: bool,
    neurons: list[NeuronId] | None,
    formats: list[str] | None,
    explainers: list[str] | None,
    as_json: bool,
) -> int:
    """`score --scorer detection|fuzzing|embedding` (core.scorers, docs/METHOD.md §10)."""
    from core import pipeline
    from core.scorers import get_scorer

    if scorer_name == "embedding":
        if simulator:
            raise InputError("the embedding scorer uses no LLM: give its embedder with --embedder, not --simulator")
        scorer = get_scorer("embedding", embedder, options=options, prompt=scorer_prompt)
    else:
        scorer = get_scorer(
            scorer_name,
            simulator,
            options=options,
            simulator_options=simulator_options,
            db=database,
            use_cache=use_cache,
            prompt=scorer_prompt,
        )
    report = pipeline.score_with_scorer(
        database, model, scorer, neurons=neurons, formats=formats, explainers=explainers, progress=True
    )
    if as_json:
        print_json(report.to_json())
    else:
        print(
            f"{report.scorer} by {report.model} ({report.method}): {report.ok} scored, {report.skipped} already "
            f"scored, {report.replaced} rescored with new settings, {report.failed} failed (of {report.total}); "
            f"{report.input_tokens} input and {report.output_tokens} output tokens, {report.seconds:.1f}s"
        )
        print(format_table(pipeline.scorer_summary(report)))
        print(_costs(database, model, [row["explanation_id"] for row in report.rows], report.simulator, report.method))
        for error in report.errors[:5]:
            print(f"  failed: {error}", file=sys.stderr)
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 1 if report.failed else 0


@click.command(
    "import-scores",
    cls=Command,
    help="import published per-neuron scores (the layout of Lee et al.'s test_neurons_results_score.csv) for stored "
    "explanations, kept apart as method 'imported'",
)
@db_option
@click.argument("file", help="the CSV file: layer, neuron and format columns holding scores")
@option("--explainer", required=True, help="who wrote the explanations they score, e.g. gpt-3.5-turbo")
@option("--simulator", required=True, help="who simulated them, e.g. gpt-3.5-turbo-instruct")
@model_option(default="gpt2-xl", help="subject model of the neurons (gpt2-xl)")
@json_option("print the report as JSON")
def import_scores_command(db: str | None, file: str, explainer: str, simulator: str, model: str, as_json: bool) -> int:
    from core import db as dbmod
    from core.models import resolve_model_name
    from core.score_import import import_scores_csv

    model = resolve_model_name(model)
    report = import_scores_csv(dbmod.connect(db), file, explainer, simulator, model)
    if as_json:
        print_json(report.to_json())
        return 0
    print(
        f"imported {report.written} published score(s) of {model} explanations by {report.explainer} from "
        f"{file}, as simulator {report.simulator}, method imported (not computed here)"
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


def _demo_neurons_option(f: F) -> F:
    from core import demo

    return option("--neurons", type=int, default=demo.DEFAULT_NEURONS, help=f"how many ({demo.DEFAULT_NEURONS})")(f)


@click.command(
    "demo",
    cls=Command,
    help="without any LLM: baseline explanations of 20 neurons, embedding scores and a small study, to click through",
)
@db_option
@model_option(help="a collected model (default: the bundled one)")
@option("--layer", type=int, default=None, help="default: a collected layer with scoring excerpts")
@_demo_neurons_option
@option("--seed", type=int, default=0)
@option("--remove", is_flag=True, help="delete exactly what the demo created")
@json_option("print the report as JSON")
def demo_command(
    db: str | None, model: str, layer: int | None, neurons: int, seed: int, remove: bool, as_json: bool
) -> int:
    from core import db as dbmod
    from core import demo

    database = dbmod.connect(db)
    if remove:
        removed = demo.remove_demo(database)
        if as_json:
            print_json({"removed": removed})
        elif not any(removed.values()):
            print("no demo in this database; nothing removed")
        else:
            print("removed the demo: " + ", ".join(f"{count} {kind}" for kind, count in removed.items() if count))
        return 0
    report = demo.run_demo(database, model, n_neurons=neurons, layer=layer, seed=seed)
    if as_json:
        print_json(report.to_json())
        return 0
    print(
        f"demo: {report.explanations} baseline explanations of {len(report.neurons)} neurons of {report.model} "
        f"layer {report.layer}, {report.scores} embedding scores, study {report.study} with {report.items} items, "
        f"rater {report.rater} (code {report.rater_code})"
    )
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print("next:")
    for step_number, step in enumerate(report.next_steps, start=1):
        print(f"  {step_number}. {step}")
    return 0


@click.command(
    "run",
    cls=Command,
    help="collect (if needed) → explain → simulate → score, then a per-format table with CIs (reruns resume)",
)
@db_option
@model_option(help="subject model: hub id, path or 'default'")
@neuron_flags(required=True)
@explainer_flags
@simulator_flags()
@scoring_flags
@option("--corpus", default=config.DEFAULT_CORPUS, help="corpus for collection, if needed")
@option(
    "--collect-tokens",
    type=int,
    default=config.DEFAULT_MAX_TOKENS,
    feeds=collect_options,
    help=f"collection token budget ({config.DEFAULT_MAX_TOKENS})",
)
@subject_device_option("the subject model, if its layers are collected", feeds=collect_options)
@option("--baseline", default="original", help="format the others are compared with (original)")
@json_option("print the report as JSON")
def run_command(
    db: str | None,
    model: str,
    selected_neurons: list[NeuronId],
    formats: str,
    explainer: str,
    explain_options: ExplainOptions,
    simulator: str,
    method: str | None,
    simulator_options: SimulatorOptions,
    split: str,
    calibrate: bool,
    reference: str,
    embedder: str,
    corpus: str,
    collect_options: CollectOptions,
    baseline: str,
    as_json: bool,
) -> int:
    from core import db as dbmod
    from core import pipeline

    database = dbmod.connect(db)
    report = pipeline.run_pipeline(
        database,
        model,
        selected_neurons,
        split_list(formats),
        explainer,
        simulator,
        method=method,
        corpus=corpus,
        collect_options=collect_options,
        explain_options=explain_options,
        split=split,
        calibrate=calibrate,
        reference=reference,
        embedder=embedder,
        baseline=baseline,
        simulator_options=simulator_options,
        progress=True,
    )
    if as_json:
        print_json(report)
    else:
        print(format_run_report(report))
        print(_costs(database, model, report.score.explanation_ids, report.simulator, report.method, split, calibrate))
    return 1 if report.failed else 0


def _costs(
    database: Any,
    model: str,
    explanation_ids: Sequence[int],
    simulator: str,
    method: str,
    split: str = "valid",
    calibrated: bool = False,
) -> str:
    """The cost table of a scoring run (core.costs), priced from the price list when there is one."""
    from core import costs, pricing
    from core.models import resolve_model_name

    prices = pricing.load_prices()
    report = costs.recorded_cost_table(
        database, resolve_model_name(model), explanation_ids, simulator, method, split=split, calibrated=calibrated,
        prices=prices,
    )  # fmt: skip
    return format_cost_table(report, prices.source)


def _puzzle_formats_option(f: F) -> F:
    from core import prompts

    return option("--formats", default=",".join(prompts.FORMATS), help="comma-separated formats (default: all)")(f)


def _embedder_option(f: F) -> F:
    from core.similarity import DEFAULT_EMBEDDER

    return option("--embedder", default=DEFAULT_EMBEDDER, help="minilm or openai:EMBEDDING_MODEL")(f)


@click.command(
    "puzzles",
    cls=Command,
    help="neuron puzzles: explanation similarity to the known truth, and whether a simulator ranks the truth first",
)
@db_option
@option("--explainer", required=True, help="openai:MODEL, hf:PATH, or `none` (simulator check only)")
@_puzzle_formats_option
@simulator_flags(required=False)
@option("--puzzles", "puzzles_path", default=None, help="puzzle JSON file (default: the bundled puzzles)")
@_embedder_option
@option("--samples", type=int, default=1, feeds=explain_options, help="explanations per puzzle and format (1)")
@option(
    "--no-cache",
    is_flag=True,
    feeds=explain_options,
    help="ask the explainer again for jobs still to do, even when cached (stored explanations are kept)",
)
@explainer_device_option
@json_option("print the report as JSON")
def puzzles_command(
    db: str | None,
    explainer: str,
    formats: str,
    simulator: str | None,
    method: str | None,
    simulator_options: SimulatorOptions,
    puzzles_path: str | None,
    embedder: str,
    explain_options: ExplainOptions,
    as_json: bool,
) -> int:
    from core import db as dbmod
    from core import puzzles

    chosen = None if explainer.strip().lower() == "none" else explainer
    if chosen is None and not simulator:
        raise InputError("with --explainer none there is only the simulator check: give --simulator")
    report = puzzles.run_puzzles(
        dbmod.connect(db),
        chosen,
        split_list(formats),
        simulator,
        method=method,
        puzzles_path=puzzles_path,
        embedder=embedder,
        explain_options=explain_options,
        simulator_options=simulator_options,
        progress=True,
    )
    if as_json:
        print_json(report)
    else:
        print(format_puzzle_report(report))
    # Like `score` and `run`: failed simulations make the exit status 1, so that scripts notice them.
    return 1 if report.sanity.get("failures") else 0
