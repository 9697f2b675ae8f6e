"""A real HTTP server on localhost that speaks the OpenAI protocol, for tests.

Tests drive it with the real `openai` client. It answers /v1/chat/completions, /v1/completions (with `echo` and
`logprobs`) and /v1/embeddings, records every request, and can inject faults one request at a time. Its 429 and 5xx
answers carry `Retry-After-Ms` (`retry_after_ms`, 10 by default; None sends none), which the client honours, as it does
OpenAI's, so that retries in tests wait milliseconds rather than the client's own backoff of half a second and more.
With `reject_max_tokens`, a request that names `max_tokens` is refused with OpenAI's 400 for models that take only
`max_completion_tokens`.

    with FakeOpenAIServer() as server:
        server.inject("429", "malformed_json")
        server.chat_handler = lambda request: " words about cats."
        client = openai.OpenAI(base_url=server.base_url, api_key="sk-test")
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# A key shaped like a real one, for tests that check it never leaks into the DB, logs or error messages.
TEST_API_KEY = "sk-test-0123456789abcdefSECRET"
# A key of another shape (a proxy's or a self-hosted server's): it is redacted because it is the configured key, not
# because it looks like one. The fake's 401 quotes back whatever key it got.
CUSTOM_SHAPED_KEY = "k3y-Zq9Vt4mW8pLx2-custom"
FAULTS = ("429", "500", "503", "401", "timeout", "malformed_json", "empty_choices", "disconnect")
# A chat reply whose text holds a lone surrogate (valid JSON, `"\ud800"`, that no UTF-8 encoder accepts) or bytes
# that are not UTF-8 at all.
FAULTS += ("lone_surrogate", "invalid_utf8")
LONE_SURROGATE = "\ud800"
INVALID_UTF8 = b"\xff\xfe"
EMBEDDING_DIM = 256
_WORD = re.compile(r"\w+", re.UNICODE)
_PIECE = re.compile(r"\s*\S+|\s+")


def everything_shown(exc: BaseException) -> str:
    """What an error can show anyone: its message, its traceback as a log prints it, and its `__cause__` chain."""
    import traceback

    shown = [str(exc), "".join(traceback.format_exception(exc))]
    cause = exc.__cause__
    while cause is not None:
        shown.append(f"{cause!s} {cause!r}")
        cause = cause.__cause__
    return "\n".join(shown)


def count_words(text: str) -> int:
    return len(text.split())


def fake_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """The server's `usage.prompt_tokens` for a chat request: words plus 3 per message (a stand-in tokenizer)."""
    return sum(count_words(str(m.get("content", ""))) + 3 for m in messages)


def fake_completion_tokens(text: str) -> int:
    """The server's `usage.completion_tokens`: words plus 1 for the stop token."""
    return count_words(text) + 1


def default_chat_reply(request: dict[str, Any]) -> str:
    """A deterministic explanation-like reply naming a token the last user message marks as active."""
    user = next((m for m in reversed(request.get("messages", [])) if m.get("role") == "user"), {})
    content = str(user.get("content", ""))
    scored = [(int(n), tok) for tok, n in re.findall(r"^(.+?)\t(\d+)$", content, re.MULTILINE) if n.isdigit()]
    if scored:
        token = max(scored, key=lambda pair: pair[0])[1]
    else:
        bracketed = re.findall(r"(?<!\\)\[([^\]\n]+)\]", content)
        listed = [
            item.strip()
            for line in re.findall(r"Highly activating tokens:\s*(.+)", content)
            for item in line.split(",")
            if item.strip() and item.strip() != "(none)"
        ]
        token = bracketed[0] if bracketed else listed[0] if listed else "the"
    return f' the word "{token.strip()}" and similar words.'


