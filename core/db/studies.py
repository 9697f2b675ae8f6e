"""Blinded pairwise studies: studies, items, raters, assignments, ratings and their audit trail."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import sqlite_utils

from core.db.base import _fetch_dicts, _json, now, transaction
from core.errors import InputError, NotFoundError, WorkbenchError
from core.records import NeuronId

# The choices the ratings table's CHECK allows; `left` is the explanation shown first.
RATING_CHOICES = ("left", "right", "tie", "both_bad")
STUDY_FIELDS = (
    "name", "instructions", "model", "arms", "neurons", "ratings_per_item", "allow_tie", "allow_both_bad",
    "overlap_share", "gold_share", "seed",
)  # fmt: skip
ITEM_FIELDS = (
    "position", "model", "layer", "neuron", "left_explanation_id", "right_explanation_id", "left_arm", "right_arm",
    "left_text", "right_text", "is_gold", "gold_choice",
)  # fmt: skip


def insert_study(db: sqlite_utils.Database, study: dict[str, Any], items: Sequence[dict[str, Any]]) -> int:
    """Store a study (arms and neurons as lists) with its items in one transaction; InputError if the name is taken."""
    row = {key: study[key] for key in STUDY_FIELDS}
    row["arms"], row["neurons"] = _json(list(study["arms"])), _json(list(study["neurons"]))
    row["created_at"] = now()
    with transaction(db) as conn:
        if conn.execute("SELECT 1 FROM studies WHERE name = ?", [row["name"]]).fetchone():
            raise InputError(f"a study named {row['name']!r} already exists; choose another --name")
        study_id = conn.execute(
            f"INSERT INTO studies ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", list(row.values())
        ).lastrowid
        conn.executemany(
            f"INSERT INTO items (study_id, {', '.join(ITEM_FIELDS)}) VALUES (?, {', '.join('?' * len(ITEM_FIELDS))})",
            [[study_id, *(item[key] for key in ITEM_FIELDS)] for item in items],
        )
    return study_id


def _decode_study(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "arms": json.loads(row["arms"]), "neurons": json.loads(row["neurons"])}


def get_study(db: sqlite_utils.Database, name: str) -> dict[str, Any]:
    """The study row by name; NotFoundError lists the studies there are."""
    rows = _fetch_dicts(db.conn.execute("SELECT * FROM studies WHERE name = ?", [name]))
    if not rows:
        names = [row[0] for row in db.conn.execute("SELECT name FROM studies ORDER BY name")]
        known = ", ".join(names) or "none yet: create one with `python -m core study create`"
        raise NotFoundError(f"no study named {name!r} (studies: {known})")
    return _decode_study(rows[0])


def list_studies(db: sqlite_utils.Database) -> list[dict[str, Any]]:
    """Every study, oldest first, with its numbers of items and ratings."""
    rows = _fetch_dicts(
        db.conn.execute(
            "SELECT s.*, (SELECT COUNT(*) FROM items i WHERE i.study_id = s.id) AS n_items,"
            " (SELECT COUNT(*) FROM ratings r JOIN items i ON i.id = r.item_id WHERE i.study_id = s.id) AS n_ratings"
            " FROM studies s ORDER BY s.id"
        )
    )
    return [_decode_study(row) for row in rows]


def list_items(db: sqlite_utils.Database, study_id: int) -> list[dict[str, Any]]:
    """A study's items by position (unblinded: arms, explanation formats and explainers), each with its current
    number of ratings."""
    return _fetch_dicts(
        db.conn.execute(
            "SELECT i.*, (SELECT COUNT(*) FROM ratings r WHERE r.item_id = i.id) AS n_ratings,"
            " le.format AS left_format, le.explainer AS left_explainer,"
            " re.format AS right_format, re.explainer AS right_explainer"
            " FROM items i LEFT JOIN explanations le ON le.id = i.left_explanation_id"
            " LEFT JOIN explanations re ON re.id = i.right_explanation_id"
            " WHERE i.study_id = ? ORDER BY i.position",
            [study_id],
        )
    )


def get_item(db: sqlite_utils.Database, item_id: int) -> dict[str, Any] | None:
    rows = _fetch_dicts(db.conn.execute("SELECT * FROM items WHERE id = ?", [item_id]))
    return rows[0] if rows else None


def explanation_models(db: sqlite_utils.Database, neurons: Sequence[NeuronId]) -> list[str]:
    """The models that have at least one ok explanation for any of these neurons."""
    models: set[str] = set()
    for start in range(0, len(neurons), 400):
        chunk = neurons[start : start + 400]
        values = ", ".join("(?, ?)" for _ in chunk)
        models.update(
            row[0]
            for row in db.conn.execute(
                f"SELECT DISTINCT model FROM explanations WHERE status = 'ok' AND (layer, neuron) IN (VALUES {values})",
                [number for neuron in chunk for number in (neuron.layer, neuron.index)],
            )
        )
    return sorted(models)


def insert_rater(db: sqlite_utils.Database, name: str, code_hash: str, salt: str, role: str) -> int:
    """Store a rater with an already hashed access code; InputError if the name is taken."""
    with transaction(db) as conn:
        if conn.execute("SELECT 1 FROM raters WHERE name = ?", [name]).fetchone():
            raise InputError(f"a rater named {name!r} already exists; choose another name")
        return conn.execute(
            "INSERT INTO raters (name, code_hash, salt, role, created_at) VALUES (?, ?, ?, ?, ?)",
            [name, code_hash, salt, role, now()],
        ).lastrowid


def get_rater(db: sqlite_utils.Database, name: str) -> dict[str, Any] | None:
    """The rater's row, code hash and salt included: for authentication only, never for display or export."""
    rows = _fetch_dicts(db.conn.execute("SELECT * FROM raters WHERE name = ?", [name]))
    return rows[0] if rows else None


