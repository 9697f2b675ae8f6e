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


# --- prompts and explanations ------------------------------------------------------------------------------------


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
