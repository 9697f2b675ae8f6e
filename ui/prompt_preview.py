"""The Explain page's preview: the exact prompt each format sends for one neuron, and its input tokens side by side."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import streamlit as st

from core import costs, pricing
from core.errors import WorkbenchError
from core.records import NeuronRecord
from ui.tables import number_column


@dataclass(frozen=True)
class PromptPreview:
    """The exact prompt one format sends for one neuron, and its input tokens (None when it cannot be counted)."""

    format: str
    text: str
    input_tokens: int | None
    tokenizer: str
    error: str | None = None


def prompt_previews(
    record: NeuronRecord, formats: Sequence[str], explainer: str, cutoff: Any, few_shot: str | None
) -> list[PromptPreview]:
    """Each format's prompt for the neuron's train records (as explain_neurons builds it) and its token count with
    the explainer's tokenizer. A prompt or count that fails is reported in its preview, not raised."""
    from core import prompts, tokens
    from core.explain import PROMPT_SPLIT

    tokenizer = tokens.tokenizer_for(explainer)
    examples = prompts.load_few_shot(few_shot)
    previews = []
    for format_name in formats:
        try:
            messages = prompts.build_messages(
                format_name, record.split(PROMPT_SPLIT), few_shot=examples, cutoff=cutoff, stats=record.stats
            )
        except WorkbenchError as exc:
            previews.append(PromptPreview(format_name, "", None, tokenizer, str(exc)))
            continue
        text = prompts.render_messages(messages)
        try:
            count, error = tokens.count_chat_tokens(messages, tokenizer), None
        except WorkbenchError as exc:
            count, error = None, f"cannot count tokens: {exc}"
        previews.append(PromptPreview(format_name, text, count, tokenizer, error))
    return previews


def preview_table(previews: Sequence[PromptPreview]) -> pd.DataFrame:
    """The input tokens of each format's prompt side by side, with Original ÷ format (docs/METHOD.md §5), so the cost of
    the formats compares at a glance."""
    from core.tokens import input_tokens_column

    counts = {p.format: p.input_tokens for p in previews}
    original = counts.get("original")
    # Counted offline: cl100k_base for openai: explainers, the model's own tokenizer for hf: ones.
    column = input_tokens_column(previews[0].tokenizer) if previews else "input_tokens_cl100k"
    rows = [
        {
            "format": p.format,
            column: p.input_tokens,
            "original_over_format": original / p.input_tokens if original and p.input_tokens else None,
            "problem": p.error or "",
        }
        for p in previews
    ]
    frame = pd.DataFrame(rows, columns=["format", column, "original_over_format", "problem"])
    frame["original_over_format"] = pd.to_numeric(frame["original_over_format"], errors="coerce")
    return frame


PREVIEW_TABLE_CONFIG = {
    "input_tokens_cl100k": number_column("%d", "counted offline with cl100k_base, as `python -m core prompt` does"),
    "input_tokens_local": number_column("%d", "counted offline with the explainer's Hugging Face tokenizer"),
    "original_over_format": number_column("%.2f×", "original's input tokens ÷ this format's"),
    "problem": st.column_config.TextColumn(width="large"),
}


def run_estimate(
    record: NeuronRecord,
    neurons: int,
    previews: Sequence[PromptPreview],
    explainer: str,
    settings: Any,
    scorer: tuple[str, str, str | None] | None,
) -> tuple[costs.RunEstimate | None, str]:
    """What the run would cost, from the preview's counts and (with a scorer) the scoring tokens of a typical
    explanation of this neuron; and a note on what is left out. None when a prompt could not be counted."""
    from core.scorers.base import MissingExcerpts

    prices = pricing.load_prices()
    notes = []
    scoring = None
    scorer_model = None
    if scorer is not None:
        name, scorer_model, method = scorer
        if name == "simulation" and method is None:
            from core.simulate import DEFAULT_METHODS, parse_simulator_spec

            method = DEFAULT_METHODS[parse_simulator_spec(scorer_model)[0]]
        try:
            scoring = costs.scoring_tokens(record, name, method=method)
        except MissingExcerpts as exc:
            notes.append(f"Scoring is left out: {exc}.")
    if any(p.input_tokens is None for p in previews):
        return None, ""
    estimate = costs.estimate_run(
        neurons=neurons,
        prompt_tokens=[p.input_tokens for p in previews],
        samples=settings.samples,
        max_tokens=settings.sampling.max_tokens,
        explainer=explainer,
        scoring=scoring,
        scorer_model=scorer_model,
        prices=prices,
    )
    if prices.source is None:
        notes.append("No price list: copy prices.example.toml to prices.toml to see dollars.")
    elif estimate.cost_per_neuron is None:
        notes.append(f"A model here has no price in {prices.source}.")
    return estimate, " ".join(notes)


ESTIMATE_TABLE_CONFIG = {
    "input_tokens_per_neuron": number_column("%d", "prompt tokens per neuron (scoring: cl100k, counted offline)"),
    "output_tokens_per_neuron": number_column("%d", "explanations: their max_tokens bound; scoring: its answers"),
    "usd_per_neuron": number_column("$%.4f", "from the price list (prices.toml); empty: no price"),
    "usd_in_all": number_column("$%.2f", "per neuron × the neurons chosen"),
}
