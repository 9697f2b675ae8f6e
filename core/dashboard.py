"""What the Streamlit pages share: the per-run database, error display, sign-in, cached queries and downloads.

The tables the pages show live in core/tables.py and their figures in core/charts.py.

Pages stay thin: they read widgets, call these functions and core, and render. Queries are
cached with st.cache_data keyed by the database path and `db.data_version` (neuron records: `db.records_version`),
so a write by the CLI or by another session shows on the next rerun. No SQL here (it is all in core.db) and
nothing that loads a model.
"""

from __future__ import annotations

import io
import logging
import math
import re
import traceback
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import pandas as pd
import sqlite_utils
import streamlit as st

from core import config, provenance
from core import db as dbmod
from core.errors import InputError, WorkbenchError
from core.llm import scrub_secrets
from core.records import SPLITS, ActivationRecord, NeuronId, NeuronRecord, neurons_from_csv
from core.render import mark_invisible

if TYPE_CHECKING:  # human_eval pulls in the statistics stack, which the home page does not need
    from core.raters import Rater

log = logging.getLogger(__name__)

# The session-state key of the signed-in rater (a core.raters.Rater), shared by the Rate, Explain and Results
# pages so that one sign-in serves them all.
RATER_KEY = "signed_in_rater"
# Records shown to raters next to the explanations: the held-out test split's top excerpts (docs/METHOD.md §1), which no
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
    """A message on one line, with markdown characters escaped so st.error shows them literally and invisible
    characters (zero-width, bidi overrides) named as "⟨U+202E⟩", so a message can neither hide nor reverse text."""
    text = mark_invisible(" ".join(str(message).split()))
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|~$<>:])", r"\\\1", text)


UNEXPECTED_ERROR = "Something went wrong; the details are in the server log."


@contextmanager
def errors_shown() -> Iterator[None]:
    """End the block on an error, shown as one st.error line: our own (WorkbenchError) with its message, any other
    with a short apology, and its traceback in an expander for admins only. Tracebacks always go to the log.
    Streamlit's st.stop and st.rerun are not errors (BaseException) and pass through."""
    try:
        yield
    except WorkbenchError as exc:
        log.info("shown to the user: %s", exc, exc_info=True)
        st.error(one_line(str(exc)))
    except Exception:
        log.exception("unexpected error in the app")
        st.error(UNEXPECTED_ERROR)
        rater = signed_in()
        if rater is not None and rater.is_admin:
            with st.expander("Details"):
                st.code(scrub_secrets(traceback.format_exc()), language=None)


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


def sees_unblinded() -> bool:
    """Whether this session may see what open studies hide (explanations, formats and scores of their neurons):
    only a signed-in admin may. Everyone else, raters included, is a visitor."""
    rater = signed_in()
    return rater is not None and rater.is_admin


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
        # Failed sign-ins are throttled per name and per client: the connection's address, or on localhost (where
        # Streamlit gives none) this browser session. A wait shows as the error line.
        address = st.context.ip_address
        client = address if isinstance(address, str) and address else _session_id()
        with errors_shown():
            st.session_state[RATER_KEY] = raters.authenticate(db, name, code, client=client)
            st.rerun()
    return None


def _session_id() -> str | None:
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return f"session:{ctx.session_id}" if ctx is not None else None


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
def _overview(
    path: str, version: tuple, model: str, layer: int | None, simulator: str | None, blind: bool
) -> pd.DataFrame:
    with database(path) as db:
        rows = dbmod.neuron_overview(db, model, layer, simulator, hide_blinded=blind)
    columns = ["layer", "neuron", "max_activation", "n_explanations", "best_score"]
    frame = pd.DataFrame(rows, columns=columns)
    frame["best_score"] = pd.to_numeric(frame["best_score"], errors="coerce")  # unscored: NaN, never None
    return frame


def overview(src: Source, model: str, layer: int | None = None, simulator: str | None = None) -> pd.DataFrame:
    """Per neuron of a model (or layer): max activation, number of explanations, best score (for a visitor, none
    for the neurons of open studies)."""
    return _overview(src.path, src.version, model, layer, simulator, not sees_unblinded())


@st.cache_data(show_spinner=False, max_entries=16)
def _simulators(path: str, version: tuple) -> list[str]:
    with database(path) as db:
        return dbmod.score_simulators(db)


