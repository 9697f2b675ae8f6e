"""Explanations, and the LLM response cache."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlite_utils

from core.db.base import _chunks, _json, _last_id, _marks, now, transaction
from core.errors import NotFoundError
from core.records import NeuronId

EXPLANATION_FIELDS = (
    "model", "layer", "neuron", "format", "explainer", "source", "params", "prompt", "completion", "explanation",
    "cutoff_mode", "cutoff", "sample", "input_tokens", "output_tokens", "tokenizer", "latency_s", "status", "error",
    "reference_score", "job_key",
)  # fmt: skip


_FIELD_NAMES = frozenset(EXPLANATION_FIELDS)
_EXPLANATION_DEFAULTS = {"status": "ok", "source": "generated", "sample": 0}
# What listings select: everything but the long prompt and completion.
_LISTED_COLUMNS = ", ".join(c for c in ("id", *EXPLANATION_FIELDS, "created_at") if c not in ("prompt", "completion"))


@dataclass(frozen=True)
class InsertReport:
    """What `insert_explanations` did: rows written (new, or failed ones retried) and ok rows already there."""

    written: int
    unchanged: int


def _explanation_row(fields: dict[str, Any], created_at: str) -> dict[str, Any]:
    """A new row: the given fields (JSON-able `params` and `prompt` serialised) and the schema's default of each
    column that has one, which rows inserted together in one statement would otherwise leave NULL."""
    unknown = fields.keys() - _FIELD_NAMES
    if unknown:
        raise ValueError(f"unknown explanation fields: {sorted(unknown)}")
    row = {**_EXPLANATION_DEFAULTS, "job_key": None, **fields, "created_at": created_at}
    for key in ("params", "prompt"):
        if row.get(key) is not None and not isinstance(row[key], str):
            row[key] = _json(row[key])
    return row


_Stored = tuple[int, str | None, str]  # id, explanation, status of a stored row


def _stored_by_job(db: sqlite_utils.Database, job_keys: Iterable[str | None]) -> dict[str, _Stored]:
    """job_key → (id, explanation, status) of the stored rows with these keys."""
    found: dict[str, _Stored] = {}
    for chunk in _chunks([key for key in dict.fromkeys(job_keys) if key is not None]):
        query = f"SELECT job_key, id, explanation, status FROM explanations WHERE job_key IN ({_marks(chunk)})"
        found.update((key, tuple(stored)) for key, *stored in db.execute(query, chunk))
    return found


def _retry_in_place(db: sqlite_utils.Database, stored: _Stored, row: dict[str, Any]) -> bool:
    """Rewrite the stored row of a job with `row` if it failed; whether it was written."""
    explanation_id, old_text, old_status = stored
    if old_status == "ok":
        # Study items and scores point at an ok row: it is never rewritten (schema v3 enforces this too).
        return False
    # Scores of a text that changed no longer describe it, so they go.
    if old_text != row.get("explanation"):
        for table in ("scores", "similarities"):
            db.table(table).delete_where("explanation_id = ?", [explanation_id])
    columns = [c for c in EXPLANATION_FIELDS if c != "job_key"] + ["created_at"]
    db.table("explanations").update(explanation_id, {c: row.get(c) for c in columns})
    return True


def insert_explanation(db: sqlite_utils.Database, **fields: Any) -> int:
    """Store one explanation (or one failed attempt); JSON-able `params` and `prompt` are serialised here.

    With a `job_key` already stored, a failed row is retried in place and an ok row is kept as it is; returns its id.
    """
    row = _explanation_row(fields, now())
    with transaction(db):
        stored = _stored_by_job(db, [row["job_key"]])
        if row["job_key"] not in stored:
            return _last_id(db.table("explanations").insert(row))
        _retry_in_place(db, stored[row["job_key"]], row)
        return stored[row["job_key"]][0]


def insert_explanations(db: sqlite_utils.Database, rows: Sequence[dict[str, Any]]) -> InsertReport:
    """Store many explanations in one transaction (all or nothing), with `insert_explanation`'s rules per row."""
    created_at = now()
    prepared = [_explanation_row(fields, created_at) for fields in rows]
    written = 0
    with transaction(db):
        stored = _stored_by_job(db, [row["job_key"] for row in prepared])
        new: list[dict[str, Any]] = []  # inserted together, in order
        new_keys: set[str] = set()
        for row in prepared:
            key = row["job_key"]
            if key in new_keys:  # the same job twice in one call: the second row meets the first as a stored one
                db.table("explanations").insert_all(new)
                stored.update(_stored_by_job(db, new_keys))
                new, new_keys = [], set()
            if key not in stored:
                new.append(row)
                new_keys.update([key] if key is not None else [])
                written += 1
            elif _retry_in_place(db, stored[key], row):
                stored[key] = (stored[key][0], row.get("explanation"), row["status"])
                written += 1
        db.table("explanations").insert_all(new)
    return InsertReport(written=written, unchanged=len(rows) - written)


