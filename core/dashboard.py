"""What the Streamlit pages share: the per-run database, error display, cached queries, figures and tables.

Pages stay thin (STYLE.md habit 5): they read widgets, call these functions and core, and render. Queries are
cached with st.cache_data keyed by the database path and `db.data_version` (neuron records: `db.records_version`),
so a write by the CLI or by another session shows on the next rerun. No SQL here (it is all in core.db) and
nothing that loads a model.
"""

from __future__ import annotations

import html
import io
import logging
import math
import re
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import pandas as pd
import plotly.graph_objects as go
import sqlite_utils
import streamlit as st

from core import config
from core import db as dbmod
from core.errors import InputError, WorkbenchError
from core.records import SPLITS, ActivationRecord, NeuronId, NeuronRecord, neurons_from_csv

if TYPE_CHECKING:  # human_eval pulls in the statistics stack, which the home page does not need
    from core.raters import Rater

log = logging.getLogger(__name__)

# The session-state key of the signed-in rater (a core.raters.Rater), shared by the Rate, Explain and Results
# pages so that one sign-in serves them all.
RATER_KEY = "signed_in_rater"
# Records shown to raters next to the explanations: the held-out test split's top excerpts (SPEC.md §1), which no
# explainer saw in its prompt.
RATING_SPLIT = "test"
RATING_EXCERPTS = 5


# ---------------------------------------------------------------------------------------------------------------
# The database of one script run, and errors shown to people
# ---------------------------------------------------------------------------------------------------------------


@contextmanager
def database(path: str | Path | None = None) -> Iterator[sqlite_utils.Database]:
    """A connection for one script run (to $EVAL_DB by default), closed when the run ends, stops or reruns."""
    db = dbmod.connect(config.db_path(path))
    try:
        yield db
    finally:
        db.conn.close()


def one_line(message: str) -> str:
    """A message on one line, with markdown characters escaped so st.error shows them literally."""
    text = " ".join(str(message).split())
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|~$<>:])", r"\\\1", text)


@contextmanager
def errors_shown() -> Iterator[None]:
    """Show our own errors (WorkbenchError) as one st.error line and end the block; the traceback goes to the log."""
    try:
        yield
    except WorkbenchError as exc:
        log.info("shown to the user: %s", exc, exc_info=True)
        st.error(one_line(str(exc)))


def public_url(url: str | None) -> str | None:
    """A base URL without user, password, query or fragment, safe to show."""
    if not url:
        return None
    parts = urlsplit(url)
    netloc = f"{parts.hostname or ''}:{parts.port}" if parts.port else parts.hostname or ""
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def markdown_escape(text: str) -> str:
    """Text for a markdown-rendered label (headers, captions, widget labels): every markdown character escaped."""
    return one_line(text)


def metric_row(figures: Sequence[tuple[str, str] | tuple[str, str, str | None]]) -> None:
    """(label, value[, help]) figures side by side, each as wide as its text, wrapping onto a new row when the
    window is narrow (fixed columns would cut values such as "62% (31%–86%)" short)."""
    with st.container(horizontal=True, gap="medium"):
        for label, value, *help_text in figures:
            st.metric(markdown_escape(label), value, help=help_text[0] if help_text else None, width="content")


# ---------------------------------------------------------------------------------------------------------------
# Signing in: one rater per browser session, shared by the Rate, Explain and Results pages
# ---------------------------------------------------------------------------------------------------------------


def signed_in() -> Rater | None:
    """The signed-in rater (core.raters.Rater) of this session, or None."""
    return st.session_state.get(RATER_KEY)


def sign_in(db: sqlite_utils.Database, purpose: str) -> Rater | None:
    """The signed-in rater; else a sign-in form (name and access code, checked by raters.authenticate) and
    None. A wrong name or code is shown as one error line and nothing else."""
    from core import raters

    rater = signed_in()
    if rater is not None:
        with st.sidebar:
            st.caption(f"Signed in as {markdown_escape(rater.name)}")
            if st.button("Sign out", key="sign_out"):
                st.session_state.pop(RATER_KEY, None)
                st.rerun()
        return rater
    if not raters.list_raters(db):
        st.info(
            "No one can sign in yet: this database has no raters. Create an admin from the command line with "
            "`python -m core rater add --name NAME --admin` (it asks for an access code), then sign in here."
        )
        return None
    st.markdown(purpose)
    # No key on the code field and a form that clears itself: the code does not linger in the session.
    with st.form("sign_in", clear_on_submit=True):
        name = st.text_input("Name", key="sign_in_name")
        code = st.text_input("Access code", type="password")
        submitted = st.form_submit_button("Sign in", type="primary")
    if submitted:
        with errors_shown():
            st.session_state[RATER_KEY] = raters.authenticate(db, name, code)
            st.rerun()
    return None


