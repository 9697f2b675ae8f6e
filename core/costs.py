"""What explaining and scoring a neuron costs: token estimates before a run, recorded tokens after it, and money
where the price list (core/pricing.py) knows the model.

Estimates are counted offline with cl100k_base and OpenAI's chat accounting (core.tokens), from exactly the prompts
the explainer, simulators and scorers send (docs/METHOD.md §5, §10); the output of an explanation is bounded by its
`max_tokens`. Recorded tokens are what a run stored: server usage where the API reported it, else an offline count.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from core import tokens
from core.errors import InputError
from core.pricing import Prices
from core.records import NeuronRecord
from core.scorers.base import ScorerOptions

# A typical one-sentence explanation: what scoring estimates simulate before any explanation exists.
TYPICAL_EXPLANATION = 'the word "time" and other words about time'


@dataclass(frozen=True)
class Tokens:
    """Input and output tokens of some requests."""

    input: int
    output: int

    @property
    def total(self) -> int:
        return self.input + self.output

    def __add__(self, other: Tokens) -> Tokens:
        return Tokens(self.input + other.input, self.output + other.output)


def _chat_echo_output(record: Any) -> str:
    # The chat simulator writes `<start>`, every token with a tab and its value, then `<end>`.
    return "<start>\n" + "".join(f"{token}\t0\n" for token in record.tokens) + "<end>"


def simulation_tokens(record: NeuronRecord, method: str, explanation: str = TYPICAL_EXPLANATION) -> Tokens:
    """cl100k tokens of simulating one explanation of a neuron on its valid split with `method`: the chat methods
    send one conversation per excerpt and get every token back with a value; the all-at-once prompt (completions
    echo, or a local model) is read, not written."""
    from core.simulate import SIMULATORS, load_few_shot

    if method not in SIMULATORS:
        raise InputError(f"unknown simulation method {method!r}; choose one of {', '.join(SIMULATORS)}")
    few_shot = load_few_shot(None)
    valid = record.split("valid")
    if method.startswith("chat"):
        from core.simulate.api import chat_messages

        return Tokens(
            sum(tokens.count_chat_tokens(chat_messages(explanation, r, few_shot), tokens.CL100K) for r in valid),
            sum(tokens.count_text_tokens(_chat_echo_output(r), tokens.CL100K) for r in valid),
        )
    from core.simulate import completion_prompt

    prompts = (completion_prompt(explanation, r, few_shot)[0] for r in valid)
    return Tokens(sum(tokens.count_text_tokens(text, tokens.CL100K) for text in prompts), 0)


def classifier_tokens(
    kind: str, record: NeuronRecord, options: ScorerOptions | None = None, explanation: str = TYPICAL_EXPLANATION
) -> Tokens:
    """cl100k tokens of scoring one explanation by detection or fuzzing: every call's chat, and answers `[1, 0, …]`
    (the closing token counted once per call)."""
    from core.scorers.classifier import answer_text, classifier_calls, load_prompt

    options = options or ScorerOptions()
    calls = classifier_calls(kind, load_prompt(kind), options, explanation, record)
    return Tokens(
        sum(tokens.count_chat_tokens(messages, tokens.CL100K) for _, messages in calls),
        sum(tokens.count_text_tokens(answer_text([1] * len(indices)), tokens.CL100K) + 1 for indices, _ in calls),
    )


def scoring_tokens(
    record: NeuronRecord,
    scorer: str,
    *,
    method: str | None = None,
    options: ScorerOptions | None = None,
    explanation: str = TYPICAL_EXPLANATION,
) -> Tokens:
    """cl100k tokens of scoring one explanation of a neuron with `scorer` (simulation by `method`, detection,
    fuzzing, embedding). Embedding asks no LLM: 0. Raises MissingExcerpts when the neuron lacks a scorer's
    excerpts (a layer collected before they existed)."""
    if scorer == "simulation":
        from core.simulate import DEFAULT_METHODS

        return simulation_tokens(record, method or DEFAULT_METHODS["openai"], explanation)
    if scorer in ("detection", "fuzzing"):
        return classifier_tokens(scorer, record, options, explanation)
    if scorer == "embedding":
        return Tokens(0, 0)
    raise InputError(f"unknown scorer {scorer!r}; choose simulation, detection, fuzzing or embedding")


@dataclass(frozen=True)
class RunEstimate:
    """What a run of explanations (and their scoring) would cost, per neuron and in all, before it starts."""

    neurons: int
    explanations_per_neuron: int  # formats × samples
    explain_input: int  # per neuron, all formats and samples
    explain_output_max: int  # per neuron: max_tokens per explanation
    scoring: Tokens | None  # per neuron, all its explanations; None: no scorer chosen
    explainer: str
    scorer_model: str | None
    explain_cost: float | None  # dollars per neuron, output at its bound; None: no price
    scoring_cost: float | None

    @property
    def tokens_per_neuron(self) -> int:
        return self.explain_input + self.explain_output_max + (self.scoring.total if self.scoring else 0)

    @property
    def cost_per_neuron(self) -> float | None:
        parts = [self.explain_cost] + ([self.scoring_cost] if self.scoring and self.scoring.total else [])
        return None if any(part is None for part in parts) else sum(part for part in parts if part is not None)

    def rows(self) -> list[dict[str, Any]]:
        """A table: one row per part (explaining, scoring), then the total; tokens and dollars per neuron and for
        every neuron of the run."""
        parts: list[tuple[str, str, int, int, float | None]] = [
            ("explain", self.explainer, self.explain_input, self.explain_output_max, self.explain_cost)
        ]
        if self.scoring is not None:
            parts.append(("score", self.scorer_model or "", self.scoring.input, self.scoring.output, self.scoring_cost))
        total_in = sum(tokens_in for _, _, tokens_in, _, _ in parts)
        total_out = sum(tokens_out for _, _, _, tokens_out, _ in parts)
        parts.append(("total", "", total_in, total_out, self.cost_per_neuron))
        rows = [
            {
                "part": part,
                "model": model,
                "input_tokens_per_neuron": tokens_in,
                "output_tokens_per_neuron": tokens_out,
                "usd_per_neuron": cost,
                "usd_in_all": None if cost is None else cost * self.neurons,
            }
            for part, model, tokens_in, tokens_out, cost in parts
        ]
        return rows


def estimate_run(
    *,
    neurons: int,
    prompt_tokens: Sequence[int | None],
    samples: int,
    max_tokens: int,
    explainer: str,
    scoring: Tokens | None = None,
    scorer_model: str | None = None,
    prices: Prices | None = None,
) -> RunEstimate:
    """The estimate for `neurons` neurons, from one neuron's prompt tokens per format (the preview's counts; a format
    whose count failed counts as unknown, so no total is claimed), `samples` per format, and the scoring tokens of
    one explanation."""
    if any(count is None for count in prompt_tokens):
        raise InputError("a prompt's tokens could not be counted, so the run cannot be estimated")
    per_format = [int(count) for count in prompt_tokens if count is not None]
    explanations = len(per_format) * samples
    explain_input = sum(per_format) * samples
    explain_output = explanations * max_tokens
    scoring_total = None if scoring is None else Tokens(scoring.input * explanations, scoring.output * explanations)
    prices = prices or Prices()
    explain_cost = prices.cost(explainer, explain_input, explain_output)
    scoring_cost = None
    if scoring_total is not None:
        scoring_cost = (
            0.0 if scoring_total.total == 0 else prices.cost(scorer_model, scoring_total.input, scoring_total.output)
        )
    return RunEstimate(
        neurons, explanations, explain_input, explain_output, scoring_total, explainer, scorer_model, explain_cost,
        scoring_cost,
    )  # fmt: skip


def scoring_per_explanation(rows: Iterable[Mapping[str, Any]]) -> dict[int, Tokens]:
    """Recorded scorer tokens per explanation id, from `core.db.scores.scorer_score_rows` rows (summed over a score's
    rows; rows without counts are left out)."""
    found: dict[int, Tokens] = {}
    for row in rows:
        tokens_in, tokens_out = row.get("scorer_input_tokens"), row.get("scorer_output_tokens")
        if tokens_in is None or tokens_out is None:
            continue
        key = int(row["explanation_id"])
        found[key] = found.get(key, Tokens(0, 0)) + Tokens(int(tokens_in), int(tokens_out))
    return found


def explanation_costs(
    explanation_rows: Iterable[Mapping[str, Any]],
    scoring: Mapping[int, Tokens],
    scores: Mapping[int, float | None] | None = None,
    prices: Prices | None = None,
    scorer_model: str | None = None,
) -> list[dict[str, Any]]:
    """Per ok explanation: its format and neuron, the scorer's recorded tokens, explain + scoring tokens, dollars
    where every model involved has a price, and its score per 1k tokens. Explain tokens are the row's cl100k count
    where present (core.explain.with_cl100k_counts), else its own; an explanation without recorded scoring tokens
    has only its own columns."""
    prices = prices or Prices()
    scores = scores or {}
    records = []
    for row in explanation_rows:
        if row.get("status", "ok") != "ok":
            continue
        explain_in = row.get("input_tokens_cl100k", row.get("input_tokens"))
        explain_out = row.get("output_tokens")
        scored = scoring.get(int(row["id"])) if row.get("id") is not None else None
        explain_cost = prices.cost(row.get("explainer"), explain_in, explain_out)
        scoring_cost = None
        if scored is not None:
            scoring_cost = 0.0 if scored.total == 0 else prices.cost(scorer_model, scored.input, scored.output)
        total = None
        if explain_in is not None and explain_out is not None and scored is not None:
            total = explain_in + explain_out + scored.total
        score = scores.get(int(row["id"])) if row.get("id") is not None else None
        per_1k = 1000 * score / total if score is not None and total and math.isfinite(score) else None
        usd = None if explain_cost is None or scoring_cost is None else explain_cost + scoring_cost
        records.append(
            {
                "format": row["format"],
                "neuron": row.get("neuron"),
                "scorer_input_tokens": None if scored is None else scored.input,
                "scorer_output_tokens": None if scored is None else scored.output,
                "total_tokens_with_scoring": total,
                "usd": usd,
                "score_per_1k_tokens": per_1k,
            }
        )
    return records


COST_COLUMNS = [
    "scorer_input_tokens",
    "scorer_output_tokens",
    "total_tokens_with_scoring",
    "usd",
    "score_per_1k_tokens",
]


def add_costs(
    explanation_rows: Iterable[Mapping[str, Any]],
    scoring: Mapping[int, Tokens],
    scores: Mapping[int, float | None] | None = None,
    prices: Prices | None = None,
    scorer_model: str | None = None,
) -> pd.DataFrame:
    """Per format, the means of explanation_costs: scorer input and output tokens per explanation, explain + scoring
    tokens, dollars, and score per 1k tokens."""
    records = explanation_costs(explanation_rows, scoring, scores, prices, scorer_model)
    frame = pd.DataFrame(records, columns=["format", *COST_COLUMNS])
    frame[COST_COLUMNS] = frame[COST_COLUMNS].astype(float)
    table = frame.groupby("format")[COST_COLUMNS].mean()
    table.columns = [f"mean_{column}" for column in COST_COLUMNS]
    table.index.name = "format"
    return table


@dataclass(frozen=True)
class CostReport:
    """What a scoring run's explanations cost: the per-format table, and in all per neuron when every explanation
    has a price (None otherwise)."""

    table: pd.DataFrame
    neurons: int
    usd_in_all: float | None

    @property
    def usd_per_neuron(self) -> float | None:
        return None if self.usd_in_all is None or not self.neurons else self.usd_in_all / self.neurons


def scorer_model(simulator: str) -> str:
    """The model a stored score's `simulator` names, as the price list knows it: a simulator is its model
    (`openai:M`); detection, fuzzing and embedding scores store `<scorer>:<model>` (core.scorers.stored_name)."""
    from core.scorers import SCORERS

    prefix, _, rest = simulator.partition(":")
    return rest if prefix in SCORERS and prefix != "simulation" else simulator


def recorded_cost_table(
    db: Any,
    model: str,
    explanation_ids: Iterable[int],
    simulator: str,
    method: str,
    *,
    split: str = "valid",
    calibrated: bool = False,
    prices: Prices | None = None,
) -> CostReport:
    """What explaining these explanations and scoring them under `simulator` · `method` (and split and calibration,
    for simulation) cost, as recorded, priced by `prices`: per format, and in all per neuron."""
    from core import db as dbmod

    wanted = {int(i) for i in explanation_ids}
    rows = [r for r in dbmod.score_rows(db, model) if r["explanation_id"] in wanted]
    mine = [
        r
        for r in rows
        if r["simulator"] == simulator
        and r["method"] == method
        and r["split"] == split
        and bool(r["calibrated"]) == calibrated
    ]
    explanations = list({r["explanation_id"]: {**r, "id": r["explanation_id"]} for r in rows}.values())
    scores = {int(r["explanation_id"]): r["score"] for r in mine}
    scoring, model_name = scoring_per_explanation(mine), scorer_model(simulator)
    each = explanation_costs(explanations, scoring, scores, prices, model_name)
    priced = [record["usd"] for record in each]
    usd = None if not priced or any(value is None for value in priced) else float(sum(priced))
    table = add_costs(explanations, scoring, scores, prices, model_name)
    return CostReport(table, len({record["neuron"] for record in each}), usd)
