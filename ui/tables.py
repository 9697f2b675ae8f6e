"""The data frames the Neurons, Explain and Results pages show of explanations and their scores, and their column
formats: frames are pure functions of core results; the column formats are st.column_config."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import streamlit as st

from core.records import NeuronRecord
from core.values import finite_or_none

_INPUT_TOKEN_COLUMNS = ["input_tokens_server", "input_tokens_cl100k", "input_tokens_local", "input_tokens_unknown"]
EXPLANATION_COLUMNS = [
    "id", "format", "explainer", "explanation", "similarity", "reference_score",
    *_INPUT_TOKEN_COLUMNS, "output_tokens", "source",
]  # fmt: skip
# Shown whatever they hold; every other column of the explanation table is left out when no row has a value.
_ALWAYS_SHOWN = ("id", "format", "explainer", "explanation")


def score_column(score: Mapping[str, Any]) -> str:
    """The explanation table's column for a score: its simulator (`<scorer>:<model>` for scorers other than
    simulation) and method, with the split and calibration when they are not the default (valid, raw). Scores of
    two scorers, simulators or methods never share a column (docs/METHOD.md §10)."""
    label = f"{score.get('simulator')} · {score.get('method')}"
    if score.get("split") not in (None, "valid"):
        label += f" · {score['split']}"
    if score.get("calibrated"):
        label += " · calibrated"
    return label


def explanation_table(
    rows: Sequence[Mapping[str, Any]],
    scores: Sequence[Mapping[str, Any]] = (),
    similarities: Sequence[Mapping[str, Any]] = (),
) -> pd.DataFrame:
    """One row per explanation: format, explainer, text, then one column per scorer·method (see `score_column`)
    holding every ok score of that explanation, then mean similarity to its references, the imported reference
    score, tokens in and out. Scores of different scorers, simulators or methods stay in separate columns."""
    by_explanation: dict[int, dict[str, float | None]] = {}
    score_columns: list[str] = []
    for score in scores:
        if score.get("status") != "ok":
            continue
        column = score_column(score)
        if column not in score_columns:
            score_columns.append(column)
        by_explanation.setdefault(score["explanation_id"], {})[column] = finite_or_none(score.get("score"))
    cosines: dict[int, list[float]] = {}
    for row in similarities:
        value = finite_or_none(row.get("cosine"))
        if value is not None:
            cosines.setdefault(row["explanation_id"], []).append(value)
    from core.tokens import input_tokens_column

    table = []
    for row in rows:
        found = by_explanation.get(row["id"], {})
        table.append(
            {
                "id": row["id"],
                "format": row["format"],
                "explainer": row["explainer"],
                "explanation": row.get("explanation") or "",
                **{column: found.get(column) for column in score_columns},
                "source": row.get("source"),
                "similarity": sum(cosines[row["id"]]) / len(cosines[row["id"]]) if row["id"] in cosines else None,
                "reference_score": finite_or_none(row.get("reference_score")),
                input_tokens_column(row.get("tokenizer")): row.get("input_tokens"),
                "output_tokens": row.get("output_tokens"),
            }
        )
    columns = [*_ALWAYS_SHOWN, *score_columns, *[c for c in EXPLANATION_COLUMNS if c not in _ALWAYS_SHOWN]]
    frame = pd.DataFrame(table, columns=columns)
    for column in (*score_columns, "similarity", "reference_score", *_INPUT_TOKEN_COLUMNS, "output_tokens"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return without_empty_columns(frame, [c for c in EXPLANATION_COLUMNS if c not in _ALWAYS_SHOWN])


def explanation_table_config(table: pd.DataFrame) -> dict[str, Any]:
    """EXPLANATION_TABLE_CONFIG plus a 3-decimal format for each score column of `table`."""
    from core.simulate import method_note

    extra = {
        column: number_column("%.3f", method_note(column.split(" · ")[1]))
        for column in table.columns
        if " · " in str(column)
    }
    return {**EXPLANATION_TABLE_CONFIG, **extra}


def without_empty_columns(frame: pd.DataFrame, optional: Sequence[str]) -> pd.DataFrame:
    """`frame` without those of the `optional` columns that hold no value in any row (a similarity column when
    nothing was compared, a source column when nothing was imported): fewer columns to scroll past."""
    empty = [c for c in optional if c in frame and not frame[c].notna().any()]
    return frame.drop(columns=empty)


def number_column(fmt: str, help_text: str | None = None) -> Any:
    """A number column shown with printf-style `fmt`, and `help_text` on hover."""
    return st.column_config.NumberColumn(format=fmt, help=help_text)


# Column formats of the tables the pages show: scores to 3 decimals, token means as whole tokens, ratios to two
# decimals, p-values to 3 significant digits. Entries for columns a table lacks are ignored.
EXPLANATION_TABLE_CONFIG = {
    "score": number_column("%.3f", "correlation of simulated and real activations (docs/METHOD.md §4)"),
    "similarity": number_column("%.3f", "mean cosine to the reference explanations"),
    "reference_score": number_column("%.3f", "score published with an import"),
    "explanation": st.column_config.TextColumn(width="large"),
}
JOB_TABLE_CONFIG = {"explanation": st.column_config.TextColumn(width="large")}
COST_TABLE_CONFIG = {
    **{f"mean_{kind}_tokens": number_column("%.0f") for kind in ("output", "total")},
    "mean_input_tokens_cl100k": number_column("%.0f", "counted offline with cl100k_base, as the preview counts"),
    "mean_input_tokens_server": number_column("%.0f", "as the API that answered reported them"),
    "mean_input_tokens_local": number_column("%.0f", "counted with the explainer's Hugging Face tokenizer"),
    "mean_input_tokens_unknown": number_column("%.0f", "stored without saying what counted them"),
    **{
        f"original_over_format_{kind}": number_column("%.2f×", f"original's mean {kind} tokens ÷ this format's")
        for kind in ("input", "total")
    },
}
SCORING_COST_CONFIG = {
    "mean_scorer_input_tokens": number_column("%.0f", "the scorer's requests per explanation, as recorded"),
    "mean_scorer_output_tokens": number_column("%.0f", "the scorer's answers per explanation, as recorded"),
    "mean_total_tokens_with_scoring": number_column("%.0f", "explaining (input + output) plus scoring"),
    "mean_usd": number_column("$%.5f", "explaining plus scoring, from the price list (prices.toml)"),
    "mean_score_per_1k_tokens": number_column("%.4f", "the explanation's score ÷ its tokens with scoring × 1000"),
}
FORMAT_SUMMARY_CONFIG = {
    "mean_score": number_column("%.3f"),
    "score_ci_lo": number_column("%.3f", "95% bootstrap interval over neurons"),
    "score_ci_hi": number_column("%.3f", "95% bootstrap interval over neurons"),
    "mean_similarity": number_column("%.3f"),
    **{f"mean_input_tokens_{unit}": number_column("%.0f") for unit in ("cl100k", "server", "local", "unknown")},
}
DIFFERENCE_TABLE_CONFIG = {
    "mean_diff": number_column("%+.3f", "mean of (format − baseline) score over the neurons both have"),
    "ci_lo": number_column("%+.3f", "95% paired bootstrap interval"),
    "ci_hi": number_column("%+.3f", "95% paired bootstrap interval"),
    "p_value": number_column("%.3g", "Wilcoxon signed-rank, two-sided (5 or more neurons)"),
}


def in_format_order(frame: pd.DataFrame, column: str = "format") -> pd.DataFrame:
    """The rows of `frame` with the prompt formats in registry order, then any others by name."""
    from core.prompts import FORMATS

    if frame.empty or column not in frame:
        return frame
    names = [str(name) for name in frame[column]]
    rank = {name: i for i, name in enumerate([*FORMATS, *sorted(set(names) - set(FORMATS))])}
    order = sorted(range(len(frame)), key=lambda i: rank[names[i]])
    return frame.iloc[order].reset_index(drop=True)


def scorers(rows: pd.DataFrame) -> list[str]:
    """The simulator · method pairs that scored these rows: each is one comparable set of scores (docs/METHOD.md §4)."""
    if "simulator" not in rows or rows["simulator"].dropna().empty:
        return []
    scored = rows.dropna(subset=["simulator"])
    return sorted(
        {f"{simulator} · {method}" for simulator, method in zip(scored["simulator"], scored["method"], strict=True)}
    )


def scorer_kind(simulator: str) -> str:
    """The scorer that stored a score under `simulator`: its prefix for detection, fuzzing and embedding
    (`<scorer>:<model>`, core.scorers.stored_name), else simulation (which keeps its simulator names)."""
    from core.scorers import SCORERS

    prefix = str(simulator).partition(":")[0]
    return prefix if prefix in SCORERS and prefix != "simulation" else "simulation"


def scorer_label(entry: str) -> str:
    """A `scorers` entry as the pickers show it, naming its scorer: `hf:tiny · all_at_once (simulation)`."""
    simulator = entry.partition(" · ")[0]
    return f"{entry} ({scorer_kind(simulator)})"


@dataclass(frozen=True)
class ExplanationSet:
    """One explainer's explanations from one source (core.provenance): the unit a format table may average over."""

    explainer: str
    source: str
    origin: str

    @property
    def label(self) -> str:
        return f"{self.explainer} · {self.source} ({self.origin})"

    def rows(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The rows of `frame` (with `explainer` and `source_key` columns) that belong to this set."""
        return frame[(frame["explainer"] == self.explainer) & (frame["source_key"] == self.source)]


def explanation_sets(frame: pd.DataFrame) -> list[ExplanationSet]:
    """The explanation sets among `frame`'s rows (columns explainer, source_key, origin), largest first: tables
    of formats are made per set, so that no mean, paired difference or token cost pools two explainers or two
    sources."""
    if frame.empty or "source_key" not in frame:
        return []
    sizes = frame.groupby(["explainer", "source_key"], sort=True).size()
    origins = frame.drop_duplicates(["explainer", "source_key"]).set_index(["explainer", "source_key"])["origin"]
    ordered = sorted(sizes.index, key=lambda key: (-sizes[key], key))
    return [ExplanationSet(explainer, source, str(origins[explainer, source])) for explainer, source in ordered]


def rows_of_scorer(rows: pd.DataFrame, scorer: str) -> pd.DataFrame:
    """The rows of one `scorers` entry, plus unscored rows (they still carry similarity and token cost)."""
    simulator, _, method = scorer.partition(" · ")
    same = (rows["simulator"] == simulator) & (rows["method"] == method)
    return rows[same | rows["simulator"].isna()]


def format_summary(rows: pd.DataFrame, simulator: str) -> pd.DataFrame:
    """core.scoring.format_summary of one simulator's scores in registry order, without the similarity columns
    when no explanation was compared to a reference."""
    from core import scoring

    table = in_format_order(scoring.format_summary(rows, simulator=simulator))
    if "n_similarity" in table and not (table["n_similarity"] > 0).any():
        table = table.drop(columns=["mean_similarity", "n_similarity"])
    return table


def filter_by_score(table: pd.DataFrame, min_score: float) -> pd.DataFrame:
    """The neurons of an overview table whose best score is at least `min_score` (unscored ones never pass)."""
    return table[table["best_score"].notna() & (table["best_score"] >= min_score)]


def filter_message(table: pd.DataFrame, min_score: float, layer: int) -> str:
    """Why no neuron of a layer passes the score filter, and what to do about it."""
    scored = table["best_score"].dropna()
    if scored.empty:
        return (
            f"No neuron of layer {layer} has a score from this simulator yet. Score explanations on the Explain page "
            "or with `python -m core score`, or pick another layer or simulator."
        )
    return (
        f"No neuron of layer {layer} has a best score of at least {min_score:.2f}: {len(scored)} are scored, the "
        f"best at {scored.max():.2f}. Lower the threshold in the sidebar."
    )


@dataclass(frozen=True)
class Simulation:
    """One stored simulation of an explanation, ready to show token by token."""

    explanation_id: int
    label: str
    explanation: str
    split: str
    calibrated: bool
    score: float | None
    predictions: tuple[tuple[float, ...], ...]


def simulations(scores: Sequence[Mapping[str, Any]]) -> list[Simulation]:
    """The ok scores that kept their predictions, labelled by format, explainer, simulator and split."""
    found = []
    for row in scores:
        if row.get("status") != "ok" or not row.get("predictions"):
            continue
        score = finite_or_none(row.get("score"))
        shown = "undefined" if score is None else f"{score:.3f}"
        calibrated = bool(row.get("calibrated"))
        label = (
            f"#{row['explanation_id']} {row['format']} by {row['explainer']}, simulated by {row['simulator']} "
            f"({row['method']}, {row['split']}{', calibrated' if calibrated else ''}): score {shown}"
        )
        predictions = tuple(tuple(float(p) if p is not None else math.nan for p in rec) for rec in row["predictions"])
        found.append(
            Simulation(
                row["explanation_id"], label, row.get("explanation") or "", row["split"], calibrated, score, predictions
            )
        )
    return found


JOB_COLUMNS = ["id", "neuron", "format", "sample", "status", "input_tokens_server", "input_tokens_cl100k",
               "output_tokens", "explanation", "error"]  # fmt: skip


def job_table(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Stored explanations (ok or failed) as the Explain page's live table; input tokens under their unit
    (core.tokens.TOKEN_UNITS), a unit no row has left out."""
    from core.tokens import input_tokens_column

    table = []
    for row in rows:
        entry = {
            "id": row["id"],
            "neuron": f"{row['layer']}:{row['neuron']}",
            "format": row["format"],
            "sample": row.get("sample"),
            "status": row["status"],
            "input_tokens_server": None,
            "input_tokens_cl100k": None,
            "output_tokens": row.get("output_tokens"),
            "explanation": row.get("explanation") or "",
            "error": row.get("error") or "",
        }
        if row.get("input_tokens") is not None:
            entry[input_tokens_column(row.get("tokenizer"))] = row["input_tokens"]
        table.append(entry)
    columns = list(JOB_COLUMNS)
    for extra in ("input_tokens_local", "input_tokens_unknown"):
        if any(extra in entry for entry in table):
            columns.insert(columns.index("output_tokens"), extra)
    return pd.DataFrame(table, columns=columns)


def stats_table(record: NeuronRecord) -> pd.DataFrame:
    """A neuron's statistics as (statistic, value) rows; quantiles are of the per-excerpt maximum (METHOD.md §1)."""
    rows = [("max", record.stats.max), ("mean", record.stats.mean), ("variance", record.stats.variance)]
    rows += [(f"q{level:g} of excerpt max", value) for level, value in sorted(record.stats.quantiles.items())]
    rows += [("top excerpts", len(record.top)), ("random excerpts", len(record.random))]
    return pd.DataFrame(rows, columns=["statistic", "value"])


def cost_with_scoring(rows: pd.DataFrame, scorer: str, prices: Any) -> pd.DataFrame:
    """Per format, what explaining and then scoring with `scorer` (a `scorers` entry) cost: core.costs.add_costs over
    `rows` (score rows of one explanation set, unscored ones included), priced with `prices`."""
    from core import costs

    simulator, _, method = scorer.partition(" · ")
    mine = rows[(rows["simulator"] == simulator) & (rows["method"] == method)]
    scoring = costs.scoring_per_explanation(_records(mine))
    scores = {
        int(i): None if pd.isna(s) else float(s) for i, s in zip(mine["explanation_id"], mine["score"], strict=True)
    }
    explanations = rows.drop_duplicates("explanation_id").rename(columns={"explanation_id": "id"})
    kind = scorer_kind(simulator)
    model = simulator if kind == "simulation" else simulator.partition(":")[2]
    table = costs.add_costs(_records(explanations), scoring, scores, prices, model)
    return in_format_order(table.reset_index())


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as dicts with NaN as None, as core's functions take them."""
    return [{k: (None if _missing(v) else v) for k, v in row.items()} for row in frame.to_dict("records")]


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
