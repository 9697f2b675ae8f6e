"""Blinded pairwise studies: studies, items, raters, assignments, ratings and their audit trail."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, cast

import sqlite_utils

from core.db.base import _chunks, _json, _last_id, now, transaction
from core.errors import InputError, NotFoundError, WorkbenchError
from core.records import NeuronId

# The choices the ratings table's CHECK allows; `left` is the explanation shown first.
RATING_CHOICES = ("left", "right", "tie", "both_bad")
STUDY_FIELDS = (
    "name", "instructions", "model", "arms", "neurons", "ratings_per_item", "allow_tie", "allow_both_bad",
    "overlap_share", "gold_share", "seed", "allow_admin_ratings",
)  # fmt: skip
ITEM_FIELDS = (
    "position", "model", "layer", "neuron", "left_explanation_id", "right_explanation_id", "left_arm", "right_arm",
    "left_text", "right_text", "is_gold", "gold_choice",
)  # fmt: skip


def insert_study(
    db: sqlite_utils.Database,
    study: dict[str, Any],
    items: Sequence[dict[str, Any]],
    plan: tuple[str, str] | None = None,
) -> int:
    """Store a study (arms and neurons as lists) with its items, and its plan (JSON text, SHA-256) when given, in one
    transaction; InputError if the name is taken."""
    row = {key: study[key] for key in STUDY_FIELDS}
    row["arms"], row["neurons"] = _json(list(study["arms"])), _json(list(study["neurons"]))
    row["created_at"] = now()
    with transaction(db):
        if db.table("studies").count_where("name = ?", [row["name"]]):
            raise InputError(f"a study named {row['name']!r} already exists; choose another --name")
        study_id = _last_id(db.table("studies").insert(row))
        db.table("items").insert_all({"study_id": study_id, **{k: item[k] for k in ITEM_FIELDS}} for item in items)
        if plan is not None:
            plan_json, sha256 = plan
            db.table("study_plans").insert(
                {"study_id": study_id, "plan": plan_json, "sha256": sha256, "created_at": now()}
            )
    return study_id


def _decode_study(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "arms": json.loads(row["arms"]), "neurons": json.loads(row["neurons"])}


def get_study(db: sqlite_utils.Database, name: str) -> dict[str, Any]:
    """The study row by name; NotFoundError lists the studies there are."""
    row = next(db.query("SELECT * FROM studies WHERE name = ?", [name]), None)
    if row is None:
        names = [name for (name,) in db.execute("SELECT name FROM studies ORDER BY name")]
        known = ", ".join(names) or "none yet: create one with `python -m core study create`"
        raise NotFoundError(f"no study named {name!r} (studies: {known})")
    return _decode_study(row)


def list_studies(db: sqlite_utils.Database) -> list[dict[str, Any]]:
    """Every study, oldest first, with its numbers of items and ratings."""
    rows = db.query(
        "SELECT s.*, (SELECT COUNT(*) FROM items i WHERE i.study_id = s.id) AS n_items,"
        " (SELECT COUNT(*) FROM ratings r JOIN items i ON i.id = r.item_id WHERE i.study_id = s.id) AS n_ratings"
        " FROM studies s ORDER BY s.id"
    )
    return [_decode_study(row) for row in rows]


def list_items(db: sqlite_utils.Database, study_id: int) -> list[dict[str, Any]]:
    """A study's items by position (unblinded: arms, explanation formats and explainers), each with its current
    number of ratings."""
    return list(
        db.query(
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
    return next(db.query("SELECT * FROM items WHERE id = ?", [item_id]), None)


def explanation_models(db: sqlite_utils.Database, neurons: Sequence[NeuronId]) -> list[str]:
    """The models that have at least one ok explanation for any of these neurons."""
    models: set[str] = set()
    for chunk in _chunks(neurons, 400):
        values = ", ".join("(?, ?)" for _ in chunk)
        models.update(
            row[0]
            for row in db.execute(
                f"SELECT DISTINCT model FROM explanations WHERE status = 'ok' AND (layer, neuron) IN (VALUES {values})",
                [number for neuron in chunk for number in (neuron.layer, neuron.index)],
            )
        )
    return sorted(models)


def insert_rater(db: sqlite_utils.Database, name: str, code_hash: str, salt: str, role: str) -> int:
    """Store a rater with an already hashed access code; InputError if the name is taken."""
    row = {"name": name, "code_hash": code_hash, "salt": salt, "role": role}
    with transaction(db):
        if db.table("raters").count_where("name = ?", [name]):
            raise InputError(f"a rater named {name!r} already exists; choose another name")
        return _last_id(db.table("raters").insert({**row, "created_at": now()}))


def get_rater(db: sqlite_utils.Database, name: str) -> dict[str, Any] | None:
    """The rater's row, code hash and salt included: for authentication only, never for display or export."""
    return next(db.query("SELECT * FROM raters WHERE name = ?", [name]), None)


