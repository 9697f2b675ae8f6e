"""Explanations, and the LLM response cache."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlite_utils

from core.db.base import _json, now, transaction
from core.errors import NotFoundError
from core.records import NeuronId

EXPLANATION_FIELDS = (
    "model", "layer", "neuron", "format", "explainer", "source", "params", "prompt", "completion", "explanation",
    "cutoff_mode", "cutoff", "sample", "input_tokens", "output_tokens", "tokenizer", "latency_s", "status", "error",
    "reference_score", "job_key",
)  # fmt: skip


_EXPLANATION_DEFAULTS = {"status": "ok", "source": "generated", "sample": 0}


@dataclass(frozen=True)
class InsertReport:
    """What `insert_explanations` did: rows written (new, or failed ones retried) and ok rows already there."""

    written: int
    unchanged: int


def _insert_explanation_row(conn: sqlite3.Connection, fields: dict[str, Any], created_at: str) -> tuple[int, bool]:
    """Insert one row; with a `job_key` already stored, retry it in place only if it failed. (id, written)."""
    unknown = set(fields) - set(EXPLANATION_FIELDS)
    if unknown:
        raise ValueError(f"unknown explanation fields: {sorted(unknown)}")
    row = {"status": "ok", **fields, "created_at": created_at}
    for key in ("params", "prompt"):
        if row.get(key) is not None and not isinstance(row[key], str):
            row[key] = _json(row[key])
    existing = None
    if row.get("job_key") is not None:
        existing = conn.execute(
            "SELECT id, explanation, status FROM explanations WHERE job_key = ?", [row["job_key"]]
        ).fetchone()
    if existing is None:
        sql = f"INSERT INTO explanations ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})"
        return conn.execute(sql, list(row.values())).lastrowid, True
    explanation_id, old_text, old_status = existing
    if old_status == "ok":
        # Study items and scores point at an ok row: it is never rewritten (schema v3 enforces this too).
        return explanation_id, False
    # A failed attempt is retried in place. Scores of a text that changed no longer describe it, so they go.
    if old_text != row.get("explanation"):
        conn.execute("DELETE FROM scores WHERE explanation_id = ?", [explanation_id])
        conn.execute("DELETE FROM similarities WHERE explanation_id = ?", [explanation_id])
    columns = [c for c in EXPLANATION_FIELDS if c != "job_key"] + ["created_at"]
    conn.execute(
        f"UPDATE explanations SET {', '.join(f'{c} = ?' for c in columns)} WHERE id = ?",
        [row.get(c, _EXPLANATION_DEFAULTS.get(c)) for c in columns] + [explanation_id],
    )
    return explanation_id, True


def insert_explanation(db: sqlite_utils.Database, **fields: Any) -> int:
    """Store one explanation (or one failed attempt); JSON-able `params` and `prompt` are serialised here.

    With a `job_key` already stored, a failed row is retried in place and an ok row is kept as it is; returns its id.
    """
    with transaction(db) as conn:
        return _insert_explanation_row(conn, fields, now())[0]


def insert_explanations(db: sqlite_utils.Database, rows: Sequence[dict[str, Any]]) -> InsertReport:
    """Store many explanations in one transaction (all or nothing), with `insert_explanation`'s rules per row."""
    created_at = now()
    written = 0
    with transaction(db) as conn:
        for fields in rows:
            written += _insert_explanation_row(conn, fields, created_at)[1]
    return InsertReport(written=written, unchanged=len(rows) - written)


def ok_explanations_of(db: sqlite_utils.Database, model: str, explainer: str) -> list[dict[str, Any]]:
    """The ok explanations of `model` by `explainer`: id, layer, neuron, format, source, explanation, params."""
    cursor = db.conn.execute(
        "SELECT id, layer, neuron, format, source, explanation, params FROM explanations"
        " WHERE model = ? AND explainer = ? AND status = 'ok' ORDER BY id",
        [model, explainer],
    )
    columns = [d[0] for d in cursor.description]
    return [_decode_explanation(dict(zip(columns, row, strict=True))) for row in cursor.fetchall()]


def get_explanation(db: sqlite_utils.Database, explanation_id: int) -> dict[str, Any]:
    row = db.conn.execute("SELECT * FROM explanations WHERE id = ?", [explanation_id]).fetchone()
    if row is None:
        raise NotFoundError(f"no explanation with id {explanation_id}")
    columns = [d[0] for d in db.conn.execute("SELECT * FROM explanations LIMIT 0").description]
    return _decode_explanation(dict(zip(columns, row, strict=True)))


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
    clauses, args = [], []
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
    cursor = db.conn.execute(f"SELECT * FROM explanations {where} ORDER BY id DESC", args)
    columns = [d[0] for d in cursor.description]
    return [_decode_explanation(dict(zip(columns, row, strict=True))) for row in cursor.fetchall()]


