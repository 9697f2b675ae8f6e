"""Shared fixtures. Fakes here are real things: a SQLite file, tiny models saved to disk, a local HTTP server."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
REFERENCE_DIR = REPO_ROOT.parent / "shared" / "reference"
sys.path.insert(0, str(REPO_ROOT))

from core import db as dbmod  # noqa: E402


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


# Words for the tiny tokenizer's BPE merges; any other text still round-trips through the byte-level alphabet.
_TINY_TEXT = (
    "the a an of and to in is was for on with as by at from that this it he she they we you neuron token tokens "
    "word words text activation activations explanation excerpt start end find finds main thing does behavior "
    "same but all zeros filtered out highly activating summary highlight unknown cat cats dog dogs house city "
    "river music number numbers year years day days time people water red green blue color colors New York Paris "
    "London Monday Friday good bad big small first last run runs running walk walked said make made code function"
)
_TINY_WORDS = _TINY_TEXT.split()
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def build_tiny_tokenizer():
    """A byte-level BPE PreTrainedTokenizerFast with a chat template; "0".."10" are single tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    lines = []
    for i, word in enumerate(_TINY_WORDS):
        lines.append(f"{word} {_TINY_WORDS[(i * 7) % len(_TINY_WORDS)]} {_TINY_WORDS[(i * 13) % len(_TINY_WORDS)]}.")
        lines.append(f"{word.capitalize()}\t{i % 11}\n")
    for value in range(11):  # frequent enough that BPE merges "1"+"0" into "10"
        lines += [f"{value}", f" {value}", f"\t{value}\n"] * 20
    special = ["<pad>", "<s>", "</s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(lines, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        chat_template=TINY_CHAT_TEMPLATE,
    )


@pytest.fixture(scope="session")
def tiny_chat_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a tiny random LlamaForCausalLM (hidden 32, 2 layers) and its chat tokenizer (save_pretrained)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny_chat_model")
    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
