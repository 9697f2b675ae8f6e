"""OpenAI-compatible servers (OpenAI, vLLM, Ollama, llama.cpp server): the `openai:MODEL` backend, and the client and
request helpers that the API simulators (core/simulate/api.py) and scorers (core/scorers/classifier.py) share.

The openai SDK does the retrying: timeouts, lost connections, 408/409/429 and 5xx are retried with its exponential
backoff, honouring Retry-After (`ApiOptions.max_attempts` attempts in all), and answers come back as typed objects
(`ChatCompletion`, `Completion`). Two things are ours: a 400 that names `max_tokens` is sent once more with
`max_completion_tokens` (newer OpenAI models renamed it), and an answer that is not valid JSON is asked for again a
bounded number of times by the simulators and scorers (`call_api`).

API keys are read from the environment (core.config), handed to the client and nowhere else: never cached, stored,
logged or put in an error message (`scrub_secrets`). Without a key, a base URL that is not OpenAI's gets a placeholder
key, because local servers (vLLM, Ollama, llama.cpp) accept any; OpenAI itself needs a real one.
"""

from __future__ import annotations

import logging
import re
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from core import config
from core.errors import LLMError
from core.llm.base import (
    ApiOptions,
    Backend,
    Completion,
    Messages,
    Sampling,
    UnreadableAnswer,
    api_error,
    scrub_secrets,
)

log = logging.getLogger(__name__)

# Local servers (vLLM without --api-key, Ollama, llama.cpp) accept any key, but the client insists on one.
LOCAL_SERVER_KEY = "not-needed"
OPENAI_HOSTS = ("api.openai.com",)
Answer = TypeVar("Answer")


def public_url(url: str | None) -> str | None:
    """A base URL without user:password, safe to store in the cache and show in messages."""
    if not url:
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def is_openai_host(base_url: str | None) -> bool:
    """Whether `base_url` is OpenAI's own API (None means it: the client's default)."""
    return base_url is None or (urlsplit(base_url).hostname or "") in OPENAI_HOSTS


def resolve_api_key(base_url: str | None, api_key: str | None) -> str:
    """The key to send: explicit, else $OPENAI_API_KEY; a placeholder for a non-OpenAI server (they accept any)."""
    key = api_key or config.api_settings().api_key
    if key:
        return key
    if not is_openai_host(base_url):
        return LOCAL_SERVER_KEY
    raise LLMError(
        f"no API key: set {config.ENV_API_KEY} for OpenAI, or set {config.ENV_API_BASE} to a local "
        "OpenAI-compatible server (vLLM, Ollama, llama.cpp), which needs no key"
    )


def base_url(options: ApiOptions) -> str | None:
    """The server `options` name: their base URL, else $OPENAI_BASE_URL, else None (OpenAI)."""
    return options.base_url or config.api_settings().base_url


def secrets_of(options: ApiOptions) -> tuple[str | None, ...]:
    """What to scrub from this server's errors: the key given, and a base URL holding user:password."""
    url = base_url(options)
    return (options.api_key, url if "@" in (url or "") else None)


def openai_client(options: ApiOptions) -> Any:
    """An `openai.OpenAI` client for the server `options` name, retrying on its own (`max_attempts` in all); fails
    at once on a missing key."""
    import openai

    url = base_url(options)
    key = resolve_api_key(url, options.api_key)
    return openai.OpenAI(base_url=url, api_key=key, timeout=options.timeout_s, max_retries=options.max_attempts - 1)


