"""LLM backends behind one interface, listed in the `BACKENDS` registry: OpenAI-compatible servers (`openai:MODEL`,
core/llm/api.py) and local transformers models (`hf:ID_OR_PATH`, core/llm/hf.py). What they share is in
core/llm/base.py.

A backend turns a batch of chat requests into one result per request: a `Completion`, or an `LLMError` in that
request's slot so that one failure never stops the others. Successful results are cached in the database (table
`llm_cache`) under a hash of backend, model, messages and sampling. Each kind takes its own frozen options
(`ApiOptions`, `LocalModelOptions`); `get_backend` builds one from its spec.

Importing this package imports no torch: the `hf` backend is loaded the first time one is built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core.errors import InputError
from core.llm.api import (
    LOCAL_SERVER_KEY,
    OPENAI_HOSTS,
    OpenAIBackend,
    call_api,
    is_openai_host,
    openai_client,
    public_url,
    resolve_api_key,
)
from core.llm.base import (
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_TIMEOUT_S,
    ApiOptions,
    Backend,
    BackendOptions,
    Completion,
    LocalModelOptions,
    Messages,
    ResultCallback,
    Sampling,
    UnreadableAnswer,
    api_error,
    cache_key,
    scrub_secrets,
)


def _hf_backend() -> Callable[..., Backend]:
    from core.llm.hf import HFBackend  # torch and transformers come with it

    return HFBackend


@dataclass(frozen=True)
class BackendKind:
    """One kind of backend: how users write it, the options it takes, and its class (imported on first use)."""

    kind: str
    spec: str
    description: str
    options_type: type[ApiOptions] | type[LocalModelOptions]
    load: Callable[[], Callable[..., Backend]]


BACKENDS: dict[str, BackendKind] = {
    kind.kind: kind
    for kind in (
        BackendKind("openai", "openai:MODEL", "an OpenAI-compatible server", ApiOptions, lambda: OpenAIBackend),
        BackendKind("hf", "hf:ID_OR_PATH", "a local transformers chat model", LocalModelOptions, _hf_backend),
    )
}


def parse_backend_spec(spec: str) -> tuple[str, str]:
    """`openai:gpt-4o-mini` → ("openai", "gpt-4o-mini"); errors list the registry."""
    kind, sep, model = (spec or "").strip().partition(":")
    if not sep or kind not in BACKENDS or not model.strip():
        choices = ", ".join(backend.spec for backend in BACKENDS.values())
        raise InputError(f"explainer {spec!r} is not of the form BACKEND:MODEL with a known backend ({choices})")
    return kind, model.strip()


def backend_options(spec: str, api: ApiOptions, local: LocalModelOptions) -> BackendOptions:
    """Of a caller's API and local options, the ones the backend named by `spec` takes."""
    kind, _ = parse_backend_spec(spec)
    return api if BACKENDS[kind].options_type is ApiOptions else local


def get_backend(spec: str, options: BackendOptions | None = None, *, db: Any = None, use_cache: bool = True) -> Backend:
    """The backend named by `openai:MODEL` or `hf:ID_OR_PATH`, with its kind's options (None: the defaults)."""
    kind, model = parse_backend_spec(spec)
    entry = BACKENDS[kind]
    options = options if options is not None else entry.options_type()
    if not isinstance(options, entry.options_type):
        raise InputError(f"{entry.spec} backends take {entry.options_type.__name__}, not {type(options).__name__}")
    return entry.load()(model, options, db=db, use_cache=use_cache)


__all__ = [
    "BACKENDS",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_TIMEOUT_S",
    "LOCAL_SERVER_KEY",
    "OPENAI_HOSTS",
    "ApiOptions",
    "Backend",
    "BackendKind",
    "BackendOptions",
    "Completion",
    "LocalModelOptions",
    "Messages",
    "OpenAIBackend",
    "ResultCallback",
    "Sampling",
    "UnreadableAnswer",
    "api_error",
    "backend_options",
    "cache_key",
    "call_api",
    "get_backend",
    "is_openai_host",
    "openai_client",
    "parse_backend_spec",
    "public_url",
    "resolve_api_key",
    "scrub_secrets",
]