# ---------------------------------------------------------------------------------------------------------------
# Cached queries: keyed by (database file, data version, inputs); each opens its own connection on a miss
# ---------------------------------------------------------------------------------------------------------------


# Neuron records are cached on their own version, which ratings and explanations leave alone; entries also expire,
# for the one rewrite that version cannot see (db.records_version).
RECORDS_TTL_S = 600


@dataclass(frozen=True)
class Source:
    """Where cached queries read from: the database file, its data version at the start of this run (any write
    changes it), and the version of the neuron records alone."""

    path: str
    version: tuple[Any, ...]
    records: tuple[Any, ...]


def source(db: sqlite_utils.Database) -> Source:
    """The cache key parts of this run's database."""
    return Source(dbmod.database_file(db), dbmod.data_version(db), dbmod.records_version(db))


@st.cache_data(show_spinner=False, max_entries=64)
def _summary(path: str, version: tuple) -> dict[str, Any]:
    with database(path) as db:
        return dbmod.summary(db)


def summary(src: Source) -> dict[str, Any]:
    """db.summary: models with their layers, and counts of neurons, explanations, scores, studies, ratings."""
    return _summary(src.path, src.version)


@st.cache_data(show_spinner=False, max_entries=256, ttl=RECORDS_TTL_S)
def _neuron(path: str, records_version: tuple, model: str, layer: int, index: int) -> NeuronRecord:
    with database(path) as db:
        return dbmod.get_neuron(db, model, NeuronId(layer, index))


def neuron(src: Source, model: str, neuron_id: NeuronId) -> NeuronRecord:
    """The stored records and stats of one neuron; NotFoundError says what is there instead."""
    return _neuron(src.path, src.records, model, neuron_id.layer, neuron_id.index)


@st.cache_data(show_spinner=False, max_entries=64, ttl=RECORDS_TTL_S)
def _layers(path: str, records_version: tuple, model: str) -> list[tuple[int, int]]:
    with database(path) as db:
        return [tuple(row) for row in dbmod.list_layers(db, model)]


def layers(src: Source, model: str) -> list[tuple[int, int]]:
    """(layer, number of neurons) of a model."""
    return _layers(src.path, src.records, model)


@st.cache_data(show_spinner=False, max_entries=64, ttl=RECORDS_TTL_S)
def _neuron_indices(path: str, records_version: tuple, model: str, layer: int) -> list[int]:
    with database(path) as db:
        return dbmod.neuron_indices(db, model, layer)


def neuron_indices(src: Source, model: str, layer: int) -> list[int]:
    """The stored neuron indices of one layer."""
    return _neuron_indices(src.path, src.records, model, layer)


@st.cache_data(show_spinner=False, max_entries=64)
def _overview(path: str, version: tuple, model: str, layer: int | None, simulator: str | None) -> pd.DataFrame:
    with database(path) as db:
        rows = dbmod.neuron_overview(db, model, layer, simulator)
    columns = ["layer", "neuron", "max_activation", "n_explanations", "best_score"]
    frame = pd.DataFrame(rows, columns=columns)
    frame["best_score"] = pd.to_numeric(frame["best_score"], errors="coerce")  # unscored: NaN, never None
    return frame


def overview(src: Source, model: str, layer: int | None = None, simulator: str | None = None) -> pd.DataFrame:
    """Per neuron of a model (or layer): max activation, number of explanations, best score."""
    return _overview(src.path, src.version, model, layer, simulator)


@st.cache_data(show_spinner=False, max_entries=16)
def _simulators(path: str, version: tuple) -> list[str]:
    with database(path) as db:
        return dbmod.score_simulators(db)


def simulators(src: Source) -> list[str]:
    """Simulators that have scored something."""
    return _simulators(src.path, src.version)


@st.cache_data(show_spinner=False, max_entries=64)
def _search(path: str, version: tuple, text: str, model: str | None) -> pd.DataFrame:
    with database(path) as db:
        rows = dbmod.search_explanations(db, text, model)
    columns = ["id", "model", "layer", "neuron", "format", "explainer", "explanation"]
    return pd.DataFrame(rows, columns=columns)


