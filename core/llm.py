"""LLM backends behind one interface: OpenAI-compatible servers here, local transformers models in
core/llm_hf.py, both listed in the `BACKENDS` registry below.

A backend is named `openai:MODEL` or `hf:ID_OR_PATH` and turns a batch of chat requests into one result per request:
a `Completion`, or an `LLMError` in that request's slot so that one failure never stops the others. Successful
results are cached in the database (table `llm_cache`) under a hash of backend, model, messages and sampling.

API keys are read from the environment (core.config), handed to the HTTP client and nowhere else: never cached,
stored, logged or put in an error message (`scrub_secrets`). Without a key, a base URL that is not OpenAI's gets a
placeholder key, because local servers (vLLM, Ollama, llama.cpp) accept any; OpenAI itself needs a real one.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import random
import re
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

from core import config
from core import db as dbmod
from core.errors import InputError, LLMError

log = logging.getLogger(__name__)

Messages = list[dict[str, Any]]
ResultCallback = Callable[[int, "Completion | LLMError"], None]

DEFAULT_TIMEOUT_S = 60.0
DEFAULT_CONCURRENCY = 4
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_BACKOFF_S = 1.0
DEFAULT_MAX_BACKOFF_S = 30.0
# Local servers (vLLM without --api-key, Ollama, llama.cpp) accept any key, but the client insists on one.
LOCAL_SERVER_KEY = "not-needed"
OPENAI_HOSTS = ("api.openai.com",)
RETRYABLE_STATUS = frozenset({408, 409, 425, 429})


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
# Secrets and retries
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


def call_with_retries(
    who: str, call: Callable[[], Any], retry: RetryPolicy, secrets: Sequence[str | None] = (), hint: str = ""
) -> Any:
    """`call()` (one OpenAI-client request) under the project's retry rules, for every endpoint backend.

    Transport errors and HTTP statuses that may pass (RETRYABLE_STATUS, 5xx) are retried with backoff, honouring
    Retry-After. A refused request (a bad key, an unknown model) raises LLMError at once, keys scrubbed; so do
    errors that persist through the last attempt. An answer that is not valid JSON through the last attempt raises
    UnreadableAnswer, which callers turn into a failed result rather than a stopped run. `who` starts each message
    ("scorer NAME"); `hint` ends the HTTP one.
    """
    import openai

    for attempt in range(retry.max_attempts):
        last = attempt == retry.max_attempts - 1
        retry_after = None
        try:
            return call()
        except openai.APIStatusError as exc:
            if (exc.status_code not in RETRYABLE_STATUS and exc.status_code < 500) or last:
                raise api_error(
                    f"{who}: HTTP {exc.status_code} after {attempt + 1} attempt(s): {exc.message}; "
                    f"check the model name, key and base URL{hint}",
                    secrets,
                ) from None
            header = exc.response.headers.get("retry-after") if exc.response is not None else None
            retry_after = float(header) if header and header.replace(".", "", 1).isdigit() else None
        except (openai.APITimeoutError, openai.APIConnectionError) as exc:
            if last:
                raise LLMError(
                    f"{who}: cannot reach the server after {attempt + 1} attempts ({type(exc).__name__}); "
                    "check the base URL and that the server is up"
                ) from None
        except (ValueError, openai.APIResponseValidationError) as exc:
            if last:
                raise UnreadableAnswer(scrub_secrets(str(exc), secrets)) from None
        time.sleep(retry.delay(attempt, retry_after))
    raise LLMError(f"{who}: gave up after {retry.max_attempts} attempts")


def _public_url(url: str | None) -> str | None:
    """A base URL without user:password, safe to store in the cache and show in messages."""
    if not url:
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded attempts with exponential backoff and jitter, honouring Retry-After up to `max_backoff_s`."""

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    backoff_s: float = DEFAULT_BACKOFF_S
    max_backoff_s: float = DEFAULT_MAX_BACKOFF_S

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise InputError(f"max_attempts {self.max_attempts} must be at least 1")
        if self.backoff_s < 0 or self.max_backoff_s < 0:
            raise InputError("backoff times must not be negative")

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (0-based)."""
        exponential = min(self.max_backoff_s, self.backoff_s * 2**attempt)
        # Jitter spreads out clients that were rate-limited together, so they do not retry in lockstep.
        wait = exponential * random.uniform(0.5, 1.0)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_backoff_s))
        return wait


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


# ---------------------------------------------------------------------------------------------------------------
# OpenAI-compatible servers: OpenAI, vLLM, Ollama, llama.cpp server
# ---------------------------------------------------------------------------------------------------------------


def _is_openai_host(base_url: str | None) -> bool:
    return base_url is None or (urlsplit(base_url).hostname or "") in OPENAI_HOSTS


def resolve_api_key(base_url: str | None, api_key: str | None) -> str:
    """The key to send: explicit, else $OPENAI_API_KEY; a placeholder for a non-OpenAI server (they accept any)."""
    key = api_key or config.api_settings().api_key
    if key:
        return key
    if not _is_openai_host(base_url):
        return LOCAL_SERVER_KEY
    raise LLMError(
        f"no API key: set {config.ENV_API_KEY} for OpenAI, or set {config.ENV_API_BASE} to a local "
        "OpenAI-compatible server (vLLM, Ollama, llama.cpp), which needs no key"
    )


def openai_client(base_url: str | None = None, api_key: str | None = None, timeout: float = DEFAULT_TIMEOUT_S) -> Any:
    """An `openai.OpenAI` client for $OPENAI_BASE_URL / $OPENAI_API_KEY, with the SDK's own retries off."""
    import openai

    base_url = base_url or config.api_settings().base_url
    key = resolve_api_key(base_url, api_key)
    # max_retries=0: our RetryPolicy is the only retry loop, so attempts and backoff are bounded and visible.
    return openai.OpenAI(base_url=base_url, api_key=key, timeout=timeout, max_retries=0)


