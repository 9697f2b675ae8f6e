"""Token counting (docs/METHOD.md §4, token cost) and the token benchmark (bench/tokens.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from core import db as dbmod
from core import prompts, tokens
from core.errors import InputError, ModelError
from core.records import ActivationRecord, NeuronId, NeuronRecord, NeuronStats

REPO_ROOT = Path(__file__).resolve().parent.parent
WORDS = ["hello", "world", "hi", "there", "friend", "system", "user", "assistant", "<", ">"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
MESSAGES = [{"role": "system", "content": "hello world"}, {"role": "user", "content": "hi there friend"}]


def save_tiny_tokenizer(path: Path, chat_template: str | None) -> str:
    """A real word-level tokenizer saved with save_pretrained, so AutoTokenizer.from_pretrained loads it."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, **{word: i + 1 for i, word in enumerate(WORDS)}}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    if chat_template:
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(path)
    return str(path)


def test_cl100k_chat_count_hand_checked() -> None:
    # "hello world" = 2 tokens, "hi" = 1, "system" = 1, "user" = 1; 3 per message and 3 to prime the reply:
    # (3 + 1 + 2) + (3 + 1 + 1) + 3 = 14.
    assert tokens.count_text_tokens("hello world", "cl100k_base") == 2
    assert tokens.count_text_tokens("hi", "cl100k_base") == 1
    messages = [{"role": "system", "content": "hello world"}, {"role": "user", "content": "hi"}]
    assert tokens.count_chat_tokens(messages, "cl100k_base") == 14
    assert tokens.count_chat_tokens([], "cl100k_base") == 3
    # Special-token text in a prompt is counted as ordinary text instead of failing.
    assert tokens.count_text_tokens("<|endoftext|>", "cl100k_base") > 1


def test_prompt_cost_splits_the_fixed_part_from_the_neurons_part(tmp_path: Path) -> None:
    # The fixed part is every message but the last with its framing; the target's message and the reply priming
    # are the neuron's: (3 + 1 + 2) = 6 fixed, (3 + 1 + 1) + 3 = 8 per neuron.
    messages = [{"role": "system", "content": "hello world"}, {"role": "user", "content": "hi"}]
    assert tokens.prompt_cost(messages, "cl100k_base") == tokens.PromptCost(6, 8)
    assert tokens.prompt_cost(messages, "cl100k_base").total == tokens.count_chat_tokens(messages, "cl100k_base")
    assert tokens.prompt_cost(messages[:1], "cl100k_base") == tokens.PromptCost(0, 9)
    # A chat template: "<system> hello world" (5 tokens) is fixed, the rest of the 14 belongs to the neuron.
    path = save_tiny_tokenizer(tmp_path / "chat", CHAT_TEMPLATE)
    assert tokens.prompt_cost(MESSAGES, path) == tokens.PromptCost(5, 9)


def test_bundled_few_shot_costs_what_the_papers_does() -> None:
    # docs/METHOD.md §5: each format's fixed part (system + few-shot, cl100k_base) within 5% of the paper's code's.
    target = [ActivationRecord((" a", " b"), (0.0, 1.0))]
    paper = load_bench().PAPER_FIXED
    for name in prompts.FORMATS:
        messages = prompts.build_messages(name, target, cutoff=prompts.Cutoff("relative", 0.5))
        fixed = tokens.prompt_cost(messages, "cl100k_base").fixed
        assert abs(fixed / paper[name] - 1) <= 0.05, (name, fixed, paper[name])


def test_hf_tokenizer_without_chat_template_sums_contents(tmp_path: Path) -> None:
    path = save_tiny_tokenizer(tmp_path / "plain", None)
    assert tokens.count_text_tokens("hello world", path) == 2
    assert tokens.count_chat_tokens(MESSAGES, path) == 2 + 3


def test_hf_tokenizer_with_chat_template(tmp_path: Path) -> None:
    path = save_tiny_tokenizer(tmp_path / "chat", CHAT_TEMPLATE)
    # "<system> hello world <user> hi there friend <assistant>" splits into
    # < system > hello world < user > hi there friend < assistant >  = 14 tokens.
    assert tokens.count_chat_tokens(MESSAGES, path) == 14
    assert tokens._hf_tokenizer(path) is tokens._hf_tokenizer(path)  # loaded once per process


def test_unloadable_tokenizer_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"cannot load a Hugging Face tokenizer from .*cl100k_base"):
        tokens.count_text_tokens("hi", str(tmp_path / "missing" / "tokenizer"))


