"""Neuron puzzles: synthetic neurons with a known ground-truth explanation and decoys (docs/METHOD.md §4).

A puzzle file maps names to `{"name", "explanation", "false_explanations", "sentences"}`; a sentence is a list of
tokens (GPT-2 style, leading spaces kept) where a token is a string (activation 0) or a `[string, value]` pair.
Ours are in core/data/puzzles.json; files in the same format (e.g. OpenAI's published puzzles) load by path.
`run_puzzles` explains the puzzles, stores the explanations and their similarity to the truth, and runs the
simulator sanity check (the `puzzles` command).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from core import db as dbmod
from core import explain, prompts, similarity
from core.errors import InputError, WorkbenchError
from core.explain import ExplainOptions
from core.pipeline import frame_rows, progress_bar, resolve_simulator, simulate_and_score
from core.records import ActivationRecord, NeuronId, NeuronRecord, NeuronStats
from core.simulate import Simulator, SimulatorOptions
from core.values import finite_or_none, to_jsonable

PUZZLES_PATH = Path(__file__).resolve().parent / "data" / "puzzles.json"
PUZZLE_REFERENCE_KIND = "puzzle"
PUZZLE_SOURCE = dbmod.PUZZLE_SOURCE
PUZZLE_EXPLAINER_NONE = "none"


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
    """(explanation, truth) pairs for `similarity.similarities`, from (puzzle name, explanation) pairs."""
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


def simulator_sanity(scores: Mapping[str, Mapping[str, float | None]], truths: Mapping[str, str]) -> dict[str, Any]:
    """How often the true explanation strictly out-scores every decoy (docs/METHOD.md §4: a sane simulator does).

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
        truth_score = finite_or_none(by_text[truth])
        defined = {text: score for text, s in decoys.items() if (score := finite_or_none(s)) is not None}
        best_decoy = max(defined, key=defined.__getitem__) if defined else None
        wins = truth_score is not None and all(truth_score > s for s in defined.values())
        per_puzzle[name] = {
            "truth_score": truth_score,
            "best_decoy": best_decoy,
            "best_decoy_score": defined.get(best_decoy) if best_decoy is not None else None,
            "truth_wins": bool(wins),
        }
    n = len(per_puzzle)
    truth_wins = sum(item["truth_wins"] for item in per_puzzle.values())
    return {"n": n, "truth_wins": truth_wins, "rate": truth_wins / n if n else None, "per_puzzle": per_puzzle}


# ---------------------------------------------------------------------------------------------------------------
# Running puzzles: explain, store, score (docs/METHOD.md §4)
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PuzzleReport:
    """Explainer similarity to each puzzle's truth, per explainer and format, and the simulator sanity check."""

    explainers: pd.DataFrame
    sanity: dict[str, Any]
    simulator: str
    method: str

    def to_json(self) -> dict[str, Any]:
        return to_jsonable(
            {
                "explainers": frame_rows(self.explainers),
                "simulator": self.simulator,
                "method": self.method,
                "sanity": self.sanity,
            }
        )


def puzzle_model_name(path: str | Path | None) -> str:
    """The model name puzzle explanations are stored under: `puzzles:bundled` or `puzzles:<file stem>`."""
    return "puzzles:bundled" if path is None else f"puzzles:{Path(path).stem}"


def _puzzle_neuron(model: str, index: int, records: Sequence[ActivationRecord]) -> NeuronRecord:
    """A puzzle as a stored neuron, so pages can show its sentences: all sentences as top records, by max."""
    ordered = tuple(sorted(records, key=lambda r: r.max_activation, reverse=True))
    values = [a for r in records for a in r.activations]
    mean = sum(values) / len(values)
    variance = sum((a - mean) ** 2 for a in values) / len(values)
    stats = NeuronStats(mean=mean, variance=variance, max=max(values))
    return NeuronRecord(model=model, neuron=NeuronId(0, index), top=ordered, random=(), stats=stats)


