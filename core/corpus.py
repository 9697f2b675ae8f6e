"""Text sources → fixed-length token excerpts, and faithful per-token display strings.

The embedded default corpus is the English prose that ships with every CPython: docstrings, comment blocks and the
interactive help topics of the standard library (PSF licence). It needs no download and no root, and gives about
1.25M BERT tokens (the codec tables of `encodings` and repeated documents are left out). It is built once into the
cache folder and shuffled with a fixed seed, so that any token budget takes a varied sample rather than the first
modules alphabetically.
"""

from __future__ import annotations

import ast
import io
import json
import logging
import os
import random
import sys
import sysconfig
import tokenize
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from core import config
from core.errors import InputError

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_CORPUS_VERSION = 3
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text")


@dataclass(frozen=True)
class Corpus:
    """A named, re-iterable source of documents."""

    name: str
    documents: Callable[[], Iterator[str]]


def default_corpus_path() -> Path:
    tag = f"{sys.implementation.name}{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
    return config.cache_dir() / f"python-docs-{tag}-v{DEFAULT_CORPUS_VERSION}.jsonl"


def _python_prose() -> Iterator[str]:
    """Docstrings, comment blocks and help topics of the running Python's standard library."""
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        # Third-party code is not Python's own, and the codec tables of `encodings` are data rather than prose:
        # their shared ASCII rows would give many neurons the same excerpt several times.
        if {"site-packages", "encodings"} & set(path.relative_to(root).parts):
            continue
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc and len(doc.split()) >= 3:
                    yield doc
        yield from _comment_blocks(source)
    try:
        from pydoc_data.topics import topics
    except ImportError:
        return
    yield from (text for _, text in sorted(topics.items()))


def _comment_blocks(source: str) -> Iterator[str]:
    """Runs of consecutive `#` comment lines joined into one paragraph; code-like fragments are skipped."""
    block: list[str] = []
    last_line = -2
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type != tokenize.COMMENT:
                continue
            text = token.string.lstrip("#").strip()
            if token.start[0] != last_line + 1 and block:
                yield from _prose(" ".join(block))
                block = []
            block.append(text)
            last_line = token.start[0]
    except (tokenize.TokenError, SyntaxError, IndentationError):
        pass
    if block:
        yield from _prose(" ".join(block))


def _prose(text: str) -> Iterator[str]:
    if len(text.split()) >= 5 and sum(c.isalpha() for c in text) > 0.6 * len(text):
        yield text