def ok_explanations_of(db: sqlite_utils.Database, model: str, explainer: str) -> list[dict[str, Any]]:
    """The ok explanations of `model` by `explainer`: id, layer, neuron, format, source, explanation, params."""
    query = (
        "SELECT id, layer, neuron, format, source, explanation, params FROM explanations"
        " WHERE model = ? AND explainer = ? AND status = 'ok' ORDER BY id"
    )
    return [_decode_explanation(row) for row in db.query(query, [model, explainer])]


def get_explanation(db: sqlite_utils.Database, explanation_id: int) -> dict[str, Any]:
    row = next(db.query("SELECT * FROM explanations WHERE id = ?", [explanation_id]), None)
    if row is None:
        raise NotFoundError(f"no explanation with id {explanation_id}")
    return _decode_explanation(row)


def _decode_explanation(row: dict[str, Any]) -> dict[str, Any]:
    for key in ("params", "prompt"):
        if row.get(key):
            row[key] = json.loads(row[key])
    return row


def list_explanations(
    db: sqlite_utils.Database,
    model: str | None = None,
    neuron: NeuronId | None = None,
    status: str | None = "ok",
) -> list[dict[str, Any]]:
    """Explanations, newest first, optionally of one model and neuron, by status (None for all)."""
    clauses: list[str] = []
    args: list[Any] = []
    if model is not None:
        clauses.append("model = ?")
        args.append(model)
    if neuron is not None:
        clauses += ["layer = ?", "neuron = ?"]
        args += [neuron.layer, neuron.index]
    if status is not None:
        clauses.append("status = ?")
        args.append(status)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    return [_decode_explanation(row) for row in db.query(f"SELECT * FROM explanations {where} ORDER BY id DESC", args)]