def search(src: Source, text: str, model: str | None = None) -> pd.DataFrame:
    """Explanations whose text contains `text`, newest first."""
    return _search(src.path, src.version, text, model)


@st.cache_data(show_spinner=False, max_entries=128)
def _explanations(path: str, version: tuple, model: str, layer: int, index: int) -> list[dict[str, Any]]:
    with database(path) as db:
        return dbmod.list_explanations(db, model, NeuronId(layer, index), status="ok")


def explanations(src: Source, model: str, neuron_id: NeuronId) -> list[dict[str, Any]]:
    """The ok explanations of one neuron, newest first."""
    return _explanations(src.path, src.version, model, neuron_id.layer, neuron_id.index)


@st.cache_data(show_spinner=False, max_entries=32)
def _explanation_costs(path: str, version: tuple, model: str | None) -> pd.DataFrame:
    with database(path) as db:
        rows = dbmod.explanation_costs(db, model)
    return pd.DataFrame(rows, columns=["model", "format", "explainer", "input_tokens", "output_tokens"])


def explanation_costs(src: Source, model: str | None = None) -> pd.DataFrame:
    """Format, explainer and input/output tokens of every ok explanation (of one model, or all)."""
    return _explanation_costs(src.path, src.version, model)


@st.cache_data(show_spinner=False, max_entries=128)
def _neuron_scores(path: str, version: tuple, model: str, layer: int, index: int) -> list[dict[str, Any]]:
    with database(path) as db:
        return dbmod.scores_for_neuron(db, model, NeuronId(layer, index))


def neuron_scores(src: Source, model: str, neuron_id: NeuronId) -> list[dict[str, Any]]:
    """Every stored score of a neuron's explanations, predictions included."""
    return _neuron_scores(src.path, src.version, model, neuron_id.layer, neuron_id.index)


@st.cache_data(show_spinner=False, max_entries=128)
def _neuron_similarities(path: str, version: tuple, model: str, layer: int, index: int) -> list[dict[str, Any]]:
    with database(path) as db:
        return dbmod.similarities_for_neuron(db, model, NeuronId(layer, index))


def neuron_similarities(src: Source, model: str, neuron_id: NeuronId) -> list[dict[str, Any]]:
    """Every stored similarity of a neuron's explanations to their references."""
    return _neuron_similarities(src.path, src.version, model, neuron_id.layer, neuron_id.index)


@st.cache_data(show_spinner=False, max_entries=32)
def _score_rows(path: str, version: tuple, model: str | None) -> pd.DataFrame:
    with database(path) as db:
        rows = dbmod.score_rows(db, model, split="valid", calibrated=False)
    return pd.DataFrame(rows)


def score_rows(src: Source, model: str | None = None) -> pd.DataFrame:
    """db.score_rows on the valid split without calibration (SPEC.md §4): one row per explanation and score,
    unscored explanations included once with no simulator."""
    return _score_rows(src.path, src.version, model)


@st.cache_data(show_spinner=False, max_entries=16)
def _study_summary(path: str, version: tuple, study: str) -> dict[str, Any]:
    from core import export

    with database(path) as db:
        return export.study_summary(db, study)


def study_summary(src: Source, study: str) -> dict[str, Any]:
    """Every statistic of a study (core.export.study_summary), unblinded: for admins only."""
    return _study_summary(src.path, src.version, study)


@st.cache_data(show_spinner=False, max_entries=16)
def _study_status(path: str, version: tuple, study: str) -> dict[str, Any]:
    from core import human_eval

    with database(path) as db:
        return human_eval.study_status(db, study)


def study_status(src: Source, study: str) -> dict[str, Any]:
    """A study's progress: items filled and per-rater counts."""
    return _study_status(src.path, src.version, study)


@st.cache_data(show_spinner=False, max_entries=16)
def _export_files(path: str, version: tuple, study: str, fmt: str) -> dict[str, bytes]:
    from core import export

    with database(path) as db:
        return export.export_study(db, study, fmt)


def export_files(src: Source, study: str, fmt: str) -> dict[str, bytes]:
    """The export files of a study in one format (core.export.export_study), for a download button."""
    return _export_files(src.path, src.version, study, fmt)