def explain_puzzles(
    db: Any,
    puzzles: Sequence[Puzzle],
    formats: Sequence[str],
    explainer: str,
    *,
    model: str,
    options: ExplainOptions | None = None,
) -> list[dict[str, Any]]:
    """Explain every puzzle under every format from all its sentences; store the explanations (resumable).

    Puzzles have no corpus statistics, so the natural formats' cutoff defaults to `relative` 0.5.
    """
    options = options or ExplainOptions()
    sampling, samples = options.sampling, options.samples
    cutoff = options.cutoff or prompts.Cutoff("relative", 0.5)
    few_shot = options.few_shot
    examples = prompts.load_few_shot(few_shot) if not isinstance(few_shot, tuple | list) else tuple(few_shot)
    backend = options.backend(explainer, db)
    dbmod.write_neurons(
        db, model, [_puzzle_neuron(model, i, p.records) for i, p in enumerate(puzzles)], source=PUZZLE_SOURCE
    )
    jobs = []
    for index, puzzle in enumerate(puzzles):
        for format_name in formats:
            messages = prompts.build_messages(format_name, puzzle.records, few_shot=examples, cutoff=cutoff)
            params = {"sampling": sampling.to_json(), "cutoff": cutoff.to_json(), "puzzle": puzzle.name}
            for sample in range(samples):
                key = explain.job_key(model, NeuronId(0, index), format_name, backend.name, params, sample)
                jobs.append((index, format_name, sample, key, messages, params))
    statuses = dbmod.explanation_statuses(db, [job[3] for job in jobs])
    todo = [job for job in jobs if statuses.get(job[3]) != "ok"]
    for sample in sorted({job[2] for job in todo}):
        batch = [job for job in todo if job[2] == sample]
        results = backend.complete(
            [job[4] for job in batch], explain.sample_sampling(sampling, sample), samples=[sample] * len(batch)
        )
        for (index, format_name, _, key, messages, params), result in zip(batch, results, strict=True):
            row: dict[str, Any] = {
                "model": model,
                "layer": 0,
                "neuron": index,
                "format": format_name,
                "explainer": backend.name,
                "source": PUZZLE_SOURCE,
                "params": params,
                "prompt": messages,
                "cutoff_mode": cutoff.mode,
                "cutoff": cutoff.value,
                "sample": sample,
                "job_key": key,
            }
            if isinstance(result, WorkbenchError):
                dbmod.insert_explanation(db, **row, status="failed", error=str(result))
                continue
            try:
                text = prompts.clean_explanation(result.text)
            except WorkbenchError as exc:
                dbmod.insert_explanation(db, **row, completion=result.text, status="failed", error=str(exc))
                continue
            dbmod.insert_explanation(
                db,
                **row,
                completion=result.text,
                explanation=text,
                input_tokens=result.input_tokens,
                output_tokens=result.output_tokens,
                latency_s=result.latency_s,
                status="ok",
            )
    stored = {row["job_key"]: row for row in dbmod.explanations_by_job(db, [job[3] for job in jobs])}
    rows = []
    for index, _, sample, key, _, _ in jobs:
        found = stored.get(key)
        if found is not None and found["status"] == "ok":
            rows.append({**found, "puzzle": puzzles[index].name, "truth": puzzles[index].explanation, "sample": sample})
    return rows


def run_puzzles(
    db: Any,
    explainer: str | None,
    formats: Sequence[str],
    simulator: str | Simulator | None,
    *,
    method: str | None = None,
    puzzles_path: str | Path | None = None,
    embedder: str = similarity.DEFAULT_EMBEDDER,
    explain_options: ExplainOptions | None = None,
    simulator_options: SimulatorOptions | None = None,
    progress: bool = False,
) -> PuzzleReport:
    """Per explainer and format, the similarity of its explanations to the puzzles' truths; per simulator, how often
    the truth out-scores every decoy (docs/METHOD.md §4). `explainer` None (or "none") runs only the simulator check."""

    puzzles = load_puzzles(puzzles_path)
    model = puzzle_model_name(puzzles_path)
    explainers = pd.DataFrame(columns=["explainer", "format", "n", "mean_similarity"])
    if explainer is not None and explainer.strip().lower() != PUZZLE_EXPLAINER_NONE:
        if not formats:
            raise InputError("give at least one format for the explainer (--formats original,summary)")
        rows = explain_puzzles(db, puzzles, formats, explainer, model=model, options=explain_options)
        stored = dbmod.stored_similarities(db, [r["id"] for r in rows], embedder)
        pending = [r for r in rows if (r["id"], r["truth"]) not in stored]
        if pending:
            cosines = similarity.similarities([(r["explanation"], r["truth"]) for r in pending], embedder)
            for row, cosine in zip(pending, cosines, strict=True):
                dbmod.save_similarity(db, row["id"], PUZZLE_REFERENCE_KIND, row["truth"], embedder, cosine)
                stored[(row["id"], row["truth"])] = cosine
        report_rows = [
            {"explainer": r["explainer"], "format": r["format"], "similarity": stored[(r["id"], r["truth"])]}
            for r in rows
        ]
        explainers = explainer_report(report_rows)
    if simulator is None:
        return PuzzleReport(explainers, {}, "", "")
    sim = resolve_simulator(simulator, method, simulator_options)
    scores: dict[str, dict[str, float | None]] = {}
    failures: dict[str, dict[str, str]] = {}
    bar = progress_bar(sum(len(p.candidates) for p in puzzles), f"puzzles with {sim.name}", progress)
    try:
        for puzzle in puzzles:
            scores[puzzle.name] = {}
            for text in puzzle.candidates:
                outcome = simulate_and_score(sim, text, puzzle.records)
                scores[puzzle.name][text] = outcome.scores.score if outcome.scores else None
                if not outcome.result.ok:
                    failures.setdefault(puzzle.name, {})[text] = outcome.result.error or "failed"
                bar.update(1)
    finally:
        bar.close()
    sanity = simulator_sanity(scores, {p.name: p.explanation for p in puzzles})
    sanity["failures"] = failures
    return PuzzleReport(explainers, sanity, sim.name, sim.method)