def explanations_by_ids(db: sqlite_utils.Database, explanation_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """id → the stored explanation (params decoded; without prompt and completion), for the ids that exist."""
    found: dict[int, dict[str, Any]] = {}
    for chunk in _chunks(sorted({int(i) for i in explanation_ids if i is not None})):
        query = f"SELECT {_LISTED_COLUMNS} FROM explanations WHERE id IN ({_marks(chunk)})"
        found.update((row["id"], _decode_explanation(row)) for row in db.query(query, chunk))
    return found


def find_explanations(
    db: sqlite_utils.Database,
    model: str | None = None,
    neurons: Sequence[NeuronId] | None = None,
    formats: Sequence[str] | None = None,
    explainers: Sequence[str] | None = None,
    status: str | None = "ok",
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Explanations matching every filter given (explainers exactly as stored), by model, neuron, format and id;
    params decoded, without prompt and completion."""
    clauses: list[str] = []
    args: list[Any] = []
    for column, values in (("model", [model] if model is not None else None), ("format", formats),
                           ("explainer", explainers)):  # fmt: skip
        if values:
            clauses.append(f"{column} IN ({','.join('?' * len(values))})")
            args += list(values)
    if neurons:
        clauses.append("(" + " OR ".join("(layer = ? AND neuron = ?)" for _ in neurons) + ")")
        args += [value for neuron in neurons for value in (neuron.layer, neuron.index)]
    if status is not None:
        clauses.append("status = ?")
        args.append(status)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    tail = f" LIMIT {int(limit)}" if limit is not None else ""
    query = f"SELECT {_LISTED_COLUMNS} FROM explanations {where} ORDER BY model, layer, neuron, format, id{tail}"
    return [_decode_explanation(row) for row in db.query(query, args)]


def scores_of_explanations(
    db: sqlite_utils.Database, explanation_ids: Sequence[int]
) -> dict[int, list[dict[str, Any]]]:
    """id → every stored score of that explanation (simulator, method, split, calibrated, score, rsquared, absdev,
    status, source), and every similarity as simulator None with `embedder` and `cosine`."""
    found: dict[int, list[dict[str, Any]]] = {}
    source = "source" if "source" in db.table("scores").columns_dict else "NULL AS source"
    for chunk in _chunks(sorted({int(i) for i in explanation_ids if i is not None})):
        for score in db.query(
            f"SELECT explanation_id, simulator, method, split, calibrated, score, rsquared, absdev, status, {source}"
            f" FROM scores WHERE explanation_id IN ({_marks(chunk)}) ORDER BY explanation_id, simulator, method,"
            " split, calibrated",
            chunk,
        ):
            score["calibrated"] = bool(score["calibrated"])
            found.setdefault(score["explanation_id"], []).append(score)
        for explanation_id, reference_kind, embedder, cosine in db.execute(
            "SELECT explanation_id, reference_kind, embedder, cosine FROM similarities"
            f" WHERE explanation_id IN ({_marks(chunk)}) ORDER BY explanation_id, embedder, reference_kind",
            chunk,
        ):
            found.setdefault(explanation_id, []).append(
                {"explanation_id": explanation_id, "similarity_to": reference_kind, "embedder": embedder,
                 "cosine": cosine}
            )  # fmt: skip
    return found


def explanation_statuses(db: sqlite_utils.Database, job_keys: Sequence[str]) -> dict[str, str]:
    """job_key → status of the stored explanation, for the keys that have one (resuming a job list)."""
    statuses: dict[str, str] = {}
    for chunk in _chunks(list(dict.fromkeys(job_keys))):
        query = f"SELECT job_key, status FROM explanations WHERE job_key IN ({_marks(chunk)})"
        statuses.update(db.execute(query, chunk).fetchall())
    return statuses


def explanations_by_job(db: sqlite_utils.Database, job_keys: Sequence[str]) -> list[dict[str, Any]]:
    """The stored explanations with these job keys, in the order of `job_keys` (missing ones left out)."""
    found: dict[str, dict[str, Any]] = {}
    keys = list(dict.fromkeys(job_keys))
    for chunk in _chunks(keys):
        query = f"SELECT * FROM explanations WHERE job_key IN ({_marks(chunk)})"
        found.update((row["job_key"], _decode_explanation(row)) for row in db.query(query, chunk))
    return [found[key] for key in keys if key in found]


# ---------------------------------------------------------------------------------------------------------------
# LLM response cache
# ---------------------------------------------------------------------------------------------------------------


def cache_get(db: sqlite_utils.Database, key: str) -> dict[str, Any] | None:
    """The cached response (decoded JSON) stored under `key`, or None."""
    row = db.execute("SELECT response FROM llm_cache WHERE key = ?", [key]).fetchone()
    return json.loads(row[0]) if row else None


def cache_put(
    db: sqlite_utils.Database, key: str, backend: str, model: str, request: Any, response: dict[str, Any]
) -> None:
    """Store (or replace) one successful LLM response. `request` must hold no secrets: it is stored as given."""
    row = {"key": key, "backend": backend, "model": model, "request": _json(request), "response": _json(response)}
    with transaction(db):
        db.table("llm_cache").insert({**row, "created_at": now()}, replace=True)


def cache_delete(db: sqlite_utils.Database, key: str) -> None:
    """Forget one cached LLM response (no error when there is none)."""
    with transaction(db):
        db.table("llm_cache").delete_where("key = ?", [key])
