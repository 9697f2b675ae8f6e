"""Scorers behind one interface (docs/METHOD.md §10): each scores one explanation of one neuron
against that neuron's stored excerpts and returns a `ScorerResult`.

- `simulation` (a simulator, `hf:` or `openai:`): correlation of simulated and true activations (§3–§4); needs the
  top and random records.
- `detection` (a chat LLM, `hf:` or `openai:`): balanced accuracy telling activating from non-activating excerpts,
  and the AUC where logprobs exist; needs the scorers' excerpts.
- `fuzzing` (a chat LLM): balanced accuracy telling truly highlighted tokens from randomly highlighted ones, and the
  AUC where logprobs exist; needs the scorers' excerpts.
- `embedding` (an embedder, `minilm` or `openai:MODEL`; no LLM): AUROC of cos(explanation, excerpt), activating
  against non-activating; needs the scorers' excerpts.

Simulation keeps its own path (core.pipeline.score_explanations); the others run through `get_scorer`. Every score
is stored with its scorer in the `simulator` column as `<scorer>:<model>` (e.g. `detection:openai:gpt-4o-mini`,
`embedding:minilm`) and its metric as the method, so that no query keyed by simulator and method ever puts two
scorers' numbers in one mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from core.errors import InputError
from core.records import NeuronRecord
from core.scorers.base import (
    ExcerptPrediction,
    MissingExcerpts,
    ScorerOptions,
    ScorerResult,
    ScoringExcerpt,
    activating_threshold,
    auroc,
    balanced_accuracy,
    classified_excerpts,
    fuzzing_excerpts,
)
from core.simulate.base import SimulatorOptions


class Scorer(Protocol):
    """Scores explanations of neurons; `name` (the scorer), `model` and `method` name every stored score."""

    @property
    def name(self) -> str: ...

    @property
    def model(self) -> str: ...

    @property
    def method(self) -> str: ...

    def settings(self) -> dict[str, Any]: ...

    def score(self, explanation: str, record: NeuronRecord) -> ScorerResult: ...


@dataclass(frozen=True)
class ScorerKind:
    """One scorer in the registry: what it is, what its `--simulator` means, and what a neuron must have."""

    name: str
    description: str
    model_kind: str  # what --simulator names for it
    metric: str
    needs_scoring_excerpts: bool


SCORERS: dict[str, ScorerKind] = {
    kind.name: kind
    for kind in (
        ScorerKind("simulation", "simulated activations against the real ones", "simulator", "correlation", False),
        ScorerKind("detection", "an LLM tells activating excerpts from others", "chat LLM", "balanced_accuracy", True),
        ScorerKind("fuzzing", "an LLM tells true highlights from random ones", "chat LLM", "balanced_accuracy", True),
        ScorerKind("embedding", "cosine of explanation and excerpts (no LLM)", "embedder", "auroc", True),
    )
}
DEFAULT_SCORER = "simulation"


def stored_name(scorer: Scorer) -> str:
    """What a score's `simulator` column holds for a scorer other than simulation: `<scorer>:<model>`."""
    return f"{scorer.name}:{scorer.model}"


def get_scorer(
    name: str,
    model: str | None = None,
    *,
    options: ScorerOptions | None = None,
    simulator_options: SimulatorOptions | None = None,
    db: Any = None,
    use_cache: bool = True,
    prompt: str | None = None,
) -> Scorer:
    """The scorer `name` (detection, fuzzing, embedding) with its model: an LLM spec for the classifiers (required),
    an embedder spec for embedding (default: minilm). `prompt`: a replacement prompt file for the classifiers;
    `simulator_options` say how to run their LLM, the model named by `--simulator` (core.scorers.classifier)."""
    options = options or ScorerOptions()
    if name not in SCORERS:
        raise InputError(f"unknown scorer {name!r}; choose one of {', '.join(SCORERS)}")
    if name == "simulation":
        raise InputError("the simulation scorer runs through core.pipeline.score_explanations with a simulator")
    if name == "embedding":
        from core.scorers.embedding import EmbeddingScorer
        from core.similarity import DEFAULT_EMBEDDER

        if prompt:
            raise InputError("the embedding scorer uses no prompt; --scorer-prompt is for detection and fuzzing")
        return EmbeddingScorer(model or DEFAULT_EMBEDDER, options)
    from core.scorers.classifier import ClassifierScorer, classifier_llm, load_prompt

    if not model:
        raise InputError(f"the {name} scorer needs an LLM: pass --simulator openai:MODEL or hf:ID_OR_PATH")
    llm = classifier_llm(model, simulator_options or SimulatorOptions(), db=db, use_cache=use_cache)
    return ClassifierScorer(name, llm, options, load_prompt(name, prompt))


__all__ = [
    "DEFAULT_SCORER",
    "SCORERS",
    "ExcerptPrediction",
    "MissingExcerpts",
    "Scorer",
    "ScorerKind",
    "ScorerOptions",
    "ScorerResult",
    "ScoringExcerpt",
    "activating_threshold",
    "auroc",
    "balanced_accuracy",
    "classified_excerpts",
    "fuzzing_excerpts",
    "get_scorer",
    "stored_name",
]
