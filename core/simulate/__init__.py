"""Simulators: predict a neuron's activation on every token from an explanation (docs/METHOD.md §3).

Every simulator has a `name` (`hf:PATH`, `openai:MODEL`), a `method` and `simulate(explanation, records)`, which
returns one expected value 0..10 per token of every record, or a failed result with the reason. A parse failure or
a misaligned answer is always a failure, never a row of zeros. A position whose top logprobs hold no value 0..10 is
read as an expected value of 0, as OpenAI's simulator does, and counted (`SimulationResult.no_value_count`); the
`on_no_value="fail"` option of the API simulators makes it a failure instead.

Methods (the `SIMULATORS` registry below; `get_simulator` builds them with a `SimulatorOptions`):
- `all_at_once` (local transformers model, core/simulate/local.py), the paper's method: one text prompt whose
  target lines read `token<TAB>unknown`; one forward pass per excerpt gives, at every position right after a
  `<TAB>`, the next-token distribution over "0".."10".
- `completions_echo` (an OpenAI-compatible /completions server that echoes prompt logprobs, e.g. vLLM;
  core/simulate/api.py): the same all-at-once prompt, read from the echoed `top_logprobs`.
- `chat_logprobs` / `chat_parse` (chat-only APIs; core/simulate/api.py): fallbacks that are not the paper's method;
  the model writes the `token<TAB>n` lines itself; we read `top_logprobs` at each number, or parse the numbers.
  `chat_logprobs` is the default for `openai:` simulators, so every score table names the method (`method_note`).

What they share (options, results, expected values, the prompt) is in core/simulate/base.py. Implementations are
imported when one is built, so importing this package loads no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.errors import InputError
from core.simulate.base import (
    BUNDLED_FEW_SHOT,
    DEFAULT_BATCH_SIZE,
    DEFAULT_NO_VALUE,
    DEFAULT_TOP_LOGPROBS,
    END,
    MAX_VALUE,
    NO_VALUE_POLICIES,
    START,
    SYSTEM_MESSAGE,
    UNKNOWN,
    VALUE_STRINGS,
    Piece,
    SimulationExample,
    SimulationFailure,
    SimulationResult,
    Simulator,
    SimulatorOptions,
    check_alignment,
    completion_prompt,
    escape_token,
    expected_value,
    explanation_text,
    few_shot_from_json,
    few_shot_pieces,
    hidden_count,
    load_few_shot,
    neuron_header,
    target_pieces,
    value_probabilities,
)

# ---------------------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimulatorKind:
    """One simulation method: the backend prefix it runs on and what it needs."""

    method: str
    backend: str
    description: str
    all_at_once: bool  # the paper's method: one prompt, EVs read after every token<TAB> (docs/METHOD.md §3)


SIMULATORS: dict[str, SimulatorKind] = {
    kind.method: kind
    for kind in (
        SimulatorKind("all_at_once", "hf", "local transformers model: logits after every token<TAB> in one pass", True),
        SimulatorKind("completions_echo", "openai", "/completions with echo + logprobs (vLLM): the same prompt", True),
        SimulatorKind("chat_logprobs", "openai", "chat: the model writes token<TAB>n; read top_logprobs at n", False),
        SimulatorKind("chat_parse", "openai", "chat without logprobs: parse the integers the model writes", False),
    )
}
DEFAULT_METHODS = {"hf": "all_at_once", "openai": "chat_logprobs"}
# Scores imported from a published file (`python -m core import-scores`), not computed here.
IMPORTED_METHOD = "imported"
# The metrics of the scorers other than simulation (core.scorers; docs/METHOD.md §10), as score headers name them.
SCORER_METRICS = {
    "balanced_accuracy": "a detection or fuzzing scorer's balanced accuracy (0.5 = chance), not a correlation",
    "auroc": "an embedding scorer's AUROC of explanation–excerpt cosines (0.5 = chance), not a correlation",
}


def method_note(method: str | None) -> str:
    """The method as every score table header names it, saying whether it is the paper's (docs/METHOD.md §3)."""
    if method == IMPORTED_METHOD:
        return "imported: published scores, not computed here"
    if str(method) in SCORER_METRICS:
        return f"{method}: {SCORER_METRICS[str(method)]}"
    kind = SIMULATORS.get(str(method))
    if kind is None:
        return f"{method}: unknown method"
    if kind.all_at_once:
        return f"{method}: the paper's all-at-once method"
    return f"{method}: a chat fallback, not the paper's all-at-once method; not comparable with the paper's scores"


def parse_simulator_spec(spec: str) -> tuple[str, str]:
    """`hf:PATH` or `openai:MODEL` → (backend, model)."""
    backend, sep, model = (spec or "").strip().partition(":")
    if not sep or backend not in DEFAULT_METHODS or not model.strip():
        raise InputError(f"simulator {spec!r} is not of the form hf:PATH or openai:MODEL")
    return backend, model.strip()


def get_simulator(spec: str, method: str | None = None, options: SimulatorOptions | None = None) -> Simulator:
    """The simulator for `hf:PATH` (method all_at_once) or `openai:MODEL` (completions_echo, chat_logprobs
    (default) or chat_parse), run as `options` say (None: the defaults); each reads the part of its backend."""
    backend, model = parse_simulator_spec(spec)
    method = method or DEFAULT_METHODS[backend]
    kind = SIMULATORS.get(method)
    if kind is None:
        raise InputError(f"unknown simulation method {method!r}; choose one of {', '.join(SIMULATORS)}")
    if kind.backend != backend:
        allowed = [m for m, k in SIMULATORS.items() if k.backend == backend]
        raise InputError(f"method {method!r} does not run on {backend}: simulators; use {', '.join(allowed)}")
    options = options or SimulatorOptions()
    if backend == "hf":
        # Imported here, where one is built: they bring torch and transformers.
        from core.llm.hf import load_hf_causal_lm
        from core.simulate.local import LocalAllAtOnceSimulator

        model_obj, tokenizer = load_hf_causal_lm(model, options.local.device, options.local.dtype)
        return LocalAllAtOnceSimulator(
            model_obj,
            tokenizer,
            name=f"hf:{model}",
            few_shot=options.few_shot,
            batch_size=options.local.batch_size or DEFAULT_BATCH_SIZE,
            reuse_prefix=options.reuse_prefix,
        )
    from core.simulate.api import ChatSimulator, CompletionsEchoSimulator

    if method == "completions_echo":
        return CompletionsEchoSimulator(model, options)
    return ChatSimulator(model, options, method=method)


__all__ = [
    "BUNDLED_FEW_SHOT",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_METHODS",
    "DEFAULT_NO_VALUE",
    "DEFAULT_TOP_LOGPROBS",
    "END",
    "IMPORTED_METHOD",
    "MAX_VALUE",
    "NO_VALUE_POLICIES",
    "SCORER_METRICS",
    "SIMULATORS",
    "START",
    "SYSTEM_MESSAGE",
    "UNKNOWN",
    "VALUE_STRINGS",
    "Piece",
    "SimulationExample",
    "SimulationFailure",
    "SimulationResult",
    "Simulator",
    "SimulatorKind",
    "SimulatorOptions",
    "check_alignment",
    "completion_prompt",
    "escape_token",
    "expected_value",
    "explanation_text",
    "few_shot_from_json",
    "few_shot_pieces",
    "get_simulator",
    "hidden_count",
    "load_few_shot",
    "method_note",
    "neuron_header",
    "parse_simulator_spec",
    "target_pieces",
    "value_probabilities",
]
