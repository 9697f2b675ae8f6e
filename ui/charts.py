"""The plotly figures the pages show. No token or explanation text goes into a figure; names that users chose
(arms, formats) are escaped (core.render.escape_plot_label), as plotly reads a few HTML tags in labels."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from core.records import ActivationRecord, NeuronRecord
from core.render import POSITIVE_RGB, escape_plot_label


def activation_histogram(record: NeuronRecord) -> go.Figure:
    """Token activations of the random and the top excerpts, with the neuron's quantile boundaries of the
    per-excerpt maximum over the corpus as dotted lines (docs/METHOD.md §1)."""
    # One set of bins for both, so that overlaid bars compare; top excerpts in the warm colour of the excerpts.
    colours = {"random excerpts": "rgb(120, 130, 150)", "top excerpts": "rgb({}, {}, {})".format(*POSITIVE_RGB)}
    figure = go.Figure()
    for name, records in (("random excerpts", record.random), ("top excerpts", record.top)):
        values = [a for r in records for a in r.activations if math.isfinite(a)]
        if values:
            figure.add_trace(
                go.Histogram(
                    x=values, name=name, opacity=0.6, nbinsx=60, bingroup="activations", marker_color=colours[name]
                )
            )
    for level, value in sorted(record.stats.quantiles.items()):
        if value is not None and math.isfinite(value):
            figure.add_vline(x=value, line_dash="dot", annotation_text=f"q{level:g}", annotation_position="top")
    figure.update_layout(
        barmode="overlay",
        xaxis_title="activation",
        yaxis_title="tokens",
        yaxis={"type": "log", "dtick": 1},  # labels at 1, 10, 100 … only
        height=320,
        margin={"t": 30, "b": 40, "l": 50, "r": 10},
        legend={"orientation": "h", "y": -0.25},
    )
    return figure


def simulation_scatter(records: Sequence[ActivationRecord], predictions: Sequence[Sequence[float]]) -> go.Figure:
    """Real activation against simulated value, one point per token: the score is the correlation of this cloud."""
    real = [a for r in records for a in r.activations]
    simulated = [float(p) for row in predictions for p in row]
    figure = go.Figure(go.Scatter(x=simulated, y=real, mode="markers", marker={"size": 5, "opacity": 0.6}))
    figure.update_layout(
        xaxis_title="simulated (0–10)",
        yaxis_title="real activation",
        height=300,
        margin={"t": 20, "b": 40, "l": 50, "r": 10},
    )
    return figure


def win_rate_figure(pairs: Sequence[Mapping[str, Any]]) -> go.Figure:
    """Win rate of arm A over arm B per pair (decisive ratings), with its Wilson 95% CI; 0.5 means no preference."""
    labels, rates, below, above = [], [], [], []
    for pair in pairs:
        rate, ci = pair.get("win_rate"), pair.get("wilson_ci") or [None, None]
        if rate is None:
            continue
        labels.append(escape_plot_label(f"{pair['arm_a']} over {pair['arm_b']}"))
        rates.append(rate)
        below.append(rate - ci[0] if ci[0] is not None else 0)
        above.append(ci[1] - rate if ci[1] is not None else 0)
    figure = go.Figure(
        go.Bar(
            x=rates,
            y=labels,
            orientation="h",
            error_x={"type": "data", "array": above, "arrayminus": below, "symmetric": False},
        )
    )
    figure.add_vline(x=0.5, line_dash="dot")
    figure.update_layout(
        xaxis={"range": [0, 1], "title": "win rate (95% CI)"},
        height=120 + 40 * len(labels),
        margin={"t": 20, "b": 40, "l": 10, "r": 10},
    )
    return figure


def bradley_terry_figure(bradley_terry: Mapping[str, Any]) -> go.Figure:
    """Bradley–Terry log-strength of each arm with its 95% CI."""
    rows = list(bradley_terry.get("arms") or [])
    strengths = [row["strength"] for row in rows]
    figure = go.Figure(
        go.Scatter(
            x=strengths,
            y=[escape_plot_label(row["arm"]) for row in rows],
            mode="markers",
            marker={"size": 10},
            error_x={
                "type": "data",
                "symmetric": False,
                "array": [row["ci"][1] - row["strength"] for row in rows],
                "arrayminus": [row["strength"] - row["ci"][0] for row in rows],
            },
        )
    )
    figure.add_vline(x=0, line_dash="dot")
    figure.update_layout(
        xaxis_title="log-strength (mean 0, 95% CI)",
        height=120 + 40 * len(rows),
        margin={"t": 20, "b": 40, "l": 10, "r": 10},
    )
    return figure


def distribution_figure(frame: pd.DataFrame, column: str, title: str, by: str = "format") -> go.Figure:
    """Box plots with every point of `column`, one box per value of `by` (formats in registry order)."""
    from core.prompts import FORMATS

    figure = go.Figure()
    present = [str(v) for v in frame[by].dropna().unique()] if len(frame) else []
    order = [name for name in FORMATS if name in present] + sorted(set(present) - set(FORMATS))
    for name in order:
        values = pd.to_numeric(frame.loc[frame[by].astype(str) == name, column], errors="coerce").dropna()
        if len(values):
            figure.add_trace(go.Box(y=values, name=escape_plot_label(name), boxpoints="all", jitter=0.3, pointpos=0))
    figure.update_layout(yaxis_title=title, showlegend=False, height=340, margin={"t": 20, "b": 40, "l": 50, "r": 10})
    return figure
