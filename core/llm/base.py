"""What every LLM backend shares: the typed options, sampling, a completion, the cache key, the redaction of API keys
in errors, and the `Backend` interface with its caching. Implementations (core/llm/api.py, core/llm/hf.py) import this
module and nothing else of the package; the registry in core/llm/__init__.py imports them.
"""

from __future__ import annotations

import hashlib
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from core import config
from core import db as dbmod
from core.errors import InputError, LLMError

Messages = list[dict[str, Any]]
ResultCallback = Callable[[int, "Completion | LLMError"], None]

DEFAULT_TIMEOUT_S = 60.0
DEFAULT_CONCURRENCY = 4
DEFAULT_MAX_ATTEMPTS = 5
LOCAL_DTYPES = ("auto", "float32", "bfloat16", "float16")


# ---------------------------------------------------------------------------------------------------------------
# Options: one frozen dataclass per kind of backend
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiOptions:
    """How to talk to an OpenAI-compatible server (`openai:MODEL`): its URL and key (None: $OPENAI_BASE_URL and
    $OPENAI_API_KEY), seconds per request, requests in flight, and attempts per request (the openai SDK retries
    timeouts, lost connections, 408/409/429 and 5xx itself, honouring Retry-After). The key is never shown."""

    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    timeout_s: float = DEFAULT_TIMEOUT_S
    concurrency: int = DEFAULT_CONCURRENCY
    max_attempts: int = DEFAULT_MAX_ATTEMPTS

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise InputError(f"concurrency {self.concurrency} must be at least 1")
        if not self.timeout_s > 0:
            raise InputError(f"timeout {self.timeout_s} must be positive (seconds)")
        if self.max_attempts < 1:
            raise InputError(f"max_attempts {self.max_attempts} must be at least 1")


@dataclass(frozen=True)
class LocalModelOptions:
    """How to run a local transformers model (`hf:ID_OR_PATH`): device (None: $EVAL_DEVICE, else cuda when
    available), weights' dtype (None or auto: bf16 on GPU, fp32 on CPU), and prompts per batch (None: the default of
    what runs it, 8 for chat generation, 16 for simulation)."""

    device: str | None = None
    dtype: str | None = None
    batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.dtype is not None and self.dtype not in LOCAL_DTYPES:
            raise InputError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(LOCAL_DTYPES)}")
        if self.batch_size is not None and self.batch_size < 1:
            raise InputError(f"batch size {self.batch_size} must be at least 1")


BackendOptions = ApiOptions | LocalModelOptions


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters of one request; the defaults are the paper's (METHOD.md §2). `seed=None` means unseeded."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 60
    n: int = 1
    seed: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.temperature <= 2:
            raise InputError(f"temperature {self.temperature} is out of range: use 0..2 (0 means greedy)")
        if not 0 < self.top_p <= 1:
            raise InputError(f"top_p {self.top_p} is out of range: use a value in (0, 1]")
        if self.max_tokens < 1:
            raise InputError(f"max_tokens {self.max_tokens} must be at least 1")
        if self.n < 1:
            raise InputError(f"n {self.n} must be at least 1")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Sampling:
        return cls(**{k: data[k] for k in ("temperature", "top_p", "max_tokens", "n", "seed") if k in data})


@dataclass(frozen=True)
class Completion:
    """One model answer. Token counts come from the API's usage (or the local tokenizer); None when unknown."""

    text: str
    input_tokens: int | None
    output_tokens: int | None
    latency_s: float
    cached: bool
    finish_reason: str | None
    model: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_cache(cls, data: dict[str, Any]) -> Completion:
        """A cached answer: same text and token counts, no latency (nothing was waited for)."""
        return cls(
            text=data["text"],
            input_tokens=data.get("input_tokens"),
            output_tokens=data.get("output_tokens"),
            latency_s=0.0,
            cached=True,
            finish_reason=data.get("finish_reason"),
            model=data.get("model", ""),
        )


# ---------------------------------------------------------------------------------------------------------------
# Secrets
# ---------------------------------------------------------------------------------------------------------------

_KEY_PATTERNS = (
    re.compile(r"sk-[A-Za-z0-9_\-*]{6,}"),
    re.compile(r"(Bearer\s+)[A-Za-z0-9_\-.=*]{6,}", re.IGNORECASE),
)


def scrub_secrets(text: str, secrets: Sequence[str | None] = ()) -> str:
    """`text` with the configured API key ($OPENAI_API_KEY, whatever its shape), the given secrets and anything
    shaped like an API key replaced by `***`."""
    # Longest first, so that a secret holding another is replaced whole.
    for secret in sorted({s for s in (config.api_settings().api_key, *secrets) if s}, key=len, reverse=True):
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    text = _KEY_PATTERNS[0].sub("***", text)
    return _KEY_PATTERNS[1].sub(r"\1***", text)


