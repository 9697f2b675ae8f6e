"""What `python -m core demo` created (table demo_rows), and its removal: exactly those rows, all in one transaction."""

from __future__ import annotations

from collections.abc import Iterable

import sqlite_utils

from core.db.base import _marks, now, transaction
from core.errors import InputError

DEMO_KINDS = ("explanation", "score", "study", "rater")


def has_demo_table(db: sqlite_utils.Database) -> bool:
    """Whether this database can record a demo (a development build of schema v3 cannot)."""
    return db.table("demo_rows").exists()


def record_demo_rows(db: sqlite_utils.Database, kind: str, row_ids: Iterable[int]) -> None:
    """Note rows the demo created, so that `demo --remove` deletes them and nothing else."""
    if kind not in DEMO_KINDS:
        raise ValueError(f"demo row kind {kind!r} is not one of {DEMO_KINDS}")
    stamp = now()
    with transaction(db):
        rows = ({"kind": kind, "row_id": int(row_id), "created_at": stamp} for row_id in row_ids)
        db.table("demo_rows").insert_all(rows, ignore=True)


def demo_rows(db: sqlite_utils.Database) -> dict[str, list[int]]:
    """kind → ids of the rows the demo created (empty lists when there is no demo)."""
    found: dict[str, list[int]] = {kind: [] for kind in DEMO_KINDS}
    if not has_demo_table(db):
        return found
    for kind, row_id in db.execute("SELECT kind, row_id FROM demo_rows ORDER BY kind, row_id"):
        found[kind].append(row_id)
    return found


def explanation_count(db: sqlite_utils.Database) -> int:
    return db.table("explanations").count


def _blockers(db: sqlite_utils.Database, rows: dict[str, list[int]]) -> list[str]:
    """What points at the demo's explanations or rater from outside the demo: removal would have to delete it too."""
    explanations, scores, studies, raters = (rows[k] for k in ("explanation", "score", "study", "rater"))
    found = []
    if explanations:
        marks = _marks(explanations)
        outside_scores = db.table("scores").count_where(
            f"explanation_id IN ({marks}) AND id NOT IN ({_marks(scores) or 'NULL'})", [*explanations, *scores]
        )
        if outside_scores:
            found.append(f"{outside_scores} score(s) made outside the demo")
        similarities = db.table("similarities").count_where(f"explanation_id IN ({marks})", explanations)
        if similarities:
            found.append(f"{similarities} similarity row(s)")
        items = db.table("items").count_where(
            f"(left_explanation_id IN ({marks}) OR right_explanation_id IN ({marks}))"
            f" AND study_id NOT IN ({_marks(studies) or 'NULL'})",
            [*explanations, *explanations, *studies],
        )
        if items:
            found.append(f"{items} item(s) of other studies")
    if raters:
        ratings = db.execute(
            f"SELECT COUNT(*) FROM ratings r JOIN items i ON i.id = r.item_id WHERE r.rater_id IN ({_marks(raters)})"
            f" AND i.study_id NOT IN ({_marks(studies) or 'NULL'})",
            [*raters, *studies],
        ).fetchone()[0]
        if ratings:
            found.append(f"{ratings} rating(s) by the demo rater in other studies")
        other_studies = db.table("study_raters").count_where(
            f"rater_id IN ({_marks(raters)}) AND study_id NOT IN ({_marks(studies) or 'NULL'})", [*raters, *studies]
        )
        if other_studies:
            found.append(f"the demo rater's assignment to {other_studies} other study(ies)")
    if studies:
        plans = db.table("study_plans").count_where(f"study_id IN ({_marks(studies)})", studies)
        if plans:
            found.append("an analysis plan fixed for the demo study (plans are never deleted)")
    return found


def remove_demo_rows(db: sqlite_utils.Database) -> dict[str, int]:
    """Delete what the demo created: its study (with its items, assignments and ratings, which belong to it), its
    scores, its `baseline:` explanations and its rater, then the record of them. All or nothing; InputError, naming
    them, when rows made outside the demo point at any of these. Returns how many rows of each kind went."""
    rows = demo_rows(db)
    counts = {kind: 0 for kind in ("explanations", "scores", "studies", "items", "ratings", "raters")}
    if not any(rows.values()):
        return counts
    explanations, scores, studies, raters = (rows[k] for k in ("explanation", "score", "study", "rater"))
    with transaction(db):
        blockers = _blockers(db, rows)
        if blockers:
            raise InputError(
                "the demo cannot be removed exactly: " + "; ".join(blockers) + " point at what it created. Delete "
                "those first (or keep the demo); nothing was removed"
            )
        if studies:
            marks = _marks(studies)
            items = f"SELECT id FROM items WHERE study_id IN ({marks})"
            db.table("rating_audit").delete_where(f"item_id IN ({items})", studies)
            counts["ratings"] = db.execute(f"DELETE FROM ratings WHERE item_id IN ({items})", studies).rowcount
            db.table("assignments").delete_where(f"item_id IN ({items})", studies)
            counts["items"] = db.execute(f"DELETE FROM items WHERE study_id IN ({marks})", studies).rowcount
            db.table("study_raters").delete_where(f"study_id IN ({marks})", studies)
            counts["studies"] = db.execute(f"DELETE FROM studies WHERE id IN ({marks})", studies).rowcount
        if scores:
            counts["scores"] = db.execute(f"DELETE FROM scores WHERE id IN ({_marks(scores)})", scores).rowcount
        if explanations:
            marks = _marks(explanations)
            counts["explanations"] = db.execute(
                f"DELETE FROM explanations WHERE id IN ({marks}) AND substr(explainer, 1, 9) = 'baseline:'",
                explanations,
            ).rowcount
        if raters:
            # Its assignments to the demo study went with the study; any other would have been a blocker.
            counts["raters"] = db.execute(f"DELETE FROM raters WHERE id IN ({_marks(raters)})", raters).rowcount
        db.table("demo_rows").delete_where()
    return counts
