"""Domain data (core/records.py, METHOD.md §1): normalisation, the split table, short splits, the top-record order and
JSON round trips."""

from __future__ import annotations

import math

import pytest

from core.errors import InputError
from core.records import (
    MIN_RANDOM_RECORDS,
    MIN_TOP_RECORDS,
    SPLITS,
    ActivationRecord,
    NeuronId,
    NeuronRecord,
    NeuronStats,
    normalize,
)

STATS = NeuronStats(mean=0.1, variance=0.2, max=3.0, quantiles={0.5: 0.5, 0.99: 2.0})


def _record(peak: float, tag: str = "") -> ActivationRecord:
    return ActivationRecord((f" {tag or peak}", " x"), (peak, 0.0))


def _neuron(n_top: int, n_random: int) -> NeuronRecord:
    top = tuple(_record(100.0 - rank, f"top{rank}") for rank in range(n_top))
    random = tuple(_record(0.5, f"random{rank}") for rank in range(n_random))
    return NeuronRecord("m", NeuronId(2, 7), top, random, STATS)


# --- normalisation: n = min(10, floor(10·relu(a)/M)), M over the records shown --------------------------------------


def test_normalize_follows_the_formula_token_by_token() -> None:
    records = [
        ActivationRecord(("a", "b", "c", "d"), (4.0, 1.99, 0.39, -2.0)),
        ActivationRecord(("e", "f"), (0.4, 2.0)),
    ]
    # M = 4.0 over both records: 10·a/M = 10, 4.975, 0.975, relu → 0; then 1.0, 5.0.
    assert normalize(records) == [[10, 4, 0, 0], [1, 5]]
    for record, values in zip(records, normalize(records), strict=True):
        for a, n in zip(record.activations, values, strict=True):
            assert n == min(10, math.floor(10 * max(0.0, a) / 4.0))


def test_m_is_the_max_over_all_records_shown_not_per_record() -> None:
    weak, strong = ActivationRecord(("a",), (1.0,)), ActivationRecord(("b",), (5.0,))
    assert normalize([weak]) == [[10]]
    assert normalize([weak, strong]) == [[2], [10]]


def test_m_can_be_given_and_values_above_it_are_capped_at_ten() -> None:
    record = ActivationRecord(("a", "b", "c"), (1.0, 3.0, 6.0))
    assert normalize([record], max_activation=3.0) == [[3, 10, 10]]


@pytest.mark.parametrize("activations", [(0.0, 0.0), (-1.0, -0.5), (-3.0, 0.0)])
def test_all_zero_when_m_is_not_positive(activations: tuple[float, ...]) -> None:
    record = ActivationRecord(("a", "b"), activations)
    assert normalize([record]) == [[0, 0]]
    assert normalize([record], max_activation=-1.0) == [[0, 0]]
    assert normalize([]) == []


# --- splits ----------------------------------------------------------------------------------------------------------


def test_the_split_table_of_the_spec() -> None:
    assert SPLITS == {
        "train": ((0, 4, 8, 12, 16), ()),
        "calibration": ((1, 5, 9, 13, 17), (0, 3, 6, 9, 12)),
        "valid": ((2, 6, 10, 14, 18), (1, 4, 7, 10, 13)),
        "test": ((3, 7, 11, 15, 19), (2, 5, 8, 11, 14)),
    }
    assert (MIN_TOP_RECORDS, MIN_RANDOM_RECORDS) == (20, 15)


def test_full_splits_hold_their_records_top_first_and_never_overlap() -> None:
    neuron = _neuron(20, 15)
    tags = {name: [r.tokens[0].strip() for r in neuron.split(name)] for name in SPLITS}
    assert tags["train"] == ["top0", "top4", "top8", "top12", "top16"]
    assert tags["valid"] == [f"top{i}" for i in (2, 6, 10, 14, 18)] + [f"random{i}" for i in (1, 4, 7, 10, 13)]
    assert len(tags["calibration"]) == len(tags["test"]) == 10
    everything = [tag for values in tags.values() for tag in values]
    assert len(everything) == len(set(everything)) == 35  # every collected record is in exactly one split
    assert all(neuron.split_shortfall(name) == (0, 0) for name in SPLITS)


def test_short_splits_hold_only_the_indices_that_exist() -> None:
    neuron = _neuron(10, 5)
    assert [r.tokens[0].strip() for r in neuron.split("valid")] == ["top2", "top6", "random1", "random4"]
    assert neuron.split_shortfall("valid") == (3, 3)
    assert neuron.split_shortfall("train") == (2, 0)
    empty = _neuron(0, 0)
    assert all(empty.split(name) == [] for name in SPLITS)
    assert empty.split_shortfall("valid") == (5, 5)
    for method in (neuron.split, neuron.split_shortfall):
        with pytest.raises(InputError, match="unknown split 'dev'; choose one of train, calibration, valid, test"):
            method("dev")


def test_top_records_are_kept_sorted_by_max_activation() -> None:
    # Splits index into the sorted top list (docs/METHOD.md §1), so an unsorted input must not shift them.
    unsorted = (_record(1.0, "low"), _record(9.0, "high"), _record(5.0, "mid"), _record(5.0, "mid2"))
    neuron = NeuronRecord("m", NeuronId(0, 1), unsorted, [_record(0.1)], STATS)
    assert [r.tokens[0].strip() for r in neuron.top] == ["high", "mid", "mid2", "low"]  # stable for ties
    assert isinstance(neuron.random, tuple)
    assert neuron.split("train") == [neuron.top[0]]


def test_neuron_record_json_round_trip() -> None:
    neuron = _neuron(3, 2)
    again = NeuronRecord.from_json(neuron.to_json())
    assert again == neuron and str(again.neuron) == "2:7"
    assert again.stats.quantiles == {0.5: 0.5, 0.99: 2.0}


def test_neuron_lists_from_text_and_files() -> None:
    """One reader for every neuron list: `--neurons`, `--neuron-file` and the Explain page's list and upload."""
    from core.records import neurons_from_file, parse_neurons

    assert parse_neurons("3:17, 3:42;0:1\n3:17  # again\n\n") == [NeuronId(3, 17), NeuronId(3, 42), NeuronId(0, 1)]
    assert parse_neurons("3:17,3:42") == [NeuronId(3, 17), NeuronId(3, 42)]
    with pytest.raises(InputError, match="layer:index"):
        parse_neurons("3:17, seventeen")
    with pytest.raises(InputError, match="no neurons"):
        parse_neurons("# nothing")
    csv_file = b"\xef\xbb\xbfLayer,Neuron\n0,2\n1,0\n0,2\n"
    assert neurons_from_file("n.csv", csv_file) == [NeuronId(0, 2), NeuronId(1, 0)]
    assert neurons_from_file("n.txt", b"0:2\n1:3\n") == [NeuronId(0, 2), NeuronId(1, 3)]
    with pytest.raises(InputError, match="line 2"):
        neurons_from_file("n.csv", b"layer,neuron\nx,1\n")
    with pytest.raises(InputError, match="columns layer,neuron"):
        neurons_from_file("n.csv", b"layer,index\n0,1\n")
    with pytest.raises(InputError, match="UTF-8"):
        neurons_from_file("n.csv", b"\xff\xfe\x00")
