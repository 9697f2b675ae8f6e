"""The command line: `python -m core <command> --help` (installed: `neuron-workbench`). Flags and printing only; the
work is done in core modules, imported by each command when it runs (so --help loads no model library).

One module per command group (collect, explain, score, study, rater, export); the flags several commands share are
decorators in core/cli/options.py. Errors of ours are printed as one line on stderr with exit status 2; tracebacks go
to the log only (-v shows them)."""

from __future__ import annotations

import logging
import os
import sqlite3
import sys
from pathlib import Path

import click

from core import config
from core.cli import collect, explain, export, rater, score, study
from core.cli.base import Group, option
from core.cli.options import DB_EXISTED_KEY, DB_KEY
from core.errors import WorkbenchError

log = logging.getLogger("core")

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 120}


@click.group(
    cls=Group,
    context_settings=CONTEXT_SETTINGS,
    help="Neuron explanation workbench. Typical flow: `collect` activations, look at a `neuron`, `explain` it under "
    "several prompt formats, `score` the explanations, then run a blinded `study` with raters.",
)
@option("-v", "--verbose", is_flag=True, help="log debug details to stderr")
def cli(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if not verbose:
        # Loading a model takes a second or two and needs no bar ("Loading weights" on every load); long work
        # (collection, explaining, scoring) shows its own. Read by huggingface_hub and transformers at import.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


COMMANDS: tuple[click.Command, ...] = (  # the order of --help: the typical flow
    collect.collect_command,
    collect.neuron_command,
    explain.import_openai_command,
    explain.prompt_command,
    explain.explain_command,
    explain.import_explanations_command,
    explain.explanations_command,
    score.import_scores_command,
    score.simulate_command,
    score.score_command,
    collect.activate_command,
    score.demo_command,
    score.run_command,
    score.puzzles_command,
    study.study_group,
    rater.rater_group,
    export.export_command,
    export.import_ratings_command,
)
for _command in COMMANDS:
    cli.add_command(_command)


def prog_name() -> str:
    """What the usage lines call the program: the console script's name, else `python -m core`."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return "neuron-workbench" if name.startswith("neuron-workbench") else "python -m core"


def _new_database_note(meta: dict[str, object]) -> None:
    """Say so when a command created the database file (a mistyped --db must not pass unnoticed)."""
    if meta.get(DB_EXISTED_KEY) is False and os.environ.get("RANK", "0") == "0":
        path = config.db_path(_db(meta))
        if path.exists():
            print(f"created a new database at {path}", file=sys.stderr)


def _db(meta: dict[str, object]) -> str | None:
    value = meta.get(DB_KEY)
    return value if isinstance(value, str) else None


def main(argv: list[str] | None = None) -> int:
    """Run one command line (default: sys.argv[1:]) and return its exit status. As with argparse, a usage error
    prints the usage and raises SystemExit(2), and --help prints help and raises SystemExit(0)."""
    args = sys.argv[1:] if argv is None else list(argv)
    meta: dict[str, object] = {}
    try:
        with cli.make_context(prog_name(), args) as ctx:
            meta = ctx.meta
            code = cli.invoke(ctx)
        _new_database_note(meta)
        return int(code or 0)
    except click.exceptions.Exit as exc:  # --help
        raise SystemExit(exc.exit_code) from None
    except click.ClickException as exc:  # a usage error: the usage, then one line, exit status 2
        exc.show()
        raise SystemExit(exc.exit_code) from None
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
        print(f"error: {database_error(config.db_path(_db(meta)), exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished work is saved; rerun the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `python -m core study items S --json | head`; see Python's signal docs
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


__all__ = ["cli", "main", "prog_name"]
