"""Collection runs, excerpts (stored once), neurons, their records and stats."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import sqlite_utils

from core import config
from core.db.base import PUZZLE_SOURCE, _chunks, _json, _last_id, _marks, now, transaction
from core.db.browse import database_file
from core.errors import NotFoundError
from core.records import ActivationRecord, NeuronId, NeuronRecord, NeuronStats, ScoringRecords

log = logging.getLogger(__name__)

_RUN_KEYS = ("model", "corpus", "excerpt_len", "max_tokens", "top_k", "random_k", "seed")


def find_run(db: sqlite_utils.Database, params: dict[str, Any]) -> int | None:
    """The id of the run with these collection parameters, if one was started."""
    where = " AND ".join(f"{k} = ?" for k in _RUN_KEYS)
    row = db.execute(f"SELECT id FROM runs WHERE {where}", [params[k] for k in _RUN_KEYS]).fetchone()
    return row[0] if row else None


def _run_id(db: sqlite_utils.Database, params: dict[str, Any]) -> int:
    """The id of the run with these collection parameters, created if new (inside the caller's transaction)."""
    run_id = find_run(db, params)
    if run_id is not None:
        return run_id
    row = {**{k: params[k] for k in _RUN_KEYS}, "revision": params.get("revision"), "params": _json(params)}
    return _last_id(db.table("runs").insert({**row, "created_at": now()}))


def finished_layers(db: sqlite_utils.Database, run_id: int) -> set[int]:
    return {row[0] for row in db.execute("SELECT layer FROM run_layers WHERE run_id = ?", [run_id])}


def other_layer_sources(
    db: sqlite_utils.Database, model: str, layers: Sequence[int], run_id: int | None
) -> list[dict[str, Any]]:
    """What already fills these layers of `model` from anything but run `run_id`: one row per layer and origin
    with layer, n_neurons, source, and the run's corpus, max_tokens, excerpt_len, top_k, random_k, seed (None when
    imported)."""
    if not layers:
        return []
    return list(
        db.query(
            "SELECT n.layer, COUNT(*) AS n_neurons, n.source, r.corpus, r.max_tokens, r.excerpt_len, r.top_k,"
            " r.random_k, r.seed FROM neurons n LEFT JOIN runs r ON r.id = n.run_id"
            f" WHERE n.model = ? AND n.layer IN ({_marks(layers)}) AND n.run_id IS NOT ?"
            " GROUP BY n.layer, n.run_id, n.source ORDER BY n.layer",
            [model, *layers, run_id],
        )
    )


def _upsert_excerpts(db: sqlite_utils.Database, token_lists: Iterable[Sequence[str]]) -> list[int]:
    """Insert excerpts once (content-addressed) and return their ids in input order."""
    token_tuples = [tuple(t) for t in token_lists]
    # Many neurons share an excerpt: hash and encode each distinct one once.
    encoded = {tokens: _json(list(tokens)) for tokens in dict.fromkeys(token_tuples)}
    hashes = {tokens: hashlib.sha1(text.encode()).hexdigest() for tokens, text in encoded.items()}
    db.conn.executemany(  # raw, like the records below
        "INSERT OR IGNORE INTO excerpts (hash, tokens) VALUES (?, ?)",
        [(hashes[tokens], text) for tokens, text in encoded.items()],
    )
    ids: dict[str, int] = {}
    for chunk in _chunks(list(hashes.values())):
        ids.update(db.execute(f"SELECT hash, id FROM excerpts WHERE hash IN ({_marks(chunk)})", chunk).fetchall())
    return [ids[hashes[tokens]] for tokens in token_tuples]


def _blob(values: Sequence[float] | np.ndarray) -> bytes:
    return np.asarray(values, dtype="<f4").tobytes()


def _unblob(blob: bytes) -> tuple[float, ...]:
    return tuple(np.frombuffer(blob, dtype="<f4").tolist())


def write_neurons(
    db: sqlite_utils.Database,
    model: str,
    neurons: Sequence[NeuronRecord],
    source: str,
    run: dict[str, Any] | None = None,
    run_totals: tuple[int, int] | None = None,
    finished_layer: tuple[int, float] | None = None,
) -> None:
    """Replace the stored records and stats of these neurons, all in one transaction.

    With `run` (collection parameters) the neurons are filed under that run, created if new, and with
    `finished_layer=(layer, seconds)` the layer is marked finished in the same transaction, so that a killed
    process never leaves a layer that looks done but is half written.
    """
    with transaction(db):
        run_id = _run_id(db, run) if run is not None else None
        if run_id is not None and run_totals is not None:
            db.table("runs").update(run_id, {"n_excerpts": run_totals[0], "n_tokens": run_totals[1]})
        scoring_table = has_scoring_records(db)
        if not scoring_table and any(record.scoring is not None for record in neurons):
            log.warning(
                "this database was made by a development build of schema v3 and has no scoring_records table: the "
                "scorers' excerpts are not stored; use a new --db to keep them"
            )
        # Every excerpt of the batch in one upsert, in the order the rows below take their ids.
        excerpt_tokens = [
            r.tokens
            for n in neurons
            for r in (*n.top, *n.random, *(_scoring_groups_records(n.scoring) if scoring_table else ()))
        ]
        excerpt_ids = iter(_upsert_excerpts(db, excerpt_tokens))
        neuron_ids: list[int] = []
        record_rows: list[tuple[Any, ...]] = []
        scoring_rows: list[tuple[Any, ...]] = []
        for record in neurons:
            # Raw SQL: an upsert that keeps the row's id (records point at it) and hands it back in one statement.
            neuron_id = db.execute(
                "INSERT INTO neurons (model, layer, neuron, run_id, source, mean, variance, max, q50, q90, q99, q999)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (model, layer, neuron) DO UPDATE SET run_id = excluded.run_id,"
                " source = excluded.source, mean = excluded.mean, variance = excluded.variance, max = excluded.max,"
                " q50 = excluded.q50, q90 = excluded.q90, q99 = excluded.q99, q999 = excluded.q999"
                " RETURNING id",
                [
                    model,
                    record.neuron.layer,
                    record.neuron.index,
                    run_id,
                    source,
                    record.stats.mean,
                    record.stats.variance,
                    record.stats.max,
                    *(record.stats.quantiles.get(level) for level in config.QUANTILES),
                ],
            ).fetchone()[0]
            neuron_ids.append(neuron_id)
            record_rows += [
                (neuron_id, kind, rank, next(excerpt_ids), rec.max_activation, _blob(rec.activations))
                for kind, records in (("top", record.top), ("random", record.random))
                for rank, rec in enumerate(records)
            ]
            if scoring_table:
                scoring_rows += _scoring_rows(neuron_id, record.scoring, excerpt_ids)
        # The neurons' records are replaced, never merged.
        for table in ("records", "scoring_records") if scoring_table else ("records",):
            for chunk in _chunks(neuron_ids):
                db.table(table).delete_where(f"neuron_id IN ({_marks(chunk)})", chunk)
        # Raw executemany, as for the excerpts: a batch is tens of thousands of rows, where `insert_all`'s work per
        # value in Python made writing neurons 11% slower (bench/scale.py's build, CPU time).
        db.conn.executemany(
            "INSERT INTO records (neuron_id, kind, rank, excerpt_id, max_activation, activations)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            record_rows,
        )
        if scoring_rows:  # the table may be missing (see has_scoring_records)
            db.conn.executemany(
                "INSERT INTO scoring_records (neuron_id, kind, rank, excerpt_id, max_activation, level, activations)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                scoring_rows,
            )
        if finished_layer is not None:
            if run_id is None:
                raise ValueError("finished_layer needs run")
            layer, seconds = finished_layer
            db.table("run_layers").insert(
                {"run_id": run_id, "layer": layer, "n_neurons": len(neurons), "seconds": seconds,
                 "finished_at": now()},
                replace=True,
            )  # fmt: skip


def get_neuron(db: sqlite_utils.Database, model: str, neuron: NeuronId) -> NeuronRecord:
    """The stored records and stats of one neuron; NotFoundError names what is there instead."""
    row = db.execute(
        "SELECT id, mean, variance, max, q50, q90, q99, q999 FROM neurons WHERE model = ? AND layer = ? AND neuron = ?",
        [model, neuron.layer, neuron.index],
    ).fetchone()
    if row is None:
        layers = list_layers(db, model)
        if not layers:
            models = list_models(db)
            if not models:  # most often a mistyped --db or $EVAL_DB: name the file that was opened
                raise NotFoundError(
                    f"no neurons of model {model!r} in {database_file(db) or 'the database'}, which holds none yet:"
                    " run `python -m core collect`, or point --db / $EVAL_DB at the file that has them"
                )
            raise NotFoundError(f"no neurons of model {model!r} in the database (models: {', '.join(models)})")
        raise NotFoundError(
            f"neuron {neuron} of {model!r} is not in the database; collected layers: "
            + ", ".join(f"{layer} ({count} neurons)" for layer, count in layers)
        )
    neuron_id, mean, variance, max_value, *quantiles = row
    top: list[ActivationRecord] = []
    random: list[ActivationRecord] = []
    for kind, tokens, blob in db.execute(
        "SELECT r.kind, e.tokens, r.activations FROM records r JOIN excerpts e ON e.id = r.excerpt_id"
        " WHERE r.neuron_id = ? ORDER BY r.kind, r.rank",
        [neuron_id],
    ):
        (top if kind == "top" else random).append(ActivationRecord(tuple(json.loads(tokens)), _unblob(blob)))
    stats = NeuronStats(
        mean=mean,
        variance=variance,
        max=max_value,
        quantiles={q: v for q, v in zip(config.QUANTILES, quantiles, strict=True) if v is not None},
    )
    scoring = _read_scoring_records(db, neuron_id)
    return NeuronRecord(model=model, neuron=neuron, top=tuple(top), random=tuple(random), stats=stats, scoring=scoring)


def list_models(db: sqlite_utils.Database, include_puzzles: bool = False) -> list[str]:
    """The subject models with stored neurons; the neuron puzzles (core.puzzles) are not a model and are left out
    unless asked for."""
    where = "" if include_puzzles else f" WHERE source != '{PUZZLE_SOURCE}'"
    return [row[0] for row in db.execute(f"SELECT DISTINCT model FROM neurons{where} ORDER BY model")]


def list_layers(db: sqlite_utils.Database, model: str) -> list[tuple[int, int]]:
    """(layer, number of neurons) for a model, by layer."""
    return db.execute(
        "SELECT layer, COUNT(*) FROM neurons WHERE model = ? GROUP BY layer ORDER BY layer", [model]
    ).fetchall()


def layer_neuron_count(db: sqlite_utils.Database, model: str, layer: int) -> int:
    return db.table("neurons").count_where("model = ? AND layer = ?", [model, layer])


def summary(db: sqlite_utils.Database) -> dict[str, Any]:
    """What is in the database: per model, its layers and neuron counts; totals of everything else."""
    models = {
        model: [{"layer": layer, "neurons": count} for layer, count in list_layers(db, model)]
        for model in list_models(db)
    }
    # Puzzle neurons and their explanations are a check of explainers and simulators, not data of a model.
    counts = {
        table: db.table(table).count_where("source != ?", [PUZZLE_SOURCE])
        if table in ("neurons", "explanations")
        else db.table(table).count
        for table in ("neurons", "explanations", "scores", "studies", "ratings", "raters")
    }
    return {"models": models, "counts": counts}


# --- The scorers' excerpts (docs/METHOD.md §10) ---------------------------------------------------------------------

SCORING_KINDS = ("quantile", "non_activating", "bottom")


def has_scoring_records(db: sqlite_utils.Database) -> bool:
    """Whether this database can hold the scorers' excerpts (a database made by a development build of schema v3
    before they existed cannot; its neurons are then stored without them)."""
    return db.table("scoring_records").exists()


def _scoring_groups(scoring: ScoringRecords | None) -> list[tuple[str, Sequence[ActivationRecord], Sequence[Any]]]:
    if scoring is None:
        return []
    return [
        ("quantile", scoring.quantile, scoring.levels),
        ("non_activating", scoring.non_activating, (None,) * len(scoring.non_activating)),
        ("bottom", scoring.bottom, (None,) * len(scoring.bottom)),
    ]


def _scoring_groups_records(scoring: ScoringRecords | None) -> list[ActivationRecord]:
    return [rec for _, records, _ in _scoring_groups(scoring) for rec in records]


def _scoring_rows(neuron_id: int, scoring: ScoringRecords | None, excerpt_ids: Iterator[int]) -> list[tuple[Any, ...]]:
    """The scoring_records rows of one neuron, taking excerpt ids from `excerpt_ids` in `_scoring_groups` order. An
    empty or absent ScoringRecords leaves no row and reads back as None, like a neuron collected before they
    existed."""
    return [
        (neuron_id, kind, rank, next(excerpt_ids), rec.max_activation, level, _blob(rec.activations))
        for kind, records, levels in _scoring_groups(scoring)
        for rank, (rec, level) in enumerate(zip(records, levels, strict=True))
    ]


def _read_scoring_records(db: sqlite_utils.Database, neuron_id: int) -> ScoringRecords | None:
    """The neuron's scorers' excerpts; None when it has none (collected before they existed, or imported)."""
    if not has_scoring_records(db):
        return None
    found: dict[str, list[tuple[ActivationRecord, float | None]]] = {kind: [] for kind in SCORING_KINDS}
    for kind, tokens, level, blob in db.execute(
        "SELECT s.kind, e.tokens, s.level, s.activations FROM scoring_records s JOIN excerpts e ON e.id = s.excerpt_id"
        " WHERE s.neuron_id = ? ORDER BY s.kind, s.rank",
        [neuron_id],
    ):
        found[kind].append((ActivationRecord(tuple(json.loads(tokens)), _unblob(blob)), level))
    if not any(found.values()):
        return None
    return ScoringRecords(
        quantile=tuple(rec for rec, _ in found["quantile"]),
        levels=tuple(float(level) if level is not None else float("nan") for _, level in found["quantile"]),
        non_activating=tuple(rec for rec, _ in found["non_activating"]),
        bottom=tuple(rec for rec, _ in found["bottom"]),
    )


def layers_without_scoring_records(db: sqlite_utils.Database, model: str) -> list[int]:
    """The layers of `model` whose neurons were stored without the scorers' excerpts (collected before they existed,
    or imported)."""
    if not has_scoring_records(db):
        return [layer for layer, _ in list_layers(db, model)]
    return [
        row[0]
        for row in db.execute(
            "SELECT n.layer FROM neurons n WHERE n.model = ? GROUP BY n.layer HAVING SUM(EXISTS (SELECT 1 FROM"
            " scoring_records s WHERE s.neuron_id = n.id)) = 0 ORDER BY n.layer",
            [model],
        )
    ]