# ---------------------------------------------------------------------------------------------------------------
# Neuron input: one neuron, a typed list, or an uploaded file
# ---------------------------------------------------------------------------------------------------------------

_NEURON_TOKEN = re.compile(r"[^\s,;]+")


def neurons_from_text(text: str) -> list[NeuronId]:
    """Neurons written `layer:index`, separated by commas, semicolons, spaces or new lines; `#` starts a comment."""
    lines = [line.split("#", 1)[0] for line in text.splitlines()]
    found = [NeuronId.parse(token) for line in lines for token in _NEURON_TOKEN.findall(line)]
    if not found:
        raise InputError("no neurons given: write them as layer:index, e.g. 3:17, 3:42")
    return list(dict.fromkeys(found))


def neurons_from_upload(name: str, data: bytes) -> list[NeuronId]:
    """Neurons from an uploaded file: a CSV with columns layer,neuron (as the CLI's --neuron-file), or text with
    layer:index entries."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{name} is not UTF-8 text; upload a CSV with columns layer,neuron") from None
    first = next((line for line in text.splitlines() if line.strip()), "")
    if "layer" not in first.lower():
        return neurons_from_text(text)
    return neurons_from_csv(text, name)


# ---------------------------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------------------------


def rating_excerpts(record: NeuronRecord, count: int = RATING_EXCERPTS) -> list[ActivationRecord]:
    """The top excerpts a rater sees: the test split's, else (too few collected) the first top ones."""
    chosen = [record.top[i] for i in SPLITS[RATING_SPLIT][0] if i < len(record.top)][:count]
    return chosen or list(record.top[:count])