def simulators(src: Source) -> list[str]:
    """Simulators that have scored something."""
    return _simulators(src.path, src.version)


@st.cache_data(show_spinner=False, max_entries=64)
def _search(path: str, version: tuple, text: str, model: str | None, blind: bool) -> pd.DataFrame:
    with database(path) as db:
        rows = dbmod.search_explanations(db, text, model, hide_blinded=blind)
    columns = ["id", "model", "layer", "neuron", "format", "explainer", "explanation"]
    return pd.DataFrame(rows, columns=columns)


def search(src: Source, text: str, model: str | None = None) -> pd.DataFrame:
    """Explanations whose text contains `text`, newest first (for a visitor, none of an open study's neurons)."""
    return _search(src.path, src.version, text, model, not sees_unblinded())


@st.cache_data(show_spinner=False, max_entries=16)
def _blinded(path: str, version: tuple) -> frozenset[tuple[str, NeuronId]]:
    with database(path) as db:
        return dbmod.blinded_neurons(db)


def hidden(src: Source, model: str, neuron_id: NeuronId) -> bool:
    """Whether this session must not see the explanations and scores of this neuron: it belongs to an open study
    and the session is not a signed-in admin's."""
    return not sees_unblinded() and (model, neuron_id) in _blinded(src.path, src.version)


@st.cache_data(show_spinner=False, max_entries=128)
def _explanations(path: str, version: tuple, model: str, layer: int, index: int) -> list[dict[str, Any]]:
    with database(path) as db:
        return dbmod.list_explanations(db, model, NeuronId(layer, index), status="ok")


def explanations(src: Source, model: str, neuron_id: NeuronId) -> list[dict[str, Any]]:
    """The ok explanations of one neuron, newest first; none when they are hidden from this session."""
    if hidden(src, model, neuron_id):
        return []
    return _explanations(src.path, src.version, model, neuron_id.layer, neuron_id.index)


@st.cache_data(show_spinner=False, max_entries=32)
def _explanation_costs(path: str, version: tuple, model: str | None, blind: bool) -> pd.DataFrame:
    with database(path) as db:
        rows = provenance.with_sources(dbmod.explanation_costs(db, model, hide_blinded=blind))
    columns = ["model", "format", "explainer", "source_key", "origin", "input_tokens", "output_tokens", "tokenizer"]
    return pd.DataFrame(rows, columns=columns)


def explanation_costs(src: Source, model: str | None = None) -> pd.DataFrame:
    """Format, explainer, source (core.provenance: `source_key`, `origin`) and input/output tokens of every ok
    explanation (of one model, or all); for a visitor, none of an open study's neurons."""
    return _explanation_costs(src.path, src.version, model, not sees_unblinded())


@st.cache_data(show_spinner=False, max_entries=128)
def _neuron_scores(path: str, version: tuple, model: str, layer: int, index: int) -> list[dict[str, Any]]:
    with database(path) as db:
        return dbmod.scores_for_neuron(db, model, NeuronId(layer, index))


def neuron_scores(src: Source, model: str, neuron_id: NeuronId) -> list[dict[str, Any]]:
    """Every stored score of a neuron's explanations, predictions included; none when they are hidden."""
    if hidden(src, model, neuron_id):
        return []
    return _neuron_scores(src.path, src.version, model, neuron_id.layer, neuron_id.index)


@st.cache_data(show_spinner=False, max_entries=128)
def _neuron_similarities(path: str, version: tuple, model: str, layer: int, index: int) -> list[dict[str, Any]]:
    with database(path) as db:
        return dbmod.similarities_for_neuron(db, model, NeuronId(layer, index))


def neuron_similarities(src: Source, model: str, neuron_id: NeuronId) -> list[dict[str, Any]]:
    """Every stored similarity of a neuron's explanations to their references; none when they are hidden."""
    if hidden(src, model, neuron_id):
        return []
    return _neuron_similarities(src.path, src.version, model, neuron_id.layer, neuron_id.index)


@st.cache_data(show_spinner=False, max_entries=32)
def _score_rows(path: str, version: tuple, model: str | None, blind: bool) -> pd.DataFrame:
    with database(path) as db:
        rows = provenance.with_sources(dbmod.score_rows(db, model, split="valid", calibrated=False, hide_blinded=blind))
    return pd.DataFrame(rows).drop(columns=["params"], errors="ignore")


