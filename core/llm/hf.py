"""The local transformers backend, `hf:ID_OR_PATH` (registered in core.llm.BACKENDS): a chat model run with
transformers, batched sampling, token counts from its own tokenizer. `load_hf_causal_lm` is shared with the local
simulator (core/simulate/local.py).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core import config
from core.errors import InputError, LLMError, ModelError
from core.llm.base import LOCAL_DTYPES, Backend, Completion, LocalModelOptions, Messages, Sampling
from core.models import local_files_only

log = logging.getLogger(__name__)

DEFAULT_HF_BATCH_SIZE = 8
_DTYPES = tuple(dtype for dtype in LOCAL_DTYPES if dtype != "auto")
_generate_lock = threading.Lock()


@functools.lru_cache(maxsize=2)
def load_hf_causal_lm(path_or_id: str, device: str | None = None, dtype: str | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) of a causal LM from a local folder or hub id, in eval mode, left padding; cached."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = config.resolve_device(device)
    if dtype not in (None, "auto", *_DTYPES):
        raise InputError(f"unknown dtype {dtype!r}; choose one of auto, {', '.join(_DTYPES)}")
    torch_dtype = getattr(torch, dtype) if dtype in _DTYPES else torch.float32 if device == "cpu" else "auto"
    looks_like_path = path_or_id.startswith((".", "/", "~")) or "\\" in path_or_id or path_or_id.count("/") > 1
    if looks_like_path and not Path(path_or_id).expanduser().exists():
        raise ModelError(
            f"hf model folder {path_or_id} does not exist; give a folder written by save_pretrained, "
            "or a hub id (org/name) that is already downloaded"
        )
    local_only = local_files_only(path_or_id)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path_or_id, local_files_only=local_only)
        model = AutoModelForCausalLM.from_pretrained(path_or_id, dtype=torch_dtype, local_files_only=local_only)
    except (OSError, ValueError) as exc:
        hint = "" if Path(path_or_id).exists() else " (not a local folder; offline, a hub id cannot be downloaded)"
        raise ModelError(f"cannot load hf model {path_or_id!r}{hint}: {str(exc).splitlines()[0]}") from exc
    tokenizer.padding_side = "left"  # generation continues from the right edge of every row
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    # transformers declares .to with functools.wraps, whose stub mypy reads as unbound (self first): a stub issue.
    model.to(device).eval()  # type: ignore[arg-type]
    return model, tokenizer


class HFBackend(Backend):
    """A local chat model run with transformers: batched sampling, token counts from its own tokenizer."""

    kind = "hf"
    spec = "hf:ID_OR_PATH"

    def __init__(
        self, model: str, options: LocalModelOptions = LocalModelOptions(), *, db: Any = None, use_cache: bool = True
    ) -> None:
        super().__init__(model, db=db, use_cache=use_cache)
        self.device = options.device or config.default_device()
        self.dtype = options.dtype
        self.batch_size = options.batch_size or DEFAULT_HF_BATCH_SIZE
        self._model, self._tokenizer = load_hf_causal_lm(self.model, self.device, options.dtype)
        # Explaining needs a chat model; simulating (core.simulate.local) works on base models too.
        if not getattr(self._tokenizer, "chat_template", None):
            raise ModelError(f"the tokenizer of {self.model!r} has no chat template; use an instruction-tuned model")

    @property
    def tokenizer(self) -> str:
        return self.model

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    def _eos_ids(self) -> set[int]:
        eos = getattr(self._model.generation_config, "eos_token_id", None)
        ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self._tokenizer.eos_token_id is not None:
            ids.add(self._tokenizer.eos_token_id)
        return ids

    def _run(
        self, requests: list[Messages], sampling: Sampling, emit: Callable[[int, Completion | LLMError], None]
    ) -> None:
        prompts: list[tuple[int, str]] = []
        for index, messages in enumerate(requests):
            try:
                prompts.append((index, self._render(messages, sampling)))
            except LLMError as exc:
                emit(index, exc)
        for start in range(0, len(prompts), self.batch_size):
            batch = prompts[start : start + self.batch_size]
            try:
                completions = self._generate([prompt for _, prompt in batch], sampling)
                for (index, _), completion in zip(batch, completions, strict=True):
                    emit(index, completion)
            except (RuntimeError, ValueError) as exc:  # e.g. out of memory: fail this batch, keep going
                log.debug("generation failed", exc_info=True)
                for index, _ in batch:
                    emit(index, LLMError(f"{self.name}: generation failed: {str(exc).splitlines()[0]}"))

    def _render(self, messages: Messages, sampling: Sampling) -> str:
        try:
            prompt = self._tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as exc:  # templates raise their own errors, e.g. for a role they do not support
            raise LLMError(f"{self.name}: its chat template rejected the messages: {exc}") from None
        limit = getattr(self._model.config, "max_position_embeddings", None)
        if limit is not None:
            needed = self.count_tokens(prompt) + sampling.max_tokens
            if needed > limit:
                raise LLMError(
                    f"{self.name}: the prompt plus max_tokens is {needed} tokens but the model takes at most "
                    f"{limit}; use fewer records or few-shot examples, or a model with a longer context"
                )
        return prompt

    def _generate(self, prompts: list[str], sampling: Sampling) -> list[Completion]:
        import torch

        encoded = self._tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        encoded = {k: v.to(self._model.device) for k, v in encoded.items()}
        options: dict[str, Any] = {"max_new_tokens": sampling.max_tokens, "pad_token_id": self._tokenizer.pad_token_id}
        if sampling.temperature > 0:
            options.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        else:
            options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        eos_ids = self._eos_ids()
        if eos_ids:
            options["eos_token_id"] = sorted(eos_ids)
        devices = [self._model.device] if self._model.device.type == "cuda" else []
        started = time.monotonic()
        # fork_rng keeps seeding local to this call; the lock keeps two threads from sharing one RNG state.
        with _generate_lock, torch.random.fork_rng(devices=devices), torch.inference_mode():
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            output = self._model.generate(**encoded, **options)
        latency = time.monotonic() - started
        prompt_len = encoded["input_ids"].shape[1]
        completions = []
        for row, mask in zip(output, encoded["attention_mask"], strict=True):
            generated = row[prompt_len:].tolist()
            stop = next((i for i, token in enumerate(generated) if token in eos_ids), None)
            kept = generated if stop is None else generated[:stop]
            completions.append(
                Completion(
                    text=self._tokenizer.decode(kept, skip_special_tokens=True),
                    input_tokens=int(mask.sum()),
                    # The stop token is produced by the model, so it counts; padding after it does not.
                    output_tokens=len(generated) if stop is None else stop + 1,
                    latency_s=latency,
                    cached=False,
                    finish_reason="length" if stop is None else "stop",
                    model=self.model,
                )
            )
        return completions
