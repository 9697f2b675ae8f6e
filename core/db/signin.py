"""Signing in: failed sign-ins counted per name and per client (table `sign_in_failures`), and raters' access codes.

The counting policy (how many failures, how long to wait) is core.raters'; here are only the reads and writes.
A counter is a (scope, key) pair: ("name", display name) or ("client", an address or session id).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import sqlite_utils

from core.db.base import transaction

SignInCounter = tuple[str, str]
# failures so far and the time of the last one (ISO 8601, UTC), per counter that has any
SignInFailures = dict[SignInCounter, tuple[int, str]]


def count_sign_in_attempt(
    db: sqlite_utils.Database,
    counters: Sequence[SignInCounter],
    at: str,
    forget_before: str,
    refuse: Callable[[SignInFailures], None],
) -> None:
    """In one transaction: hand the counters' failures to `refuse`, which raises to stop the attempt; else count
    the attempt as a failure on every counter before the code is checked, so that parallel attempts see each
    other. Failures last seen before `forget_before` are forgotten. A right code takes it back (see below)."""
    with transaction(db):
        failures: SignInFailures = {}
        for scope, key in counters:
            row = db.execute(
                "SELECT failures, last_failed_at FROM sign_in_failures"
                " WHERE scope = ? AND key = ? AND last_failed_at >= ?",
                [scope, key, forget_before],
            ).fetchone()
            if row is not None:
                failures[(scope, key)] = (int(row[0]), str(row[1]))
        refuse(failures)
        for scope, key in counters:
            # Raw SQL: counting in the row itself (ON CONFLICT … failures + 1) is what lets parallel attempts add up.
            db.execute(
                "INSERT INTO sign_in_failures (scope, key, failures, last_failed_at) VALUES (?, ?, 1, ?)"
                " ON CONFLICT (scope, key) DO UPDATE SET last_failed_at = excluded.last_failed_at,"
                " failures = CASE WHEN sign_in_failures.last_failed_at < ? THEN 1"
                " ELSE sign_in_failures.failures + 1 END",
                [scope, key, at, forget_before],
            )


def clear_sign_in_failures(db: sqlite_utils.Database, counter: SignInCounter) -> None:
    """Forget every failure of this counter (a right code for a name)."""
    with transaction(db):
        db.table("sign_in_failures").delete_where("scope = ? AND key = ?", list(counter))


def forgive_sign_in_failure(db: sqlite_utils.Database, counter: SignInCounter) -> None:
    """Take back one failure counted in advance by `count_sign_in_attempt` (a right code from a client)."""
    with transaction(db):
        db.execute("UPDATE sign_in_failures SET failures = failures - 1 WHERE scope = ? AND key = ?", list(counter))
        db.table("sign_in_failures").delete_where("scope = ? AND key = ? AND failures <= 0", list(counter))


def sign_in_failures(db: sqlite_utils.Database, counter: SignInCounter) -> tuple[int, str] | None:
    """(failures, last failed at) of one counter, or None when it has none."""
    row = db.execute(
        "SELECT failures, last_failed_at FROM sign_in_failures WHERE scope = ? AND key = ?", list(counter)
    ).fetchone()
    return (int(row[0]), str(row[1])) if row else None


def update_rater_code(db: sqlite_utils.Database, rater_id: int, code_hash: str, salt: str) -> None:
    """Replace a rater's stored code hash and salt (a re-hash at stronger parameters)."""
    with transaction(db):
        db.execute("UPDATE raters SET code_hash = ?, salt = ? WHERE id = ?", [code_hash, salt, rater_id])