class OpenAIBackend(Backend):
    """Chat completions over HTTP with bounded concurrency, retries with backoff, and usage-based token counts."""

    kind = "openai"
    spec = "openai:MODEL"

    def __init__(
        self,
        model: str,
        *,
        db: Any = None,
        use_cache: bool = True,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        concurrency: int = DEFAULT_CONCURRENCY,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        backoff_s: float = DEFAULT_BACKOFF_S,
        max_backoff_s: float = DEFAULT_MAX_BACKOFF_S,
    ) -> None:
        super().__init__(model, db=db, use_cache=use_cache)
        if concurrency < 1:
            raise InputError(f"concurrency {concurrency} must be at least 1")
        if timeout_s <= 0:
            raise InputError(f"timeout {timeout_s} must be positive (seconds)")
        self.base_url = base_url or config.api_settings().base_url
        self._api_key = api_key
        self.timeout_s = timeout_s
        self.concurrency = concurrency
        self.retry = RetryPolicy(max_attempts, backoff_s, max_backoff_s)
        self._client = openai_client(self.base_url, api_key, timeout_s)  # fails fast on a missing key

    @property
    def tokenizer(self) -> str:
        from core.tokens import tokenizer_for

        return tokenizer_for(self.name)

    def usage_tokenizer(self, completion: Completion) -> str:
        # Counts in `usage` come from the server's own tokenizer for the model that answered.
        return f"api:{completion.model}"

    def _cache_extra(self) -> dict[str, Any]:
        # The same model name on two servers (say a local vLLM and OpenAI) is not the same model.
        return {"endpoint": _public_url(self.base_url)} if not _is_openai_host(self.base_url) else {}

    def _secrets(self) -> tuple[str | None, ...]:
        return (self._api_key, config.api_settings().api_key, self.base_url if "@" in (self.base_url or "") else None)

    def _fail(self, message: str) -> LLMError:
        return api_error(f"{self.name}: {message}", self._secrets())

    def _run(
        self, requests: list[Messages], sampling: Sampling, emit: Callable[[int, Completion | LLMError], None]
    ) -> None:
        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests)), thread_name_prefix="llm")
        try:
            futures = {pool.submit(self._call, messages, sampling): i for i, messages in enumerate(requests)}
            for future in as_completed(futures):
                try:
                    result: Completion | LLMError = future.result()
                except LLMError as exc:
                    result = exc
                except Exception as exc:  # an unexpected client bug must cost one request, not the batch
                    trace = scrub_secrets(traceback.format_exc(), self._secrets())
                    log.debug("unexpected error from the OpenAI client:\n%s", trace)
                    result = self._fail(f"unexpected {type(exc).__name__}: {exc}")
                emit(futures[future], result)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _call(self, messages: Messages, sampling: Sampling) -> Completion:
        import openai

        params: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_tokens,
        }
        if sampling.seed is not None:
            params["seed"] = sampling.seed
        for attempt in range(self.retry.max_attempts):
            last = attempt == self.retry.max_attempts - 1
            started = time.monotonic()
            try:
                raw = self._client.chat.completions.with_raw_response.create(**params)
                return self._parse(raw.http_response.content, time.monotonic() - started)
            except openai.APIStatusError as exc:
                status = exc.status_code
                detail = _status_detail(exc)
                if status == 400 and "max_completion_tokens" in detail and "max_tokens" in params:
                    # Newer OpenAI models renamed the parameter; older servers only know the old name.
                    params["max_completion_tokens"] = params.pop("max_tokens")
                    continue
                retryable = status in RETRYABLE_STATUS or status >= 500
                if not retryable or last:
                    raise self._fail(_explain_status(status, detail, attempt + 1)) from None
                wait = self.retry.delay(attempt, _retry_after(exc))
                log.info("%s: HTTP %s, retrying in %.2fs (attempt %d)", self.name, status, wait, attempt + 1)
            except openai.APITimeoutError:
                if last:
                    raise self._fail(
                        f"no answer within {self.timeout_s:g}s after {attempt + 1} attempts; the server may be "
                        "overloaded: raise the timeout or lower the concurrency"
                    ) from None
                wait = self.retry.delay(attempt)
            except openai.APIConnectionError as exc:
                if last:
                    raise self._fail(
                        f"cannot connect to {_public_url(self.base_url) or 'api.openai.com'} after {attempt + 1} "
                        f"attempts ({exc.__cause__ or exc}); check {config.ENV_API_BASE} and that the server is up"
                    ) from None
                wait = self.retry.delay(attempt)
            time.sleep(wait)
        raise self._fail(f"gave up after {self.retry.max_attempts} attempts")

    def _parse(self, content: bytes, latency_s: float) -> Completion:
        # Decoded strictly: a lenient decoder would turn bytes that are not UTF-8 into U+FFFD inside an "ok" answer.
        try:
            body = content.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self._fail(
                f"the server's answer is not valid UTF-8 (bytes {content[exc.start : exc.end]!r} at offset "
                f"{exc.start}); retry, or check the server's output encoding"
            ) from None
        try:
            data = json.loads(body)
        except json.JSONDecodeError:
            snippet = body[:120].replace("\n", " ")
            raise self._fail(
                f"the server's answer is not valid JSON (starts with {snippet!r}); check that "
                f"{config.ENV_API_BASE} points at an OpenAI-compatible /v1 endpoint"
            ) from None
        if not isinstance(data, dict):
            raise self._fail(f"the server's answer is JSON but not an object: {type(data).__name__}")
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise self._fail(
                "the server answered with no choices (an empty or filtered response); retry, or try another model"
            )
        choice = choices[0]
        message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
        text = message.get("content")
        if not isinstance(text, str):
            refusal = message.get("refusal")
            reason = f"the model refused: {refusal}" if refusal else "the answer has no text content"
            raise self._fail(f"{reason} (finish_reason={choice.get('finish_reason')})")
        bad = next((i for i, ch in enumerate(text) if "\ud800" <= ch <= "\udfff"), None)
        if bad is not None:  # JSON can spell a lone surrogate ("\ud800"), which no UTF-8 text (or database) can hold
            surrogate = f"U+{ord(text[bad]):04X}"
            raise self._fail(f"the answer is not valid Unicode text (a lone surrogate {surrogate} at character {bad})")
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        return Completion(
            text=text,
            # docs/METHOD.md §2: input and output tokens are counted separately; total_tokens is never "input".
            input_tokens=_int_or_none(usage.get("prompt_tokens")),
            output_tokens=_int_or_none(usage.get("completion_tokens")),
            latency_s=latency_s,
            cached=False,
            finish_reason=choice.get("finish_reason"),
            model=str(data.get("model") or self.model),
        )


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _status_detail(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
    return str(getattr(exc, "message", "") or exc)


def _retry_after(exc: Any) -> float | None:
    try:
        value = exc.response.headers.get("retry-after")
        return float(value) if value is not None else None
    except (AttributeError, ValueError):
        return None


def _explain_status(status: int, detail: str, attempts: int) -> str:
    hints = {
        401: f"the server rejected the API key: check {config.ENV_API_KEY}",
        403: "the key has no access to this model or endpoint",
        404: "model or endpoint not found: check the model name and " + config.ENV_API_BASE,
        429: "rate limited or out of quota: wait, lower --concurrency, or check your plan",
    }
    hint = hints.get(status, "the server failed; try again later" if status >= 500 else "the request was rejected")
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    return f"HTTP {status}{tries}: {hint} ({detail})"


# ---------------------------------------------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------------------------------------------


@functools.cache
def _backends() -> dict[str, type[Backend]]:
    # core/llm_hf.py subclasses Backend, so it imports this module at its top; it is imported back here, on first
    # use, rather than at the top of this module, so that neither module is ever read half-loaded.
    from core.llm_hf import HFBackend

    return {"openai": OpenAIBackend, "hf": HFBackend}


def __getattr__(name: str) -> Any:
    """`BACKENDS`: the registry, backend kind → Backend class, built on first use (see `_backends`)."""
    if name == "BACKENDS":
        return _backends()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def backend_options(kind: str) -> list[str]:
    """The keyword options a backend kind accepts (besides db and use_cache)."""
    parameters = inspect.signature(_backends()[kind].__init__).parameters
    return [name for name, p in parameters.items() if p.kind is p.KEYWORD_ONLY and name not in ("db", "use_cache")]


def parse_backend_spec(spec: str) -> tuple[str, str]:
    """`openai:gpt-4o-mini` → ("openai", "gpt-4o-mini"); errors list the registry."""
    backends = _backends()
    kind, sep, model = (spec or "").strip().partition(":")
    if not sep or kind not in backends or not model.strip():
        choices = ", ".join(backend.spec for backend in backends.values())
        raise InputError(f"explainer {spec!r} is not of the form BACKEND:MODEL with a known backend ({choices})")
    return kind, model.strip()


def get_backend(spec: str, *, db: Any = None, use_cache: bool = True, **options: Any) -> Backend:
    """Build the backend named by `openai:MODEL` or `hf:ID_OR_PATH`; options go to its constructor.

    An option of another backend kind is ignored (so callers can pass e.g. `concurrency` to any); None means
    the default; an option no backend knows is an error.
    """
    kind, model = parse_backend_spec(spec)
    accepted = backend_options(kind)
    known = {name for other in _backends() for name in backend_options(other)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise InputError(f"unknown backend options {unknown}; known: {', '.join(sorted(known))}")
    return _backends()[kind](
        model, db=db, use_cache=use_cache, **{k: v for k, v in options.items() if k in accepted and v is not None}
    )
