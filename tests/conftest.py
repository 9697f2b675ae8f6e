"""Shared fixtures. Fakes here are real things: a SQLite file, tiny models saved to disk, a local HTTP server."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from core import db as dbmod

REPO_ROOT = Path(__file__).resolve().parent.parent
REFERENCE_DIR = REPO_ROOT.parent / "shared" / "reference"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "test.db"


@pytest.fixture
def db(db_path: Path):
    database = dbmod.connect(db_path)
    yield database
    database.conn.close()


@pytest.fixture(autouse=True)
def keep_main_module():
    """Put back the `__main__` module after each test: Streamlit's AppTest runs a page as `__main__` and leaves it
    there, and a later test's spawned worker processes would then re-run that page (deleted from a temporary
    folder, for AppTest.from_function) instead of starting, and hang the pool."""
    main = sys.modules["__main__"]
    yield
    sys.modules["__main__"] = main


@pytest.fixture(autouse=True)
def quick_access_codes(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """Hash access codes at scrypt's older, 8× cheaper strength in tests that only need raters to exist: the suite
    signs in some two hundred times. tests/test_raters.py, which checks the real strength, keeps it."""
    if request.module.__name__.endswith("test_raters"):
        yield
        return
    from core import raters

    monkeypatch.setattr(raters, "SCRYPT_PARAMS", {"n": 2**14, "r": 8, "p": 1})
    yield


@pytest.fixture
def app_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An empty database at $EVAL_DB, as the app's pages open it; yields an open connection to it."""
    from core import config

    path = tmp_path / "app.db"
    monkeypatch.setenv(config.ENV_DB, str(path))
    monkeypatch.delenv(config.ENV_API_KEY, raising=False)
    monkeypatch.delenv(config.ENV_API_BASE, raising=False)
    database = dbmod.connect(path)
    yield database
    database.conn.close()


@pytest.fixture
def reference_dir() -> Path:
    if not REFERENCE_DIR.is_dir():
        pytest.skip(f"reference data not found at {REFERENCE_DIR}")
    return REFERENCE_DIR


# --- LLM fakes: a local OpenAI-protocol server and a tiny chat model ----------------------------------------------


@pytest.fixture
def fake_openai():
    """A running FakeOpenAIServer (tests/fake_openai.py) on 127.0.0.1; stopped at teardown."""
    from tests.fake_openai import FakeOpenAIServer

    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture
def openai_env(fake_openai, monkeypatch: pytest.MonkeyPatch):
    """Point OPENAI_BASE_URL at the fake server and set OPENAI_API_KEY to TEST_API_KEY; returns the server."""
    from core import config
    from tests.fake_openai import TEST_API_KEY

    monkeypatch.setenv(config.ENV_API_BASE, fake_openai.base_url)
    monkeypatch.setenv(config.ENV_API_KEY, TEST_API_KEY)
    return fake_openai


@pytest.fixture(scope="session")
def tiny_chat_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a tiny random LlamaForCausalLM (hidden 32, 2 layers) and its chat tokenizer (save_pretrained)."""
    from tests.tiny_models import build_tiny_chat_model

    return build_tiny_chat_model(tmp_path_factory.mktemp("tiny_chat_model"))