def build_default_corpus(path: Path | None = None) -> Path:
    """Write the default corpus (shuffled with seed 0) as JSONL; atomic, so an interrupted build leaves nothing."""
    path = path or default_corpus_path()
    # The same docstring or comment often stands in several modules; repeats would fill top-k lists with copies.
    documents = list(dict.fromkeys(_python_prose()))
    random.Random(0).shuffle(documents)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as out:
        for doc in documents:
            out.write(json.dumps({"text": doc}, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def _read_jsonl(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
            text = item.get("text") if isinstance(item, dict) else item
            if not isinstance(text, str):
                raise InputError(f"{path}:{number}: expected a string or an object with a 'text' field")
            yield text


def _read_text(path: Path) -> Iterator[str]:
    # Blank lines separate documents, so a long book streams paragraph by paragraph.
    paragraph: list[str] = []
    with path.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            if line.strip():
                paragraph.append(line)
            elif paragraph:
                yield "".join(paragraph).rstrip("\n")
                paragraph = []
    if paragraph:
        yield "".join(paragraph).rstrip("\n")


def _read_path(path: Path) -> Iterator[str]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".jsonl", *TEXT_SUFFIXES))
        if not files:
            raise InputError(f"folder {path} has no .txt, .md or .jsonl files")
        for file in files:
            yield from _read_path(file)
    elif path.suffix == ".jsonl":
        yield from _read_jsonl(path)
    else:
        yield from _read_text(path)


def _read_hf_dataset(spec: str) -> Iterator[str]:
    """`hf:NAME[:CONFIG][:SPLIT]`, streamed; the text is the `text` field."""
    try:
        import datasets
    except ImportError as exc:
        raise InputError("Hugging Face datasets need the `datasets` package: pip install datasets") from exc
    name, _, rest = spec.removeprefix("hf:").partition(":")
    subset, _, split = rest.partition(":")
    try:
        dataset = datasets.load_dataset(name, subset or None, split=split or "train", streaming=True)
    except Exception as exc:  # datasets raises many types; all mean "cannot get it"
        raise InputError(f"cannot load dataset {name!r} (offline?): {str(exc).splitlines()[0]}") from exc
    for row in dataset:
        text = row.get("text")
        if isinstance(text, str):
            yield text


HUB_CHECK_TIMEOUT_S = 3.0


def _hub_unreachable(timeout_s: float = HUB_CHECK_TIMEOUT_S) -> str | None:
    """Why the Hugging Face Hub ($HF_ENDPOINT, else huggingface.co) cannot be reached now, or None when it can:
    one quick connection, instead of the datasets library's half a minute of retries and repeated warnings."""
    import socket
    from urllib.parse import urlsplit

    for flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(flag, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{flag} is set"
    endpoint = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        return f"cannot connect to {host}:{port} ({exc.strerror or type(exc).__name__})"
    return None


def _read_default(path: Path) -> Iterator[str]:
    if not path.exists():
        log.warning("building the default corpus from Python's own documentation (once, ~30 s)")
        build_default_corpus(path)
    return _read_jsonl(path)


def load_corpus(spec: str | None) -> Corpus:
    """`default`, a .txt/.jsonl file or a folder of them, or `hf:NAME[:CONFIG][:SPLIT]`."""
    if spec in (None, "", config.DEFAULT_CORPUS):
        # Built when first read, not here: a collection that finds nothing left to do never pays for it.
        path = default_corpus_path()
        return Corpus(name=f"default:{path.stem}", documents=lambda: _read_default(path))
    if spec.startswith("hf:"):
        name = spec.removeprefix("hf:").partition(":")[0]
        reason = None if Path(name).exists() else _hub_unreachable()
        if reason is not None:
            raise InputError(
                f"corpus {spec} streams from the Hugging Face Hub, which is out of reach: {reason}; use `default` or "
                "a local .txt/.jsonl file or folder offline"
            )
        return Corpus(name=spec, documents=lambda: _read_hf_dataset(spec))
    path = Path(spec)
    if not path.exists():
        raise InputError(f"corpus {spec!r} not found: give `default`, a .txt/.jsonl file or folder, or hf:NAME")
    return Corpus(name=str(path.resolve()), documents=lambda: _read_path(path))


def _separator_ids(tokenizer: Any) -> list[int]:
    # Documents are joined by a paragraph break in the tokenizer's own terms (nothing at all for BERT, which drops
    # whitespace), rather than by a special token that would show up in excerpts.
    return tokenizer("\n\n", add_special_tokens=False)["input_ids"]


def token_excerpts(
    corpus: Corpus,
    tokenizer: Any,
    excerpt_len: int,
    max_tokens: int | None = None,
    batch_documents: int = 256,
) -> Iterator[list[int]]:
    """Consecutive windows of exactly `excerpt_len` token ids over the concatenated corpus, up to `max_tokens`."""
    if excerpt_len < 1:
        raise InputError(f"excerpt length must be at least 1, got {excerpt_len}")
    separator = _separator_ids(tokenizer)
    buffer: list[int] = []
    started = False
    emitted = 0
    limit = max_tokens if max_tokens is not None else float("inf")
    for documents in batched(corpus.documents(), batch_documents):
        for ids in tokenizer(documents, add_special_tokens=False, verbose=False)["input_ids"]:
            if not ids:
                continue
            if started:
                buffer.extend(separator)
            started = True
            buffer.extend(ids)
            while len(buffer) >= excerpt_len:
                if emitted + excerpt_len > limit:
                    return
                yield buffer[:excerpt_len]
                emitted += excerpt_len
                del buffer[:excerpt_len]


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Lists of `size` consecutive items (the last one may be shorter); itertools.batched from Python 3.12."""
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def special_token_layout(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special ids the model expects before and after a text (e.g. BERT's [CLS] … [SEP], Llama's BOS)."""
    probe = tokenizer("x", add_special_tokens=False)["input_ids"]
    wrapped = tokenizer("x", add_special_tokens=True)["input_ids"]
    for start in range(len(wrapped) - len(probe) + 1):
        if wrapped[start : start + len(probe)] == probe:
            return wrapped[:start], wrapped[start + len(probe) :]
    return [], []


def _bytes_to_unicode() -> dict[str, int]:
    """Inverse of the GPT-2 byte-level alphabet: printable stand-in character → byte value."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


_BYTE_DECODER = _bytes_to_unicode()


def _decoder_kind(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    description = repr(decoder) if decoder is not None else ""
    if "ByteLevel" in description:
        return "byte_level"
    if "WordPiece" in description:
        return "wordpiece"
    if "Metaspace" in description or "▁" in description or "ByteFallback" in description:
        return "sentencepiece"
    return "decode"


def token_strings(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Display strings that concatenate to the excerpt's text: leading spaces kept, newlines and tabs as themselves.

    Byte-level pieces that split a multi-byte character show the bytes as `\\xNN` escapes rather than "�", and a
    WordPiece continuation (`##ing`) attaches to the previous piece without a space.
    """
    kind = _decoder_kind(tokenizer)
    raw = tokenizer.convert_ids_to_tokens(list(ids))
    special = set(getattr(tokenizer, "all_special_tokens", []))
    strings = []
    for piece in raw:
        piece = piece or ""
        if piece in special:
            strings.append(piece)
        elif kind == "byte_level":
            data = bytes(_BYTE_DECODER.get(c, ord("?")) for c in piece)
            strings.append(data.decode("utf-8", errors="backslashreplace"))
        elif kind == "wordpiece":
            strings.append(piece[2:] if piece.startswith("##") else " " + piece)
        elif kind == "sentencepiece":
            if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
                value = int(piece[3:5], 16)
                strings.append(chr(value) if value < 0x80 else f"\\x{value:02x}")
            else:
                strings.append(piece.replace("▁", " "))
        else:
            strings.append(tokenizer.decode([tokenizer.convert_tokens_to_ids(piece)]))
    return strings
