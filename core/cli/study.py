"""Blinded pairwise human evaluation studies: `study create|show|list|items|status|summary|power|close|open|set|plan|
purge`."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from core import config
from core.cli.base import Group, option
from core.cli.options import db_option, json_option, neuron_flags, read_json, split_list, summary_flags
from core.cli.output import print_json
from core.cli.rater import ask_code
from core.errors import InputError, NotFoundError

if TYPE_CHECKING:
    from core.plan import StudyPlan
    from core.records import NeuronId


def plan_file(path: str) -> StudyPlan:
    from core.plan import StudyPlan

    value = read_json(path, "plan")
    if not isinstance(value, dict):
        raise InputError(f'{path}: a plan is a JSON object, e.g. {{"primary_pair": ["summary", "original"], …}}')
    return StudyPlan.from_json(value)


@click.group("study", cls=Group, help="blinded pairwise human evaluation studies")
def study_group() -> None:
    pass


@study_group.command("create", help="create a blinded pairwise study and its items")
@db_option
@option("--name", required=True)
@option(
    "--arms",
    required=True,
    help="two or more arms, FORMAT[@EXPLAINER][#SOURCE], e.g. summary,original@gpt-4; each must resolve to one "
    "explainer and one source (an import file or a run), as `python -m core explanations` lists them",
)
@neuron_flags(required=True)
@option("--ratings-per-item", type=int, default=3, help="ratings wanted per item (3)")
@option("--seed", type=int, default=config.DEFAULT_SEED, help="left/right and order seed")
@option("--model", default=None, help="default: the one model that has explanations of the neurons")
@option("--instructions", default="", help="what raters are told")
@option("--no-tie", is_flag=True, help="do not offer the 'equally good' choice")
@option("--no-both-bad", is_flag=True, help="do not offer the 'both bad' choice")
@option("--overlap-share", type=float, default=0.2, help="share of items rated by at least 2 raters (0.2)")
@option("--gold-share", type=float, default=0.0, help="attention checks per regular item, 0 for none (0.0)")
@option(
    "--allow-admin-ratings",
    is_flag=True,
    help="let admins rate too (by default they do not: they can see unblinded results)",
)
@option(
    "--plan",
    default=None,
    metavar="FILE",
    help="the analysis plan as JSON (see `study plan --help`), fixed with the study and never changed",
)
def study_create_command(
    db: str | None,
    name: str,
    arms: str,
    selected_neurons: list[NeuronId],
    ratings_per_item: int,
    seed: int,
    model: str | None,
    instructions: str,
    no_tie: bool,
    no_both_bad: bool,
    overlap_share: float,
    gold_share: float,
    allow_admin_ratings: bool,
    plan: str | None,
) -> int:
    from core import db as dbmod
    from core import human_eval
    from core.models import resolve_model_name

    created = human_eval.create_study(
        dbmod.connect(db),
        name=name,
        arms=arms,
        neurons=selected_neurons,
        ratings_per_item=ratings_per_item,
        seed=seed,
        model=resolve_model_name(model) if model else None,
        instructions=instructions,
        allow_tie=not no_tie,
        allow_both_bad=not no_both_bad,
        overlap_share=overlap_share,
        gold_share=gold_share,
        allow_admin_ratings=allow_admin_ratings,
        plan=plan_file(plan) if plan else None,
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
    print_json(
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


@study_group.command(
    "show",
    help="print a study as JSON: settings, counts, and per arm the explainer, source and number of explanations",
)
@db_option
@click.argument("study")
def study_show_command(db: str | None, study: str) -> int:
    from core import db as dbmod
    from core import human_eval

    print_json(human_eval.show_study(dbmod.connect(db, create=False), study))
    return 0


@study_group.command("list", help="list the studies")
@db_option
def study_list_command(db: str | None) -> int:
    from core import db as dbmod
    from core import human_eval

    print_json(human_eval.list_studies(dbmod.connect(db, create=False)))
    return 0


@study_group.command("items", help="list a study's items, unblinded (admin view)")
@db_option
@click.argument("study")
@option("--rater", default=None, help="as this rater sees them (default: each item's default layout, used by imports)")
@json_option("print the items as JSON")
def study_items_command(db: str | None, study: str, rater: str | None, as_json: bool) -> int:
    from core import db as dbmod
    from core import human_eval

    items = human_eval.study_items(dbmod.connect(db, create=False), study, rater)
    if as_json:
        print_json(items)
        return 0
    for item in items:
        gold = f"  gold: {item['gold_choice']}" if item["is_gold"] else ""
        print(
            f"{item['item_id']:>6}  {item['neuron']:>10}  {item['left_arm']} | {item['right_arm']}"
            f"  ratings: {item['n_ratings']}{gold}"
        )
    return 0


@study_group.command("status", help="show a study's progress per item and rater")
@db_option
@click.argument("study")
def study_status_command(db: str | None, study: str) -> int:
    from core import db as dbmod
    from core import human_eval

    print_json(human_eval.study_status(dbmod.connect(db, create=False), study))
    return 0


@study_group.command("summary", help="print a study's statistics as JSON")
@db_option
@click.argument("study")
@summary_flags
def study_summary_command(db: str | None, study: str, min_gold_accuracy: float | None, simulator: str | None) -> int:
    from core import db as dbmod
    from core import export

    database = dbmod.connect(db, create=False)
    print_json(export.study_summary(database, study, simulator, min_gold_accuracy))
    return 0


@study_group.command(
    "power",
    help="neurons a study needs to detect a win rate; or, given a study, the smallest win rate its data can detect",
)
@db_option
@click.argument("study", required=False, help="a study: the win rate of its first arm over its second it can detect")
@option("--win-rate", type=float, default=None, help="the win rate to detect (planning)")
@option("--icc", type=float, default=None, help="intra-class correlation of a neuron's ratings")
@option("--ratings-per-item", type=int, default=None, help="ratings of each neuron's item")
@option("--tie-share", type=float, default=0.0, help="share of ties and both-bad (0.0)")
@option("--alpha", type=float, default=0.05, help="level of the two-sided test (0.05)")
@option("--power", "wanted_power", type=float, default=0.8, help="wanted power (0.8)")
@json_option("print the whole result as JSON")
def study_power_command(
    db: str | None,
    study: str | None,
    win_rate: float | None,
    icc: float | None,
    ratings_per_item: int | None,
    tie_share: float,
    alpha: float,
    wanted_power: float,
    as_json: bool,
) -> int:
    from core import power

    if study is not None:
        if win_rate is not None:
            raise InputError("give a study (what its data can detect) or --win-rate (neurons needed), not both")
        from core import db as dbmod
        from core import export

        data = export.study_data(dbmod.connect(db, create=False), study)
        arm_a, arm_b = data.study.arms[:2]
        found = power.detectable_from_data(data.ratings, arm_a, arm_b, alpha, wanted_power)
        if as_json:
            print_json(found.to_json())
            return 0
        effect = found.effect
        detectable = f"{effect.win_rate:.3f}" if effect and effect.win_rate is not None else "none"
        shown_icc = "unknown" if found.icc is None else f"{found.icc:.3f}"
        print(f"study {data.study.name!r}, {arm_a} over {arm_b}: smallest detectable win rate {detectable}")
        if found.n_neurons:
            print(
                f"{found.n_neurons} neurons, {found.mean_ratings_per_neuron:.2f} ratings per neuron, "
                f"{found.tie_share:.0%} ties or both bad, ICC {shown_icc}; power {wanted_power:g} at alpha {alpha:g}"
            )
        for note in (found.note, effect.note if effect else None):
            if note:
                print(f"note: {note}")
        return 0
    if win_rate is None or icc is None or ratings_per_item is None:
        planning = {"--win-rate": win_rate, "--icc": icc, "--ratings-per-item": ratings_per_item}
        missing = [flag for flag, value in planning.items() if value is None]
        raise InputError(f"give a study name, or plan with {', '.join(missing)} (ICC 0: neurons do not differ)")
    needed = power.neurons_needed(win_rate, icc, ratings_per_item, tie_share, alpha, wanted_power)
    if as_json:
        print_json(needed.to_json())
        return 0
    count = "out of reach" if needed.n_neurons is None else f"{needed.n_neurons}"
    print(f"neurons needed: {count}")
    if needed.n_neurons is not None:
        print(
            f"power {needed.achieved_power:.3f} for win rate {win_rate:g} at alpha {alpha:g} (sign test over "
            f"neurons); the design-effect approximation says {needed.n_neurons_design_effect}"
        )
    if needed.note:
        print(f"note: {needed.note}")
    return 0


def _set_state(db: str | None, study: str, state: str) -> int:
    from core import db as dbmod
    from core import human_eval

    changed = human_eval.set_state(dbmod.connect(db, create=False), study, state)
    print_json({"name": changed.name, "state": changed.state})
    return 0


@study_group.command(
    "close", help="close a study: no more ratings, and its neurons' explanations become visible to all"
)
@db_option
@click.argument("study")
def study_close_command(db: str | None, study: str) -> int:
    return _set_state(db, study, "closed")


@study_group.command("open", help="open a study again: raters may rate it, and its neurons' explanations are hidden")
@db_option
@click.argument("study")
def study_open_command(db: str | None, study: str) -> int:
    return _set_state(db, study, "open")


@study_group.command("set", help="change a study's settings")
@db_option
@option("--name", required=True, help="the study")
@option(
    "--allow-admin-ratings/--no-allow-admin-ratings",
    required=True,
    help="whether admins, who can see unblinded results, may rate this study",
)
def study_set_command(db: str | None, name: str, allow_admin_ratings: bool) -> int:
    from core import db as dbmod
    from core import human_eval

    study = human_eval.set_admin_ratings(dbmod.connect(db, create=False), name, allow_admin_ratings)
    print_json({"name": study.name, "allow_admin_ratings": study.allow_admin_ratings})
    return 0


@study_group.command(
    "plan",
    help="show a study's analysis plan, or fix it once before the first rating (it never changes afterwards)",
)
@db_option
@click.argument("study")
@option("--file", default=None, help="the plan as a JSON file")
@option("--primary-pair", default=None, help="A,B: the arms of the primary test (default: first two)")
@option("--target-neurons", type=int, default=None, help="neurons the primary test needs")
@option("--alpha", type=float, default=0.05, help="the primary test's level (0.05)")
@option("--min-gold-accuracy", type=float, default=None, help="pause and exclude raters below this")
@option("--qualification-items", type=int, default=0, help="each rater's first k items are gold")
@option("--min-seconds", type=float, default=None, help="exclude ratings made faster than this")
@option("--keep-straight-lining", is_flag=True, help="do not exclude raters who pick one side ≥ 90% of the time")
@option("--rater-cap", type=int, default=None, help="at most this many items per rater")
@option("--stopping-rule", default=None, help="when the study stops, in words")
@option(
    "--interim",
    type=click.Choice(("banner", "hide")),
    default="banner",
    help="before the target: show the primary test under a banner, or hide its p-value and CI",
)
def study_plan_command(
    db: str | None,
    study: str,
    file: str | None,
    primary_pair: str | None,
    target_neurons: int | None,
    alpha: float,
    min_gold_accuracy: float | None,
    qualification_items: int,
    min_seconds: float | None,
    keep_straight_lining: bool,
    rater_cap: int | None,
    stopping_rule: str | None,
    interim: str,
) -> int:
    from core import db as dbmod
    from core import human_eval
    from core.plan import StudyPlan

    database = dbmod.connect(db, create=False)
    found = human_eval.get_study(database, study)
    if file is None and target_neurons is None:
        stored = human_eval.get_plan(database, found.name)
        if stored is None:
            raise NotFoundError(f"study {found.name!r} has no plan yet; fix one with --target-neurons N or --file")
        print_json(stored.to_json())
        return 0
    if file is not None:
        plan = plan_file(file)
    else:
        pair = split_list(primary_pair) if primary_pair else list(found.arms[:2])
        settings: dict[str, Any] = {
            "primary_pair": tuple(pair),
            "target_neurons": target_neurons,
            "ratings_per_item": found.ratings_per_item,
            "alpha": alpha,
            "min_gold_accuracy": min_gold_accuracy,
            "qualification_items": qualification_items,
            "min_seconds": min_seconds,
            "exclude_straight_lining": not keep_straight_lining,
            "rater_cap": rater_cap,
            "interim": interim,
        }
        if stopping_rule:
            settings["stopping_rule"] = stopping_rule
        plan = StudyPlan(**settings)
    print_json(human_eval.set_plan(database, found.name, plan).to_json())
    return 0


@study_group.command("purge", help="admin: export a study's ratings to --out, then delete them")
@db_option
@click.argument("study")
@option("--admin", required=True, help="an admin rater's name")
@option("--code", default=None, help="the admin's access code (default: $EVAL_ADMIN_CODE, or asked)")
@option("--out", required=True, help="where the export goes (a folder, a .zip or a .json file)")
@option("--format", "export_format", default="json", type=click.Choice(["csv", "json", "parquet"]))
def study_purge_command(db: str | None, study: str, admin: str, code: str | None, out: str, export_format: str) -> int:
    import os

    from core import db as dbmod
    from core import export, raters

    database = dbmod.connect(db, create=False)
    admin_code = code or os.environ.get("EVAL_ADMIN_CODE") or ask_code(f"access code of {admin}: ")
    signed_in = raters.authenticate(database, admin, admin_code)
    print_json(export.purge_study_ratings(database, study, signed_in, out, export_format))
    return 0