def _number(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


EXPLANATION_COLUMNS = [
    "id", "format", "explainer", "explanation", "score", "simulator", "similarity", "reference_score", "input_tokens",
    "output_tokens", "method", "split", "source",
]  # fmt: skip
# Shown whatever they hold; every other column of the explanation table is left out when no row has a value.
_ALWAYS_SHOWN = ("id", "format", "explainer", "explanation")


def explanation_table(
    rows: Sequence[Mapping[str, Any]],
    scores: Sequence[Mapping[str, Any]] = (),
    similarities: Sequence[Mapping[str, Any]] = (),
) -> pd.DataFrame:
    """One row per explanation and ok score (an unscored explanation gets one row without a score): format,
    explainer, score with its simulator, method and split, mean similarity to its references, the imported
    reference score, tokens in and out, and the text. Scores of different simulators stay on separate rows."""
    by_explanation: dict[int, list[Mapping[str, Any]]] = {}
    for score in scores:
        if score.get("status") == "ok":
            by_explanation.setdefault(score["explanation_id"], []).append(score)
    cosines: dict[int, list[float]] = {}
    for row in similarities:
        value = _number(row.get("cosine"))
        if value is not None:
            cosines.setdefault(row["explanation_id"], []).append(value)
    table = []
    for row in rows:
        shared = {
            "id": row["id"],
            "format": row["format"],
            "explainer": row["explainer"],
            "source": row.get("source"),
            "similarity": sum(cosines[row["id"]]) / len(cosines[row["id"]]) if row["id"] in cosines else None,
            "reference_score": _number(row.get("reference_score")),
            "input_tokens": row.get("input_tokens"),
            "output_tokens": row.get("output_tokens"),
            "explanation": row.get("explanation") or "",
        }
        for score in by_explanation.get(row["id"], [None]):
            fields = ("score", "simulator", "method", "split")
            values = {key: None for key in fields} if score is None else {key: score.get(key) for key in fields}
            values["score"] = _number(values["score"])
            table.append({**shared, **values})
    frame = pd.DataFrame(table, columns=EXPLANATION_COLUMNS)
    for column in ("score", "similarity", "reference_score", "input_tokens", "output_tokens"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return without_empty_columns(frame, [c for c in EXPLANATION_COLUMNS if c not in _ALWAYS_SHOWN])


def without_empty_columns(frame: pd.DataFrame, optional: Sequence[str]) -> pd.DataFrame:
    """`frame` without those of the `optional` columns that hold no value in any row (a similarity column when
    nothing was compared, a source column when nothing was imported): fewer columns to scroll past."""
    empty = [c for c in optional if c in frame and not frame[c].notna().any()]
    return frame.drop(columns=empty)


def _number_column(fmt: str, help_text: str | None = None) -> Any:
    return st.column_config.NumberColumn(format=fmt, help=help_text)


# Column formats of the tables the pages show: scores to 3 decimals, token means as whole tokens, ratios to two
# decimals, p-values to 3 significant digits. Entries for columns a table lacks are ignored.
EXPLANATION_TABLE_CONFIG = {
    "score": _number_column("%.3f", "correlation of simulated and real activations (SPEC.md §4)"),
    "similarity": _number_column("%.3f", "mean cosine to the reference explanations"),
    "reference_score": _number_column("%.3f", "score published with an import"),
    "explanation": st.column_config.TextColumn(width="large"),
}
JOB_TABLE_CONFIG = {"explanation": st.column_config.TextColumn(width="large")}
COST_TABLE_CONFIG = {
    **{f"mean_{kind}_tokens": _number_column("%.0f") for kind in ("input", "output", "total")},
    **{
        f"original_over_format_{kind}": _number_column("%.2f×", f"original's mean {kind} tokens ÷ this format's")
        for kind in ("input", "total")
    },
}
FORMAT_SUMMARY_CONFIG = {
    "mean_score": _number_column("%.3f"),
    "score_ci_lo": _number_column("%.3f", "95% bootstrap interval over neurons"),
    "score_ci_hi": _number_column("%.3f", "95% bootstrap interval over neurons"),
    "mean_similarity": _number_column("%.3f"),
    "mean_input_tokens": _number_column("%.0f"),
}
DIFFERENCE_TABLE_CONFIG = {
    "mean_diff": _number_column("%+.3f", "mean of (format − baseline) score over the neurons both have"),
    "ci_lo": _number_column("%+.3f", "95% paired bootstrap interval"),
    "ci_hi": _number_column("%+.3f", "95% paired bootstrap interval"),
    "p_value": _number_column("%.3g", "Wilcoxon signed-rank, two-sided (5 or more neurons)"),
}
PAIRS_TABLE_CONFIG = {
    "win_rate_a": st.column_config.TextColumn(help="share of decisive ratings (1 or 2) won by arm A, 95% CI"),
    "binomial_p": _number_column("%.3g", "two-sided binomial test against no preference"),
}
MEASURE_TABLE_CONFIG = {"value": _number_column("%.3g")}


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
    """The simulator · method pairs that scored these rows: each is one comparable set of scores (SPEC.md §4)."""
    if "simulator" not in rows or rows["simulator"].dropna().empty:
        return []
    scored = rows.dropna(subset=["simulator"])
    return sorted(
        {f"{simulator} · {method}" for simulator, method in zip(scored["simulator"], scored["method"], strict=True)}
    )


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
        score = _number(row.get("score"))
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


JOB_COLUMNS = ["id", "neuron", "format", "sample", "status", "input_tokens", "output_tokens", "explanation", "error"]


def job_table(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Stored explanations (ok or failed) as the Explain page's live table."""
    table = [
        {
            "id": row["id"],
            "neuron": f"{row['layer']}:{row['neuron']}",
            "format": row["format"],
            "sample": row.get("sample"),
            "status": row["status"],
            "input_tokens": row.get("input_tokens"),
            "output_tokens": row.get("output_tokens"),
            "explanation": row.get("explanation") or "",
            "error": row.get("error") or "",
        }
        for row in rows
    ]
    return pd.DataFrame(table, columns=JOB_COLUMNS)


@dataclass(frozen=True)
class PromptPreview:
    """The exact prompt one format sends for one neuron, and its input tokens (None when it cannot be counted)."""

    format: str
    text: str
    input_tokens: int | None
    tokenizer: str
    error: str | None = None


def prompt_previews(
    record: NeuronRecord, formats: Sequence[str], explainer: str, cutoff: Any, few_shot: str | None
) -> list[PromptPreview]:
    """Each format's prompt for the neuron's train records (as explain_neurons builds it) and its token count with
    the explainer's tokenizer. A prompt or count that fails is reported in its preview, not raised."""
    from core import prompts, tokens
    from core.explain import PROMPT_SPLIT

    tokenizer = tokens.tokenizer_for(explainer)
    examples = prompts.load_few_shot(few_shot)
    previews = []
    for format_name in formats:
        try:
            messages = prompts.build_messages(
                format_name, record.split(PROMPT_SPLIT), few_shot=examples, cutoff=cutoff, stats=record.stats
            )
        except WorkbenchError as exc:
            previews.append(PromptPreview(format_name, "", None, tokenizer, str(exc)))
            continue
        text = prompts.render_messages(messages)
        try:
            count, error = tokens.count_chat_tokens(messages, tokenizer), None
        except WorkbenchError as exc:
            count, error = None, f"cannot count tokens: {exc}"
        previews.append(PromptPreview(format_name, text, count, tokenizer, error))
    return previews


def preview_table(previews: Sequence[PromptPreview]) -> pd.DataFrame:
    """The input tokens of each format's prompt side by side, with Original ÷ format (SPEC.md §5), so the cost of
    the formats compares at a glance."""
    counts = {p.format: p.input_tokens for p in previews}
    original = counts.get("original")
    rows = [
        {
            "format": p.format,
            "input_tokens": p.input_tokens,
            "original_over_format": original / p.input_tokens if original and p.input_tokens else None,
            "problem": p.error or "",
        }
        for p in previews
    ]
    frame = pd.DataFrame(rows, columns=["format", "input_tokens", "original_over_format", "problem"])
    frame["original_over_format"] = pd.to_numeric(frame["original_over_format"], errors="coerce")
    return frame


PREVIEW_TABLE_CONFIG = {
    "input_tokens": _number_column("%d"),
    "original_over_format": _number_column("%.2f×", "original's input tokens ÷ this format's"),
    "problem": st.column_config.TextColumn(width="large"),
}


def stats_table(record: NeuronRecord) -> pd.DataFrame:
    """A neuron's statistics as (statistic, value) rows; quantiles are of the per-excerpt maximum (SPEC.md §1)."""
    rows = [("max", record.stats.max), ("mean", record.stats.mean), ("variance", record.stats.variance)]
    rows += [(f"q{level:g} of excerpt max", value) for level, value in sorted(record.stats.quantiles.items())]
    rows += [("top excerpts", len(record.top)), ("random excerpts", len(record.random))]
    return pd.DataFrame(rows, columns=["statistic", "value"])


PAIR_COLUMNS = [
    "rater", "arm_a", "arm_b", "n_ratings", "wins_a", "wins_b", "ties", "both_bad", "win_rate_a", "binomial_p",
]  # fmt: skip


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


def zip_files(files: Mapping[str, bytes]) -> bytes:
    """Several export files as one zip archive (for one download button)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def download_of(files: Mapping[str, bytes], stem: str, fmt: str) -> tuple[str, bytes, str]:
    """(file name, bytes, MIME type) for one download button: the single file itself, or a zip of several."""
    if len(files) == 1:
        name, data = next(iter(files.items()))
        mime = {"json": "application/json", "csv": "text/csv"}.get(name.rsplit(".", 1)[-1], "application/octet-stream")
        return name, data, mime
    return f"{stem}_{fmt}.zip", zip_files(files), "application/zip"


# ---------------------------------------------------------------------------------------------------------------
# Figures (plotly). No token or explanation text goes into a figure; names that users chose (arms, formats read
# from the database) are HTML-escaped, since plotly reads a few tags in labels.
# ---------------------------------------------------------------------------------------------------------------


def _label(text: Any) -> str:
    return html.escape(str(text), quote=False)


def activation_histogram(record: NeuronRecord) -> go.Figure:
    """Token activations of the random and the top excerpts, with the neuron's quantile boundaries of the
    per-excerpt maximum over the corpus as dotted lines (SPEC.md §1)."""
    from core.render import POSITIVE_RGB

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
        labels.append(_label(f"{pair['arm_a']} over {pair['arm_b']}"))
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
            y=[_label(row["arm"]) for row in rows],
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
            figure.add_trace(go.Box(y=values, name=_label(name), boxpoints="all", jitter=0.3, pointpos=0))
    figure.update_layout(yaxis_title=title, showlegend=False, height=340, margin={"t": 20, "b": 40, "l": 50, "r": 10})
    return figure


def neuron_label(index: int, best_score: float | None) -> str:
    """A neuron in the picker: its index, and its best score when it has one."""
    if best_score is None or not math.isfinite(best_score):
        return str(index)
    return f"{index}  (best score {best_score:.2f})"


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


def progress_text(rated: int, remaining: int) -> tuple[str, float]:
    """A rater's position ("12 of 40": the item shown is number rated + 1) and the fraction done."""
    total = rated + remaining
    if total == 0:
        return "nothing to rate", 1.0
    current = min(rated + 1, total)
    return f"{current} of {total}", rated / total