# The stored code hash of a removed rater: no code matches it (core.raters). The row stays, so that the rater's past
# ratings keep their name.
REMOVED_CODE_HASH = "removed"


def list_raters(db: sqlite_utils.Database) -> list[dict[str, Any]]:
    """Every rater's id, name, role, creation time and whether they were removed (no secrets)."""
    query = "SELECT id, name, role, created_at, code_hash = ? AS removed FROM raters ORDER BY id"
    return [{**row, "removed": bool(row["removed"])} for row in db.query(query, [REMOVED_CODE_HASH])]


def remove_rater(db: sqlite_utils.Database, rater_id: int, name: str) -> int:
    """Take a rater's access away in one transaction: no code signs them in, no study is assigned to them, their
    failed sign-ins are forgotten. Their ratings stay, attributed to them. Returns how many studies they lost."""
    with transaction(db):
        db.execute("UPDATE raters SET code_hash = ?, salt = '' WHERE id = ?", [REMOVED_CODE_HASH, rater_id])
        lost = db.execute("DELETE FROM study_raters WHERE rater_id = ?", [rater_id]).rowcount
        db.table("sign_in_failures").delete_where("scope = 'name' AND key = ?", [name])
        return lost


def assignment_state(
    db: sqlite_utils.Database, study_id: int, rater_id: int, reserved_since: str
) -> dict[str, list[dict[str, Any]]]:
    """What an assignment decision reads. `items`: id, position, is_gold and `filled` (ratings plus other raters'
    unrated assignments made since `reserved_since`). `assigned`: this rater's items in order, with `rated`."""
    items = db.query(
        "SELECT i.id, i.position, i.is_gold, (SELECT COUNT(*) FROM ratings r WHERE r.item_id = i.id)"
        " + (SELECT COUNT(*) FROM assignments a WHERE a.item_id = i.id AND a.rater_id != ? AND a.assigned_at >= ?"
        "    AND NOT EXISTS (SELECT 1 FROM ratings r WHERE r.item_id = a.item_id AND r.rater_id = a.rater_id))"
        " AS filled FROM items i WHERE i.study_id = ? ORDER BY i.position",
        [rater_id, reserved_since, study_id],
    )
    assigned = db.query(
        "SELECT a.item_id, a.assigned_at,"
        " EXISTS (SELECT 1 FROM ratings r WHERE r.item_id = a.item_id AND r.rater_id = a.rater_id) AS rated"
        " FROM assignments a JOIN items i ON i.id = a.item_id WHERE i.study_id = ? AND a.rater_id = ?"
        " ORDER BY a.assigned_at, a.item_id",
        [study_id, rater_id],
    )
    return {"items": list(items), "assigned": list(assigned)}


