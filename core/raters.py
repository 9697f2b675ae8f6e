"""Raters and their access codes (SPEC.md §5, last point): a rater signs in with a display name and an access code,
which is stored only as a salted scrypt hash. All SQL is in core.db.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

import sqlite_utils

from core import db as dbmod
from core.errors import InputError

MIN_CODE_CHARS = 4
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
_DUMMY_SALT = bytes(16)


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
    digest = hashlib.scrypt(code.encode(), salt=salt, n=n, r=r, p=p, maxmem=2**26, dklen=32).hex()
    return f"scrypt${n}${r}${p}${digest}"


@functools.cache
def _dummy_hash() -> str:
    return _hash_code("", _DUMMY_SALT, **_SCRYPT)


def add_rater(db: sqlite_utils.Database, name: str, code: str, admin: bool = False) -> Rater:
    """Register a rater; the access code is stored only as a salted scrypt hash."""
    name = name.strip()
    if not name or len(name) > 100:
        raise InputError("a rater needs a display name of 1 to 100 characters: pass --name")
    if len(code) < MIN_CODE_CHARS:
        raise InputError(f"the access code must have at least {MIN_CODE_CHARS} characters")
    salt = secrets.token_bytes(16)
    role = "admin" if admin else "rater"
    return Rater(dbmod.insert_rater(db, name, _hash_code(code, salt, **_SCRYPT), salt.hex(), role), name, role)


def authenticate(db: sqlite_utils.Database, name: str, code: str) -> Rater:
    """The rater with this name and access code. The error does not say which of the two was wrong, and an unknown
    name costs the same hashing time as a known one."""
    row = dbmod.get_rater(db, name.strip())
    stored = row["code_hash"] if row else _dummy_hash()
    _, n, r, p, _ = stored.split("$")
    salt = bytes.fromhex(row["salt"]) if row else _DUMMY_SALT
    matches = hmac.compare_digest(_hash_code(code, salt, int(n), int(r), int(p)), stored)
    if row is None or not matches:
        raise InputError("unknown rater name or wrong access code; check both, or ask the study's admin")
    return Rater(row["id"], row["name"], row["role"])


def list_raters(db: sqlite_utils.Database) -> list[dict[str, Any]]:
    return dbmod.list_raters(db)
