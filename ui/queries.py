"""The database of one script run, and the queries of core the pages read, cached.

Every query is `cached_query(f)` of a core function `f(db, *args)`: it is called as `query(src, *args)` with this
run's `Source`, and cached with st.cache_data keyed by its real inputs: the database file, its `db.data_version`
(neuron records: `db.records_version`) and the arguments. So a write by the CLI or by another session shows on the
next rerun. Adding a query is one line. No SQL here (it is all in core.db) and nothing that loads a model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar

import pandas as pd
import sqlite_utils
import streamlit as st

from core import config, provenance
from core import db as dbmod
from core.records import NeuronId
from ui.session import sees_unblinded

P = ParamSpec("P")
T = TypeVar("T")

# Neuron records are cached on their own version, which ratings and explanations leave alone; entries also expire,
# for the one rewrite that version cannot see (db.records_version).
RECORDS_TTL_S = 600


@contextmanager
def database(path: str | Path | None = None) -> Iterator[sqlite_utils.Database]:
    """A connection for one script run (to $EVAL_DB by default), closed when the run ends, stops or reruns."""
    db = dbmod.connect(config.db_path(path))
    try:
        yield db
    finally:
        db.conn.close()


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


class CachedQuery(Generic[P, T]):
    """`query(db, *args)` called as `self(src, *args)`: cached per database file, version and arguments, and on a
    miss run on a connection of its own. `records`: keyed on the neuron records' version (and expiring), not the
    data version. `blind`: called with `hide_blinded`, true unless this session is a signed-in admin's."""

    def __init__(
        self,
        query: Callable[Concatenate[sqlite_utils.Database, P], T],
        *,
        records: bool = False,
        blind: bool = False,
        max_entries: int = 64,
    ) -> None:
        def run(path: str, version: tuple[Any, ...], *args: Any, **kwargs: Any) -> T:
            with database(path) as db:
                return query(db, *args, **kwargs)

        # st.cache_data tells cached functions apart by module, name and source, which every `run` shares: each
        # takes its query's name, so that each query has a cache of its own.
        run.__qualname__ = run.__name__ = f"cached_query[{query.__module__}.{query.__qualname__}]"
        ttl = RECORDS_TTL_S if records else None
        self._cached = st.cache_data(show_spinner=False, max_entries=max_entries, ttl=ttl)(run)
        self._records = records
        self._blind = blind
        self.__doc__ = query.__doc__

    def __call__(self, src: Source, *args: P.args, **kwargs: P.kwargs) -> T:
        blind = {"hide_blinded": not sees_unblinded()} if self._blind else {}
        return self._cached(src.path, src.records if self._records else src.version, *args, **kwargs, **blind)

    def clear(self) -> None:
        """Forget every cached answer of this query."""
        self._cached.clear()


def cached_query(
    query: Callable[Concatenate[sqlite_utils.Database, P], T],
    *,
    records: bool = False,
    blind: bool = False,
    max_entries: int = 64,
) -> CachedQuery[P, T]:
    """`query` (a function of core taking the database first) cached for the pages; see CachedQuery."""
    return CachedQuery(query, records=records, blind=blind, max_entries=max_entries)


# ---------------------------------------------------------------------------------------------------------------
# Queries that return what core returns
# ---------------------------------------------------------------------------------------------------------------

summary = cached_query(dbmod.summary)
neuron = cached_query(dbmod.get_neuron, records=True, max_entries=256)
neuron_indices = cached_query(dbmod.neuron_indices, records=True)
simulators = cached_query(dbmod.score_simulators, max_entries=16)
blinded = cached_query(dbmod.blinded_neurons, max_entries=16)


# ---------------------------------------------------------------------------------------------------------------
# Queries shaped for a page, and queries of modules that only some pages need (imported on a miss)
# ---------------------------------------------------------------------------------------------------------------


def _layers(db: sqlite_utils.Database, model: str) -> list[tuple[int, int]]:
    """(layer, number of neurons) of a model."""
    return [(int(row[0]), int(row[1])) for row in dbmod.list_layers(db, model)]


def _overview(
    db: sqlite_utils.Database,
    model: str,
    layer: int | None = None,
    simulator: str | None = None,
    hide_blinded: bool = True,
) -> pd.DataFrame:
    """Per neuron of a model (or layer): max activation, number of explanations, best score (for a visitor, none
    for the neurons of open studies)."""
    rows = dbmod.neuron_overview(db, model, layer, simulator, hide_blinded=hide_blinded)
    columns = ["layer", "neuron", "max_activation", "n_explanations", "best_score"]
    frame = pd.DataFrame(rows, columns=columns)
    frame["best_score"] = pd.to_numeric(frame["best_score"], errors="coerce")  # unscored: NaN, never None
    return frame