def embed_text(text: str, dim: int = EMBEDDING_DIM) -> list[float]:
    """A deterministic unit vector: a hashed bag of lower-cased words, so shared words mean higher cosine."""
    vector = [0.0] * dim
    for word in _WORD.findall(text.lower()):
        digest = hashlib.sha256(word.encode()).digest()
        vector[int.from_bytes(digest[:4], "little") % dim] += 1.0
    norm = math.sqrt(sum(v * v for v in vector))
    if norm == 0:
        vector[0], norm = 1.0, 1.0
    return [v / norm for v in vector]


def default_completions(request: dict[str, Any]) -> dict[str, Any]:
    """A /v1/completions answer. With `echo` the prompt comes back; with `logprobs` each piece gets logprobs.

    Pieces are whitespace-led words (a stand-in tokenizer). Top logprobs spread uniformly over "0".."10".
    """
    prompt = request.get("prompt", "")
    prompt = prompt[0] if isinstance(prompt, list) else prompt
    generated = "" if int(request.get("max_tokens", 16) or 0) == 0 else " 0"
    text = (prompt if request.get("echo") else "") + generated
    choice: dict[str, Any] = {"index": 0, "text": text, "finish_reason": "length", "logprobs": None}
    if request.get("logprobs") is not None:
        pieces = _PIECE.findall(text)
        uniform = math.log(1 / 11)
        offsets, position = [], 0
        for piece in pieces:
            offsets.append(position)
            position += len(piece)
        choice["logprobs"] = {
            "tokens": pieces,
            "token_logprobs": [None if i == 0 and request.get("echo") else -1.0 for i in range(len(pieces))],
            "top_logprobs": [
                None if i == 0 and request.get("echo") else {str(v): uniform for v in range(11)}
                for i in range(len(pieces))
            ],
            "text_offset": offsets,
        }
    return {
        "id": "cmpl-fake",
        "object": "text_completion",
        "created": int(time.time()),
        "model": request.get("model", "fake-model"),
        "choices": [choice],
        "usage": {
            "prompt_tokens": count_words(prompt),
            "completion_tokens": count_words(generated),
            "total_tokens": count_words(prompt) + count_words(generated),
        },
    }


class FakeOpenAIServer:
    """ThreadingHTTPServer on 127.0.0.1 (port 0) in a daemon thread; use as a context manager or start()/stop()."""

    def __init__(
        self, *, timeout_sleep_s: float = 3.0, require_key: str | None = None, retry_after_ms: int | None = 10
    ) -> None:
        self.chat_handler: Callable[[dict[str, Any]], str] = default_chat_reply
        self.completions_handler: Callable[[dict[str, Any]], dict[str, Any]] = default_completions
        self.timeout_sleep_s = timeout_sleep_s
        self.retry_after_ms = retry_after_ms
        self.reject_max_tokens = False
        self.chat_usage = True  # False: chat answers carry no `usage`, like some local servers
        self.require_key = require_key
        self.requests: list[dict[str, Any]] = []  # every request body, parsed
        self.calls: list[tuple[str, dict[str, Any]]] = []  # (path, body) in arrival order
        self.auth_headers: list[str] = []
        self._faults: deque[str] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("the fake server is not running: call start() or use it as a context manager")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> FakeOpenAIServer:
        server = self

        class Handler(_Handler):
            fake = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        # A short poll interval makes stop() (and so every test's teardown) quick.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-openai", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes handlers sleeping on a "timeout" fault
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- programming it -------------------------------------------------------------------------------------------

    def inject(self, *faults: str) -> None:
        """Queue faults, consumed one per incoming request in order: see FAULTS."""
        unknown = [f for f in faults if f not in FAULTS]
        if unknown:
            raise ValueError(f"unknown faults {unknown}; known: {', '.join(FAULTS)}")
        with self._lock:
            self._faults.extend(faults)

    @property
    def pending_faults(self) -> int:
        with self._lock:
            return len(self._faults)

    def _record(self, path: str, body: dict[str, Any], auth: str) -> str | None:
        with self._lock:
            self.requests.append(body)
            self.calls.append((path, body))
            self.auth_headers.append(auth)
            return self._faults.popleft() if self._faults else None