def _status_detail(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
    return str(getattr(exc, "message", "") or exc)


def _names_max_tokens(exc: Any) -> bool:
    return getattr(exc, "status_code", None) == 400 and re.search(r"\bmax_tokens\b", _status_detail(exc)) is not None


def logprob_token_offsets(content: Sequence[Mapping[str, Any]]) -> tuple[list[int], bytes]:
    """Byte offsets of a chat answer's logprob tokens and the bytes they spell: exact even where the server splits a
    multi-byte character over tokens (its `bytes`), which the simulators and scorers align answers with."""
    starts, data = [], b""
    for item in content:
        starts.append(len(data))
        raw = item.get("bytes")
        data += bytes(raw) if raw is not None else str(item.get("token", "")).encode("utf-8")
    return starts, data


def create(endpoint: Callable[..., Answer], params: dict[str, Any]) -> Answer:
    """`endpoint(**params)` (a client method such as `client.chat.completions.create`); when the server refuses
    `max_tokens` with a 400 that names it, once more with `max_completion_tokens`, the name newer OpenAI models take."""
    import openai

    try:
        return endpoint(**params)
    except openai.BadRequestError as exc:
        if "max_tokens" not in params or not _names_max_tokens(exc):
            raise
    renamed = {k: v for k, v in params.items() if k != "max_tokens"}
    return endpoint(**renamed, max_completion_tokens=params["max_tokens"])


def attempts_made(exc: Any, options: ApiOptions) -> int:
    """How many attempts the SDK made before raising the status error `exc`: all of them for a status it retries
    (408, 409, 429, 5xx, or `x-should-retry: true`), else one."""
    response = getattr(exc, "response", None)
    should = response.headers.get("x-should-retry") if response is not None else None
    status = getattr(exc, "status_code", 0) or 0
    retried = should == "true" or (should != "false" and (status in (408, 409, 429) or status >= 500))
    return options.max_attempts if retried else 1


def call_api(
    who: str,
    endpoint: Callable[..., Answer],
    params: dict[str, Any],
    options: ApiOptions,
    hint: str = "",
) -> Answer:
    """One request of a simulator or scorer (`create`), its failures told apart: a refused request (a bad key, an
    unknown model) or an error that outlasts the SDK's retries raises LLMError, keys scrubbed, which stops the run
    so that it can be fixed and resumed; an answer that is not valid JSON is asked for again, up to `max_attempts`
    times in all, then raises UnreadableAnswer, which callers turn into a failed result. `who` starts each message
    ("scorer NAME"); `hint` ends the HTTP one."""
    import openai

    secrets = secrets_of(options)
    for attempt in range(1, options.max_attempts + 1):
        try:
            return create(endpoint, params)
        except openai.APIStatusError as exc:
            raise api_error(
                f"{who}: HTTP {exc.status_code} after {attempts_made(exc, options)} attempt(s): {exc.message}; "
                f"check the model name, key and base URL{hint}",
                secrets,
            ) from None
        except (openai.APITimeoutError, openai.APIConnectionError) as exc:
            raise LLMError(
                f"{who}: cannot reach the server after {options.max_attempts} attempts ({type(exc).__name__}); "
                "check the base URL and that the server is up"
            ) from None
        except (ValueError, openai.APIResponseValidationError) as exc:
            if attempt == options.max_attempts:
                raise UnreadableAnswer(scrub_secrets(str(exc), secrets)) from None
            log.info("%s: the answer is not valid JSON, asking again (attempt %d)", who, attempt)
    raise AssertionError("unreachable: the last attempt returns or raises")


# ---------------------------------------------------------------------------------------------------------------
# The backend
# ---------------------------------------------------------------------------------------------------------------


class OpenAIBackend(Backend):
    """Chat completions over HTTP with bounded concurrency, the SDK's retries, and usage-based token counts."""

    kind = "openai"
    spec = "openai:MODEL"

    def __init__(
        self, model: str, options: ApiOptions = ApiOptions(), *, db: Any = None, use_cache: bool = True
    ) -> None:
        super().__init__(model, db=db, use_cache=use_cache)
        self.options = options
        self.base_url = base_url(options)
        self._client = openai_client(options)  # fails fast on a missing key

    @property
    def tokenizer(self) -> str:
        from core.tokens import tokenizer_for

        return tokenizer_for(self.name)

    def usage_tokenizer(self, completion: Completion) -> str:
        # Counts in `usage` come from the server's own tokenizer for the model that answered.
        return f"api:{completion.model}"

    def _cache_extra(self) -> dict[str, Any]:
        # The same model name on two servers (say a local vLLM and OpenAI) is not the same model.
        return {"endpoint": public_url(self.base_url)} if not is_openai_host(self.base_url) else {}

    def _secrets(self) -> tuple[str | None, ...]:
        return (*secrets_of(self.options), config.api_settings().api_key)

    def _fail(self, message: str) -> LLMError:
        return api_error(f"{self.name}: {message}", self._secrets())

    def _run(
        self, requests: list[Messages], sampling: Sampling, emit: Callable[[int, Completion | LLMError], None]
    ) -> None:
        pool = ThreadPoolExecutor(max_workers=min(self.options.concurrency, len(requests)), thread_name_prefix="llm")
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
        """One chat request. Failures are not asked again here: the SDK has retried what may pass, and the same
        server would answer a broken reply the same way (a rerun of the job asks again)."""
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
        attempts = self.options.max_attempts
        started = time.monotonic()
        try:
            response = create(self._client.chat.completions.create, params)
        except openai.APIStatusError as exc:
            detail = _status_detail(exc)
            raise self._fail(_explain_status(exc.status_code, detail, attempts_made(exc, self.options))) from None
        except openai.APITimeoutError:
            raise self._fail(
                f"no answer within {self.options.timeout_s:g}s after {attempts} attempts; the server may be "
                "overloaded: raise the timeout or lower the concurrency"
            ) from None
        except openai.APIConnectionError as exc:
            raise self._fail(
                f"cannot connect to {public_url(self.base_url) or 'api.openai.com'} after {attempts} attempts "
                f"({exc.__cause__ or exc}); check {config.ENV_API_BASE} and that the server is up"
            ) from None
        except UnicodeDecodeError as exc:
            # Decoded strictly: a lenient decoder would turn bytes that are not UTF-8 into U+FFFD inside an "ok" answer.
            raise self._fail(
                f"the server's answer is not valid UTF-8 (bytes {exc.object[exc.start : exc.end]!r} at offset "
                f"{exc.start}); retry, or check the server's output encoding"
            ) from None
        except ValueError as exc:  # json.JSONDecodeError, or a body the SDK cannot read as its type
            document = getattr(exc, "doc", None)
            snippet = document[:120].replace("\n", " ") if isinstance(document, str) else str(exc)[:120]
            raise self._fail(
                f"the server's answer is not valid JSON (starts with {snippet!r}); check that "
                f"{config.ENV_API_BASE} points at an OpenAI-compatible /v1 endpoint"
            ) from None
        return self._completion(response, time.monotonic() - started)

    def _completion(self, response: Any, latency_s: float) -> Completion:
        """A Completion from the SDK's ChatCompletion; LLMError when it holds no usable text."""
        choices = getattr(response, "choices", None)
        if not isinstance(choices, list) or not choices or getattr(choices[0], "message", None) is None:
            raise self._fail(
                "the server answered with no choices (an empty or filtered response); retry, or try another model"
            )
        choice = choices[0]
        text = getattr(choice.message, "content", None)
        if not isinstance(text, str):
            refusal = getattr(choice.message, "refusal", None)
            reason = f"the model refused: {refusal}" if refusal else "the answer has no text content"
            raise self._fail(f"{reason} (finish_reason={choice.finish_reason})")
        bad = next((i for i, ch in enumerate(text) if "\ud800" <= ch <= "\udfff"), None)
        if bad is not None:  # JSON can spell a lone surrogate ("\ud800"), which no UTF-8 text (or database) can hold
            surrogate = f"U+{ord(text[bad]):04X}"
            raise self._fail(f"the answer is not valid Unicode text (a lone surrogate {surrogate} at character {bad})")
        usage = getattr(response, "usage", None)
        return Completion(
            text=text,
            # docs/METHOD.md §2: input and output tokens are counted separately; total_tokens is never "input".
            input_tokens=_int_or_none(getattr(usage, "prompt_tokens", None)),
            output_tokens=_int_or_none(getattr(usage, "completion_tokens", None)),
            latency_s=latency_s,
            cached=False,
            finish_reason=choice.finish_reason,
            model=str(getattr(response, "model", None) or self.model),
        )


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


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
