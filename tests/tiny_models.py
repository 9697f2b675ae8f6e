"""Tiny randomly initialised subject models of every supported family, saved to disk so that the real
`from_pretrained` path runs, with tokenizers trained here (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    BertModel,
    GemmaConfig,
    GemmaModel,
    GPT2Config,
    GPT2Model,
    GPTNeoXConfig,
    GPTNeoXModel,
    LlamaConfig,
    LlamaModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2Model,
)

TEXT = (
    """The river rose through the night, and by morning the lower road was under water.
Farmers moved their cattle to the hills while the children watched from the school window.
In 1998 the council built a wall of stone along the bank; it held for twenty years.
She wrote: "Meet me at the station at 7:30 — bring the maps, the keys, and the (old) radio."
def add(a, b):\n    return a + b  # numbers, tabs\tand symbols [like] these {braces} <tags> & more
Prices fell by 12.5% in March, then rose again in April and May.
The committee will vote on Tuesday; the chair expects a close result.
Über café naïve — unicode words appear too, with emoji ☃ and 日本語 text.
"""
    * 3
)

HIDDEN, LAYERS, HEADS, INTERMEDIATE = 32, 3, 4, 48


def byte_level_tokenizer(path: Path, bos: bool = False) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>", "<s>"],
    )
    tokenizer.train_from_iterator(TEXT.splitlines(), trainer)
    if bos:
        bos_id = tokenizer.token_to_id("<s>")
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|endoftext|>", bos_token="<s>", pad_token="<|endoftext|>"
    )
    fast.save_pretrained(path)
    return fast


def wordpiece_tokenizer(path: Path) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=300, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tokenizer.train_from_iterator(TEXT.splitlines(), trainer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.BertProcessing(("[SEP]", sep_id), ("[CLS]", cls_id))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    fast.save_pretrained(path)
    return fast


def build(family: str, path: Path) -> Path:
    """Save a tiny random model of `family` (gpt2, gpt_neox, llama, qwen2, gemma, bert) with its tokenizer."""
    torch.manual_seed(0)
    path.mkdir(parents=True, exist_ok=True)
    if family == "bert":
        tokenizer = wordpiece_tokenizer(path)
        config = BertConfig(
            vocab_size=len(tokenizer), hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
            intermediate_size=INTERMEDIATE, max_position_embeddings=128,
        )  # fmt: skip
        model = BertModel(config)
    else:
        tokenizer = byte_level_tokenizer(path, bos=family in ("llama", "gemma"))
        common = {"vocab_size": len(tokenizer), "max_position_embeddings": 128, "bos_token_id": 1, "eos_token_id": 0}
        if family == "gpt2":
            config = GPT2Config(
                n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_inner=INTERMEDIATE, n_positions=128,
                vocab_size=len(tokenizer), bos_token_id=0, eos_token_id=0,
            )  # fmt: skip
            model = GPT2Model(config)
        elif family == "gpt_neox":
            config = GPTNeoXConfig(
                hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                intermediate_size=INTERMEDIATE, **common,
            )  # fmt: skip
            model = GPTNeoXModel(config)
        elif family in ("llama", "qwen2"):
            config_class, model_class = (LlamaConfig, LlamaModel) if family == "llama" else (Qwen2Config, Qwen2Model)
            config = config_class(
                hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=2,
                intermediate_size=INTERMEDIATE, **common,
            )  # fmt: skip
            model = model_class(config)
        elif family == "gemma":
            config = GemmaConfig(
                hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=2,
                head_dim=8, intermediate_size=INTERMEDIATE, **common,
            )  # fmt: skip
            model = GemmaModel(config)
        else:
            raise ValueError(family)
    model.save_pretrained(path)
    return path