class _Handler(BaseHTTPRequestHandler):
    fake: FakeOpenAIServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output quiet
        pass

    def _send(self, status: int, payload: bytes, content_type: str = "application/json", headers=None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def _send_json(self, status: int, value: Any, headers=None) -> None:
        self._send(status, json.dumps(value).encode(), headers=headers)

    def _error(self, status: int, message: str, kind: str, headers=None) -> None:
        self._send_json(status, {"error": {"message": message, "type": kind, "param": None, "code": None}}, headers)

    def do_GET(self) -> None:
        if self.path.rstrip("/").endswith("/models"):
            self._send_json(200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]})
        else:
            self._error(404, f"no route GET {self.path}", "invalid_request_error")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            body = {"_unparsed": raw.decode("utf-8", "replace")}
        path = self.path.split("?")[0].rstrip("/")
        fault = self.fake._record(path, body, self.headers.get("Authorization", ""))
        key = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        # Like OpenAI, a 401 quotes the key it got, so tests can check that clients scrub it.
        rejected = f"Incorrect API key provided: {key}. You can find your API key in your account settings."
        if self.fake.require_key is not None and key != self.fake.require_key:
            return self._error(401, rejected, "invalid_request_error")
        wait = {} if self.fake.retry_after_ms is None else {"Retry-After-Ms": str(self.fake.retry_after_ms)}
        if fault == "429":
            return self._error(429, "Rate limit reached, please slow down.", "rate_limit_error", wait)
        if fault in ("500", "503"):
            message = "The server had an error while processing your request."
            return self._error(int(fault), message, "server_error", wait)
        if self.fake.reject_max_tokens and "max_tokens" in body:
            unsupported = (
                "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' "
                "instead."
            )
            return self._error(400, unsupported, "invalid_request_error")
        if fault == "401":
            return self._error(401, rejected, "invalid_request_error")
        if fault == "timeout":
            self.fake._stopping.wait(self.fake.timeout_sleep_s)
            self.close_connection = True
            return
        if fault == "disconnect":
            self.close_connection = True
            return
        if fault == "malformed_json":
            return self._send(200, b'{"id": "chatcmpl-broken", "choices": [{"index": 0, "mess')
        routes = {
            "/v1/chat/completions": self._chat,
            "/v1/completions": self._completions,
            "/v1/embeddings": self._embeddings,
        }
        if fault in ("lone_surrogate", "invalid_utf8") and path == "/v1/chat/completions":
            return self._chat(body, empty=False, corrupt=fault)
        route = routes.get(path)
        if route is None:
            return self._error(404, f"no route POST {path}", "invalid_request_error")
        try:
            route(body, empty=fault == "empty_choices")
        except Exception as exc:  # a broken handler in a test must show up as a 500, not a hung client
            self._error(500, f"fake handler failed: {exc!r}", "server_error")

    def _chat(self, body: dict[str, Any], empty: bool, corrupt: str | None = None) -> None:
        n = int(body.get("n") or 1)
        texts = [self.fake.chat_handler(body) for _ in range(n)]
        marker = "CORRUPT-TEXT-MARKER"
        if corrupt is not None:
            texts = [f"{text} {LONE_SURROGATE if corrupt == 'lone_surrogate' else marker}" for text in texts]
        choices = [
            {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop", "logprobs": None}
            for i, text in enumerate(texts)
        ]
        prompt_tokens = fake_prompt_tokens(body.get("messages", []))
        completion_tokens = sum(fake_completion_tokens(t) for t in texts)
        answer = json.dumps(
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "fake-model"),
                "choices": [] if empty else choices,
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                }
                if self.fake.chat_usage
                else None,
            },
        ).encode()
        self._send(200, answer.replace(marker.encode(), INVALID_UTF8))

    def _completions(self, body: dict[str, Any], empty: bool) -> None:
        response = self.fake.completions_handler(body)
        if empty:
            response = {**response, "choices": []}
        self._send_json(200, response)

    def _embeddings(self, body: dict[str, Any], empty: bool) -> None:
        inputs = body.get("input", [])
        inputs = [inputs] if isinstance(inputs, str) else list(inputs)
        base64_format = body.get("encoding_format") == "base64"
        data = []
        for i, text in enumerate(inputs):
            vector = embed_text(str(text))
            value: Any = vector
            if base64_format:
                value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": i, "embedding": value})
        tokens = sum(count_words(str(t)) for t in inputs)
        self._send_json(
            200,
            {
                "object": "list",
                "data": [] if empty else data,
                "model": body.get("model", "fake-embedding"),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        )


def with_latency(handler: Callable[[dict[str, Any]], Any], seconds: float) -> Callable[[dict[str, Any]], Any]:
    """`handler`, answering each request `seconds` later: injected latency, e.g.
    `server.chat_handler = with_latency(default_chat_reply, 0.2)`. Each request waits in its own server thread, so
    concurrent requests overlap as they would on a real server."""

    def slow(request: dict[str, Any]) -> Any:
        time.sleep(seconds)
        return handler(request)

    return slow


# --- Appended for the scorers (tests/test_scorers.py): chat answers with logprobs ---------------------------------

_LOGPROB_PIECE = re.compile(r"\d|\D+")


def chat_logprobs_content(text: str, confidence: float = 0.9) -> list[dict[str, Any]]:
    """`choices[0].logprobs.content` for `text`, pieces as a tokenizer might cut it: every digit alone, the runs
    between digits whole. A "0" or "1" gets top_logprobs for both: the written one with `confidence`, the other with
    the rest; other pieces have only themselves."""
    content = []
    for piece in _LOGPROB_PIECE.findall(text):
        if piece in ("0", "1"):
            other = "1" if piece == "0" else "0"
            top = [
                {"token": piece, "logprob": math.log(confidence), "bytes": list(piece.encode())},
                {"token": other, "logprob": math.log(1 - confidence), "bytes": list(other.encode())},
            ]
        else:
            top = [{"token": piece, "logprob": 0.0, "bytes": list(piece.encode())}]
        item = {"token": piece, "logprob": top[0]["logprob"], "bytes": list(piece.encode()), "top_logprobs": top}
        content.append(item)
    return content


class LogprobsFakeOpenAIServer(FakeOpenAIServer):
    """The fake server whose chat answers carry `logprobs.content` when a request asks for logprobs.

    `logprobs_mode`: "full" (every piece with its alternatives, chat_logprobs_content), "none" (no logprobs, as a
    server that ignores the parameter), or "no_alternatives" (content without top_logprobs). `confidence(request)`
    gives the probability of each written digit for that request (default 0.9).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.logprobs_mode = "full"
        self.confidence: Callable[[dict[str, Any]], float] = lambda request: 0.9

    def start(self) -> LogprobsFakeOpenAIServer:
        server = self

        class Handler(_LogprobsHandler):
            fake = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-openai", daemon=True
        )
        self._thread.start()
        return self


class _LogprobsHandler(_Handler):
    fake: LogprobsFakeOpenAIServer

    def _chat(self, body: dict[str, Any], empty: bool, corrupt: str | None = None) -> None:
        if corrupt is not None or not body.get("logprobs") or self.fake.logprobs_mode == "none":
            return super()._chat(body, empty, corrupt)
        text = self.fake.chat_handler(body)
        content = chat_logprobs_content(text, self.fake.confidence(body))
        if self.fake.logprobs_mode == "no_alternatives":
            content = [{k: v for k, v in item.items() if k != "top_logprobs"} for item in content]
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop",
                  "logprobs": {"content": content}}  # fmt: skip
        prompt_tokens = fake_prompt_tokens(body.get("messages", []))
        completion_tokens = fake_completion_tokens(text)
        self._send_json(
            200,
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "fake-model"),
                "choices": [] if empty else [choice],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            },
        )
