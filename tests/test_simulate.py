"""Simulators (core/simulate/): expected values, the prompt, result alignment and the registry. The local
simulator is tested in test_simulate_local.py, the OpenAI-compatible ones in test_simulate_api.py."""

from __future__ import annotations

import math

import pytest

from core.errors import InputError
from core.llm import LocalModelOptions
from core.simulate import (
    IMPORTED_METHOD,
    SIMULATORS,
    UNKNOWN,
    SimulationResult,
    SimulatorOptions,
    check_alignment,
    completion_prompt,
    escape_token,
    expected_value,
    get_simulator,
    hidden_count,
    load_few_shot,
    method_note,
    value_probabilities,
)
from tests.simulation_records import TRICKY, sample_records

# --- expected values ---------------------------------------------------------------------------------------------


def test_expected_value_is_the_mean_over_values_renormalised() -> None:
    first = {"0": 0.2, "3": 0.1, "10": 0.1, "unknown": 0.5, " ": 0.1}
    probs = value_probabilities(first)
    assert probs[0] == 0.2 and probs[3] == 0.1 and probs[10] == 0.1 and sum(probs) == pytest.approx(0.4)
    assert expected_value(probs) == pytest.approx((0 * 0.2 + 3 * 0.1 + 10 * 0.1) / 0.4)
    assert expected_value(value_probabilities({"unknown": 1.0})) is None


def test_split_ten_moves_the_share_of_one_followed_by_zero_to_ten() -> None:
    # The tokenizer writes 10 as "1","0": P("1") = 0.4 is shared between the values 1 and 10 by P("0" | "1") = 0.25.
    first = {"0": 0.5, "1": 0.4, "7": 0.1}
    probs = value_probabilities(first, after_one={"0": 0.25, "\n": 0.7})
    assert probs[1] == pytest.approx(0.4 * 0.75)
    assert probs[10] == pytest.approx(0.4 * 0.25)
    total = 0.5 + 0.4 * 0.75 + 0.1 + 0.4 * 0.25
    assert expected_value(probs) == pytest.approx((1 * 0.4 * 0.75 + 7 * 0.1 + 10 * 0.4 * 0.25) / total)
    # Without the second step the same mass would all count as 1.
    assert expected_value(value_probabilities(first)) == pytest.approx((0.4 + 0.7) / 1.0)


# --- the prompt ----------------------------------------------------------------------------------------------------


def test_escaped_tokens_keep_one_line_per_token() -> None:
    for token in TRICKY:
        escaped = escape_token(token)
        assert "\t" not in escaped and "\n" not in escaped and "\r" not in escaped
    assert escape_token("a\tb") == "a\\tb" and escape_token("\n") == "\\n" and escape_token("日本") == "日本"


def test_completion_prompt_slots_point_at_unknown_after_each_tab() -> None:
    few_shot = load_few_shot()
    record = sample_records()[0]
    text, offsets = completion_prompt("words about cats", record, few_shot)
    assert len(offsets) == len(record.tokens)
    for token, offset in zip(record.tokens, offsets, strict=True):
        assert text[offset : offset + len(UNKNOWN)] == UNKNOWN
        line_start = text.rindex("\n", 0, offset) + 1
        assert text[line_start:offset] == escape_token(token) + "\t"
    # Tabs appear only as delimiters: one per value line of the few-shot examples and of the target.
    shown_lines = sum(len(r.tokens) for example in few_shot for r in example.records)
    assert text.count("\t") == shown_lines + len(record.tokens)
    assert text.count(f"\t{UNKNOWN}\n") == hidden_count(few_shot) + len(record.tokens)
    assert hidden_count(few_shot) > 0  # the bundled examples do show some activations as unknown


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "simulation few-shot file .* is not valid JSON"),
        ('{"neurons": 3}', r"neurons: Input should be a valid list"),
        ('[{"explanation": "x", "records": []}]', r"neurons\[0\]\.records: List should have at least 1 item"),
        (
            '[{"explanation": "x", "records": [{"tokens": ["a"], "activations": [1], "first_shown": 2}]}]',
            r"neurons\[0\]\.records\[0\]\.first_shown: expected an integer from 0 to the token count",
        ),
        (
            '{"neurons": [{"explanation": "x", "records": [{"tokens": ["a"], "activations": [true]}]}]}',
            r"neurons\[0\]\.records\[0\]\.activations\[0\]: True is not a number",
        ),
    ],
)
def test_simulation_few_shot_errors_name_the_file_and_field(tmp_path, content: str, message: str) -> None:
    path = tmp_path / "few.json"
    path.write_text(content)
    with pytest.raises(InputError, match=message) as caught:
        load_few_shot(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(InputError, match="on_no_value 'guess' is unknown"):
        SimulatorOptions(on_no_value="guess")


# --- the registry --------------------------------------------------------------------------------------------------


def test_get_simulator_loads_an_hf_model_from_disk(tiny_chat_model) -> None:
    options = SimulatorOptions(local=LocalModelOptions(device="cpu"))
    simulator = get_simulator(f"hf:{tiny_chat_model}", options=options)
    assert simulator.name == f"hf:{tiny_chat_model}" and simulator.method == "all_at_once"
    result = simulator.simulate("cats", sample_records()[1:2])
    assert result.ok and len(result.predictions[0]) == 7
    with pytest.raises(InputError, match="does not run on hf"):
        get_simulator(f"hf:{tiny_chat_model}", method="chat_parse")
    with pytest.raises(InputError, match="hf:PATH or openai:MODEL"):
        get_simulator("gpt-4")
    assert set(SIMULATORS) == {"all_at_once", "completions_echo", "chat_logprobs", "chat_parse"}


def test_check_alignment_turns_a_wrong_shape_into_a_failure() -> None:
    records = sample_records()[1:3]
    good = SimulationResult("x", "m", ((0.0,) * 7, (1.0, 2.0)))
    assert check_alignment(good, records) is good
    short = SimulationResult("x", "m", ((0.0,) * 7, (1.0,)))
    failed = check_alignment(short, records)
    assert not failed.ok and "record 1" in failed.error and failed.predictions is None
    nan = check_alignment(SimulationResult("x", "m", ((math.nan,) * 7, (1.0, 2.0))), records)
    assert not nan.ok and "finite" in nan.error


def test_every_method_says_whether_it_is_the_papers() -> None:
    # docs/METHOD.md §3: only the all-at-once prompt (local, or echoed by a /completions server) is the paper's.
    assert [m for m, kind in SIMULATORS.items() if kind.all_at_once] == ["all_at_once", "completions_echo"]
    assert method_note("all_at_once") == "all_at_once: the paper's all-at-once method"
    assert "not the paper's all-at-once method" in method_note("chat_logprobs")
    assert "not the paper's" in method_note("chat_parse")
    assert method_note(IMPORTED_METHOD) == "imported: published scores, not computed here"
    assert SimulationResult("x", "m", ((1.0,),)).no_value_count == 0
