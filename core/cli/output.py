"""What the commands print: JSON on stdout, aligned tables, and the reports at the end of `run`, `score` and
`puzzles`. Pure functions of their arguments, but for `print_json`."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from core.pipeline import RunReport, SetTable
    from core.puzzles import PuzzleReport


def print_json(value: Any) -> None:
    """`value` (dataclasses, numpy scalars and all: core.values.to_jsonable) as indented JSON on stdout."""
    from core.values import to_jsonable

    json.dump(to_jsonable(value), sys.stdout, ensure_ascii=False, indent=2, default=str)
    sys.stdout.write("\n")


def number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def join(values: Sequence[int]) -> str:
    return ",".join(map(str, values)) or "none"


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


def format_score_tables(tables: Sequence[SetTable], embedder: str | None = None) -> str:
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


def highlighted(tokens: Sequence[str], values: Sequence[float]) -> str:
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


def format_cost_table(report: Any, source: str | None) -> str:
    """What explaining and scoring cost (core.costs.CostReport): per explanation and format, then per neuron in all,
    with where prices came from; empty when nothing was scored."""
    table = report.table
    if table.empty:
        return ""
    where = f"dollars from {source}" if source else "no price list (copy prices.example.toml to prices.toml)"
    shown = table.reset_index()
    # Dollars per explanation are small: 3 decimals (format_table's) would show most as 0.000.
    shown["mean_usd"] = [f"${value:.6f}" if value == value else "-" for value in shown["mean_usd"]]
    shown["mean_score_per_1k_tokens"] = [
        f"{value:.5f}" if value == value else "-" for value in shown["mean_score_per_1k_tokens"]
    ]
    lines = ["", f"cost per explanation, explaining and scoring (tokens as recorded; {where}):", format_table(shown)]
    if report.usd_per_neuron is not None:
        lines.append(
            f"in all ${report.usd_in_all:.4f} for {report.neurons} neuron(s): ${report.usd_per_neuron:.6f} per neuron"
        )
    return "\n".join(lines)
