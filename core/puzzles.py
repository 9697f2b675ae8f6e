"""Neuron puzzles: synthetic neurons with a known ground-truth explanation and decoys (SPEC.md §4).

A puzzle file maps names to `{"name", "explanation", "false_explanations", "sentences"}`; a sentence is a list of
tokens (GPT-2 style, leading spaces kept) where a token is a string (activation 0) or a `[string, value]` pair.
Ours are in core/data/puzzles.json; files in the same format (e.g. OpenAI's published puzzles) load by path.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from core.errors import InputError
from core.records import ActivationRecord

PUZZLES_PATH = Path(__file__).resolve().parent / "data" / "puzzles.json"


@dataclass(frozen=True)
class Puzzle:
    """One synthetic neuron: the true explanation, wrong but plausible ones, and its activation records."""

    name: str
    explanation: str
    decoys: tuple[str, ...]
    records: tuple[ActivationRecord, ...]

    @property
    def candidates(self) -> tuple[str, ...]:
        """The truth first, then the decoys: the explanations a simulator sanity check scores."""
        return (self.explanation, *self.decoys)


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{where}: expected a non-empty string, got {value!r}")
    return value


def _sentence(tokens: Any, where: str) -> ActivationRecord:
    if not isinstance(tokens, list) or not tokens:
        raise InputError(f"{where}: expected a non-empty list of tokens")
    texts, activations = [], []
    for i, token in enumerate(tokens):
        if isinstance(token, str):
            texts.append(token)
            activations.append(0.0)
            continue
        is_pair = isinstance(token, list) and len(token) == 2 and isinstance(token[0], str)
        value = token[1] if is_pair else None
        if not is_pair or isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise InputError(f"{where}[{i}]: a token is a string or a [string, number] pair, got {token!r}")
        texts.append(token[0])
        activations.append(float(value))
    return ActivationRecord(tuple(texts), tuple(activations))


def _puzzle(data: Any, where: str) -> Puzzle:
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected an object with name, explanation, false_explanations, sentences")
    name = _text(data.get("name"), f"{where}.name")
    where = f"puzzle {name!r}"
    explanation = _text(data.get("explanation"), f"{where}.explanation")
    decoys = data.get("false_explanations")
    if not isinstance(decoys, list) or not decoys:
        raise InputError(f"{where}.false_explanations: expected a non-empty list of decoy explanations")
    decoys = tuple(_text(d, f"{where}.false_explanations[{i}]") for i, d in enumerate(decoys))
    if explanation in decoys:
        raise InputError(f"{where}: the true explanation is also listed as a decoy")
    sentences = data.get("sentences")
    if not isinstance(sentences, list) or not sentences:
        raise InputError(f"{where}.sentences: expected a non-empty list of sentences")
    records = tuple(_sentence(s, f"{where}.sentences[{i}]") for i, s in enumerate(sentences))
    return Puzzle(name=name, explanation=explanation, decoys=decoys, records=records)


def parse_puzzles(data: Any, source: str = "puzzles") -> list[Puzzle]:
    """Puzzles from parsed JSON: an object keyed by name (keys must match names) or a list of puzzle objects."""
    if isinstance(data, dict):
        items = list(data.items())
    elif isinstance(data, list):
        items = [(None, item) for item in data]
    else:
        raise InputError(f"{source}: expected an object mapping puzzle names to puzzles, or a list of puzzles")
    puzzles: list[Puzzle] = []
    seen: set[str] = set()
    for position, (key, item) in enumerate(items):
        puzzle = _puzzle(item, f"{source}: {key!r}" if key is not None else f"{source}[{position}]")
        if key is not None and key != puzzle.name:
            raise InputError(f"{source}: key {key!r} holds a puzzle named {puzzle.name!r}; they must be the same")
        if puzzle.name in seen:
            raise InputError(f"{source}: puzzle name {puzzle.name!r} appears twice; names must be unique")
        seen.add(puzzle.name)
        puzzles.append(puzzle)
    if not puzzles:
        raise InputError(f"{source}: the file holds no puzzles")
    return puzzles


def load_puzzles(path: str | Path | None = None) -> list[Puzzle]:
    """Load a puzzle file; None loads the project's own puzzles (core/data/puzzles.json)."""
    path = Path(path) if path is not None else PUZZLES_PATH
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InputError(f"puzzle file {path} does not exist") from exc
    except json.JSONDecodeError as exc:
        raise InputError(f"puzzle file {path} is not valid JSON: {exc}") from exc
    return parse_puzzles(data, source=str(path))