def list_raters(db: sqlite_utils.Database) -> list[dict[str, Any]]:
    """Every rater's id, name, role and creation time (no secrets)."""
    return _fetch_dicts(db.conn.execute("SELECT id, name, role, created_at FROM raters ORDER BY id"))


def assignment_state(
    db: sqlite_utils.Database, study_id: int, rater_id: int, reserved_since: str
) -> dict[str, list[dict[str, Any]]]:
    """What an assignment decision reads. `items`: id, position, is_gold and `filled` (ratings plus other raters'
    unrated assignments made since `reserved_since`). `assigned`: this rater's items in order, with `rated`."""
    items = _fetch_dicts(
        db.conn.execute(
            "SELECT i.id, i.position, i.is_gold, (SELECT COUNT(*) FROM ratings r WHERE r.item_id = i.id)"
            " + (SELECT COUNT(*) FROM assignments a WHERE a.item_id = i.id AND a.rater_id != ? AND a.assigned_at >= ?"
            "    AND NOT EXISTS (SELECT 1 FROM ratings r WHERE r.item_id = a.item_id AND r.rater_id = a.rater_id))"
            " AS filled FROM items i WHERE i.study_id = ? ORDER BY i.position",
            [rater_id, reserved_since, study_id],
        )
    )
    assigned = _fetch_dicts(
        db.conn.execute(
            "SELECT a.item_id, a.assigned_at,"
            " EXISTS (SELECT 1 FROM ratings r WHERE r.item_id = a.item_id AND r.rater_id = a.rater_id) AS rated"
            " FROM assignments a JOIN items i ON i.id = a.item_id WHERE i.study_id = ? AND a.rater_id = ?"
            " ORDER BY a.assigned_at, a.item_id",
            [study_id, rater_id],
        )
    )
    return {"items": items, "assigned": assigned}


def assign_item(
    db: sqlite_utils.Database,
    study_id: int,
    rater_id: int,
    reserved_since: str,
    choose: Callable[[dict[str, list[dict[str, Any]]]], int | None],
) -> int | None:
    """Read the assignment state, let `choose` pick an item and record it as assigned, all under one write lock,
    so that two raters asking at the same time see each other's reservations."""
    with transaction(db) as conn:
        item_id = choose(assignment_state(db, study_id, rater_id, reserved_since))
        if item_id is not None:
            conn.execute(
                "INSERT OR IGNORE INTO assignments (item_id, rater_id, assigned_at) VALUES (?, ?, ?)",
                [item_id, rater_id, now()],
            )
        return item_id


def is_assigned(db: sqlite_utils.Database, item_id: int, rater_id: int) -> bool:
    query = "SELECT 1 FROM assignments WHERE item_id = ? AND rater_id = ?"
    return db.conn.execute(query, [item_id, rater_id]).fetchone() is not None


def get_rating(db: sqlite_utils.Database, item_id: int, rater_id: int) -> dict[str, Any] | None:
    query = "SELECT * FROM ratings WHERE item_id = ? AND rater_id = ?"
    rows = _fetch_dicts(db.conn.execute(query, [item_id, rater_id]))
    return rows[0] if rows else None


RATING_VALUES = ("choice", "confidence", "comment", "seconds")


