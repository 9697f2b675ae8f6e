"""Boundaries and exact renderings of core/prompts.py that tests/test_prompts.py leaves open: the natural formats'
highlight threshold (strictly above), cutoff validation at every bound, merged spans at the edges of an excerpt,
quoting in de-duplicated lists, escapes, misaligned values, few-shot data errors and the cleaning of replies. Pure
and fast; few-shot files live in tmp_path."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from core import prompts
from core.errors import InputError, LLMError
from core.prompts import (
    FORMATS,
    Cutoff,
    FewShotExample,
    FormatOptions,
    build_messages,
    clean_explanation,
    escape_token,
    few_shot_from_json,
    load_few_shot,
    max_relu_activation,
    record_label,
    stats_from_json,
)
from core.records import ActivationRecord, NeuronStats

NATURAL = ("summary", "highlight", "highlight_summary")


def target(format_name: str, records, cutoff: Cutoff, options: FormatOptions = FormatOptions()) -> str:
    return build_messages(format_name, records, few_shot=(), cutoff=cutoff, options=options)[-1]["content"]


def excerpt(content: str, label: str = "A") -> str:
    return content.split(f" Text excerpt - {label}:\n<start>", 1)[1].split("<end>", 1)[0]


def listed(content: str) -> list[str]:
    return [part.split("\n", 1)[0] for part in content.split("Highly activating tokens:\n")[1:]]


# --- the highlight threshold ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("format_name", NATURAL)
def test_a_token_exactly_at_the_threshold_is_not_marked(format_name: str):
    record = ActivationRecord((" at", " above", " below"), (2.0, 2.0000001, 1.9999999))
    content = target(format_name, [record], Cutoff("absolute", 2.0))
    if format_name != "summary":
        assert excerpt(content) == " at[ above] below"
    if format_name != "highlight":
        assert listed(content) == [" above"]


def test_relative_cutoff_at_the_maximum_marks_nothing_and_zero_marks_every_positive():
    record = ActivationRecord((" a", " b", " c"), (4.0, 2.0, 0.0))
    assert excerpt(target("highlight", [record], Cutoff("relative", 1.0))) == " a b c"
    assert excerpt(target("highlight", [record], Cutoff("relative", 0.0))) == "[ a][ b] c"
    assert excerpt(target("highlight", [record], Cutoff("relative", 0.5))) == "[ a] b c"  # 2.0 is not above 2.0


# --- cutoffs -----------------------------------------------------------------------------------------------------


def test_cutoff_bounds():
    bad = [("quantile", 0.0), ("quantile", 1.0), ("relative", -0.01), ("relative", 1.01), ("relative", 1.5),
           ("absolute", True), ("absolute", "1"), ("absolute", float("inf"))]  # fmt: skip
    for mode, value in bad:
        with pytest.raises(InputError):
            Cutoff(mode, value)  # type: ignore[arg-type]
    assert Cutoff("relative", 0).value == 0.0 and Cutoff("relative", 1).value == 1.0
    assert Cutoff("quantile", 0.5).value == 0.5
    stored = Cutoff("absolute", 2)
    assert stored.value == 2.0 and type(stored.value) is float
    with pytest.raises(
        InputError, match=r"^cutoff mode 'median' is unknown; choose one of quantile, relative, absolute$"
    ):
        Cutoff("median", 0.5)


def test_cutoff_threshold_messages_and_level_tolerance():
    records = [ActivationRecord(("a",), (1.0,))]
    with pytest.raises(
        InputError, match=r"pass them \(--stats STATS\.json\) or use --cutoff-mode relative or absolute$"
    ):
        Cutoff("quantile", 0.99).threshold(records, None)
    with pytest.raises(InputError, match=r"\(available: none\)"):
        Cutoff("quantile", 0.99).threshold(records, NeuronStats(0, 1, 1, {}))
    # A stored level that is the requested one up to float noise is found.
    assert Cutoff("quantile", 0.99).threshold(records, NeuronStats(0, 1, 1, {0.99 + 5e-10: 1.25})) == 1.25
    assert max_relu_activation([]) == 0.0
    assert max_relu_activation([ActivationRecord((), ())]) == 0.0
    assert Cutoff("relative", 0.5).threshold([], None) == 0.0


def test_cutoff_from_json_errors_name_where():
    for data in ([], {"value": 0.5}, "relative"):
        with pytest.raises(
            InputError, match=r'^cutoff: expected an object like \{"mode": "relative", "value": 0\.5\}$'
        ):
            Cutoff.from_json(data)
    with pytest.raises(InputError, match=r"^job\.cutoff: cutoff mode 'bogus' is unknown"):
        Cutoff.from_json({"mode": "bogus"}, where="job.cutoff")


def test_stats_from_json():
    plain = {"mean": 0.1, "variance": 0.2, "max": 3.0}
    assert stats_from_json(plain) == NeuronStats(0.1, 0.2, 3.0, {})
    nested = {"stats": {**plain, "quantiles": {"0.99": 1.5}}}
    assert stats_from_json(nested).quantiles == {0.99: 1.5}
    cases = [
        ([], r'^stats: expected an object like \{"mean": 0\.1, "variance": 0\.2, "max": 3\.0, '
             r'"quantiles": \{"0\.99": 1\.5\}\}$'),
        ({"stats": {**plain, "max": True}}, r"^stats\.stats\.max: expected a number, got True$"),
        ({**plain, "quantiles": [1.5]}, r"^stats\.quantiles: expected an object from level to boundary, "
                                        r'e\.g\. \{"0\.99": 1\.5\}$'),
        ({**plain, "quantiles": {"high": 1.5}}, r"^stats\.quantiles: 'high' is not a quantile level such as 0\.99$"),
        ({**plain, "quantiles": {"0.9": "1"}}, r"^stats\.quantiles\[0\.9\]: expected a number, got '1'$"),
        ({**plain, "quantiles": {"0.9": False}}, r"^stats\.quantiles\[0\.9\]: expected a number, got False$"),
    ]  # fmt: skip
    for data, message in cases:
        with pytest.raises(InputError, match=message):
            stats_from_json(data)


# --- labels, escapes, lists ------------------------------------------------------------------------------------------


def test_record_label_refuses_negative_indices():
    with pytest.raises(ValueError, match=r"^record index must be >= 0$"):
        record_label(-1)


def test_escape_token_exact():
    assert escape_token("X") == "X" and escape_token("plain text\\n") == "plain text\\n"
    assert escape_token("a\u2028b\u2029c\x85d") == "a\\u2028b\\u2029c\\x85d"
    assert escape_token("\x7f\x1b\x00") == "\\x7f\\x1b\\x00"
    assert escape_token("\t\n\r") == "\\t\\n\\r"


def test_distinct_lists_quote_only_what_needs_it():
    options = FormatOptions(distinct_lists=True)
    tokens = (" Xbox", " ", "é,", " Xbox", ' say"', "\t")
    record = ActivationRecord(tokens, (5.0,) * len(tokens))
    [line] = listed(target("summary", [record], Cutoff("absolute", 1.0), options))
    assert line == 'Xbox," ","é,","say\\"","\\t"'
    [valued] = listed(target("avhs", [record], Cutoff("absolute", 1.0), options))
    assert valued == 'Xbox\t10," "\t10,"é,"\t10,"say\\""\t10,"\\t"\t10'


def test_distinct_valued_list_keeps_each_tokens_highest_value():
    record = ActivationRecord((" a", " b", "a", " b"), (2.0, 10.0, 5.0, 3.0))
    [valued] = listed(target("avhs", [record], Cutoff("absolute", 1.0), FormatOptions(distinct_lists=True)))
    assert valued == "a\t5,b\t10"


# --- merged spans ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tokens", "activations", "expected"),
    [
        ((" New", " York", " is"), (5, 5, 0), " [New York] is"),
        (("The", " big", " apple"), (0, 0, 5), "The big [apple]"),  # a run that ends the excerpt
        (("A", " b", " c"), (5, 0, 0), "[A] b c"),  # a single marked token, then unmarked ones
        (("x", " ", "y"), (0, 5, 0), "x[ ]y"),  # a marked whitespace token stays visible
        (("a", "b", "c", "d"), (5, 0, 5, 5), "[a]b[cd]"),
    ],
)
def test_merged_spans_exact(tokens, activations, expected):
    record = ActivationRecord(tokens, tuple(map(float, activations)))
    content = target("highlight", [record], Cutoff("absolute", 1.0), FormatOptions(merge_spans=True))
    assert excerpt(content) == expected


# --- misaligned values ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("format_name", ["original", "avhs"])
def test_value_bodies_refuse_values_that_do_not_align(format_name: str):
    records = [ActivationRecord(("a", "b"), (1.0, 0.0)), ActivationRecord(("c",), (2.0,))]
    body = FORMATS[format_name].body
    with pytest.raises(ValueError):
        body(records, [[5, 0]], float("nan"))  # a record without values
    with pytest.raises(ValueError):
        body(records, [[5], [10]], float("nan"))  # a token without a value


# --- registry, few-shot, messages ------------------------------------------------------------------------------------


def test_unknown_format_lists_the_known_ones():
    with pytest.raises(InputError, match=r"^unknown prompt format 'x'; choose one of original, summary, highlight, "
                                         r"highlight_summary, avhs$"):  # fmt: skip
        prompts.get_format("x")


def test_build_messages_without_records():
    with pytest.raises(InputError, match=r"^no activation records to show: give at least one record$"):
        build_messages("summary", [], few_shot=())


def test_few_shot_example_records_become_a_tuple():
    record = ActivationRecord(("a",), (1.0,))
    assert FewShotExample([record], "x").records == (record,)  # type: ignore[arg-type]


@pytest.mark.parametrize("format_name", ["original", "avhs"])
def test_formats_without_a_cutoff_ignore_a_few_shot_examples_cutoff(format_name: str):
    # Even a cutoff that would need stats is never evaluated for a format that uses none.
    example = FewShotExample((ActivationRecord((" rain",), (2.0,)),), "rain", Cutoff("quantile", 0.99))
    messages = build_messages(format_name, [ActivationRecord((" a",), (1.0,))], few_shot=(example,))
    assert messages[2]["content"] == " rain."


def few_shot(cutoff=None, activations=(1.0,)) -> list[dict]:
    item: dict = {"records": [{"tokens": ["a"], "activations": list(activations)}], "explanation": "x"}
    if cutoff is not None:
        item["cutoff"] = cutoff
    return [item]


def test_few_shot_data_errors():
    cases = [
        (few_shot(activations=[True]), r"^few-shot examples: few_shot\[0\]\.records\[0\]\.activations\[0\]: "
                                        r"True is not a number$"),
        (few_shot(activations=["1"]), r"activations\[0\]: '1' is not a number$"),
        (few_shot(cutoff="relative"), r'cutoff: expected an object like \{"mode": "relative", "value": 0\.5\}$'),
        (few_shot(cutoff={"value": 0.5}), r'cutoff: expected an object like \{"mode": "relative", "value": 0\.5\}$'),
        (few_shot(cutoff={"mode": "relative", "value": 3}), r"cutoff: relative cutoff 3 must be a fraction"),
        (few_shot(cutoff={"mode": "quantile", "value": 0.9}),
         r"cutoff: few-shot examples have no corpus stats; use relative or absolute$"),
        ([["a"]], r"few_shot\[0\]: expected an object with 'records' and 'explanation'$"),
    ]  # fmt: skip
    for data, message in cases:
        with pytest.raises(InputError, match=message):
            few_shot_from_json(data)
    with pytest.raises(InputError, match=r"^mine\.json: few_shot\[0\]"):
        few_shot_from_json(few_shot(activations=[True]), where="mine.json")
    [example] = few_shot_from_json(few_shot(cutoff={"mode": "absolute", "value": 0.5}))
    assert example.cutoff == Cutoff("absolute", 0.5)


def test_an_edited_few_shot_file_is_read_again(tmp_path: Path):
    path = tmp_path / "few.json"
    path.write_text(json.dumps(few_shot()))
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    assert [e.explanation for e in load_few_shot(path)] == ["x"]
    edited = few_shot()
    edited[0]["explanation"] = "y"
    path.write_text(json.dumps(edited))
    os.utime(path, ns=(2_000_000_000, 2_000_000_000))
    assert [e.explanation for e in load_few_shot(path)] == ["y"]


# --- cleaning replies ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("first line\nsecond\nthird", "first line"),
        ("numbers .", "numbers"),
        (" the main thing this neuron does is find  dates .\nmore", "dates"),
    ],
)
def test_clean_explanation_exact(completion: str, expected: str):
    assert clean_explanation(completion) == expected


def test_an_empty_reply_is_quoted_up_to_eighty_characters():
    reply = "." * 100
    with pytest.raises(LLMError) as error:
        clean_explanation(reply)
    assert str(error.value) == (
        f"the explainer's reply {'.' * 80!r} holds no explanation (empty after cleaning); "
        "retry, raise max_tokens, or use another explainer model"
    )
