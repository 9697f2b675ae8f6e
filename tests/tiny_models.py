"""Tiny randomly initialised subject models of every supported family, saved to disk so that the real
`from_pretrained` path runs, with tokenizers trained here (nothing is downloaded); and the tiny chat model and
tokenizer of the LLM tests, whose pieces (`bpe_tokenizer`, `random_llama`) bench/simulate.py builds on too."""

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
    LlamaForCausalLM,
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


# --- Chat models for the LLM tests and benches: tokenizers trained here, random Llama weights ----------------------


def bpe_tokenizer(
    lines: list[str], vocab_size: int, special_tokens: list[str], **tokens: str
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `lines` (nothing downloaded). `tokens` name its special tokens
    (`bos_token="<s>"`, …) and may give a `chat_template`."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(lines, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **tokens)


def random_llama(
    config: LlamaConfig, *, seed: int = 0, dtype: torch.dtype | None = None, device: str | None = None
) -> LlamaForCausalLM:
    """A LlamaForCausalLM of `config` with random weights drawn from `seed` (the CPU random state is left as it
    was), built directly in `dtype` on `device` when given, so that a large model never exists twice."""
    default_dtype = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if dtype is not None:
            torch.set_default_dtype(dtype)
        try:
            if device is None:
                return LlamaForCausalLM(config)
            with torch.device(device):
                return LlamaForCausalLM(config)
        finally:
            torch.set_default_dtype(default_dtype)


# Words for the tiny chat tokenizer's BPE merges; any other text still round-trips through the byte-level alphabet.
_TINY_TEXT = (
    "the a an of and to in is was for on with as by at from that this it he she they we you neuron token tokens "
    "word words text activation activations explanation excerpt start end find finds main thing does behavior "
    "same but all zeros filtered out highly activating summary highlight unknown cat cats dog dogs house city "
    "river music number numbers year years day days time people water red green blue color colors New York Paris "
    "London Monday Friday good bad big small first last run runs running walk walked said make made code function"
)
_TINY_WORDS = _TINY_TEXT.split()
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE PreTrainedTokenizerFast with a chat template; "0".."10" are single tokens."""
    lines = []
    for i, word in enumerate(_TINY_WORDS):
        lines.append(f"{word} {_TINY_WORDS[(i * 7) % len(_TINY_WORDS)]} {_TINY_WORDS[(i * 13) % len(_TINY_WORDS)]}.")
        lines.append(f"{word.capitalize()}\t{i % 11}\n")
    for value in range(11):  # frequent enough that BPE merges "1"+"0" into "10"
        lines += [f"{value}", f" {value}", f"\t{value}\n"] * 20
    special = ["<pad>", "<s>", "</s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>"]
    return bpe_tokenizer(
        lines,
        600,
        special,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        chat_template=TINY_CHAT_TEMPLATE,
    )


def build_tiny_chat_model(path: Path) -> Path:
    """A tiny random LlamaForCausalLM (hidden 32, 2 layers) with its chat tokenizer, saved to `path`."""
    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    random_llama(config, seed=0).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