def write_rating(
    db: sqlite_utils.Database,
    study_id: int,
    item_id: int,
    rater_id: int,
    rating: dict[str, Any],
    require_assignment: bool = True,
) -> tuple[int, bool]:
    """Insert or update the one rating of (rater, item) in one write transaction, mapping left/right to the item's
    arm as `winner_arm`. A resubmission keeps the replaced values in rating_audit. Returns (rating id, replaced)."""
    with transaction(db) as conn:
        item = conn.execute("SELECT study_id, left_arm, right_arm FROM items WHERE id = ?", [item_id]).fetchone()
        if item is None or item[0] != study_id:
            study = conn.execute("SELECT name FROM studies WHERE id = ?", [study_id]).fetchone()
            raise InputError(
                f"item {item_id} is not part of study {study[0] if study else study_id!r}; "
                "list its items with `python -m core study items`"
            )
        assigned = conn.execute(
            "SELECT 1 FROM assignments WHERE item_id = ? AND rater_id = ?", [item_id, rater_id]
        ).fetchone()
        if require_assignment and assigned is None:
            raise InputError(f"item {item_id} was not assigned to this rater; rate the item you were shown")
        values = [rating.get(key) for key in RATING_VALUES]
        winner_arm = {"left": item[1], "right": item[2]}.get(rating["choice"])
        stamp = now()
        old = conn.execute(
            "SELECT id, choice, winner_arm, confidence, comment, seconds, updated_at FROM ratings"
            " WHERE item_id = ? AND rater_id = ?",
            [item_id, rater_id],
        ).fetchone()
        if old is None:
            rating_id = conn.execute(
                "INSERT INTO ratings (item_id, rater_id, choice, confidence, comment, seconds, winner_arm, created_at,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [item_id, rater_id, *values, winner_arm, stamp, stamp],
            ).lastrowid
            conn.execute(
                "INSERT OR IGNORE INTO assignments (item_id, rater_id, assigned_at) VALUES (?, ?, ?)",
                [item_id, rater_id, stamp],
            )
            return rating_id, False
        conn.execute(
            "INSERT INTO rating_audit (rating_id, item_id, rater_id, choice, winner_arm, confidence, comment, seconds,"
            " recorded_at, replaced_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [old[0], item_id, rater_id, *old[1:], stamp],
        )
        conn.execute(
            "UPDATE ratings SET choice = ?, confidence = ?, comment = ?, seconds = ?, winner_arm = ?, updated_at = ?"
            " WHERE id = ?",
            [*values, winner_arm, stamp, old[0]],
        )
        return old[0], True


def study_ratings(db: sqlite_utils.Database, study_id: int) -> list[dict[str, Any]]:
    """Every rating of a study joined with its item, rater name and the explanations' format and explainer, in
    rating order. Rater secrets are never selected."""
    return _fetch_dicts(
        db.conn.execute(
            "SELECT r.id AS rating_id, r.item_id, i.position, i.model, i.layer, i.neuron, r.rater_id,"
            " ra.name AS rater, r.choice, r.winner_arm, i.left_arm, i.right_arm, i.is_gold, i.gold_choice,"
            " r.confidence, r.seconds, r.comment, r.created_at, r.updated_at,"
            " (SELECT COUNT(*) FROM rating_audit au WHERE au.rating_id = r.id) AS revisions,"
            " i.left_explanation_id, i.right_explanation_id, le.format AS left_format, le.explainer AS left_explainer,"
            " re.format AS right_format, re.explainer AS right_explainer, i.left_text, i.right_text"
            " FROM ratings r JOIN items i ON i.id = r.item_id JOIN raters ra ON ra.id = r.rater_id"
            " LEFT JOIN explanations le ON le.id = i.left_explanation_id"
            " LEFT JOIN explanations re ON re.id = i.right_explanation_id"
            " WHERE i.study_id = ? ORDER BY r.id",
            [study_id],
        )
    )


def study_assignment_counts(db: sqlite_utils.Database, study_id: int) -> dict[int, int]:
    """Per rater id, how many items of the study were handed to them."""
    query = (
        "SELECT a.rater_id, COUNT(*) FROM assignments a JOIN items i ON i.id = a.item_id"
        " WHERE i.study_id = ? GROUP BY a.rater_id"
    )
    return dict(db.conn.execute(query, [study_id]).fetchall())


def delete_study_ratings(db: sqlite_utils.Database, study_id: int) -> int:
    """Delete a study's ratings, their audit rows and assignments; returns the number of ratings deleted.

    Only the admin export-then-purge calls this, inside the transaction that wrote the export, so that nothing
    rated in between is lost.
    """
    if not db.conn.in_transaction:
        raise WorkbenchError("ratings are deleted only by the admin export-then-purge, inside its transaction")
    in_study = "item_id IN (SELECT id FROM items WHERE study_id = ?)"
    db.conn.execute(f"DELETE FROM rating_audit WHERE {in_study}", [study_id])
    deleted = db.conn.execute(f"DELETE FROM ratings WHERE {in_study}", [study_id]).rowcount
    db.conn.execute(f"DELETE FROM assignments WHERE {in_study}", [study_id])
    return deleted
