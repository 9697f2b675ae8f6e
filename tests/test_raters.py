"""Raters and access codes (core/raters.py) on a real SQLite file."""

from __future__ import annotations

import json

import pytest

from core import raters
from core.errors import InputError


def test_access_codes_are_stored_salted_and_hashed(db) -> None:
    first = raters.add_rater(db, "alice", "SECRET-1234")
    second = raters.add_rater(db, "bob", "SECRET-1234", admin=True)
    assert (first.role, second.role, second.is_admin) == ("rater", "admin", True)
    rows = {row["name"]: row for row in db["raters"].rows}
    assert "SECRET" not in json.dumps(rows)
    assert rows["alice"]["salt"] != rows["bob"]["salt"]
    assert rows["alice"]["code_hash"] != rows["bob"]["code_hash"]
    assert raters.authenticate(db, "alice", "SECRET-1234") == first
    with pytest.raises(InputError) as wrong_code:
        raters.authenticate(db, "alice", "SECRET-12345")
    with pytest.raises(InputError) as unknown_name:
        raters.authenticate(db, "mallory", "SECRET-1234")
    assert str(wrong_code.value) == str(unknown_name.value)
    with pytest.raises(InputError, match="already exists"):
        raters.add_rater(db, "alice", "another-code")
    with pytest.raises(InputError, match="at least 4"):
        raters.add_rater(db, "carol", "abc")
    assert {row["name"] for row in raters.list_raters(db)} == {"alice", "bob"}
    assert "code_hash" not in raters.list_raters(db)[0]
