"""Stored explanations as a person reads them: each with its neuron, format, explainer, source (core.provenance),
text, token counts in their unit, and every score named by its scorer · method. `python -m core explanations`
prints these; an arm of a study (core.human_eval) is written with the same explainer and source.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import sqlite_utils

from core import db as dbmod
from core import provenance, tokens
from core.errors import InputError
from core.records import NeuronId


@dataclass(frozen=True)
class ScoreEntry:
    """One automated score of an explanation: a simulation score (`simulator·method`, split, calibrated) or a
    similarity to a reference (`similarity·embedder`)."""

    scorer: str
    value: float | None
    split: str | None = None
    calibrated: bool = False
    status: str = "ok"

    @property
    def label(self) -> str:
        details = [self.split] if self.split else []
        details += ["calibrated"] if self.calibrated else []
        return self.scorer + (f" ({', '.join(details)})" if details else "")


@dataclass(frozen=True)
class ExplanationEntry:
    """One stored explanation with where it came from, its token counts and its scores."""

    id: int
    model: str
    neuron: str
    format: str
    explainer: str
    source: str
    origin: str
    text: str
    tokens: dict[str, int | None]
    scores: tuple[ScoreEntry, ...]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["scores"] = [{**asdict(score), "label": score.label} for score in self.scores]
        return data

    @property
    def arm(self) -> str:
        """The study arm that names exactly this explanation's set."""
        return f"{self.format}@{self.explainer}#{self.source}"


def token_counts(row: dict[str, Any]) -> dict[str, int | None]:
    """A stored explanation's token counts under names that carry their unit: `input_tokens_server` (reported by
    the API that answered), `input_tokens_cl100k` (counted offline with cl100k_base, as `prompt` and the Explain
    page's preview count), `input_tokens_local` (a Hugging Face tokenizer) or `input_tokens_unknown`, and
    `output_tokens` (core.tokens.TOKEN_UNITS)."""
    counts: dict[str, int | None] = {"input_tokens_server": None, "input_tokens_cl100k": None}
    if row.get("input_tokens") is not None:
        counts[tokens.input_tokens_column(row.get("tokenizer"))] = row["input_tokens"]
    counts["output_tokens"] = row.get("output_tokens")
    return counts


def _scores(found: Sequence[dict[str, Any]]) -> tuple[ScoreEntry, ...]:
    entries = []
    for score in found:
        if "simulator" in score:
            entries.append(
                ScoreEntry(
                    f"{score['simulator']}·{score['method']}",
                    score["score"],
                    score["split"],
                    bool(score["calibrated"]),
                    score["status"],
                )
            )
        else:
            entries.append(ScoreEntry(f"similarity·{score['embedder']}", score["cosine"], score["similarity_to"]))
    return tuple(entries)


def _entry(row: dict[str, Any], scores: Sequence[dict[str, Any]]) -> ExplanationEntry:
    return ExplanationEntry(
        id=row["id"],
        model=row["model"],
        neuron=f"{row['layer']}:{row['neuron']}",
        format=row["format"],
        explainer=row["explainer"],
        source=provenance.source_key(row),
        origin=provenance.origin(row),
        text=row.get("explanation") or "",
        tokens=token_counts(row),
        scores=_scores(scores),
    )


def list_entries(
    db: sqlite_utils.Database,
    model: str | None = None,
    neurons: Sequence[NeuronId] | None = None,
    formats: Sequence[str] | None = None,
    explainers: Sequence[str] | None = None,
    limit: int | None = None,
) -> list[ExplanationEntry]:
    """The ok explanations matching every filter given (explainers exactly as stored), by model, neuron, format."""
    rows = dbmod.find_explanations(db, model, neurons, formats, explainers, limit=limit)
    scores = dbmod.scores_of_explanations(db, [row["id"] for row in rows])
    return [_entry(row, scores.get(row["id"], [])) for row in rows]


def show_entry(db: sqlite_utils.Database, explanation_id: int) -> dict[str, Any]:
    """One explanation (any status) with its scores, its settings (`params`), and its prompt's input tokens counted
    offline with cl100k_base beside what the API reported."""
    if explanation_id < 1:
        raise InputError(f"an explanation id is a positive whole number, not {explanation_id}")
    row = dbmod.get_explanation(db, explanation_id)
    entry = _entry(row, dbmod.scores_of_explanations(db, [explanation_id]).get(explanation_id, []))
    data = entry.to_json()
    prompt = row.get("prompt")
    if isinstance(prompt, list) and prompt:
        data["tokens"]["input_tokens_cl100k"] = tokens.count_chat_tokens(prompt, tokens.CL100K)
        data["prompt_messages"] = len(prompt)
    data.update(
        status=row["status"],
        error=row.get("error"),
        sample=row.get("sample"),
        counted_by=row.get("tokenizer"),
        params=row.get("params"),
        created_at=row.get("created_at"),
        arm=entry.arm,
    )
    return data


def entry_lines(entry: ExplanationEntry, width: int = 100) -> list[str]:
    """Plain-text lines for one explanation: a header, the text, and one line of scores."""
    counts = ", ".join(f"{name.removeprefix('input_tokens_')} {value}" for name, value in entry.tokens.items()
                       if name.startswith("input_") and value is not None)  # fmt: skip
    output = entry.tokens.get("output_tokens")
    cost = f"input tokens {counts or '-'}; output tokens {output if output is not None else '-'}"
    lines = [
        f"#{entry.id}  {entry.model} {entry.neuron}  {entry.format}  {entry.explainer}  {entry.source} "
        f"({entry.origin})  {cost}"
    ]
    text = " ".join(entry.text.split())
    lines += ["    " + text[i : i + width] for i in range(0, max(len(text), 1), width)]
    scores = "; ".join(
        f"{score.label} {'-' if score.value is None else f'{score.value:.3f}'}" for score in entry.scores
    )
    lines.append(f"    scores: {scores or 'none'}")
    return lines
