"""The click classes every command uses: options that feed one typed options object, sets of flags of which only one
may be given, help sections, and groups that list their commands in the order of the typical flow."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click
from click.core import ParameterSource

F = TypeVar("F", bound=Callable[..., Any])
Builder = Callable[..., object]
"""Builds one options object (CollectOptions, ExplainOptions …) from keyword arguments named like its flags."""

GIVEN = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


class Option(click.Option):
    """A click option that may
    - feed `feeds`, a builder: the command then receives the builder's result, under the builder's name, instead of
      the flags that feed it (`--simulator-device cuda` … → `simulator_options: SimulatorOptions`);
    - belong to a set `one_of` of flags of which at most one may be given, and exactly one when `one_required`;
    - show under its own help `section`."""

    def __init__(
        self,
        param_decls: Sequence[str] | None = None,
        *,
        feeds: Builder | None = None,
        one_of: str | None = None,
        one_required: bool = False,
        section: str | None = None,
        **attrs: Any,
    ) -> None:
        super().__init__(param_decls, **attrs)
        self.feeds = feeds
        self.one_of = one_of
        self.one_required = one_required
        self.section = section


def option(*param_decls: str, **attrs: Any) -> Callable[[F], F]:
    """`click.option` with our Option class (feeds, one_of, one_required, section)."""
    return click.option(*param_decls, cls=Option, **attrs)


def _flag(option: click.Option) -> str:
    return max(option.opts, key=len)


def _check_one_of(options: list[Option], ctx: click.Context) -> None:
    """Sets of flags of which at most one may be given (argparse's mutually exclusive groups)."""
    sets: dict[str, list[Option]] = {}
    for member in options:
        if member.one_of is not None:
            sets.setdefault(member.one_of, []).append(member)
    for members in sets.values():
        given = [m for m in members if m.name is not None and ctx.get_parameter_source(m.name) in GIVEN]
        if len(given) > 1:
            raise click.UsageError(f"{_flag(given[1])} cannot be used with {_flag(given[0])}; give one of them", ctx)
        if not given and any(m.one_required for m in members):
            raise click.UsageError(f"one of {', '.join(_flag(m) for m in members)} is required", ctx)


def _build_options(options: list[Option], ctx: click.Context) -> None:
    """Replace the flags that feed a builder by its result, named like the builder."""
    values: dict[Builder, dict[str, Any]] = {}
    for member in options:
        if member.feeds is not None and member.name is not None:
            values.setdefault(member.feeds, {})[member.name] = ctx.params.pop(member.name)
    for build, flags in values.items():
        ctx.params[build.__name__] = build(**flags)


def finish_parse(command: click.Command, ctx: click.Context) -> None:
    """After click has parsed a command's flags: check the one-of sets, then build the options objects (so that
    `make_context` shows what the command will get). Not while completing or checking a command line
    (resilient parsing), where flags may be missing."""
    if ctx.resilient_parsing:
        return
    options = [param for param in command.get_params(ctx) if isinstance(param, Option)]
    _check_one_of(options, ctx)
    _build_options(options, ctx)


def format_option_sections(command: click.Command, ctx: click.Context, formatter: click.HelpFormatter) -> None:
    """The options under "Options", and those with a section under their own heading."""
    sections: dict[str, list[tuple[str, str]]] = {"Options": []}
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None or isinstance(param, click.Argument):
            continue
        section = param.section if isinstance(param, Option) and param.section else "Options"
        sections.setdefault(section, []).append(record)
    for title, rows in sections.items():
        if rows:
            with formatter.section(title):
                formatter.write_dl(rows)


class Command(click.Command):
    """A command whose one-line help in its group's list is its whole help, as argparse showed it."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        rest = super().parse_args(ctx, args)
        finish_parse(self, ctx)
        return rest

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        format_option_sections(self, ctx, formatter)

    def get_short_help_str(self, limit: int = 45) -> str:
        return (self.short_help or self.help or "").strip()


class Group(click.Group):
    """A group of commands, listed in the order they were added (the typical flow), not alphabetically."""

    command_class = Command
    group_class = type

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        rest = super().parse_args(ctx, args)
        finish_parse(self, ctx)
        return rest

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        format_option_sections(self, ctx, formatter)
        self.format_commands(ctx, formatter)

    def get_short_help_str(self, limit: int = 45) -> str:
        return (self.short_help or self.help or "").strip()

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)
