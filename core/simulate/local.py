"""The local all-at-once simulator (docs/METHOD.md §3): a transformers causal LM reads the whole prompt in one
forward pass per excerpt, batched, with the few-shot prefix's key/value cache reused across neurons and "10" handled
for tokenizers that write it as "1","0". Built by `core.simulate.get_simulator` for `hf:PATH`. The logits give every
value's probability, so no position lacks a value here.
"""

from __future__ import annotations

import copy
import inspect
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import InputError, ModelError
from core.records import ActivationRecord
from core.simulate.base import (
    DEFAULT_BATCH_SIZE,
    VALUE_STRINGS,
    SimulationExample,
    SimulationFailure,
    SimulationResult,
    expected_value,
    few_shot_pieces,
    load_few_shot,
    neuron_header,
    target_pieces,
    value_probabilities,
)


class _PieceEncoder:
    """Token ids of prompt pieces, encoded one by one so that piece boundaries are token boundaries.

    Tokenizers that prepend a space to every encoded text (SentencePiece "legacy" mode) are handled by encoding
    `"\\n" + piece` and dropping the ids of the newline.
    """

    ANCHOR = "\n"

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._cache: dict[str, tuple[int, ...]] = {}
        self._anchor = self._raw(self.ANCHOR)
        probe = "unknown"
        self.plain = self._raw(self.ANCHOR + probe)[len(self._anchor) :] == self._raw(probe)

    def _raw(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def __call__(self, text: str) -> tuple[int, ...]:
        ids = self._cache.get(text)
        if ids is None:
            if self.plain:
                ids = tuple(self._raw(text))
            else:
                anchored = self._raw(self.ANCHOR + text)
                n = len(self._anchor)
                ids = tuple(anchored[n:] if anchored[:n] == self._anchor else self._raw(text))
            if len(self._cache) < 100_000:
                self._cache[text] = ids
        return ids

    def start_ids(self) -> list[int]:
        """The special tokens the tokenizer puts before a text (e.g. BOS), if any."""
        with_special = list(self.tokenizer.encode("a", add_special_tokens=True))
        plain = self._raw("a")
        for i in range(len(with_special) - len(plain) + 1):
            if with_special[i : i + len(plain)] == plain:
                return with_special[:i]
        return []


@dataclass(frozen=True)
class ValueTokens:
    """Ids of the value strings. `ten_split`: "10" is written as the ids of "1" then "0"."""

    digits: tuple[int, ...]  # ids of "0".."9"
    ten: int | None  # id of "10" when it is a single token
    ten_split: bool


def value_tokens(encode: Callable[[str], Sequence[int]]) -> ValueTokens:
    """Find how the tokenizer writes 0..10; ModelError for tokenizers that split single digits."""
    digits = []
    for v in range(10):
        ids = list(encode(str(v)))
        if len(ids) != 1:
            raise ModelError(f"the simulator's tokenizer writes the digit {v} as {len(ids)} tokens; it cannot be used")
        digits.append(ids[0])
    ten = list(encode("10"))
    if len(ten) == 1:
        return ValueTokens(tuple(digits), ten[0], False)
    if ten == [digits[1], digits[0]]:
        return ValueTokens(tuple(digits), None, True)
    raise ModelError(f"the simulator's tokenizer writes 10 as {ten}, neither one token nor the tokens of 1 and 0")


def attention_windows(config: Any) -> dict[str, int | None]:
    """Layer type → sliding window (None: full causal attention) of a model config, for custom attention masks.

    `layer_types` (Gemma 2/3, Qwen2, …) names each layer's kind; without it a `sliding_window` applies to every
    layer (Mistral). ModelError for kinds a causal mask cannot describe (chunked, linear attention), and for
    attention implementations that take no custom mask (flash attention).
    """
    implementation = getattr(config, "_attn_implementation", None)
    if implementation not in (None, "eager", "sdpa"):
        raise ModelError(
            f"the model runs {implementation} attention, and its tokenizer writes 10 as two tokens, which needs a "
            "custom attention mask; load the model with attn_implementation='sdpa' (or 'eager')"
        )
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None) or ["sliding_attention" if window else "full_attention"]
    windows: dict[str, int | None] = {}
    for layer_type in dict.fromkeys(layer_types):
        if layer_type == "full_attention":
            windows[layer_type] = None
        elif layer_type == "sliding_attention" and window:
            windows[layer_type] = int(window)
        else:
            raise ModelError(
                f"the model has {layer_type!r} layers, and its tokenizer writes 10 as two tokens, which needs a "
                "custom attention mask this simulator can only build for full and sliding-window attention; "
                "use another simulator model"
            )
    return windows