def score_rows(src: Source, model: str | None = None) -> pd.DataFrame:
    """db.score_rows on the valid split without calibration (docs/METHOD.md §4), with each explanation's source
    (core.provenance: `source_key`, `origin`): one row per explanation and score, unscored explanations included
    once with no simulator. For a visitor, none of an open study's neurons."""
    return _score_rows(src.path, src.version, model, not sees_unblinded())


def hidden_count(src: Source) -> int:
    """How many neurons this session cannot see explained, because open studies hide them (0 for an admin)."""
    return 0 if sees_unblinded() else len(_blinded(src.path, src.version))


@st.cache_data(show_spinner=False, max_entries=16)
def _study_summary(path: str, version: tuple, study: str) -> dict[str, Any]:
    from core import export

    with database(path) as db:
        return export.study_summary(db, study)


def study_summary(src: Source, study: str) -> dict[str, Any]:
    """Every statistic of a study (core.export.study_summary), unblinded: for admins only."""
    return _study_summary(src.path, src.version, study)


@st.cache_data(show_spinner=False, max_entries=16)
def _study_power(path: str, version: tuple, study: str, arm_a: str, arm_b: str) -> dict[str, Any]:
    from core import export, power

    with database(path) as db:
        ratings = export.study_data(db, study).ratings
    return power.detectable_from_data(ratings, arm_a, arm_b).to_json()


def study_power(src: Source, study: str, arm_a: str, arm_b: str) -> dict[str, Any]:
    """What a study's design detects for one pair (core.power.detectable_from_data), as JSON."""
    return _study_power(src.path, src.version, study, arm_a, arm_b)


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


def rating_excerpts(record: NeuronRecord, count: int = RATING_EXCERPTS) -> list[ActivationRecord]:
    """The top excerpts a rater sees: the test split's, else (too few collected) the first top ones."""
    chosen = [record.top[i] for i in SPLITS[RATING_SPLIT][0] if i < len(record.top)][:count]
    return chosen or list(record.top[:count])


def neuron_label(index: int, best_score: float | None) -> str:
    """A neuron in the picker: its index, and its best score when it has one."""
    if best_score is None or not math.isfinite(best_score):
        return str(index)
    return f"{index}  (best score {best_score:.2f})"


def progress_text(rated: int, remaining: int) -> tuple[str, float]:
    """A rater's position ("12 of 40": the item shown is number rated + 1) and the fraction done."""
    total = rated + remaining
    if total == 0:
        return "nothing to rate", 1.0
    current = min(rated + 1, total)
    return f"{current} of {total}", rated / total


# ---------------------------------------------------------------------------------------------------------------
# "Try your own text" (Neurons page) and the demo (Home page)
# ---------------------------------------------------------------------------------------------------------------


@st.cache_resource(show_spinner="Loading the model (once per server)…", max_entries=2)
def subject_model(model: str) -> Any:
    """The subject model, loaded once per server and shared by every session (st.cache_resource), on the default
    device ($EVAL_DEVICE, else cuda when available). The one model this module loads: for Try your own text."""
    from core.models import load_subject_model

    return load_subject_model(model)


@st.cache_data(show_spinner=False, max_entries=64)
def _own_text(model: str, layer: int, index: int, text: str) -> tuple[ActivationRecord, int]:
    from core.activations import activate_text

    result = activate_text(subject_model(model), layer, text)
    return result.record(index), result.dropped_tokens


def own_text(model: str, neuron_id: NeuronId, text: str) -> tuple[ActivationRecord, int]:
    """A neuron's activations on a text, processed as collection processes an excerpt (core.activations.activate_text),
    and how many tokens past the cap (512) were left out. Activations only: nothing an open study hides."""
    return _own_text(model, neuron_id.layer, neuron_id.index, text)


def run_demo() -> Any:
    """The offline demo (core.demo.run_demo) on this app's database; its report."""
    from core import demo

    with database() as db:
        return demo.run_demo(db)


def offer_demo(db: sqlite_utils.Database) -> bool:
    """Whether the Home page offers the demo: neurons collected, no explanations yet."""
    from core import demo

    return demo.offer_demo(db)


@st.cache_resource
def job_registry() -> Any:
    """The background jobs of this server process (a core.jobs.JobRegistry), shared by every session and rerun, so
    that a job outlives the page run that started it."""
    from core import jobs

    return jobs.JobRegistry()
