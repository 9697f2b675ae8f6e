"""Settings and defaults. Every default can be overridden by an environment variable or a CLI flag."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# In a checkout the database and cache sit beside app.py; an installed package (pip install neuron-workbench) keeps
# them in the working directory and the user's cache folder instead of inside site-packages.
IN_CHECKOUT = (REPO_ROOT / "app.py").is_file()

# Names of environment variables, in one place so the app, CLI and README agree.
ENV_DB = "EVAL_DB"
ENV_CACHE_DIR = "EVAL_CACHE_DIR"
ENV_API_BASE = "OPENAI_BASE_URL"
ENV_API_KEY = "OPENAI_API_KEY"
ENV_DEVICE = "EVAL_DEVICE"
ENV_PRICES = "EVAL_PRICES"

DEFAULT_MODEL = "default"
DEFAULT_CORPUS = "default"

# The default budget keeps the first `make run` under ~3 minutes on a 2-core CPU (README, bench/collect.py).
DEFAULT_MAX_TOKENS = 300_000
DEFAULT_EXCERPT_LEN = 64
DEFAULT_TOP_K = 20
DEFAULT_RANDOM_K = 20
DEFAULT_SEED = 0
DEFAULT_BATCH_SIZE = 64
# Excerpt maxima kept per neuron for quantiles: exact up to this many excerpts, a uniform sample beyond.
DEFAULT_QUANTILE_SAMPLE = 8192
QUANTILES = (0.5, 0.9, 0.99, 0.999)


def db_path(explicit: str | os.PathLike | None = None) -> Path:
    """The SQLite file: an explicit path, else $EVAL_DB, else evaluations.db at the repo root (installed: the working
    directory)."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(ENV_DB)
    return Path(env) if env else (REPO_ROOT if IN_CHECKOUT else Path.cwd()) / "evaluations.db"


def prices_path() -> Path:
    """The optional per-model price list: $EVAL_PRICES, else prices.toml at the repo root (installed: the working
    directory). Costs are reported only for models it lists (core/pricing.py)."""
    env = os.environ.get(ENV_PRICES)
    return Path(env) if env else (REPO_ROOT if IN_CHECKOUT else Path.cwd()) / "prices.toml"


def cache_dir() -> Path:
    """Where derived files (the built default corpus) live: $EVAL_CACHE_DIR, else .cache/ at the repo root (installed:
    ~/.cache/neuron-workbench)."""
    env = os.environ.get(ENV_CACHE_DIR)
    if env:
        path = Path(env)
    else:
        path = REPO_ROOT / ".cache" if IN_CHECKOUT else Path.home() / ".cache" / "neuron-workbench"
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_device() -> str:
    """$EVAL_DEVICE if set, else cuda when available, else cpu."""
    env = os.environ.get(ENV_DEVICE)
    if env:
        return env
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(device: str | None = None) -> str:
    """`device` (else `default_device()`), checked: an unknown name or an absent GPU is an InputError, not a crash
    deep inside torch."""
    import torch

    from core.errors import InputError

    name = (device or default_device()).strip()
    try:
        parsed = torch.device(name)
    except (RuntimeError, ValueError):
        raise InputError(f"unknown device {name!r}; use cpu, cuda or cuda:N (--device or ${ENV_DEVICE})") from None
    if parsed.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"device {name!r} is not supported; use cpu, cuda or cuda:N")
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available[parsed.type]:
        raise InputError(f"device {name!r} asked for, but it is not available on this machine; use --device cpu")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise InputError(f"device {name!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
    return name


@dataclass(frozen=True)
class ApiSettings:
    """How to reach an OpenAI-compatible server. The key is read, never stored or logged."""

    base_url: str | None
    key_set: bool

    @property
    def api_key(self) -> str | None:
        return os.environ.get(ENV_API_KEY)


def api_settings() -> ApiSettings:
    return ApiSettings(base_url=os.environ.get(ENV_API_BASE) or None, key_set=bool(os.environ.get(ENV_API_KEY)))