@dataclass(frozen=True)
class EncodedExcerpt:
    """The token ids of one target excerpt and, for each record token, the index whose next token is its value."""

    ids: tuple[int, ...]
    slots: tuple[int, ...]


class LocalAllAtOnceSimulator:
    """All-at-once simulation with a local causal LM (docs/METHOD.md §3): one forward pass per excerpt, batched.

    The prompt is built from pieces encoded one by one, so every slot is exactly the last position of a
    `token<TAB>` piece: no re-tokenising and searching. With `reuse_prefix` the key/value cache of system message
    + few-shot neurons is computed once per simulator and the explanation is appended once per neuron; every batch
    of excerpts runs on a copy of it. A tokenizer that writes "10" as "1","0" gets, per slot, one extra position
    holding "1" placed right after the slot (its own position id, attending only to the prompt up to the slot), so
    P("0" | "1") comes out of the same forward pass; see `value_probabilities`. That custom attention mask keeps the
    model's sliding windows (`attention_windows`). Value logits are read in float32 whatever the model's dtype, and
    a prompt longer than the model's positions is a failed simulation with the reason, never an indexing error.
    """

    method = "all_at_once"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str = "hf:local",
        few_shot: str | Path | Sequence[SimulationExample] | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        reuse_prefix: bool = True,
    ) -> None:
        import torch

        if batch_size < 1:
            raise InputError(f"batch_size={batch_size}: use at least 1")
        self.torch = torch
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.batch_size = batch_size
        self.reuse_prefix = reuse_prefix
        self.few_shot = load_few_shot(few_shot)
        self.encode = _PieceEncoder(tokenizer)
        self.values = value_tokens(self.encode)
        self.device = next(model.parameters()).device
        self.prefix_ids: tuple[int, ...] = tuple(self.encode.start_ids()) + tuple(
            i for piece in few_shot_pieces(self.few_shot) for i in self.encode(piece.text)
        )
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad if pad is not None else 0)
        parameters = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in parameters else "past_key_values"
        text_config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.max_positions: int | None = getattr(text_config, "max_position_embeddings", None)
        self._mask_windows = attention_windows(text_config) if self.values.ten_split else {}
        self._keep_logits = "logits_to_keep" in parameters
        self._prefix_cache: Any = None
        self._neuron_cache: tuple[str, Any] | None = None
        self._lock = threading.Lock()  # the app may simulate from several sessions; the caches are per instance

    # -- encoding ---------------------------------------------------------------------------------------------

    def explanation_ids(self, explanation: str) -> tuple[int, ...]:
        return self.encode(neuron_header(len(self.few_shot) + 1, explanation))

    def encode_excerpt(self, record: ActivationRecord) -> EncodedExcerpt:
        ids: list[int] = []
        slots: list[int] = []
        pieces = target_pieces(record)
        pieces = pieces[:-2]  # after the last slot nothing can change a prediction: drop its value and <end>
        for piece in pieces:
            ids.extend(self.encode(piece.text))
            if piece.slot:
                slots.append(len(ids) - 1)
        return EncodedExcerpt(tuple(ids), tuple(slots))

    # -- simulation -------------------------------------------------------------------------------------------

    def simulate(self, explanation: str, records: Sequence[ActivationRecord]) -> SimulationResult:
        start = time.perf_counter()
        try:
            with self._lock:
                predictions = self.predict(explanation, records)
        except SimulationFailure as exc:
            return SimulationResult.failed(self.name, self.method, str(exc), time.perf_counter() - start)
        return SimulationResult(
            self.name, self.method, tuple(tuple(p) for p in predictions), seconds=time.perf_counter() - start
        )

    def predict(self, explanation: str, records: Sequence[ActivationRecord]) -> list[list[float]]:
        """Expected values per token of every record (the work behind `simulate`)."""
        encoded = [self.encode_excerpt(r) for r in records]
        explanation_ids = self.explanation_ids(explanation)
        self._check_context(len(explanation_ids), encoded)
        results: list[list[float]] = [[] for _ in records]
        order = sorted(range(len(records)), key=lambda i: len(encoded[i].ids))  # similar lengths share a batch
        with self.torch.inference_mode():
            cache = self._neuron_prefix(explanation, explanation_ids) if self.reuse_prefix else None
            for start in range(0, len(order), self.batch_size):
                batch = [i for i in order[start : start + self.batch_size] if encoded[i].slots]
                if not batch:
                    continue
                if cache is None:
                    prefix = (*self.prefix_ids, *explanation_ids)
                    sequences = [list(prefix) + list(encoded[i].ids) for i in batch]
                    slots = [[len(prefix) + s for s in encoded[i].slots] for i in batch]
                    evs = self._forward(None, 0, sequences, slots)
                else:
                    past, past_len = cache
                    sequences = [list(encoded[i].ids) for i in batch]
                    slots = [list(encoded[i].slots) for i in batch]
                    evs = self._forward(self._expand(past, len(batch)), past_len, sequences, slots)
                for i, values in zip(batch, evs, strict=True):
                    results[i] = values
        return results

    def _check_context(self, explanation_len: int, encoded: Sequence[EncodedExcerpt]) -> None:
        """SimulationFailure when a prompt needs more positions than the model has: past them, learned position
        embeddings index out of range (on CUDA a device-side assert that breaks every later call)."""
        if self.max_positions is None or not encoded:
            return
        prefix_len = len(self.prefix_ids) + explanation_len
        # The extra "1" of a split "10" sits one position after the last slot, i.e. at the excerpt's length.
        longest = max(range(len(encoded)), key=lambda i: len(encoded[i].ids))
        needed = prefix_len + len(encoded[longest].ids) + (1 if self.values.ten_split else 0)
        if needed > self.max_positions:
            raise SimulationFailure(
                f"record {longest}: the simulation prompt needs {needed} positions (few-shot prefix and explanation "
                f"{prefix_len}, excerpt {len(encoded[longest].ids)} tokens), more than the {self.max_positions} of "
                f"{self.name}; use shorter excerpts, fewer few-shot examples (few_shot='none'), or a model with a "
                "longer context"
            )

    def _run(self, input_ids: Any, cache: Any, **kwargs: Any) -> Any:
        if cache is not None:
            kwargs[self._cache_kw] = cache
        return self.model(input_ids=input_ids, use_cache=cache is not None, **kwargs)

    def _few_shot_prefix(self) -> tuple[Any, int]:
        if self._prefix_cache is None:
            from transformers import DynamicCache

            cache = DynamicCache()
            ids = self.torch.tensor([self.prefix_ids], device=self.device)
            self._run(ids, cache)
            self._prefix_cache = (cache, len(self.prefix_ids))
        return self._prefix_cache

    def _neuron_prefix(self, explanation: str, explanation_ids: Sequence[int]) -> tuple[Any, int]:
        # The last neuron's cache is kept: scoring the calibration and valid splits reuses it.
        if self._neuron_cache is not None and self._neuron_cache[0] == explanation:
            return self._neuron_cache[1]
        few_shot_cache, few_shot_len = self._few_shot_prefix()
        cache = copy.deepcopy(few_shot_cache)  # the few-shot cache is shared across neurons: never mutate it
        ids = self.torch.tensor([list(explanation_ids)], device=self.device)
        self._run(ids, cache)
        entry = (cache, few_shot_len + len(explanation_ids))
        self._neuron_cache = (explanation, entry)
        return entry

    @staticmethod
    def _expand(cache: Any, batch: int) -> Any:
        expanded = copy.deepcopy(cache)
        if batch > 1:
            expanded.batch_repeat_interleave(batch)
        return expanded

    def _forward(
        self, cache: Any, past_len: int, sequences: list[list[int]], slots: list[list[int]]
    ) -> list[list[float]]:
        torch = self.torch
        batch = len(sequences)
        length = max(len(s) for s in sequences)
        split = self.values.ten_split
        n_extra = max(len(s) for s in slots) if split else 0
        width = length + n_extra
        input_ids = torch.full((batch, width), self.pad_id, dtype=torch.long)
        for b, seq in enumerate(sequences):
            input_ids[b, : len(seq)] = torch.tensor(seq)
        kwargs: dict[str, Any] = {}
        if split:
            input_ids[:, length:] = self.values.digits[1]
            kwargs.update(self._split_layout(past_len, length, n_extra, slots))
        # Right padding needs no padding mask: causal attention keeps real positions from seeing later pads.
        keep = sorted({s for row in slots for s in row} | {length + k for k in range(n_extra)})
        column = {position: c for c, position in enumerate(keep)}
        if self._keep_logits:
            kwargs["logits_to_keep"] = torch.tensor(keep, device=self.device)
        logits = self._run(input_ids.to(self.device), cache, **kwargs).logits
        if not self._keep_logits:
            logits = logits[:, keep]
        digit_ids = list(self.values.digits) + ([self.values.ten] if self.values.ten is not None else [])
        value_logits = logits[:, :, digit_ids].float()
        value_logits = value_logits - value_logits.amax(dim=-1, keepdim=True)
        first = value_logits.exp().cpu().tolist()
        after = None
        if split:
            extra_columns = [column[length + k] for k in range(n_extra)]
            after = logits[:, extra_columns].float().log_softmax(dim=-1)[:, :, self.values.digits[0]].exp().cpu()
            after = after.tolist()
        results = []
        for b, row in enumerate(slots):
            evs = []
            for k, slot in enumerate(row):
                probs = dict(zip(VALUE_STRINGS, first[b][column[slot]], strict=False))
                ev = expected_value(value_probabilities(probs, {"0": after[b][k]} if after is not None else None))
                if ev is None:
                    raise SimulationFailure(f"no probability on any value at token {k + 1}; the logits are not finite")
                evs.append(ev)
            results.append(evs)
        return results

    def _split_layout(self, past_len: int, length: int, n_extra: int, slots: list[list[int]]) -> dict[str, Any]:
        """Position ids and a 4D additive mask for the extra "1" positions (see the class docstring)."""
        torch = self.torch
        batch, width = len(slots), length + n_extra
        positions = torch.arange(width).repeat(batch, 1) + past_len
        allowed = torch.ones(width, width, dtype=torch.bool).tril().repeat(batch, 1, 1)
        for b, row in enumerate(slots):
            for k, slot in enumerate(row):
                query = length + k
                allowed[b, query, :] = False
                allowed[b, query, : slot + 1] = True
                allowed[b, query, query] = True
                positions[b, query] = past_len + slot + 1
        allowed = torch.cat([torch.ones(batch, width, past_len, dtype=torch.bool), allowed], dim=-1)
        # A custom mask replaces the model's own, so sliding-window layers need the window applied here, by
        # position: a query sees keys whose position is within `window` of its own, as transformers does.
        distance = None
        if any(window is not None for window in self._mask_windows.values()):
            key_positions = torch.cat([torch.arange(past_len).repeat(batch, 1), positions], dim=-1)
            distance = positions[:, :, None] - key_positions[:, None, :]
        masks = {}
        for layer_type, window in self._mask_windows.items():
            visible = allowed if distance is None or window is None else allowed & (distance < window)
            masks[layer_type] = self._additive_mask(visible).to(self.device)
        # One tensor serves every layer when all layers share a pattern; otherwise the per-layer-type mapping that
        # models with mixed layers (Gemma 2/3, Qwen2 with a window) accept instead of a tensor.
        attention_mask = next(iter(masks.values())) if len(masks) == 1 else masks
        return {"attention_mask": attention_mask, "position_ids": positions.to(self.device)}

    def _additive_mask(self, visible: Any) -> Any:
        dtype = self.model.dtype
        mask = self.torch.zeros(visible.shape[0], 1, *visible.shape[1:], dtype=dtype)
        return mask.masked_fill_(~visible[:, None], self.torch.finfo(dtype).min)