def api_error(message: str, secrets: Sequence[str | None] = ()) -> LLMError:
    """The LLMError for a failed API call, the one way every OpenAI-compatible backend (chat, completions,
    simulators, embeddings) reports one: keys scrubbed from the message (`scrub_secrets`). Servers quote the key
    back (OpenAI's 401 does), and so do the client's exceptions: raise it `from None`, never `from exc`."""
    return LLMError(scrub_secrets(message, secrets))


class UnreadableAnswer(Exception):
    """The server answered, after every attempt, with something that is not valid JSON (its detail scrubbed)."""


# ---------------------------------------------------------------------------------------------------------------
# The interface
# ---------------------------------------------------------------------------------------------------------------


def cache_key(backend: str, model: str, messages: Messages, sampling: Sampling, sample: int = 0, **extra: Any) -> str:
    """sha256 of canonical JSON of the request. `sample` separates repeated samples of one prompt.

    With temperature 0 the answer does not depend on the sample index, so samples share one key.
    """
    payload = {
        "backend": backend,
        "model": model,
        "messages": messages,
        "sampling": sampling.to_json(),
        "sample": sample if sampling.temperature > 0 else 0,
        **extra,
    }
    canonical = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class Backend(ABC):
    """An LLM that answers chat requests. Subclasses implement `_run`; caching and bookkeeping live here."""

    kind: ClassVar[str]
    spec: ClassVar[str]  # how users write it, e.g. `openai:MODEL`

    def __init__(self, model: str, *, db: Any = None, use_cache: bool = True) -> None:
        if not model or not model.strip():
            raise InputError(f"no model given: write the explainer as {self.spec}")
        self.model = model.strip()
        self.db = db
        self.use_cache = use_cache

    @property
    def name(self) -> str:
        """The explainer name stored with every result, e.g. `openai:gpt-4o-mini`."""
        return f"{self.kind}:{self.model}"

    @property
    @abstractmethod
    def tokenizer(self) -> str:
        """The name of the tokenizer used to count this backend's tokens locally."""

    def usage_tokenizer(self, completion: Completion) -> str:
        """The name of what counted `completion`'s tokens: this backend's tokenizer unless an API reported usage."""
        return self.tokenizer

    def _cache_extra(self) -> dict[str, Any]:
        """More request identity for the cache key (e.g. which server); never secrets."""
        return {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    def _key(self, messages: Messages, sampling: Sampling, sample: int) -> str:
        return cache_key(self.kind, self.model, list(messages), sampling, sample, **self._cache_extra())

    def forget(self, messages: Messages, sampling: Sampling = Sampling(), sample: int = 0) -> None:
        """Drop a cached answer, e.g. one the caller could not use, so that the next request asks the model again."""
        if self.db is not None:
            dbmod.cache_delete(self.db, self._key(messages, sampling, sample))

    def complete(
        self,
        requests: Sequence[Messages],
        sampling: Sampling = Sampling(),
        *,
        samples: Sequence[int] | None = None,
        on_result: ResultCallback | None = None,
    ) -> list[Completion | LLMError]:
        """Answer each chat request; a failed request yields an LLMError in its slot.

        `samples` gives each request's sample index (part of the cache key). `on_result(i, result)` is called in
        the calling thread as soon as request i is done, so callers can store results before the batch ends.
        """
        if sampling.n != 1:
            raise InputError(
                f"n={sampling.n}: a request yields one completion here; ask for several samples instead "
                "(explain's `samples`), so that each is stored, cached and resumed on its own"
            )
        samples = list(samples) if samples is not None else [0] * len(requests)
        if len(samples) != len(requests):
            raise ValueError(f"{len(samples)} sample indices for {len(requests)} requests")
        results: list[Completion | LLMError | None] = [None] * len(requests)
        caching = self.use_cache and self.db is not None
        keys = [self._key(messages, sampling, sample) for messages, sample in zip(requests, samples, strict=True)]

        def finish(index: int, result: Completion | LLMError) -> None:
            results[index] = result
            if caching and isinstance(result, Completion) and not result.cached:
                request = {"messages": requests[index], "sampling": sampling.to_json(), "sample": samples[index]}
                dbmod.cache_put(self.db, keys[index], self.kind, self.model, request, result.to_json())
            if on_result is not None:
                on_result(index, result)

        pending = []
        for index, key in enumerate(keys):
            hit = dbmod.cache_get(self.db, key) if caching else None
            if hit is not None:
                finish(index, Completion.from_cache(hit))
            else:
                pending.append(index)
        if pending:
            self._run([list(requests[i]) for i in pending], sampling, lambda j, result: finish(pending[j], result))
        return [r if r is not None else LLMError("no result was produced for this request") for r in results]

    @abstractmethod
    def _run(
        self, requests: list[Messages], sampling: Sampling, emit: Callable[[int, Completion | LLMError], None]
    ) -> None:
        """Answer the requests, calling `emit(i, result)` once per request from the calling thread."""
