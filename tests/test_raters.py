"""Raters and access codes (core/raters.py) on a real SQLite file."""

from __future__ import annotations

import getpass
import hashlib
import io
import json
import secrets
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core import db as dbmod
from core import raters
from core.__main__ import main
from core.errors import InputError

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


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
    with pytest.raises(InputError, match="at least 8 characters"):
        raters.add_rater(db, "carol", "1234567")
    assert {row["name"] for row in raters.list_raters(db)} == {"alice", "bob"}
    assert "code_hash" not in raters.list_raters(db)[0]


def test_codes_are_hashed_at_owasp_strength(db) -> None:
    raters.add_rater(db, "alice", "SECRET-1234")
    algorithm, n, r, p, digest = db["raters"].get(1)["code_hash"].split("$")
    assert (algorithm, int(n), int(r), int(p), len(digest)) == ("scrypt", 2**17, 8, 1, 64)


def test_a_code_hashed_at_the_old_strength_still_signs_in_and_is_upgraded(db) -> None:
    salt = secrets.token_bytes(16)
    old_digest = hashlib.scrypt(b"legacy-code", salt=salt, n=2**14, r=8, p=1, maxmem=2**26, dklen=32).hex()
    old_hash = f"scrypt${2**14}$8$1${old_digest}"
    rater_id = dbmod.insert_rater(db, "olga", old_hash, salt.hex(), "rater")
    with pytest.raises(InputError, match="wrong access code"):
        raters.authenticate(db, "olga", "legacy-cod", now=at(0))
    assert db["raters"].get(rater_id)["code_hash"] == old_hash  # a wrong code changes nothing

    assert raters.authenticate(db, "olga", "legacy-code", now=at(1)).name == "olga"
    row = db["raters"].get(rater_id)
    assert row["code_hash"].startswith(f"scrypt${2**17}$8$1$") and row["salt"] != salt.hex()
    assert raters.authenticate(db, "olga", "legacy-code", now=at(2)).id == rater_id
    with pytest.raises(InputError, match="wrong access code"):
        raters.authenticate(db, "olga", "legacy-cod", now=at(3))


def test_failed_sign_ins_for_a_name_back_off_exponentially_in_the_database(
    db, db_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fewer failures allowed than the real 5 (pinned below), so that the test hashes fewer codes (0.4 s each).
    monkeypatch.setattr(raters, "NAME_FAILURES_ALLOWED", 2)
    raters.add_rater(db, "alice", "SECRET-1234")
    for second in range(raters.NAME_FAILURES_ALLOWED):
        with pytest.raises(InputError, match="wrong access code"):
            raters.authenticate(db, "alice", "guess-0000", client=f"tab-{second}", now=at(second))
    last = raters.NAME_FAILURES_ALLOWED - 1
    # A new connection (another browser tab, a restarted app) sees the same count; even the right code is refused
    # unchecked while the wait lasts.
    other_tab = dbmod.connect(db_path)
    with pytest.raises(raters.TooManySignInsError, match=r"for this name; try again in 1 s") as waiting:
        raters.authenticate(other_tab, "alice", "SECRET-1234", client="new-tab", now=at(last + 0.2))
    assert waiting.value.wait_s == 1 and isinstance(waiting.value, InputError)
    with pytest.raises(InputError, match="wrong access code"):  # the wait is over: checked, and wrong again
        raters.authenticate(other_tab, "alice", "guess-0001", client="new-tab", now=at(last + 1))
    with pytest.raises(raters.TooManySignInsError, match="try again in 2 s"):
        raters.authenticate(other_tab, "alice", "SECRET-1234", now=at(last + 1))
    # Refused attempts are not failures: the wait does not grow while someone keeps trying.
    assert dbmod.sign_in_failures(other_tab, ("name", "alice"))[0] == raters.NAME_FAILURES_ALLOWED + 1
    assert raters.authenticate(other_tab, "alice", "SECRET-1234", now=at(last + 3)).name == "alice"
    assert dbmod.sign_in_failures(db, ("name", "alice")) is None  # a success resets the name's counter
    other_tab.conn.close()

    # Unknown names are counted the same way, so the wait does not tell whether a name exists.
    for second in range(raters.NAME_FAILURES_ALLOWED):
        with pytest.raises(InputError, match="wrong access code"):
            raters.authenticate(db, "mallory", "guess-0000", now=at(100 + second))
    with pytest.raises(raters.TooManySignInsError, match="for this name"):
        raters.authenticate(db, "mallory", "guess-0000", now=at(100 + last))


def test_the_wait_doubles_up_to_fifteen_minutes() -> None:
    allowed = raters.NAME_FAILURES_ALLOWED
    waits = [raters.wait_after(failures, allowed) for failures in range(allowed - 1, allowed + 12)]
    assert waits[:7] == [0, 1, 2, 4, 8, 16, 32]
    assert max(waits) == raters.MAX_WAIT_S == 15 * 60
    assert raters.wait_after(10**6, allowed) == raters.MAX_WAIT_S
    assert (raters.NAME_FAILURES_ALLOWED, raters.CLIENT_FAILURES_ALLOWED) == (5, 20)


def test_failures_from_one_client_are_throttled_across_names(db, monkeypatch: pytest.MonkeyPatch) -> None:
    # Fewer failures allowed per client than the real 20 (pinned above), so that the test hashes fewer codes.
    monkeypatch.setattr(raters, "CLIENT_FAILURES_ALLOWED", 3)
    raters.add_rater(db, "alice", "SECRET-1234")
    for second, name in enumerate(["ann", "bob", "cyd"]):
        with pytest.raises(InputError, match="wrong access code"):
            raters.authenticate(db, name, "guess-0000", client="203.0.113.9", now=at(second))
    with pytest.raises(raters.TooManySignInsError, match="from this connection; try again in 1 s"):
        raters.authenticate(db, "alice", "SECRET-1234", client="203.0.113.9", now=at(2.5))
    # Another client is not held up, and a right code takes back only its own attempt from the client's count.
    assert raters.authenticate(db, "alice", "SECRET-1234", client="198.51.100.7", now=at(2.5)).name == "alice"
    assert raters.authenticate(db, "alice", "SECRET-1234", client="203.0.113.9", now=at(3)).name == "alice"
    assert dbmod.sign_in_failures(db, ("client", "203.0.113.9"))[0] == 3
    assert dbmod.sign_in_failures(db, ("client", "198.51.100.7")) is None
    # A day without failures and the count starts over.
    quiet = raters.FORGET_FAILURES_AFTER_S + 10
    with pytest.raises(InputError, match="wrong access code"):
        raters.authenticate(db, "dan", "guess-0000", client="203.0.113.9", now=at(quiet))
    assert dbmod.sign_in_failures(db, ("client", "203.0.113.9"))[0] == 1


# --- `rater add` on the command line: codes stay out of `ps` and shell history ---------------------------------------

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_rater_add_reads_the_code_from_stdin_with_code_stdin(db_path: Path) -> None:
    def add(name: str, stdin: str) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "core", "rater", "add", "--name", name, "--code-stdin", "--db", str(db_path)]
        return subprocess.run(argv, cwd=REPO_ROOT, input=stdin, capture_output=True, text=True, timeout=60)

    added = add("dave", "dave-access-code\nthe rest is ignored\n")
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout) == {"id": 1, "name": "dave", "role": "rater"}
    assert added.stderr == f"created a new database at {db_path}\n"  # a mistyped --db does not pass unnoticed
    database = dbmod.connect(db_path)
    assert raters.authenticate(database, "dave", "dave-access-code").name == "dave"
    short = add("erin", "short\n")
    assert short.returncode == 2 and short.stderr == "error: the access code must have at least 8 characters\n"
    assert [row["name"] for row in raters.list_raters(database)] == ["dave"]
    database.conn.close()


