"""Prompt formats (docs/METHOD.md §2): exact renderings as the paper's code writes them, golden files, cutoffs,
few-shot loading, the paper's bugs, the `prompt` command.

Regenerate the golden files after an intended change with `UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_prompts.py`
and review the diff.
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

import pytest

from core import prompts, tokens
from core.__main__ import main
from core.errors import InputError, LLMError
from core.prompts import (
    DEFAULT_CUTOFF,
    FEW_SHOT_CUTOFF,
    FORMATS,
    TASK_INSTRUCTION,
    Cutoff,
    FewShotExample,
    FormatOptions,
    build_messages,
    clean_explanation,
    load_few_shot,
    record_label,
    render_messages,
)
from core.records import ActivationRecord, NeuronStats

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"

# A sparse target neuron: 3 of 22 values are non-zero after normalisation (M = 4.0), so the original format repeats
# the non-zeros. It has literal brackets, a backslash, a comma that gets marked, a newline token and negatives.
TARGET = (
    ActivationRecord(
        ("The", " list", " [", "1", "]", " names", " New", " York", " twice", ".", " Then"),
        (-0.1, 0.0, 0.3, 0.05, 0.0, 0.02, 3.5, 4.0, 0.1, -0.2, 0.0),
    ),
    ActivationRecord(
        ("\n", "A", ",", " back\\slash", " and", " more", " text", " here", " for", " the", " test"),
        (0.0, 0.0, 2.5, 0.0, -0.05, 0.0, 0.0, 0.0, 0.0, 0.01, 0.0),
    ),
)
STATS = NeuronStats(mean=0.1, variance=0.3, max=4.2, quantiles={0.5: 0.4, 0.9: 1.1, 0.99: 2.0, 0.999: 3.9})
# A dense few-shot neuron (more than 20% non-zero: no repeat), with the default few-shot cutoff (relative 0.5).
FEW_SHOT = (
    FewShotExample(
        (
            ActivationRecord(("Rain", " fell", " all", " night"), (0.5, 2.0, 0.1, 1.0)),
            ActivationRecord((" The", " storm", " passed"), (0.0, 3.0, 0.2)),
        ),
        "words about bad weather",
    ),
)


def golden_messages(format_name: str) -> list[dict[str, str]]:
    return build_messages(format_name, TARGET, few_shot=FEW_SHOT, cutoff=Cutoff("quantile", 0.99), stats=STATS)


@pytest.mark.parametrize("format_name", list(FORMATS))
def test_golden_files(format_name: str) -> None:
    rendered = render_messages(golden_messages(format_name))
    path = GOLDEN_DIR / f"{format_name}.txt"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN_DIR.mkdir(exist_ok=True)
        path.write_bytes(rendered.encode("utf-8"))
    assert path.exists(), f"missing {path}; run with UPDATE_GOLDEN=1 to create it"
    assert rendered == path.read_bytes().decode("utf-8")


# --- exact renderings, written by hand from the paper's code (docs/METHOD.md §2) ---------------------------------

# " New" " York" are adjacent marked tokens, and both occur twice; " show" is positive but under the cutoff (1.0),
# " Boston" is under the cutoff but has a 0-10 value of 1 (M = 4.0), so only AVHS marks it.
SMALL = (
    ActivationRecord(
        ("The", " New", " York", " show", " in", " New", " York", "."), (0, 3.0, 4.0, 0.5, -0.1, 2.5, 3.5, 0)
    ),
    ActivationRecord((" Boston", "."), (0.5, 0.0)),
)


def small_target(format_name: str, options: FormatOptions = FormatOptions()) -> str:
    messages = build_messages(format_name, SMALL, few_shot=(), cutoff=Cutoff("absolute", 1.0), options=options)
    assert [m["role"] for m in messages] == ["system", "user"]
    return messages[-1]["content"]


HEAD = "\n\nNeuron 1\nActivations:"
TAIL = "\nExplanation of neuron 1 behavior: the main thing this neuron does is find"


def test_original_renders_as_the_papers_code() -> None:
    assert small_target("original") == (
        HEAD + "\n<start>\nThe\t0\n New\t7\n York\t10\n show\t1\n in\t0\n New\t6\n York\t8\n.\t0"
        "\n<end>\n<start>\n Boston\t1\n.\t0\n<end>\n" + TAIL
    )


def test_summary_renders_as_the_papers_code() -> None:
    # Every marked occurrence, in text order, the raw tokens joined by a bare comma; an empty list stays empty.
    assert small_target("summary") == (
        HEAD + "\n"
        "\n Text excerpt - A:\n<start>The New York show in New York.<end> \n\nHighly activating tokens:\n"
        " New, York, New, York\n"
        "\n Text excerpt - B:\n<start> Boston.<end> \n\nHighly activating tokens:\n\n" + TAIL
    )


def test_highlight_renders_as_the_papers_code() -> None:
    # Each marked token in its own brackets, its leading space inside them.
    assert small_target("highlight") == (
        HEAD + "\n"
        "\n Text excerpt - A:\n<start>The[ New][ York] show in[ New][ York].<end> \n"
        "\n Text excerpt - B:\n<start> Boston.<end> \n" + TAIL
    )


def test_highlight_summary_renders_as_the_papers_code() -> None:
    assert small_target("highlight_summary") == (
        HEAD + "\n"
        "\n Text excerpt - A:\n<start>The[ New][ York] show in[ New][ York].<end> \n\nHighly activating tokens:\n"
        " New, York, New, York\n"
        "\n Text excerpt - B:\n<start> Boston.<end> \n\nHighly activating tokens:\n\n" + TAIL
    )


def test_avhs_renders_as_the_papers_code() -> None:
    # Marked where the 0-10 value is positive; all token<TAB>n items of a record on one line, joined by a comma.
    assert small_target("avhs") == (
        HEAD + "\n"
        "\n Text excerpt - A:\n<start>The[ New][ York][ show] in[ New][ York].<end> \n\nHighly activating tokens:\n"
        " New\t7, York\t10, show\t1, New\t6, York\t8\n"
        "\n Text excerpt - B:\n<start>[ Boston].<end> \n\nHighly activating tokens:\n Boston\t1\n" + TAIL
    )


def test_the_project_variants_are_options() -> None:
    options = FormatOptions(distinct_lists=True, merge_spans=True)
    assert " [New York] show in [New York].<end> " in small_target("highlight", options)
    summary = small_target("summary", options)
    assert "Highly activating tokens:\nNew,York\n" in summary  # each distinct token once, trimmed
    assert "Highly activating tokens:\nNew\t7,York\t10,show\t1\n" in small_target("avhs", options)
    # A comma token is quoted in a de-duplicated list, and kept raw by default as the paper does.
    comma = [ActivationRecord(("a", ",", " b"), (0.0, 2.0, 0.0))]
    quoted = build_messages("summary", comma, few_shot=(), cutoff=Cutoff("absolute", 1.0), options=options)
    assert 'Highly activating tokens:\n","\n' in quoted[-1]["content"]
    raw = build_messages("summary", comma, few_shot=(), cutoff=Cutoff("absolute", 1.0))
    assert "Highly activating tokens:\n,\n" in raw[-1]["content"]


def test_every_format_gives_the_same_task_instruction() -> None:
    for fmt in FORMATS.values():
        assert fmt.system_message.startswith(TASK_INSTRUCTION + "\n\n")
        assert "Don't list examples of words." in fmt.system_message


def test_registry_lists_the_five_formats_of_the_spec() -> None:
    assert list(FORMATS) == ["original", "summary", "highlight", "highlight_summary", "avhs"]
    for name, fmt in FORMATS.items():
        assert fmt.name == name and fmt.description and fmt.system_message
    with pytest.raises(InputError, match=r"unknown prompt format 'bogus'.*original"):
        build_messages("bogus", TARGET)


@pytest.mark.parametrize("format_name", list(FORMATS))
def test_conversation_structure(format_name: str) -> None:
    messages = golden_messages(format_name)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[0]["content"] == FORMATS[format_name].system_message
    assert messages[2]["content"] == " words about bad weather."
    for number, message in ((1, messages[1]), (2, messages[3])):
        assert message["content"].startswith(f"\n\nNeuron {number}\nActivations:")
        assert message["content"].endswith(
            f"\nExplanation of neuron {number} behavior: the main thing this neuron does is find"
        )


def test_original_target_message_character_for_character() -> None:
    target = golden_messages("original")[-1]["content"]
    expected = (
        "\n\nNeuron 2\nActivations:"
        "\n<start>\n"
        "The\t0\n list\t0\n [\t0\n1\t0\n]\t0\n names\t0\n New\t8\n York\t10\n twice\t0\n.\t0\n Then\t0"
        "\n<end>\n<start>\n"
        "\\n\t0\nA\t0\n,\t6\n back\\slash\t0\n and\t0\n more\t0\n text\t0\n here\t0\n for\t0\n the\t0\n test\t0"
        "\n<end>\n"
        "\nSame activations, but with all zeros filtered out:"
        "\n<start>\n New\t8\n York\t10\n<end>\n<start>\n,\t6\n<end>\n"
        "\nExplanation of neuron 2 behavior: the main thing this neuron does is find"
    )
    assert target == expected
    # The dense few-shot neuron (5 of 7 values non-zero) is shown once, without the repeat.
    few_shot_user = golden_messages("original")[1]["content"]
    assert "Same activations" not in few_shot_user
    assert "\n<start>\nRain\t1\n fell\t6\n all\t0\n night\t3\n<end>\n<start>\n The\t0\n storm\t10\n" in few_shot_user


def test_original_writes_one_line_per_token_even_for_tabs_and_newlines() -> None:
    # docs/METHOD.md §2: `token<TAB>n`, one line per token; a raw "\n" or "\t" token would split or shift its line.
    tokens = ("\n", "a\tb", "\r\n", " x\x00", "日本", "\\n")
    record = ActivationRecord(tokens, (1.0, 2.0, 0.0, 0.0, 4.0, 0.0))
    content = build_messages("original", [record], few_shot=())[-1]["content"]
    block = content.split("\n<start>\n", 1)[1].split("\n<end>\n", 1)[0]
    lines = block.split("\n")
    assert lines == ["\\n\t2", "a\\tb\t5", "\\r\\n\t0", " x\\x00\t0", "日本\t10", "\\n\t0"]
    assert all(line.count("\t") == 1 for line in lines)
    assert "written as \\t or \\n" in FORMATS["original"].system_message


def test_original_repeats_only_under_twenty_percent_non_zero() -> None:
    # 1 non-zero of 5 values is exactly 20%: not under it, so no repeat; 1 of 6 is under it.
    five = ActivationRecord(("a", "b", "c", "d", "e"), (1.0, 0, 0, 0, 0))
    six = ActivationRecord(("a", "b", "c", "d", "e", "f"), (1.0, 0, 0, 0, 0, 0))
    assert "Same activations" not in build_messages("original", [five], few_shot=())[-1]["content"]
    assert "Same activations" in build_messages("original", [six], few_shot=())[-1]["content"]


def test_natural_formats_mark_tokens_above_the_threshold() -> None:
    summary = golden_messages("summary")[-1]["content"]
    assert " Text excerpt - A:\n<start>The list [1] names New York twice. Then<end> \n\n" in summary
    assert "Highly activating tokens:\n New, York\n\n Text excerpt - B:\n<start>\nA, back\\slash" in summary
    assert "Highly activating tokens:\n,\n" in summary  # a comma token is listed raw, as the paper does
    highlight = golden_messages("highlight")[-1]["content"]
    assert "<start>The list \\[1\\] names[ New][ York] twice. Then<end>" in highlight
    assert "<start>\nA[,] back\\\\slash and more text here for the test<end>" in highlight
    avhs = golden_messages("avhs")[-1]["content"]
    assert "Highly activating tokens:\n New\t8, York\t10\n\n Text excerpt - B:" in avhs


def test_highlights_can_be_told_from_literal_brackets() -> None:
    record = ActivationRecord(("x", "[", "[", "y", "]", " z", "]"), (0.0, 0.0, 5.0, 5.0, 0.0, 5.0, 0.0))
    body = FORMATS["highlight"].body([record], [[0, 0, 10, 10, 0, 10, 0]], 1.0)
    text = body.split("<start>")[1].split("<end>")[0]
    assert text == "x\\[[\\[][y]\\][ z]\\]"
    # Reading back: unescaped brackets delimit exactly the marked tokens, and unescaping restores the text.
    spans = re.findall(r"(?<!\\)\[((?:\\.|[^\\\]])*)(?<!\\)\]", text)
    assert spans == ["\\[", "y", " z"]
    plain = re.sub(r"\\(.)", r"\1", re.sub(r"(?<!\\)[\[\]]", "", text))
    assert plain == "".join(record.tokens)
    assert "\\[" in FORMATS["highlight"].system_message


def test_labels_go_past_z() -> None:
    assert [record_label(i) for i in (0, 1, 25, 26, 27, 51, 52, 701, 702)] == [
        "A", "B", "Z", "AA", "AB", "AZ", "BA", "ZZ", "AAA",
    ]  # fmt: skip
    records = [ActivationRecord((f" word{i}",), (float(i),)) for i in range(31)]
    content = build_messages("summary", records, few_shot=(), cutoff=Cutoff("relative", 0.5))[-1]["content"]
    labels = re.findall(r"Text excerpt - ([A-Z]+):", content)
    assert labels[:3] == ["A", "B", "C"] and labels[25:] == ["Z", "AA", "AB", "AC", "AD", "AE"]


@pytest.mark.parametrize("format_name", list(FORMATS))
def test_inputs_are_never_modified(format_name: str) -> None:
    target = [ActivationRecord(r.tokens, r.activations) for r in TARGET]
    target_before = [r.to_json() for r in target]
    stats_before = copy.deepcopy(STATS.to_json())
    bundled_before = [(ex.explanation, [r.to_json() for r in ex.records]) for ex in load_few_shot(None)]
    custom_before = [(ex.explanation, [r.to_json() for r in ex.records]) for ex in FEW_SHOT]
    first = build_messages(format_name, target, stats=STATS)
    build_messages(format_name, target, few_shot=FEW_SHOT, stats=STATS)
    assert [r.to_json() for r in target] == target_before
    assert STATS.to_json() == stats_before
    assert [(ex.explanation, [r.to_json() for r in ex.records]) for ex in load_few_shot(None)] == bundled_before
    assert [(ex.explanation, [r.to_json() for r in ex.records]) for ex in FEW_SHOT] == custom_before
    # The bundled data in memory still equals the file, and a second build gives the same prompt.
    fresh = prompts.few_shot_from_json(json.loads(prompts.BUNDLED_FEW_SHOT.read_text(encoding="utf-8")))
    assert fresh == load_few_shot(None)
    assert build_messages(format_name, target, stats=STATS) == first


def test_all_negative_activations_normalise_to_zeros() -> None:
    record = ActivationRecord((" a", " b", " c"), (-1.0, -0.5, -2.0))
    original = build_messages("original", [record], few_shot=())[-1]["content"]
    assert "\n<start>\n a\t0\n b\t0\n c\t0\n<end>\n" in original
    # No value is non-zero (0% < 20%), so the zero-free repeat is an empty block, as in Bills et al.'s code.
    assert "Same activations, but with all zeros filtered out:\n<start>\n\n<end>\n" in original
    # Nothing marked: the list line is empty, as in the paper (no placeholder).
    summary = build_messages("summary", [record], few_shot=(), cutoff=Cutoff("relative", 0.5))[-1]["content"]
    assert "<start> a b c<end> \n\nHighly activating tokens:\n\n\nExplanation" in summary
    avhs = build_messages("avhs", [record], few_shot=())[-1]["content"]
    assert "<start> a b c<end> \n\nHighly activating tokens:\n\n\nExplanation" in avhs


def test_cutoff_modes() -> None:
    assert Cutoff("quantile", 0.99) == DEFAULT_CUTOFF
    assert Cutoff("quantile", 0.99).threshold(TARGET, STATS) == 2.0
    assert Cutoff("quantile", 0.9).threshold(TARGET, STATS) == 1.1
    assert Cutoff("relative", 0.5).threshold(TARGET, None) == 2.0  # 0.5 × M, M = 4.0
    assert Cutoff("absolute", 3.6).threshold(TARGET, None) == 3.6
    negative = [ActivationRecord(("a",), (-3.0,))]
    assert Cutoff("relative", 0.5).threshold(negative, None) == 0.0
    with pytest.raises(InputError, match="needs the neuron's stats"):
        Cutoff("quantile", 0.99).threshold(TARGET, None)
    with pytest.raises(InputError, match=r"no 0\.95 quantile \(available: 0\.5, 0\.9, 0\.99, 0\.999\)"):
        Cutoff("quantile", 0.95).threshold(TARGET, STATS)
    # The mode decides what is marked: an absolute 3.6 keeps York only.
    summary = build_messages("summary", TARGET, few_shot=(), cutoff=Cutoff("absolute", 3.6))[-1]["content"]
    assert "Highly activating tokens:\n York\n" in summary
    assert "Highly activating tokens:\n\n" in summary


def test_cutoff_parse_validates_input() -> None:
    assert Cutoff.parse(None, None) == DEFAULT_CUTOFF
    assert Cutoff.parse("relative", None) == Cutoff("relative", 0.5)
    assert Cutoff.parse("quantile", "0.9") == Cutoff("quantile", 0.9)
    assert Cutoff.parse("ABSOLUTE", 2) == Cutoff("absolute", 2.0)
    assert Cutoff.parse("relative", 0.25).to_json() == {"mode": "relative", "value": 0.25}
    assert Cutoff.from_json({"mode": "absolute", "value": 1.5}) == Cutoff("absolute", 1.5)
    for mode, value, message in [
        ("median", 0.5, "unknown; choose one of quantile, relative, absolute"),
        ("quantile", 1.5, "between 0 and 1"),
        ("relative", -0.1, "between 0 and 1"),
        ("absolute", None, "needs a value"),
        ("absolute", "high", "'high' is not a number"),
        ("absolute", float("nan"), "not a finite number"),
    ]:
        with pytest.raises(InputError, match=message):
            Cutoff.parse(mode, value)


def test_few_shot_examples_use_their_own_cutoff_whatever_the_target_uses() -> None:
    few_shot_parts = {
        cutoff: build_messages("summary", TARGET, few_shot=FEW_SHOT, cutoff=cutoff, stats=STATS)[1]["content"]
        for cutoff in (Cutoff("quantile", 0.99), Cutoff("relative", 0.9), Cutoff("absolute", 0.0))
    }
    assert len(set(few_shot_parts.values())) == 1
    # FEW_SHOT_CUTOFF is relative 0.5: with M = 3.0 the threshold is 1.5, so " fell" (2.0) and " storm" (3.0).
    assert Cutoff("relative", 0.5) == FEW_SHOT_CUTOFF
    assert "Highly activating tokens:\n fell\n" in next(iter(few_shot_parts.values()))
    own = (FewShotExample(FEW_SHOT[0].records, "rain", Cutoff("absolute", 0.4)),)
    content = build_messages("summary", TARGET, few_shot=own, stats=STATS)[1]["content"]
    assert "Highly activating tokens:\nRain, fell, night\n" in content


def test_formats_without_a_cutoff_need_no_stats() -> None:
    for name in ("original", "avhs"):
        assert prompts.resolve_threshold(name, TARGET, DEFAULT_CUTOFF, None) is None
        assert build_messages(name, TARGET, few_shot=(), stats=None)
    with pytest.raises(InputError, match="needs the neuron's stats"):
        build_messages("summary", TARGET, few_shot=(), stats=None)
    with pytest.raises(InputError, match="at least one record"):
        build_messages("summary", [], few_shot=(), stats=STATS)


def test_bundled_few_shot_examples_have_the_papers_shape() -> None:
    # docs/METHOD.md §2: 3 neurons of 2 records, 146 subject tokens as in the paper's set, the paper's few-shot
    # cutoff (a raw 1.0), original's zero-free repeat for the two sparse neurons only.
    examples = load_few_shot(None)
    assert len(examples) == 3
    for example in examples:
        assert len(example.records) == 2 and example.explanation and not example.explanation.endswith(".")
        assert example.cutoff == Cutoff("absolute", 1.0)
        for record in example.records:
            assert 10 <= len(record.tokens) <= 40
    assert sum(len(r.tokens) for ex in examples for r in ex.records) == 146
    assert any(a < 0 for ex in examples for r in ex.records for a in r.activations)
    repeats = [
        "Same activations" in m["content"] for m in build_messages("original", TARGET)[1:-1] if m["role"] == "user"
    ]
    assert repeats == [True, True, False]
    assert load_few_shot("none") == () and load_few_shot("None") == ()


def test_load_few_shot_from_a_user_file(tmp_path: Path) -> None:
    path = tmp_path / "fs.json"
    path.write_text(
        json.dumps([{"records": [{"tokens": [" a", " b"], "activations": [1, 0]}], "explanation": "letters."}])
    )
    (example,) = load_few_shot(path)
    assert example.explanation == "letters"  # the prompt adds the period itself
    assert example.records == (ActivationRecord((" a", " b"), (1.0, 0.0)),)
    assert load_few_shot(str(path)) == (example,)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", r"few-shot file .* is not valid JSON: .*line 1"),
        ('{"records": []}', "few_shot: Input should be a valid list"),
        ("[3]", r"few_shot\[0\]: expected an object with 'records' and 'explanation'"),
        ('[{"records": [], "explanation": "x"}]', r"few_shot\[0\]\.records: List should have at least 1 item"),
        (
            '[{"records": [{"tokens": ["a"], "activations": [1]}, {"tokens": ["a", "b", "c"], "activations": [1, 2]}],'
            ' "explanation": "x"}]',
            r"few_shot\[0\]\.records\[1\]: 3 tokens but 2 activations",
        ),
        ('[{"records": [{"tokens": ["a"], "activations": [1]}]}]', r"few_shot\[0\]\.explanation: Field required"),
        (
            '[{"records": [{"tokens": ["a"], "activations": [1]}], "explanation": " . "}]',
            r"few_shot\[0\]\.explanation: expected a non-empty",
        ),
        (
            '[{"records": [{"tokens": ["a"], "activations": [1]}], "explanation": "x",'
            ' "cutoff": {"mode": "quantile"}}]',
            r"few_shot\[0\]\.cutoff: few-shot examples have no corpus stats",
        ),
    ],
)
def test_load_few_shot_errors_name_the_field(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "fs.json"
    path.write_text(content)
    with pytest.raises(InputError, match=message) as info:
        load_few_shot(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_load_few_shot_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"few-shot file .* does not exist"):
        load_few_shot(tmp_path / "absent.json")


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        (" tokens that name a day of the week.", "tokens that name a day of the week"),
        ("  closing brackets\nand more text.", "closing brackets"),
        ("the word 'etc'..", "the word 'etc'."),
        ("The main thing this neuron does is find numbers in dates.", "numbers in dates"),
        ("\n\n  words about food  \n", "words about food"),
        ("\n\nleading blank lines are stripped first", "leading blank lines are stripped first"),
    ],
)
def test_clean_explanation(completion: str, expected: str) -> None:
    assert clean_explanation(completion) == expected


@pytest.mark.parametrize("completion", ["", "   ", ".", " ...", "\n.\nwords on a later line", None])
def test_clean_explanation_rejects_empty_replies(completion: str | None) -> None:
    with pytest.raises(LLMError, match="explainer"):
        clean_explanation(completion)


# --- the `prompt` command -------------------------------------------------------------------------------------


def write_json(path: Path, data: object) -> str:
    path.write_text(json.dumps(data))
    return str(path)


def test_cli_prompt_prints_messages_tokens_and_cutoff(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = write_json(tmp_path / "r.json", {"records": [r.to_json() for r in TARGET]})
    code = main(["prompt", "--format", "summary", "--records", records, "--cutoff-mode", "relative", "--cutoff", "0.5"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["messages"] == build_messages("summary", TARGET, cutoff=Cutoff("relative", 0.5))
    assert out["input_tokens_cl100k"] == tokens.count_chat_tokens(out["messages"], "cl100k_base") > 100
    assert out["tokenizer"] == "cl100k_base"
    assert out["cutoff"] == {"mode": "relative", "value": 0.5, "threshold": 2.0}


def test_cli_prompt_with_stats_and_no_few_shot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = write_json(tmp_path / "r.json", {"records": [r.to_json() for r in TARGET]})
    stats = write_json(tmp_path / "s.json", STATS.to_json())
    assert main(["prompt", "--format", "highlight", "--records", records, "--stats", stats, "--few-shot", "none"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [m["role"] for m in out["messages"]] == ["system", "user"]
    assert "[ New][ York]" in out["messages"][1]["content"]
    assert out["cutoff"] == {"mode": "quantile", "value": 0.99, "threshold": 2.0}


@pytest.mark.parametrize(
    ("records", "extra", "message"),
    [
        (
            {"records": [{"tokens": ["a"], "activations": [1]}, {"tokens": ["a", "b", "c"], "activations": [1, 2]}]},
            [],
            r"records\[1\]: 3 tokens but 2 activations",
        ),
        ({"records": [{"tokens": ["a"], "activations": ["x"]}]}, [], r"records\[0\]\.activations\[0\]: 'x' is not"),
        ({"rows": []}, [], "records: expected a list of records"),
        ({"records": [{"tokens": ["a"], "activations": [1]}]}, ["--format", "summary"], "needs the neuron's stats"),
        ({"records": [{"tokens": ["a"], "activations": [1]}]}, ["--cutoff-mode", "absolute"], "needs a value"),
    ],
)
def test_cli_prompt_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], records: object, extra: list[str], message: str
) -> None:
    path = write_json(tmp_path / "r.json", records)
    argv = ["prompt", "--format", "original", "--records", path, *extra]
    if "--format" in extra:
        argv = ["prompt", "--records", path, *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and err.count("\n") == 1 and err.startswith("error: ")


def test_cli_prompt_bad_stats_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = write_json(tmp_path / "r.json", {"records": [r.to_json() for r in TARGET]})
    stats = write_json(tmp_path / "s.json", {"mean": 0, "variance": 1, "max": "big"})
    assert main(["prompt", "--format", "summary", "--records", records, "--stats", stats]) == 2
    assert "stats.max: expected a number" in capsys.readouterr().err
    assert main(["prompt", "--format", "summary", "--records", str(tmp_path / "nope.json")]) == 2
    assert "cannot read records file" in capsys.readouterr().err


def test_cli_prompt_format_choices_come_from_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["prompt", "--format", "fancy", "--records", "r.json"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert all(name in err for name in FORMATS), err