def _search(db: sqlite_utils.Database, text: str, model: str | None = None, hide_blinded: bool = True) -> pd.DataFrame:
    """Explanations whose text contains `text`, newest first (for a visitor, none of an open study's neurons)."""
    rows = dbmod.search_explanations(db, text, model, hide_blinded=hide_blinded)
    columns = ["id", "model", "layer", "neuron", "format", "explainer", "explanation"]
    return pd.DataFrame(rows, columns=columns)


def _explanation_costs(db: sqlite_utils.Database, model: str | None = None, hide_blinded: bool = True) -> pd.DataFrame:
    """Format, explainer, source (core.provenance: `source_key`, `origin`) and input/output tokens of every ok
    explanation (of one model, or all); for a visitor, none of an open study's neurons."""
    rows = provenance.with_sources(dbmod.explanation_costs(db, model, hide_blinded=hide_blinded))
    columns = ["model", "format", "explainer", "source_key", "origin", "input_tokens", "output_tokens", "tokenizer"]
    return pd.DataFrame(rows, columns=columns)


def _score_rows(db: sqlite_utils.Database, model: str | None = None, hide_blinded: bool = True) -> pd.DataFrame:
    """db.score_rows on the valid split without calibration (docs/METHOD.md §4), with each explanation's source
    (core.provenance: `source_key`, `origin`): one row per explanation and score, unscored explanations included
    once with no simulator. For a visitor, none of an open study's neurons."""
    rows = dbmod.score_rows(db, model, split="valid", calibrated=False, hide_blinded=hide_blinded)
    return pd.DataFrame(provenance.with_sources(rows)).drop(columns=["params"], errors="ignore")


def _study_summary(db: sqlite_utils.Database, study: str) -> dict[str, Any]:
    """Every statistic of a study (core.export.study_summary), unblinded: for admins only."""
    from core import export

    return export.study_summary(db, study)


def _study_power(db: sqlite_utils.Database, study: str, arm_a: str, arm_b: str) -> dict[str, Any]:
    """What a study's design detects for one pair (core.power.detectable_from_data), as JSON."""
    from core import export, power

    ratings = export.study_data(db, study).ratings
    return power.detectable_from_data(ratings, arm_a, arm_b).to_json()


def _study_status(db: sqlite_utils.Database, study: str) -> dict[str, Any]:
    """A study's progress: items filled and per-rater counts."""
    from core import human_eval

    return human_eval.study_status(db, study)


def _export_files(db: sqlite_utils.Database, study: str, fmt: str) -> dict[str, bytes]:
    """The export files of a study in one format (core.export.export_study), for a download button."""
    from core import export

    return export.export_study(db, study, fmt)


layers = cached_query(_layers, records=True)
overview = cached_query(_overview, blind=True)
search = cached_query(_search, blind=True)
explanation_costs = cached_query(_explanation_costs, blind=True, max_entries=32)
score_rows = cached_query(_score_rows, blind=True, max_entries=32)
study_summary = cached_query(_study_summary, max_entries=16)
study_power = cached_query(_study_power, max_entries=16)
study_status = cached_query(_study_status, max_entries=16)
export_files = cached_query(_export_files, max_entries=16)


# ---------------------------------------------------------------------------------------------------------------
# What open studies hide: a neuron's explanations and scores, from everyone but a signed-in admin
# ---------------------------------------------------------------------------------------------------------------


def hidden(src: Source, model: str, neuron_id: NeuronId) -> bool:
    """Whether this session must not see the explanations and scores of this neuron: it belongs to an open study
    and the session is not a signed-in admin's."""
    return not sees_unblinded() and (model, neuron_id) in blinded(src)


def hidden_count(src: Source) -> int:
    """How many neurons this session cannot see explained, because open studies hide them (0 for an admin)."""
    return 0 if sees_unblinded() else len(blinded(src))


_explanations = cached_query(dbmod.list_explanations, max_entries=128)
_neuron_scores = cached_query(dbmod.scores_for_neuron, max_entries=128)
_neuron_similarities = cached_query(dbmod.similarities_for_neuron, max_entries=128)


def explanations(src: Source, model: str, neuron_id: NeuronId) -> list[dict[str, Any]]:
    """The ok explanations of one neuron, newest first; none when they are hidden from this session."""
    return [] if hidden(src, model, neuron_id) else _explanations(src, model, neuron_id, status="ok")


def neuron_scores(src: Source, model: str, neuron_id: NeuronId) -> list[dict[str, Any]]:
    """Every stored score of a neuron's explanations, predictions included; none when they are hidden."""
    return [] if hidden(src, model, neuron_id) else _neuron_scores(src, model, neuron_id)


def neuron_similarities(src: Source, model: str, neuron_id: NeuronId) -> list[dict[str, Any]]:
    """Every stored similarity of a neuron's explanations to their references; none when they are hidden."""
    return [] if hidden(src, model, neuron_id) else _neuron_similarities(src, model, neuron_id)