def test_rater_add_warns_that_code_is_visible_to_others(db_path: Path, capsys) -> None:
    assert main(["rater", "add", "--name", "fay", "--code", "fay-access-code", "--db", str(db_path)]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["name"] == "fay"
    assert err.startswith("warning: --code puts the access code where other users of this machine can see it")
    assert err.count("\n") == 2 and "fay-access-code" not in err
    assert err.endswith(f"created a new database at {db_path}\n")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_rater_add_asks_twice_on_a_terminal(db_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    answers: list[str] = []
    prompts: list[str] = []

    def typed(prompt: str = "") -> str:
        prompts.append(prompt)
        return answers.pop(0)

    monkeypatch.setattr(sys, "stdin", _Terminal())
    monkeypatch.setattr(getpass, "getpass", typed)
    answers[:] = ["gus-access-code", "gus-access-cod"]
    assert main(["rater", "add", "--name", "gus", "--db", str(db_path)]) == 2
    assert capsys.readouterr().err == (
        "error: the two access codes differ; run the command again and type the same code twice\n"
    )
    answers[:] = ["gus-access-code", "gus-access-code"]
    assert main(["rater", "add", "--name", "gus", "--admin", "--db", str(db_path)]) == 0
    assert json.loads(capsys.readouterr().out)["role"] == "admin"
    assert len(prompts) == 4 and prompts[0] == "access code for gus: " and not answers


def test_the_sign_in_form_says_how_long_to_wait_and_a_new_tab_does_not_reset_it(app_db, monkeypatch) -> None:
    from datetime import UTC, datetime, timedelta

    from tests.test_app import errors, run, sign_in, write_default_data, write_study
    from ui import session as dashboard

    monkeypatch.setattr(raters, "SCRYPT_PARAMS", {"n": 2**14, "r": 8, "p": 1})  # fast hashes: this is about the form
    write_default_data(app_db)
    write_study(app_db)  # the Rate page asks for a sign-in once a study exists
    raters.add_rater(app_db, "ann", "the-right-code")
    # Twelve wrong codes over the last few minutes, each after the wait the one before it asked for: the next try
    # must wait 2^7 = 128 s after the last.
    moment = datetime.now(UTC) - timedelta(seconds=200)
    for failures in range(12):
        with pytest.raises(InputError, match="wrong access code"):
            raters.authenticate(app_db, "ann", "a-wrong-code", now=moment)
        moment += timedelta(seconds=raters.wait_after(failures + 1, raters.NAME_FAILURES_ALLOWED) + 0.1)
    at = sign_in(run("rate"), "ann", "the-right-code")  # even the right code waits
    assert any("too many failed sign-ins for this name; try again in" in error for error in errors(at))
    assert dashboard.RATER_KEY not in at.session_state
    fresh = sign_in(run("rate"), "ann", "the-right-code")  # another tab is a new session, with the same wait
    assert any("too many failed sign-ins" in error for error in errors(fresh))