def layout_state(db: sqlite_utils.Database, study_id: int, rater_id: int, item_id: int) -> dict[str, Any]:
    """What a left/right decision reads: the item's arms (`left_arm`, `right_arm`: its default layout), the arms
    this rater was shown on the left across the study (`rater`: rows of shown, left_arm, right_arm) and the arms
    shown on the left of this item to anyone (`item`: a list of arms)."""
    left, right = db.execute("SELECT left_arm, right_arm FROM items WHERE id = ?", [item_id]).fetchone()
    rater = db.query(
        "SELECT a.left_arm AS shown, i.left_arm, i.right_arm FROM assignments a JOIN items i ON i.id = a.item_id"
        " WHERE i.study_id = ? AND a.rater_id = ?",
        [study_id, rater_id],
    )
    item = [row[0] for row in db.execute("SELECT left_arm FROM assignments WHERE item_id = ?", [item_id])]
    return {"item_id": item_id, "left_arm": left, "right_arm": right, "rater": list(rater), "item": item}


def assign_item(
    db: sqlite_utils.Database,
    study_id: int,
    rater_id: int,
    reserved_since: str,
    choose: Callable[[dict[str, list[dict[str, Any]]]], int | None],
    place: Callable[[dict[str, Any]], str],
) -> int | None:
    """Read the assignment state, let `choose` pick an item and record it as assigned, with the arm `place` puts on
    the left for this rater (from `layout_state`), all under one write lock, so that two raters asking at the same
    time see each other's reservations and layouts."""
    with transaction(db):
        item_id = choose(assignment_state(db, study_id, rater_id, reserved_since))
        if item_id is not None and not is_assigned(db, item_id, rater_id):
            left_arm = place(layout_state(db, study_id, rater_id, item_id))
            db.table("assignments").insert(
                {"item_id": item_id, "rater_id": rater_id, "assigned_at": now(), "left_arm": left_arm}
            )
        return item_id


def shown_layout(db: sqlite_utils.Database, item_id: int, rater_id: int) -> tuple[str, str]:
    """(left arm, right arm) as this rater sees the item: their assignment's layout, else the item's default."""
    return _layout(db, item_id, rater_id)


def _layout(db: sqlite_utils.Database, item_id: int, rater_id: int, shown_left: str | None = None) -> tuple[str, str]:
    row = db.execute(
        "SELECT i.left_arm, i.right_arm, a.left_arm FROM items i"
        " LEFT JOIN assignments a ON a.item_id = i.id AND a.rater_id = ? WHERE i.id = ?",
        [rater_id, item_id],
    ).fetchone()
    left, right, assigned = row
    shown = shown_left if shown_left is not None else assigned
    if shown not in (None, left, right):
        raise InputError(f"item {item_id} shows {left} and {right}; {shown!r} cannot have been on the left")
    return (left, right) if shown in (None, left) else (right, left)


def is_assigned(db: sqlite_utils.Database, item_id: int, rater_id: int) -> bool:
    return bool(db.table("assignments").count_where("item_id = ? AND rater_id = ?", [item_id, rater_id]))


def get_rating(db: sqlite_utils.Database, item_id: int, rater_id: int) -> dict[str, Any] | None:
    return next(db.query("SELECT * FROM ratings WHERE item_id = ? AND rater_id = ?", [item_id, rater_id]), None)


RATING_VALUES = ("choice", "confidence", "comment", "seconds")


def write_rating(
    db: sqlite_utils.Database,
    study_id: int,
    item_id: int,
    rater_id: int,
    rating: dict[str, Any],
    require_assignment: bool = True,
) -> tuple[int, bool]:
    """Insert or update the one rating of (rater, item) in one write transaction, mapping left/right to the arm
    this rater saw there as `winner_arm`. A changed resubmission keeps the replaced values in rating_audit.
    Returns (rating id, replaced)."""
    with transaction(db):
        if require_assignment and not is_assigned(db, item_id, rater_id) and _item_study(db, item_id) == study_id:
            raise InputError(f"item {item_id} was not assigned to this rater; rate the item you were shown")
        rating_id, outcome = _store_rating(db, study_id, item_id, rater_id, rating, now())
        return rating_id, outcome == "replaced"


