"""Raters of human evaluation studies: `rater add|assign|unassign|remove|reset-code|list`, and how an access code
is asked for."""

from __future__ import annotations

import sys
from typing import Any

import click

from core.cli.base import Group, option
from core.cli.options import db_option, split_list
from core.cli.output import print_json
from core.errors import InputError, NotFoundError


def ask_code(prompt: str, *, given: str | None = None, from_stdin: bool = False, confirm: bool = False) -> str:
    """An access code: `given` on the command line (with a warning: others can see it), else one line of stdin when
    `from_stdin` or stdin is not a terminal, else asked without echo (twice with `confirm`). A closed or empty
    stdin is an InputError, never a hang or a traceback (cron jobs, CI, `< /dev/null`)."""
    import getpass

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


@click.group("rater", cls=Group, help="raters of human evaluation studies")
def rater_group() -> None:
    pass


@rater_group.command(
    "add",
    help="register a rater with an access code",
    epilog="Without --code or --code-stdin the code is asked twice without echo (or read from piped stdin).",
)
@db_option
@option("--name", required=True, help="display name, also used to sign in")
@option(
    "--code-stdin",
    is_flag=True,
    one_of="code",
    help="read the access code from the first line of stdin (for scripts)",
)
@option(
    "--code",
    default=None,
    one_of="code",
    help="the access code; visible to other users in ps and shell history, so avoid it",
)
@option("--admin", is_flag=True, help="may export and purge studies")
@option("--studies", default=None, help="studies this rater may rate, comma-separated (later: `rater assign`)")
def rater_add_command(
    db: str | None, name: str, code_stdin: bool, code: str | None, admin: bool, studies: str | None
) -> int:
    from core import db as dbmod
    from core import human_eval, raters

    database = dbmod.connect(db)
    names = [human_eval.get_study(database, study).name for study in split_list(studies)]  # check them first
    access_code = ask_code(f"access code for {name}: ", given=code, from_stdin=code_stdin, confirm=True)
    rater = raters.add_rater(database, name, access_code, admin=admin)
    result: dict[str, Any] = {"id": rater.id, "name": rater.name, "role": rater.role}
    if names:
        result["studies"] = human_eval.assign_studies(database, rater.name, names)
    print_json(result)
    return 0


def _assign(db: str | None, name: str, studies: str, remove: bool) -> int:
    from core import db as dbmod
    from core import human_eval

    database = dbmod.connect(db, create=False)
    assigned = human_eval.assign_studies(database, name, split_list(studies), remove)
    print_json({"name": name, "studies": assigned})
    return 0


@rater_group.command("assign", help="give a rater studies to rate")
@db_option
@option("--name", required=True, help="the rater")
@option("--studies", required=True, help="study names, comma-separated")
def rater_assign_command(db: str | None, name: str, studies: str) -> int:
    return _assign(db, name, studies, remove=False)


@rater_group.command("unassign", help="take studies from a rater (their ratings stay)")
@db_option
@option("--name", required=True, help="the rater")
@option("--studies", required=True, help="study names, comma-separated")
def rater_unassign_command(db: str | None, name: str, studies: str) -> int:
    return _assign(db, name, studies, remove=True)


@rater_group.command(
    "remove", help="remove a rater: no more sign-ins or studies; their past ratings are kept and stay attributed"
)
@db_option
@option("--name", required=True, help="the rater")
def rater_remove_command(db: str | None, name: str) -> int:
    from core import db as dbmod
    from core import raters

    print_json(raters.remove_rater(dbmod.connect(db, create=False), name))
    return 0


@rater_group.command("reset-code", help="give a rater (also a removed one) a new access code")
@db_option
@option("--name", required=True, help="the rater")
@option("--code-stdin", is_flag=True, one_of="code", help="read the new code from the first line of stdin")
@option("--code", default=None, one_of="code", help="the new code; visible to other users in ps, so avoid it")
def rater_reset_code_command(db: str | None, name: str, code_stdin: bool, code: str | None) -> int:
    from core import db as dbmod
    from core import raters

    database = dbmod.connect(db, create=False)
    raters.list_raters(database)  # a damaged database fails before the code is asked
    if dbmod.get_rater(database, name.strip()) is None:
        raise NotFoundError(f"no rater named {name!r}; `python -m core rater list` shows them")
    access_code = ask_code(f"new access code for {name}: ", given=code, from_stdin=code_stdin, confirm=True)
    rater = raters.reset_code(database, name, access_code)
    print_json({"id": rater.id, "name": rater.name, "role": rater.role, "code_reset": True})
    return 0


@rater_group.command("list", help="list raters (names, roles and studies, never codes)")
@db_option
def rater_list_command(db: str | None) -> int:
    from core import db as dbmod
    from core import raters

    database = dbmod.connect(db, create=False)
    studies = {row["id"]: row["name"] for row in dbmod.list_studies(database)}
    rows = raters.list_raters(database)
    for row in rows:
        row["studies"] = [studies[study_id] for study_id in dbmod.rater_study_ids(database, row["id"])]
    print_json(rows)
    return 0
