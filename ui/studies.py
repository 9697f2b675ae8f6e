"""What the Rate and Results pages show of a study: the excerpts and progress a rater sees, and the tables of
preferences and agreement with their column formats."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import streamlit as st

from core.records import SPLITS, ActivationRecord, NeuronRecord
from ui.tables import number_column

# Records shown to raters next to the explanations: the held-out test split's top excerpts (docs/METHOD.md §1), which no
# explainer saw in its prompt.
RATING_SPLIT = "test"
RATING_EXCERPTS = 5


def rating_excerpts(record: NeuronRecord, count: int = RATING_EXCERPTS) -> list[ActivationRecord]:
    """The top excerpts a rater sees: the test split's, else (too few collected) the first top ones."""
    chosen = [record.top[i] for i in SPLITS[RATING_SPLIT][0] if i < len(record.top)][:count]
    return chosen or list(record.top[:count])


def progress_text(rated: int, remaining: int) -> tuple[str, float]:
    """A rater's position ("12 of 40": the item shown is number rated + 1) and the fraction done."""
    total = rated + remaining
    if total == 0:
        return "nothing to rate", 1.0
    current = min(rated + 1, total)
    return f"{current} of {total}", rated / total


PAIR_COLUMNS = [
    "rater", "arm_a", "arm_b", "n_ratings", "wins_a", "wins_b", "ties", "both_bad", "win_rate_a", "binomial_p",
]  # fmt: skip


def _interval(value: float | None, ci: Sequence[float | None] | None) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    if not ci or ci[0] is None or ci[1] is None:
        return f"{value:.2f}"
    return f"{value:.2f} ({ci[0]:.2f} to {ci[1]:.2f})"


def automated_table(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Humans against each automated score kind (core.stats `automated`): κ, logistic slope and τ, with CIs."""
    table = []
    for row in rows:
        kappa, logistic, rank = row.get("kappa") or {}, row.get("logistic") or {}, row.get("rank_correlation") or {}
        table.append(
            {
                "score": f"{row['kind']} · {row['name']}",
                "items": kappa.get("n_items"),
                "Cohen's κ": _interval(kappa.get("kappa"), kappa.get("ci")),
                "logistic slope": _interval(logistic.get("slope"), logistic.get("slope_ci")),
                "Kendall's τ": "–" if rank.get("tau") is None else f"{rank['tau']:.2f}",
            }
        )
    return pd.DataFrame(table)


def pairs_table(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Win-rate rows of core.stats (per pair, or per rater and pair), narrow enough to read: the counts, the win
    rate of arm A over arm B among decisive ratings with its Wilson 95% interval as text ("56% (27%–81%)", as in
    the figures above the table), and the binomial p-value. The shares of ties and both-bad follow from the
    counts and are left out."""
    table = [{**row, "win_rate_a": rate_text(row.get("win_rate"), row.get("wilson_ci"))} for row in rows]
    columns = [c for c in PAIR_COLUMNS if c != "rater" or any("rater" in row for row in rows)]
    frame = pd.DataFrame(table, columns=columns)
    frame["binomial_p"] = pd.to_numeric(frame["binomial_p"], errors="coerce")
    return frame


def percent(value: float | None) -> str:
    """A share as a whole percentage; "–" when undefined."""
    return "–" if value is None or not math.isfinite(value) else f"{value:.0%}"


def rate_text(rate: float | None, ci: Sequence[float | None] | None = None) -> str:
    """A proportion with its 95% CI, e.g. "62% (48–74%)"; "–" when undefined."""
    if rate is None or not math.isfinite(rate):
        return "–"
    if not ci or ci[0] is None or ci[1] is None:
        return percent(rate)
    return f"{percent(rate)} ({ci[0]:.0%}–{ci[1]:.0%})"


PAIRS_TABLE_CONFIG = {
    "win_rate_a": st.column_config.TextColumn(help="share of decisive ratings (1 or 2) won by arm A, 95% CI"),
    "binomial_p": number_column("%.3g", "two-sided binomial test against no preference"),
}
MEASURE_TABLE_CONFIG = {"value": number_column("%.3g")}
