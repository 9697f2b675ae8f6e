"""The embedding scorer (docs/METHOD.md §10): no LLM. The explanation is embedded as a query and each activating and
non-activating excerpt as a document with a sentence embedder (core.similarity: the bundled all-MiniLM-L6-v2, or
`openai:MODEL`); the score is the AUROC of their cosine to the explanation for telling the two kinds apart.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core import similarity
from core.records import NeuronRecord
from core.scorers.base import (
    ExcerptPrediction,
    MissingExcerpts,
    ScorerOptions,
    ScorerResult,
    ScoringExcerpt,
    auroc,
    classified_excerpts,
)

METHOD = "auroc"
_CACHED_TEXTS = 4096


def document_text(excerpt: ScoringExcerpt) -> str:
    """An excerpt's text as the embedder reads it: its tokens joined, nothing escaped or marked."""
    return "".join(excerpt.record.tokens).strip()


@dataclass
class EmbeddingScorer:
    """AUROC of cos(explanation, excerpt) for activating (1) against non-activating (0) excerpts. Excerpt vectors
    are kept for the last few thousand texts, so the explanations of one neuron embed its excerpts once."""

    embedder: Any = similarity.DEFAULT_EMBEDDER
    options: ScorerOptions = field(default_factory=ScorerOptions)
    _vectors: OrderedDict[str, np.ndarray] = field(default_factory=OrderedDict, repr=False)

    def __post_init__(self) -> None:
        self.embedder = similarity.get_embedder(self.embedder)

    @property
    def name(self) -> str:
        return "embedding"

    @property
    def model(self) -> str:
        return str(self.embedder.name)

    @property
    def method(self) -> str:
        return METHOD

    def settings(self) -> dict[str, Any]:
        options = {k: v for k, v in self.options.to_json().items() if k != "excerpts_per_call"}  # no calls here
        return {"model": self.model, **options}

    def _embed(self, texts: list[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self._vectors]
        if missing:
            for text, vector in zip(missing, self.embedder.embed(missing), strict=True):
                self._vectors[text] = vector
                if len(self._vectors) > _CACHED_TEXTS:
                    self._vectors.popitem(last=False)
        return np.stack([self._vectors[t] for t in texts])

    def score(self, explanation: str, record: NeuronRecord) -> ScorerResult:
        started = time.perf_counter()
        try:
            activating, quiet = classified_excerpts(record, self.options)
        except MissingExcerpts as exc:
            return ScorerResult(self.name, self.model, self.method, "failed", error=str(exc))
        excerpts = [*activating, *quiet]
        if not activating or not quiet:
            reason = (
                f"neuron {record.neuron} has {len(activating)} activating and {len(quiet)} non-activating excerpts; "
                "the AUROC needs both: lower --activating-quantile or collect more text"
            )
            return ScorerResult(self.name, self.model, self.method, "failed", error=reason,
                                seconds=time.perf_counter() - started)  # fmt: skip
        query = self.embedder.embed([explanation.strip()])[0]
        documents = self._embed([document_text(e) for e in excerpts])
        cosines = np.clip(documents @ query, -1.0, 1.0).tolist()
        labels = [e.label for e in excerpts]
        per_excerpt = tuple(
            ExcerptPrediction(index=i, kind=e.kind, label=e.label, max_activation=e.record.max_activation,
                              level=e.level, similarity=float(c))
            for i, (e, c) in enumerate(zip(excerpts, cosines, strict=True))
        )  # fmt: skip
        return ScorerResult(
            self.name, self.model, self.method, "ok", auroc(labels, cosines), None, per_excerpt,
            seconds=time.perf_counter() - started,
        )  # fmt: skip