# ---------------------------------------------------------------------------------------------------------------
# Reports (pure functions)
# ---------------------------------------------------------------------------------------------------------------


def truth_pairs(puzzles: Iterable[Puzzle], explanations: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """(explanation, truth) pairs for `scoring.similarities`, from (puzzle name, explanation) pairs."""
    truths = {p.name: p.explanation for p in puzzles}
    pairs = []
    for name, text in explanations:
        if name not in truths:
            raise InputError(f"no puzzle named {name!r}; known puzzles: {', '.join(sorted(truths))}")
        pairs.append((text, truths[name]))
    return pairs


def explainer_report(rows: pd.DataFrame | Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Mean similarity of generated explanations to their puzzle's truth, per explainer and format.

    Rows carry explainer, format and similarity (see `truth_pairs`); a missing similarity is left out of n, and
    a group with none has a NaN mean (tables use pandas' missing value).
    """
    frame = pd.DataFrame(rows) if not isinstance(rows, pd.DataFrame) else rows.copy()
    columns = ["explainer", "format", "n", "mean_similarity"]
    if frame.empty:
        return pd.DataFrame({"explainer": [], "format": [], "n": pd.Series(dtype=int), "mean_similarity": []})
    missing = [c for c in ("explainer", "format", "similarity") if c not in frame.columns]
    if missing:
        raise InputError(f"rows lack the column(s) {', '.join(missing)}; need explainer, format and similarity")
    frame["similarity"] = pd.to_numeric(frame["similarity"], errors="coerce")
    grouped = frame.groupby(["explainer", "format"], sort=True)["similarity"].agg(["count", "mean"]).reset_index()
    grouped = grouped.rename(columns={"count": "n", "mean": "mean_similarity"})
    return grouped[columns]


def _defined(score: float | None) -> bool:
    return score is not None and math.isfinite(score)


def simulator_sanity(scores: Mapping[str, Mapping[str, float | None]], truths: Mapping[str, str]) -> dict[str, Any]:
    """How often the true explanation strictly out-scores every decoy (SPEC.md §4: a sane simulator does).

    `scores[puzzle][explanation]` holds the truth's and the decoys' scores; a None or NaN score never wins.
    """
    per_puzzle: dict[str, dict[str, Any]] = {}
    for name, by_text in scores.items():
        if name not in truths:
            raise InputError(f"scores name puzzle {name!r}, which has no true explanation in truths")
        truth = truths[name]
        if truth not in by_text:
            raise InputError(f"puzzle {name!r}: its true explanation {truth!r} was not scored")
        decoys = {text: score for text, score in by_text.items() if text != truth}
        if not decoys:
            raise InputError(f"puzzle {name!r}: no decoy was scored, so there is nothing to out-score")
        truth_score = by_text[truth]
        defined = {text: float(s) for text, s in decoys.items() if _defined(s)}
        best_decoy = max(defined, key=defined.__getitem__) if defined else None
        wins = _defined(truth_score) and all(float(truth_score) > s for s in defined.values())
        per_puzzle[name] = {
            "truth_score": float(truth_score) if _defined(truth_score) else None,
            "best_decoy": best_decoy,
            "best_decoy_score": defined.get(best_decoy) if best_decoy is not None else None,
            "truth_wins": bool(wins),
        }
    n = len(per_puzzle)
    truth_wins = sum(item["truth_wins"] for item in per_puzzle.values())
    return {"n": n, "truth_wins": truth_wins, "rate": truth_wins / n if n else None, "per_puzzle": per_puzzle}
