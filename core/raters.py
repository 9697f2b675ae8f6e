"""Raters and their access codes (docs/METHOD.md §9): a rater signs in with a display name and an access code,
which is stored only as a salted scrypt hash. All SQL is in core.db.

`authenticate` is the one place a code is checked. Failed sign-ins are counted in the database per name and per
client (an address or browser session), so that a new tab or a restart does not reset them: past
`NAME_FAILURES_ALLOWED` failures for a name or `CLIENT_FAILURES_ALLOWED` from a client, the next attempt must wait
1, 2, 4… seconds (at most `MAX_WAIT_S`) after the last failure, and is refused unchecked until then.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import math
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlite_utils

from core import db as dbmod
from core.errors import InputError

MIN_CODE_CHARS = 8
MAX_NAME_CHARS = 100
# The scrypt parameters of new hashes: OWASP's Password Storage Cheat Sheet, N=2^17, r=8, p=1 (about 0.4 s and
# 128 MiB per hash on one CPU core). Hashes stored with other parameters keep verifying and are re-hashed at these on
# the next right code. Only tests may change it (monkeypatch, to save hashing time); no setting or variable does.
SCRYPT_PARAMS = {"n": 2**17, "r": 8, "p": 1}
# scrypt needs 128·r·N bytes of memory (128 MiB here); OpenSSL refuses more than `maxmem`.
_SCRYPT_MAXMEM = 2**28
_DUMMY_SALT = bytes(16)

NAME_FAILURES_ALLOWED = 5
CLIENT_FAILURES_ALLOWED = 20
MAX_WAIT_S = 15 * 60
# A counter whose last failure is older than this starts again from zero (e.g. one lab's shared address).
FORGET_FAILURES_AFTER_S = 24 * 3600
_MAX_CLIENT_CHARS = 200


class TooManySignInsError(InputError):
    """Too many failed sign-ins for a name or from a client: the code was not checked. `wait_s`: how long more."""

    def __init__(self, message: str, wait_s: int) -> None:
        super().__init__(message)
        self.wait_s = wait_s


@dataclass(frozen=True)
class Rater:
    """A rater as the app knows them after authentication: no code, no hash."""

    id: int
    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def _hash_code(code: str, salt: bytes, n: int, r: int, p: int) -> str:
    digest = hashlib.scrypt(code.encode(), salt=salt, n=n, r=r, p=p, maxmem=_SCRYPT_MAXMEM, dklen=32).hex()
    return f"scrypt${n}${r}${p}${digest}"


@functools.cache
def _dummy_hash(n: int, r: int, p: int) -> str:
    return _hash_code("", _DUMMY_SALT, n, r, p)


def add_rater(db: sqlite_utils.Database, name: str, code: str, admin: bool = False) -> Rater:
    """Register a rater; the access code is stored only as a salted scrypt hash."""
    name = name.strip()
    if not name or len(name) > MAX_NAME_CHARS:
        raise InputError(f"a rater needs a display name of 1 to {MAX_NAME_CHARS} characters: pass --name")
    if len(code) < MIN_CODE_CHARS:
        raise InputError(f"the access code must have at least {MIN_CODE_CHARS} characters")
    salt = secrets.token_bytes(16)
    role = "admin" if admin else "rater"
    return Rater(dbmod.insert_rater(db, name, _hash_code(code, salt, **SCRYPT_PARAMS), salt.hex(), role), name, role)


def authenticate(
    db: sqlite_utils.Database, name: str, code: str, *, client: str | None = None, now: datetime | None = None
) -> Rater:
    """The rater with this name and access code. The error does not say which of the two was wrong, and an unknown
    name costs the same hashing time as a known one. `client` identifies where the attempt comes from (an address
    or a session id) for throttling; `now` is the time of the attempt (default: the clock).

    TooManySignInsError, without checking the code, while too many recent failures for the name or from the
    client ask for a wait (see the module docstring)."""
    name = name.strip()
    moment = _utc(now)
    counters = [("name", name[:MAX_NAME_CHARS])]
    if client:
        counters.append(("client", client[:_MAX_CLIENT_CHARS]))
    dbmod.count_sign_in_attempt(
        db,
        counters,
        _timestamp(moment),
        _timestamp(moment - timedelta(seconds=FORGET_FAILURES_AFTER_S)),
        functools.partial(_refuse_while_waiting, moment),
    )
    row = dbmod.get_rater(db, name)
    if row is not None and row["code_hash"] == dbmod.REMOVED_CODE_HASH:
        row = None  # a removed rater is refused like an unknown name, after the same hashing time
    stored = row["code_hash"] if row else _dummy_hash(**SCRYPT_PARAMS)
    _, n, r, p, _ = stored.split("$")
    salt = bytes.fromhex(row["salt"]) if row else _DUMMY_SALT
    matches = hmac.compare_digest(_hash_code(code, salt, int(n), int(r), int(p)), stored)
    if row is None or not matches:
        raise InputError("unknown rater name or wrong access code; check both, or ask the study's admin")
    dbmod.clear_sign_in_failures(db, counters[0])
    if client:
        dbmod.forgive_sign_in_failure(db, counters[1])
    if {"n": int(n), "r": int(r), "p": int(p)} != SCRYPT_PARAMS:
        new_salt = secrets.token_bytes(16)
        dbmod.update_rater_code(db, row["id"], _hash_code(code, new_salt, **SCRYPT_PARAMS), new_salt.hex())
    return Rater(row["id"], row["name"], row["role"])


def wait_after(failures: int, allowed: int) -> int:
    """Seconds an attempt must wait after the last of `failures` failures: none up to `allowed`, then 1, 2, 4…,
    at most MAX_WAIT_S."""
    if failures < allowed:
        return 0
    return min(MAX_WAIT_S, 2 ** min(failures - allowed, 30))


def _refuse_while_waiting(moment: datetime, failures: dict[tuple[str, str], tuple[int, str]]) -> None:
    waits = []
    for (scope, _key), (count, last_failed_at) in failures.items():
        allowed = NAME_FAILURES_ALLOWED if scope == "name" else CLIENT_FAILURES_ALLOWED
        due = datetime.fromisoformat(last_failed_at) + timedelta(seconds=wait_after(count, allowed))
        if due > moment:
            waits.append(((due - moment).total_seconds(), scope))
    if waits:
        seconds, scope = max(waits)
        wait_s = math.ceil(seconds)
        whom = "for this name" if scope == "name" else "from this connection"
        raise TooManySignInsError(f"too many failed sign-ins {whom}; try again in {_duration(wait_s)}", wait_s)


def _duration(seconds: int) -> str:
    return f"{seconds} s" if seconds < 120 else f"{math.ceil(seconds / 60)} min"


def _utc(moment: datetime | None) -> datetime:
    if moment is None:
        return datetime.now(UTC)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _timestamp(moment: datetime) -> str:
    # The format of core.db.now(), so that stored times compare as text.
    return moment.isoformat(timespec="milliseconds")


def list_raters(db: sqlite_utils.Database) -> list[dict[str, Any]]:
    return dbmod.list_raters(db)


def _existing(db: sqlite_utils.Database, name: str) -> dict[str, Any]:
    row = dbmod.get_rater(db, name.strip())
    if row is None:
        raise InputError(f"no rater named {name!r}; `python -m core rater list` shows them")
    return row


def remove_rater(db: sqlite_utils.Database, name: str) -> dict[str, Any]:
    """Remove a rater: they can no longer sign in or rate, and lose their studies; their past ratings are kept and
    stay attributed to them. `reset_code` gives them access again."""
    row = _existing(db, name)
    lost = dbmod.remove_rater(db, row["id"], row["name"])
    return {"name": row["name"], "removed": True, "studies_unassigned": lost}


def reset_code(db: sqlite_utils.Database, name: str, code: str) -> Rater:
    """Give a rater a new access code (also a removed one, who can then sign in again, without studies); their
    failed sign-ins are forgotten."""
    row = _existing(db, name)
    if len(code) < MIN_CODE_CHARS:
        raise InputError(f"the access code must have at least {MIN_CODE_CHARS} characters")
    salt = secrets.token_bytes(16)
    dbmod.update_rater_code(db, row["id"], _hash_code(code, salt, **SCRYPT_PARAMS), salt.hex())
    dbmod.clear_sign_in_failures(db, ("name", row["name"]))
    return Rater(row["id"], row["name"], row["role"])