def study_ratings(db: sqlite_utils.Database, study_id: int) -> list[dict[str, Any]]:
    """Every rating of a study joined with its item, rater name and the explanations' format and explainer, in
    rating order. Left and right are as this rater saw them (`shown_left`), so left_arm, left_text,
    left_explanation_id… and a gold item's gold_choice are per rating. Rater secrets are never selected."""
    swapped = "(r.shown_left IS NOT NULL AND r.shown_left != i.left_arm)"

    def side(column: str, name: str | None = None) -> str:
        # `left_x` of this rating is the item's right_x when the rater saw the item the other way round.
        left, right = column.format(side="left"), column.format(side="right")
        name = name or column.format(side="{side}").split(".")[-1]
        return (
            f"CASE WHEN {swapped} THEN {right} ELSE {left} END AS {name.format(side='left')},"
            f" CASE WHEN {swapped} THEN {left} ELSE {right} END AS {name.format(side='right')}"
        )

    return list(
        db.query(
            "SELECT r.id AS rating_id, r.item_id, i.position, i.model, i.layer, i.neuron, r.rater_id,"
            f" ra.name AS rater, r.choice, r.winner_arm, {side('i.{side}_arm')}, i.is_gold,"
            " CASE WHEN i.is_gold = 0 THEN NULL"
            f"  WHEN ({swapped} AND i.right_arm LIKE 'truth:%') OR (NOT {swapped} AND i.left_arm LIKE 'truth:%')"
            "  THEN 'left' ELSE 'right' END AS gold_choice,"
            " r.shown_left, i.left_arm AS default_left_arm,"
            " r.confidence, r.seconds, r.comment, r.created_at, r.updated_at,"
            " COALESCE(au.revisions, 0) AS revisions,"
            f" {side('i.{side}_explanation_id')},"
            f" {side('{side}e.format', '{side}_format')}, {side('{side}e.explainer', '{side}_explainer')},"
            f" {side('i.{side}_text')}"
            " FROM ratings r JOIN items i ON i.id = r.item_id JOIN raters ra ON ra.id = r.rater_id"
            # Counted once per rating, not by a scan of rating_audit (which has no index on rating_id) per rating.
            " LEFT JOIN (SELECT rating_id, COUNT(*) AS revisions FROM rating_audit GROUP BY rating_id) au"
            " ON au.rating_id = r.id"
            " LEFT JOIN explanations lefte ON lefte.id = i.left_explanation_id"
            " LEFT JOIN explanations righte ON righte.id = i.right_explanation_id"
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
    return dict(db.execute(query, [study_id]).fetchall())


def delete_study_ratings(db: sqlite_utils.Database, study_id: int) -> int:
    """Delete a study's ratings, their audit rows and assignments; returns the number of ratings deleted.

    Only the admin export-then-purge calls this, inside the transaction that wrote the export, so that nothing
    rated in between is lost.
    """
    if not db.conn.in_transaction:
        raise WorkbenchError("ratings are deleted only by the admin export-then-purge, inside its transaction")
    in_study = "item_id IN (SELECT id FROM items WHERE study_id = ?)"
    db.table("rating_audit").delete_where(in_study, [study_id])
    deleted = db.execute(f"DELETE FROM ratings WHERE {in_study}", [study_id]).rowcount
    db.table("assignments").delete_where(in_study, [study_id])
    return deleted


# --- blinding: study states, raters' studies, what visitors may see ----------------------------------------------

STUDY_STATES = ("open", "closed")


def in_open_study(alias: str) -> str:
    """SQL that is true when the row `alias` (with model, layer and neuron columns) is a neuron of a study that is
    not closed: while a study runs, such a neuron's explanations, formats and scores are for admins only."""
    # Not correlated with the row, so SQLite builds the set of blinded neurons once per query rather than expanding
    # every open study's neuron list for each row (2.4 s → 32 ms for a 6,400-neuron layer, bench/scale.py).
    return (
        f"({alias}.model, {alias}.layer || ':' || {alias}.neuron) IN (SELECT bs.model, bn.value"
        " FROM studies bs, json_each(bs.neurons) bn WHERE bs.state = 'open')"
    )


def blinded_neurons(db: sqlite_utils.Database) -> frozenset[tuple[str, NeuronId]]:
    """(model, neuron) of every neuron that belongs to a study that is not closed."""
    rows = db.execute("SELECT DISTINCT s.model, n.value FROM studies s, json_each(s.neurons) n WHERE s.state = 'open'")
    return frozenset((model, NeuronId.parse(neuron)) for model, neuron in rows)


def set_study_state(db: sqlite_utils.Database, study_id: int, state: str) -> None:
    if state not in STUDY_STATES:
        raise InputError(f"a study is {' or '.join(STUDY_STATES)}, not {state!r}")
    with transaction(db):
        db.execute("UPDATE studies SET state = ? WHERE id = ?", [state, study_id])


def set_allow_admin_ratings(db: sqlite_utils.Database, study_id: int, allow: bool) -> None:
    with transaction(db):
        db.execute("UPDATE studies SET allow_admin_ratings = ? WHERE id = ?", [int(allow), study_id])


def study_name_keys(db: sqlite_utils.Database) -> list[str]:
    """Every study's stored name (for comparing a new name against them)."""
    return [row[0] for row in db.execute("SELECT name FROM studies ORDER BY id")]


def assign_rater_studies(db: sqlite_utils.Database, rater_id: int, study_ids: Sequence[int]) -> int:
    """Give a rater these studies (those they already have stay); returns how many were new."""
    stamp = now()
    with transaction(db):
        held = set(rater_study_ids(db, rater_id))
        new = [study_id for study_id in dict.fromkeys(study_ids) if study_id not in held]
        rows = ({"study_id": study_id, "rater_id": rater_id, "assigned_at": stamp} for study_id in new)
        db.table("study_raters").insert_all(rows, ignore=True)
        return len(new)


def unassign_rater_studies(db: sqlite_utils.Database, rater_id: int, study_ids: Sequence[int]) -> int:
    """Take these studies from a rater (their ratings stay); returns how many were removed."""
    with transaction(db):
        return sum(
            db.execute("DELETE FROM study_raters WHERE study_id = ? AND rater_id = ?", [study_id, rater_id]).rowcount
            for study_id in study_ids
        )


def rater_study_ids(db: sqlite_utils.Database, rater_id: int) -> list[int]:
    query = "SELECT study_id FROM study_raters WHERE rater_id = ? ORDER BY study_id"
    return [row[0] for row in db.execute(query, [rater_id])]


def study_rater_names(db: sqlite_utils.Database) -> dict[int, list[str]]:
    """Per study id, the names of the raters assigned to it."""
    names: dict[int, list[str]] = {}
    query = "SELECT sr.study_id, r.name FROM study_raters sr JOIN raters r ON r.id = sr.rater_id ORDER BY r.name"
    for study_id, name in db.execute(query):
        names.setdefault(study_id, []).append(name)
    return names


# --- ratings imported in bulk ------------------------------------------------------------------------------------


def write_ratings(
    db: sqlite_utils.Database, study_id: int, ratings: Sequence[tuple[int, int, dict[str, Any]]]
) -> dict[str, int]:
    """Write ratings given as (item id, rater id, values) in one write transaction, all or none, as `write_rating`
    does without the assignment check; but a rating equal to the stored one is left as it is (no audit row, no new
    updated_at), so that importing the same file again changes nothing. Returns the counts of new, replaced and
    unchanged ratings."""
    counts = {"new": 0, "replaced": 0, "unchanged": 0}
    with transaction(db):
        stamp = now()
        for item_id, rater_id, rating in ratings:
            counts[_store_rating(db, study_id, item_id, rater_id, rating, stamp)[1]] += 1
    return counts


def _item_study(db: sqlite_utils.Database, item_id: int) -> int | None:
    row = db.execute("SELECT study_id FROM items WHERE id = ?", [item_id]).fetchone()
    return row[0] if row else None


def _store_rating(
    db: sqlite_utils.Database, study_id: int, item_id: int, rater_id: int, rating: dict[str, Any], stamp: str
) -> tuple[int, str]:
    """Write one rating inside the caller's transaction: (rating id, "new" | "replaced" | "unchanged"). The arm on
    the left is `rating["shown_left"]` when given, else the rater's assigned layout, else the item's default.

    Its writes stay hand-written SQL: it runs once per rating of a bulk import, where sqlite-utils' `insert()`
    (two schema lookups and a savepoint per call) made importing 50,000 ratings take twice as long."""
    if _item_study(db, item_id) != study_id:
        study = db.execute("SELECT name FROM studies WHERE id = ?", [study_id]).fetchone()
        raise InputError(
            f"item {item_id} is not part of study {study[0] if study else study_id!r}; "
            "list its items with `python -m core study items`"
        )
    left, right = _layout(db, item_id, rater_id, rating.get("shown_left"))
    values = [rating.get(key) for key in RATING_VALUES]
    winner_arm = {"left": left, "right": right}.get(rating["choice"])
    old = db.execute(
        "SELECT id, choice, winner_arm, confidence, comment, seconds, shown_left, updated_at FROM ratings"
        " WHERE item_id = ? AND rater_id = ?",
        [item_id, rater_id],
    ).fetchone()
    if old is None:
        cursor = db.execute(
            "INSERT INTO ratings (item_id, rater_id, choice, confidence, comment, seconds, winner_arm, shown_left,"
            " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [item_id, rater_id, *values, winner_arm, left, stamp, stamp],
        )
        db.execute(
            "INSERT OR IGNORE INTO assignments (item_id, rater_id, assigned_at, left_arm) VALUES (?, ?, ?, ?)",
            [item_id, rater_id, stamp, left],
        )
        return cast(int, cursor.lastrowid), "new"
    if [old[1], old[3], old[4], old[5], old[2], old[6]] == [*values, winner_arm, left]:
        return old[0], "unchanged"
    db.execute(
        "INSERT INTO rating_audit (rating_id, item_id, rater_id, choice, winner_arm, confidence, comment, seconds,"
        " shown_left, recorded_at, replaced_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [old[0], item_id, rater_id, *old[1:], stamp],
    )
    db.execute(
        "UPDATE ratings SET choice = ?, confidence = ?, comment = ?, seconds = ?, winner_arm = ?, shown_left = ?,"
        " updated_at = ? WHERE id = ?",
        [*values, winner_arm, left, stamp, old[0]],
    )
    return old[0], "replaced"


# --- the analysis plan ------------------------------------------------------------------------------------------


def store_plan(db: sqlite_utils.Database, study_id: int, plan_json: str, sha256: str) -> None:
    """Fix a study's plan, once and before its first rating; InputError otherwise (the table refuses changes)."""
    with transaction(db):
        if get_plan(db, study_id) is not None:
            raise InputError("this study's plan is already fixed; a plan never changes once stored")
        rated = db.execute(
            "SELECT 1 FROM ratings r JOIN items i ON i.id = r.item_id WHERE i.study_id = ? LIMIT 1", [study_id]
        ).fetchone()
        if rated:
            raise InputError("this study has ratings already; a plan must be fixed before the first rating")
        db.table("study_plans").insert({"study_id": study_id, "plan": plan_json, "sha256": sha256, "created_at": now()})


def get_plan(db: sqlite_utils.Database, study_id: int) -> dict[str, Any] | None:
    """The stored plan row (plan as JSON text, sha256, created_at), or None."""
    return next(db.query("SELECT * FROM study_plans WHERE study_id = ?", [study_id]), None)