def explanations_by_ids(db: sqlite_utils.Database, explanation_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """id → the stored explanation (params decoded; without prompt and completion), for the ids that exist."""
    found: dict[int, dict[str, Any]] = {}
    ids = sorted({int(i) for i in explanation_ids if i is not None})
    columns = ", ".join(c for c in ("id", *EXPLANATION_FIELDS, "created_at") if c not in ("prompt", "completion"))
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        cursor = db.conn.execute(
            f"SELECT {columns} FROM explanations WHERE id IN ({','.join('?' * len(chunk))})", chunk
        )
        names = [d[0] for d in cursor.description]
        for row in cursor.fetchall():
            decoded = _decode_explanation(dict(zip(names, row, strict=True)))
            found[decoded["id"]] = decoded
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
    columns = ", ".join(c for c in ("id", *EXPLANATION_FIELDS, "created_at") if c not in ("prompt", "completion"))
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    tail = f" LIMIT {int(limit)}" if limit is not None else ""
    cursor = db.conn.execute(
        f"SELECT {columns} FROM explanations {where} ORDER BY model, layer, neuron, format, id{tail}", args
    )
    names = [d[0] for d in cursor.description]
    return [_decode_explanation(dict(zip(names, row, strict=True))) for row in cursor.fetchall()]


def scores_of_explanations(
    db: sqlite_utils.Database, explanation_ids: Sequence[int]
) -> dict[int, list[dict[str, Any]]]:
    """id → every stored score of that explanation (simulator, method, split, calibrated, score, rsquared, absdev,
    status, source), and every similarity as simulator None with `embedder` and `cosine`."""
    found: dict[int, list[dict[str, Any]]] = {}
    ids = sorted({int(i) for i in explanation_ids if i is not None})
    has_source = "source" in {row[1] for row in db.conn.execute("PRAGMA table_info(scores)")}
    source = "source" if has_source else "NULL AS source"
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        cursor = db.conn.execute(
            f"SELECT explanation_id, simulator, method, split, calibrated, score, rsquared, absdev, status, {source}"
            f" FROM scores WHERE explanation_id IN ({marks}) ORDER BY explanation_id, simulator, method, split,"
            " calibrated",
            chunk,
        )
        names = [d[0] for d in cursor.description]
        for row in cursor.fetchall():
            score = dict(zip(names, row, strict=True))
            score["calibrated"] = bool(score["calibrated"])
            found.setdefault(score["explanation_id"], []).append(score)
        cursor = db.conn.execute(
            "SELECT explanation_id, reference_kind, embedder, cosine FROM similarities"
            f" WHERE explanation_id IN ({marks}) ORDER BY explanation_id, embedder, reference_kind",
            chunk,
        )
        for explanation_id, reference_kind, embedder, cosine in cursor.fetchall():
            found.setdefault(explanation_id, []).append(
                {"explanation_id": explanation_id, "similarity_to": reference_kind, "embedder": embedder,
                 "cosine": cosine}
            )  # fmt: skip
    return found


def explanation_statuses(db: sqlite_utils.Database, job_keys: Sequence[str]) -> dict[str, str]:
    """job_key → status of the stored explanation, for the keys that have one (resuming a job list)."""
    statuses: dict[str, str] = {}
    keys = list(dict.fromkeys(job_keys))
    for start in range(0, len(keys), 500):
        chunk = keys[start : start + 500]
        marks = ",".join("?" * len(chunk))
        statuses.update(
            db.conn.execute(f"SELECT job_key, status FROM explanations WHERE job_key IN ({marks})", chunk).fetchall()
        )
    return statuses


def explanations_by_job(db: sqlite_utils.Database, job_keys: Sequence[str]) -> list[dict[str, Any]]:
    """The stored explanations with these job keys, in the order of `job_keys` (missing ones left out)."""
    found: dict[str, dict[str, Any]] = {}
    keys = list(dict.fromkeys(job_keys))
    for start in range(0, len(keys), 500):
        chunk = keys[start : start + 500]
        marks = ",".join("?" * len(chunk))
        cursor = db.conn.execute(f"SELECT * FROM explanations WHERE job_key IN ({marks})", chunk)
        columns = [d[0] for d in cursor.description]
        for row in cursor.fetchall():
            decoded = _decode_explanation(dict(zip(columns, row, strict=True)))
            found[decoded["job_key"]] = decoded
    return [found[key] for key in keys if key in found]


# ---------------------------------------------------------------------------------------------------------------
# LLM response cache
# ---------------------------------------------------------------------------------------------------------------


def cache_get(db: sqlite_utils.Database, key: str) -> dict[str, Any] | None:
    """The cached response (decoded JSON) stored under `key`, or None."""
    row = db.conn.execute("SELECT response FROM llm_cache WHERE key = ?", [key]).fetchone()
    return json.loads(row[0]) if row else None


def cache_put(
    db: sqlite_utils.Database, key: str, backend: str, model: str, request: Any, response: dict[str, Any]
) -> None:
    """Store (or replace) one successful LLM response. `request` must hold no secrets: it is stored as given."""
    with transaction(db) as conn:
        conn.execute(
            "INSERT OR REPLACE INTO llm_cache (key, backend, model, request, response, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [key, backend, model, _json(request), _json(response), now()],
        )


def cache_delete(db: sqlite_utils.Database, key: str) -> None:
    """Forget one cached LLM response (no error when there is none)."""
    with transaction(db) as conn:
        conn.execute("DELETE FROM llm_cache WHERE key = ?", [key])
