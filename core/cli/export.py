"""A study's data in and out: `export` and `import-ratings`."""

from __future__ import annotations

import click

from core.cli.base import Command, option
from core.cli.options import db_option, json_option, summary_flags
from core.cli.output import print_json


@click.command("export", cls=Command, help="export a study's ratings, items and summary, unblinded")
@db_option
@option("--study", required=True)
@option("--format", "export_format", default="csv", type=click.Choice(["csv", "json", "parquet"]))
@option("--out", default=None, help="a folder (default: ./<study>-export), a .zip, or a .json file for --format json")
@summary_flags
def export_command(
    db: str | None,
    study: str,
    export_format: str,
    out: str | None,
    min_gold_accuracy: float | None,
    simulator: str | None,
) -> int:
    from core import db as dbmod
    from core import export

    database = dbmod.connect(db, create=False)
    files = export.export_study(database, study, export_format, simulator, min_gold_accuracy)
    paths = export.write_export(files, out or f"{export.file_stem(study)}-export")
    print_json({"study": study, "format": export_format, "files": [str(path) for path in paths]})
    return 0


@click.command("import-ratings", cls=Command, help="import ratings collected elsewhere from a CSV file")
@db_option
@option("--study", required=True)
@click.argument(
    "file",
    help="CSV with item_id, rater, choice (left|right|tie|both_bad)[, confidence, seconds, comment], e.g. a "
    "ratings CSV of `export`; all or nothing: one bad row (reported by line) and nothing is imported",
)
@option("--create-raters", is_flag=True, help="add unknown raters (with an unusable code)")
@json_option("print the report as JSON")
def import_ratings_command(db: str | None, study: str, file: str, create_raters: bool, as_json: bool) -> int:
    from core import db as dbmod
    from core import export

    database = dbmod.connect(db, create=False)
    report = export.import_ratings(database, study, file, create_raters=create_raters)
    if as_json:
        print_json(report.to_json())
    else:
        print(report.summary_line(study))
    return 0