def test_tokenizer_for() -> None:
    assert tokens.tokenizer_for("openai:gpt-3.5-turbo") == "cl100k_base"
    assert tokens.tokenizer_for("hf:/models/tiny") == "/models/tiny"
    assert tokens.tokenizer_for("hf:Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    for bad in ("gpt-4", "openai:", "local:thing"):
        with pytest.raises(InputError, match="openai:MODEL or hf:ID_OR_PATH"):
            tokens.tokenizer_for(bad)


# --- bench/tokens.py --------------------------------------------------------------------------------------------


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_tokens", REPO_ROOT / "bench" / "tokens.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def synthetic_neuron(model: str, layer: int, index: int) -> NeuronRecord:
    sentence = [" the", " river", " crossed", " the", " old", " city", " near", " the", " market", "."] * 7
    records = []
    for rank in range(20):
        activations = [0.0] * 64
        activations[(rank * 7 + index) % 64] = 4.0 - rank * 0.1
        activations[(rank * 3) % 64] = -0.2
        records.append(ActivationRecord(tuple(sentence[:64]), tuple(activations)))
    stats = NeuronStats(0.0, 1.0, 4.0, {0.5: 0.5, 0.9: 1.0, 0.99: 2.0, 0.999: 3.0})
    return NeuronRecord(model, NeuronId(layer, index), tuple(records), tuple(records[:15]), stats)


def test_bench_reports_every_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bench.db"
    database = dbmod.connect(path)
    neurons = [synthetic_neuron("all-MiniLM-L6-v2", layer, index) for layer in (0, 1) for index in range(3)]
    dbmod.write_neurons(database, "all-MiniLM-L6-v2", neurons, source="test")
    database.conn.close()
    bench = load_bench()
    assert bench.main(["--db", str(path), "--n", "4", "--completion-tokens", "12"]) == 0
    out = capsys.readouterr().out
    assert "4 neurons of all-MiniLM-L6-v2" in out and "tokenizer cl100k_base" in out and "146 subject tokens" in out
    inputs, totals = out.split("\ninput + completion", 1)

    def rows(text: str) -> dict[str, list[str]]:
        lines = [line.split() for line in text.splitlines() if line.split()[:1] in ([n] for n in prompts.FORMATS)]
        return {fields[0]: fields for fields in lines}

    # input: format, fixed, paper's fixed, Δ, per neuron, min, max, total, Original ÷ format
    # input + completion: format, fixed, per neuron, completion, total, Original ÷ format, paper's ratio
    inputs, totals = rows(inputs), rows(totals)
    assert set(inputs) == set(totals) == set(prompts.FORMATS)
    assert inputs["summary"][2] == "484" and float(inputs["original"][8]) == 1.0
    assert totals["summary"][6] == "2.47" and totals["avhs"][3] == "12.0" and "12 assumed for every format" in out
    # The same neurons measured directly give the tables' means for the original format.
    picked = bench.pick_neurons(dbmod.connect(path), "all-MiniLM-L6-v2", 4)
    assert [str(n.neuron) for n in picked] == ["0:0", "0:1", "1:0", "1:1"]
    costs = bench.measure(picked, "cl100k_base", prompts.DEFAULT_CUTOFF, prompts.load_few_shot(None))
    assert len({c.fixed for c in costs["original"]}) == 1  # the fixed part is the same for every neuron
    assert f"{costs['original'][0].fixed}" == inputs["original"][1]
    assert f"{sum(c.per_neuron for c in costs['original']) / 4:.1f}" == inputs["original"][4]
    assert f"{sum(c.total for c in costs['original']) / 4:.1f}" == inputs["original"][7]
    assert f"{sum(c.total for c in costs['original']) / 4 + 12:.1f}" == totals["original"][4]
    assert all(costs["summary"][i].total < costs["original"][i].total for i in range(4))


def test_bench_completion_from_stored_explanations(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bench.db"
    database = dbmod.connect(path)
    dbmod.write_neurons(database, "all-MiniLM-L6-v2", [synthetic_neuron("all-MiniLM-L6-v2", 0, 0)], source="test")
    for output_tokens in (10, 14):
        dbmod.insert_explanation(
            database, model="all-MiniLM-L6-v2", layer=0, neuron=0, format="summary", explainer="openai:m",
            explanation=f"words {output_tokens}", output_tokens=output_tokens,
        )  # fmt: skip
    database.conn.close()
    assert load_bench().main(["--db", str(path), "--n", "1"]) == 0
    out = capsys.readouterr().out
    assert "stored explanations for summary; 15 assumed for original, highlight, highlight_summary, avhs" in out
    totals = {line.split()[0]: line.split() for line in out.split("\ninput + completion", 1)[1].splitlines() if line}
    assert totals["summary"][3] == "12.0" and totals["original"][3] == "15.0"


def test_bench_on_an_empty_db_says_how_to_fill_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert load_bench().main(["--db", str(tmp_path / "empty.db")]) == 1
    assert "run `make data`" in capsys.readouterr().err


def test_bench_paper_ratios_come_from_the_papers_published_token_counts(reference_dir: Path) -> None:
    # docs/METHOD.md §5: Original ÷ format of the mean prompt + completion tokens per neuron, 5 test neurons.
    import pandas as pd

    table = pd.read_csv(reference_dir / "lee2023" / "test_results" / "test_neurons_tokens.csv")
    columns = {"original": "Original", "summary": "Summary", "highlight": "Highlight"}
    columns |= {"highlight_summary": "HighlightSummary", "avhs": "AVHS"}
    assert len(table) == 5 and table["Original"].mean() == pytest.approx(2377, abs=1)
    ratios = load_bench().PAPER_RATIOS
    assert set(ratios) == set(prompts.FORMATS)
    for name, column in columns.items():
        assert ratios[name] == pytest.approx(table["Original"].mean() / table[column].mean(), abs=0.005)
