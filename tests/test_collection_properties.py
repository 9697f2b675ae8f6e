"""Properties of collection's tracking state and of the merge of several processes' states, checked against brute
force on random activations without a model, as mutation testing (`make mutation MODULE=collection`,
tests/README.md) asked for: every tracked quantity of every neuron whatever the batches, the samples' keys and
levels, the scorers' excerpts as records, merges of shards that hold ties, nothing, or fewer than k, and where the
state lives, checked on torch's "meta" device (tensors with a shape and a device but no data), which needs no GPU."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats

from core.activations import (
    LEVEL_STREAM,
    QUANTILE_STREAM,
    QUIET_OVERSAMPLE,
    QUIET_STREAM,
    RANDOM_STREAM,
    CollectOptions,
    _fold_top,
    _LayerTracker,
    _ScoringState,
    level_members,
    level_rates,
)
from core.distributed import (
    KeyedSample,
    LayerState,
    chan_merge,
    interleave,
    local_rows,
    merge_layer,
    merge_top,
    sample_keys,
    select_sample,
    select_top,
)
from core.records import ScoringRecords

OPTIONS = CollectOptions(
    max_tokens=48 * 4,
    excerpt_len=4,
    top_k=3,
    random_k=4,
    quantile_sample=10,
    seed=1,  # excerpt 0 falls in the second level's subsample
    quantile_levels=3,
    quantile_k=2,
    nonactivating_k=2,
    bottom_k=2,
)


def activations(excerpts: int = 48, seed: int = 0) -> np.ndarray:
    """[excerpts, tokens, neurons] of small whole numbers, so that maxima tie often; excerpt 0 has neuron 0's
    highest activation and neuron 1's lowest, so that index 0 is kept where it may be mistaken for "no excerpt"."""
    acts = np.random.default_rng(seed).integers(-3, 4, size=(excerpts, OPTIONS.excerpt_len, 5)).astype(np.float32)
    acts[0, 0, 0], acts[0, 0, 1] = 9.0, -9.0
    return acts


def track(acts: np.ndarray, batch_size: int, options: CollectOptions = OPTIONS, first: int = 0):
    """Feed `acts` (excerpts first … first + len − 1) to one tracker in batches, as a pass does; returns the tracker
    and its random, quantile and quiet samples."""
    tracker = _LayerTracker(acts.shape[2], options, torch.device("cpu"))
    samples = [
        KeyedSample(options.random_k, options.seed, RANDOM_STREAM),
        KeyedSample(options.quantile_sample, options.seed, QUANTILE_STREAM),
        # None, as in a pass, for a run that keeps no non-activating excerpts
        KeyedSample(options.nonactivating_k * QUIET_OVERSAMPLE, options.seed, QUIET_STREAM)
        if options.nonactivating_k
        else None,
    ]
    rates = level_rates(options)
    for start in range(0, len(acts), batch_size):
        batch = torch.tensor(acts[start : start + batch_size])
        ids = torch.arange(first + start, first + start + len(batch))
        slots = [sample.offer(first + start, len(batch)) if sample is not None else [] for sample in samples]
        levels = [
            torch.tensor(m, dtype=torch.long) for m in level_members(first + start, len(batch), options.seed, rates)
        ]
        tracker.update(batch, ids, slots[0], slots[1], slots[2], levels)
    return tracker, samples


def best(values: np.ndarray, candidates, k: int) -> list[int]:
    """The k best candidates by value, ties to the earlier excerpt."""
    return sorted(candidates, key=lambda e: (-values[e], e))[:k]


@pytest.mark.parametrize("batch_size", [1, 5, 7, 48])
def test_a_tracker_holds_exactly_what_brute_force_finds_whatever_the_batches(batch_size: int) -> None:
    acts = activations()
    tracker, (random_sample, quantile_sample, quiet_sample) = track(acts, batch_size)
    n, length, neurons = acts.shape
    state = tracker.state(range(OPTIONS.random_k), range(OPTIONS.quantile_sample), range(6))
    flat = acts.reshape(-1, neurons).astype(np.float64)
    assert state.count == n * length
    # Float32 activations shifted by the first batch's float32 mean: exact to float32's rounding of that shift.
    np.testing.assert_allclose(state.mean.numpy(), flat.mean(axis=0), rtol=0, atol=1e-6)
    np.testing.assert_allclose(state.m2.numpy(), ((flat - flat.mean(axis=0)) ** 2).sum(axis=0), rtol=1e-6)
    assert state.max.tolist() == flat.max(axis=0).tolist()
    excerpt_max, excerpt_min = acts.max(axis=1), acts.min(axis=1)
    levels = level_members(0, n, OPTIONS.seed, level_rates(OPTIONS))
    for neuron in range(neurons):
        top = state.top_excerpts[neuron].tolist()
        assert sorted(top) == sorted(best(excerpt_max[:, neuron], range(n), OPTIONS.top_k)), neuron
        for slot, excerpt in enumerate(top):
            assert state.top_values[neuron, slot] == excerpt_max[excerpt, neuron]
            assert state.top_activations[neuron, slot].tolist() == acts[excerpt, :, neuron].tolist()
        bottom = state.bottom_excerpts[neuron].tolist()
        assert sorted(bottom) == sorted(best(-excerpt_min[:, neuron], range(n), OPTIONS.bottom_k))
        for slot, excerpt in enumerate(bottom):
            assert state.bottom_values[neuron, slot] == -excerpt_min[excerpt, neuron]
            assert state.bottom_activations[neuron, slot].tolist() == acts[excerpt, :, neuron].tolist()
        for level, members in enumerate(levels):
            kept = state.level_excerpts[level, neuron].tolist()
            expected = best(excerpt_max[:, neuron], members, OPTIONS.quantile_k)
            assert sorted(e for e in kept if e >= 0) == sorted(expected), (neuron, level)
            for slot, excerpt in enumerate(kept):
                if excerpt >= 0:
                    assert state.level_values[level, neuron, slot] == excerpt_max[excerpt, neuron]
                    assert state.level_activations[level, neuron, slot].tolist() == acts[excerpt, :, neuron].tolist()
    # Sample rows: each slot holds its member's activations, or its per-excerpt max.
    for slot, member in enumerate(random_sample.members):
        assert state.random_activations[slot].tolist() == acts[member].tolist()
    for slot, member in enumerate(quantile_sample.members):
        assert state.sample_max[slot].tolist() == excerpt_max[member].tolist()
    for slot, member in enumerate(quiet_sample.members):
        assert state.quiet_activations[slot].tolist() == acts[member].tolist()
    assert len(random_sample.members) == OPTIONS.random_k and len(quiet_sample.members) == 6


def test_a_trackers_state_holds_the_rows_asked_for_in_that_order() -> None:
    acts = activations()
    tracker, (random_sample, quantile_sample, quiet_sample) = track(acts, 9)
    state = tracker.state([3, 0], [9, 2, 5], [4])
    assert state.random_activations.tolist() == [
        acts[random_sample.members[3]].tolist(),
        acts[random_sample.members[0]].tolist(),
    ]
    assert state.sample_max.tolist() == [acts[quantile_sample.members[i]].max(axis=0).tolist() for i in (9, 2, 5)]
    assert state.quiet_activations.tolist() == [acts[quiet_sample.members[4]].tolist()]
    fresh = _LayerTracker(5, OPTIONS, torch.device("cpu"))
    # Moments are summed in float64 whatever the activations' type, so that long runs keep their precision.
    assert fresh.shifted_sum.dtype == fresh.shifted_sum_sq.dtype == torch.float64
    empty = fresh.state([], [], [])
    assert (empty.count, empty.mean.tolist(), empty.m2.tolist()) == (0, [0.0] * 5, [0.0] * 5)
    assert empty.mean.dtype == torch.float64 and torch.isinf(empty.top_values).all()
    assert torch.isinf(empty.max).all() and torch.isinf(empty.level_values).all()
    assert (empty.top_excerpts == -1).all() and (empty.bottom_excerpts == -1).all()
    assert (empty.level_excerpts == -1).all()


# A run that keeps no scorers' excerpts: top excerpts, a random sample and the quantile sample only.
BARE = CollectOptions(
    max_tokens=64,
    excerpt_len=4,
    top_k=2,
    random_k=1,
    quantile_sample=3,
    quantile_levels=0,
    nonactivating_k=0,
    bottom_k=0,
)


def test_a_tracker_keeps_only_the_kinds_of_scoring_excerpts_a_run_asks_for() -> None:
    bare = BARE
    tracker = _LayerTracker(3, bare, torch.device("cpu"))
    assert (tracker.level_values, tracker.bottom_values, tracker.quiet_activations) == (None, None, None)
    state = tracker.state([], [], [])
    assert (state.level_values, state.bottom_values, state.quiet_activations) == (None, None, None)
    full = _LayerTracker(3, OPTIONS, torch.device("cpu"))
    assert tuple(full.level_values.shape) == (3, 3, 2) and tuple(full.level_activations.shape) == (3, 3, 2, 4)
    assert tuple(full.bottom_values.shape) == (3, 2) and tuple(full.quiet_activations.shape) == (6, 4, 3)
    # Bytes of every tensor: top and bottom 2·(k·(4 + 8 + 4·length)) per neuron and so on, as the shapes say.
    expected = sum(t.numel() * t.element_size() for t in vars(full).values() if isinstance(t, torch.Tensor))
    assert full.nbytes() == expected and full.nbytes() > tracker.nbytes() > 0


def test_a_fold_breaks_ties_by_the_earlier_excerpt_and_fills_free_slots() -> None:
    values = torch.full((2, 3), float("-inf"))
    excerpts = torch.full((2, 3), -1, dtype=torch.long)
    stored = torch.zeros((2, 3, 1))
    batch = torch.tensor([[[5.0, 1.0]], [[5.0, 2.0]], [[4.0, 2.0]], [[5.0, 0.0]]])  # [batch 4, tokens 1, neurons 2]
    _fold_top(values, excerpts, stored, batch, batch.amax(dim=1).T, torch.tensor([7, 3, 9, 5]))
    assert sorted(excerpts[0].tolist()) == [3, 5, 7]  # three 5.0s: all kept, 4.0 of excerpt 9 not
    assert sorted(excerpts[1].tolist()) == [3, 7, 9]  # 2.0 twice (3, 9) and 1.0 (7); 0.0 of 5 left out
    # A later batch with a tie at the boundary: excerpt 1 beats 3, 5 and 7 on equal value 5.0.
    _fold_top(values, excerpts, stored, torch.tensor([[[5.0, 2.0]]]), torch.tensor([[5.0], [2.0]]), torch.tensor([1]))
    assert sorted(excerpts[0].tolist()) == [1, 3, 5] and sorted(excerpts[1].tolist()) == [1, 3, 9]
    for neuron in range(2):
        for slot in range(3):
            assert stored[neuron, slot, 0] == values[neuron, slot]


MASK64, GAMMA = 2**64 - 1, 0x9E3779B97F4A7C15


def splitmix64_mix(z: int) -> int:
    """SplitMix64's finaliser in Python integers, modulo 2⁶⁴."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def splitmix64_key(index: int, seed: int, stream: int) -> int:
    """The key as its docstring defines it, in Python integers: SplitMix64's finaliser of index × the golden gamma
    plus a salt (the finaliser of seed × 2 + stream), modulo 2⁶⁴, shifted to 63 bits."""
    salt = splitmix64_mix((seed * 2 + stream) & MASK64)
    return splitmix64_mix((index * GAMMA + salt) & MASK64) >> 1


def test_sample_keys_are_splitmix64_of_the_index() -> None:
    indices = [0, 1, 2, 47, 1000, 2**40 + 3]
    for seed, stream in ((0, 0), (3, 1), (11, 2), (2**31, 5)):
        expected = [splitmix64_key(index, seed, stream) for index in indices]
        assert sample_keys(np.array(indices), seed, stream).tolist() == expected, (seed, stream)


def test_sample_keys_are_uniform_63_bit_and_fixed_by_seed_and_stream() -> None:
    keys = sample_keys(np.arange(20_000), seed=3, stream=1)
    assert keys.dtype == np.int64 and keys.min() >= 0
    assert scipy_stats.kstest(keys / 2.0**63, "uniform").pvalue > 0.001
    assert len(np.unique(keys)) == len(keys)
    assert (sample_keys(np.arange(100, 200), 3, 1) == keys[100:200]).all()  # a key depends on the index alone
    assert (sample_keys(np.arange(100), 3, 2) != keys[:100]).all() and (
        sample_keys(np.arange(100), 4, 1) != keys[:100]
    ).all()
    # The two halves of the 63 bits are both used: keys above 2⁶² and odd keys each make about half.
    assert 0.45 < np.mean(keys >= 2**62) < 0.55 and 0.45 < np.mean(keys % 2) < 0.55


def test_a_keyed_sample_holds_the_size_smallest_keys_whatever_the_batches() -> None:
    keys = sample_keys(np.arange(60), 9, 0)
    expected = sorted(np.argsort(keys, kind="stable")[:7].tolist())
    for size in (1, 4, 60):
        sample = KeyedSample(7, 9, 0)
        taken = []
        for first in range(0, 60, size):
            taken.append(sample.offer(first, min(size, 60 - first)))
        assert sorted(sample.members) == expected and len(sample.members) == 7
        assert sample.keys == [int(keys[m]) for m in sample.members]
    # What `offer` returns: (position in the batch, slot) for each excerpt kept, the last one where two took a slot.
    sample = KeyedSample(2, 9, 0)
    taken = sample.offer(10, 20)
    assert sorted(slot for _, slot in taken) == [0, 1]
    assert sorted(10 + position for position, _ in taken) == sorted(sample.members)
    one = KeyedSample(1, 9, 0)
    for first in range(0, 60, 4):
        one.offer(first, 4)
    assert one.members == [int(np.argmin(keys))]
    bigger = KeyedSample(100, 9, 0)
    assert bigger.offer(0, 30) == [(i, i) for i in range(30)] and bigger.members == list(range(30))


def test_level_rates_fall_geometrically_to_the_rate_whose_top_k_sit_near_the_median() -> None:
    # 48 excerpts, k = 2: the last rate is 2·2/48; three levels 1/2, √(1/2 · 1/12), 1/12.
    assert level_rates(OPTIONS) == pytest.approx([0.5, (0.5 / 12) ** 0.5, 1 / 12])
    one = CollectOptions(max_tokens=192, excerpt_len=4, quantile_levels=1, quantile_k=2)
    assert level_rates(one) == [0.5]
    few = CollectOptions(max_tokens=16, excerpt_len=4, quantile_levels=4, quantile_k=2)  # 2·2/4 > 1/2
    assert level_rates(few) == pytest.approx([0.5] * 4)
    assert level_rates(CollectOptions(quantile_levels=0)) == [] and level_rates(CollectOptions(quantile_k=0)) == []
    short = CollectOptions(max_tokens=4, excerpt_len=4, quantile_levels=2, quantile_k=1)  # one excerpt at most
    assert level_rates(short) == pytest.approx([0.5, 0.5])
    # Whole excerpts only: 50 tokens of 4 make 12 excerpts, so the last rate is 2·1/12.
    uneven = CollectOptions(max_tokens=50, excerpt_len=4, quantile_levels=2, quantile_k=1)
    assert level_rates(uneven) == pytest.approx([0.5, 1 / 6])


def test_level_members_are_the_excerpts_whose_level_key_is_below_the_rate_and_any_split_agrees() -> None:
    rates = [0.5, 0.2, 1.0]
    members = level_members(100, 2000, 3, rates)
    for level, rate in enumerate(rates):
        keys = sample_keys(np.arange(100, 2100), 3, 3 + level)
        expected = np.nonzero(keys < np.int64(min(rate, 0.999999) * 2**63))[0].tolist()
        assert members[level] == expected
        assert abs(len(expected) / 2000 - min(rate, 0.999999)) < 0.04
    split = level_members(100, 700, 3, rates)
    rest = level_members(800, 1300, 3, rates)
    assert [a + [700 + p for p in b] for a, b in zip(split, rest, strict=True)] == members


# --- merging -------------------------------------------------------------------------------------------------------


def test_moments_merge_exactly_from_any_split_including_a_first_empty_part() -> None:
    rng = np.random.default_rng(1)
    data = rng.normal(3, 2, (30, 2))
    for cut in ([0, 10, 30], [0, 0, 30], [0, 29, 30], [0, 15, 15, 30]):
        parts = [data[a:b] for a, b in itertools.pairwise(cut)]
        counts = [len(p) for p in parts]
        means = [torch.tensor(p.mean(axis=0) if len(p) else np.zeros(2)) for p in parts]
        m2s = [torch.tensor(((p - p.mean(axis=0)) ** 2).sum(axis=0) if len(p) else np.zeros(2)) for p in parts]
        count, mean, m2 = chan_merge(counts, means, m2s)
        assert count == 30
        np.testing.assert_allclose(mean.numpy(), data.mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(m2.numpy(), ((data - data.mean(axis=0)) ** 2).sum(axis=0), rtol=1e-12)


def test_merged_samples_are_the_smallest_keys_of_all_shards_and_rows_follow_them() -> None:
    keys = [[5, 1, 9], [], [3, 1, 7]]
    members = [[50, 10, 90], [], [30, 11, 70]]
    selection = select_sample(keys, members, 4)
    assert selection == [(0, 1), (2, 1), (2, 0), (0, 0)]  # keys 1 (member 10), 1 (member 11), 3, 5
    assert local_rows(selection, 0) == [1, 0] and local_rows(selection, 1) == [] and local_rows(selection, 2) == [1, 0]
    rows = [torch.tensor([[10.0], [50.0]]), torch.zeros((0, 1)), torch.tensor([[11.0], [30.0]])]
    assert interleave(selection, rows)[:, 0].tolist() == [10.0, 11.0, 30.0, 50.0]
    assert select_sample(keys, members, 10) == [(0, 1), (2, 1), (2, 0), (0, 0), (2, 2), (0, 2)]


def test_select_top_and_merge_top_order_by_value_then_excerpt() -> None:
    values = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0]])
    excerpts = torch.tensor([[4, 9, 2, 1, 5]])
    chosen = select_top(values, excerpts, 2)
    assert sorted(excerpts[0, chosen[0]].tolist()) == [2, 5]
    assert excerpts[0, select_top(values, excerpts, 5)[0]].tolist() == [2, 5, 9, 1, 4]  # all: fully ordered
    assert excerpts[0, select_top(values, excerpts, 9)[0]].tolist() == [2, 5, 9, 1, 4]
    top_values, top_excerpts, top_acts = merge_top(
        [values[:, :2], values[:, 2:]],
        [excerpts[:, :2], excerpts[:, 2:]],
        [excerpts[:, :2, None].float(), excerpts[:, 2:, None].float()],
        3,
    )
    assert (top_values.tolist(), top_excerpts.tolist()) == ([[3.0, 3.0, 3.0]], [[2, 5, 9]])
    assert top_acts[0, :, 0].tolist() == [2.0, 5.0, 9.0]


def shard_states(acts: np.ndarray, cuts: list[int], options: CollectOptions = OPTIONS):
    """Each shard's tracker over its excerpts, then the merge of their states the way rank 0 merges them."""
    shards = [track(acts[a:b], 3, options, first=a) for a, b in itertools.pairwise(cuts)]
    sizes = (options.random_k, options.quantile_sample, options.nonactivating_k * QUIET_OVERSAMPLE)
    selections = [
        select_sample([s[i].keys for _, s in shards], [s[i].members for _, s in shards], s_size)
        for i, s_size in enumerate(sizes)
    ]
    states = [
        tracker.state(*(local_rows(selection, rank) for selection in selections))
        for rank, (tracker, _) in enumerate(shards)
    ]
    return merge_layer(states, selections[0], selections[1], options.top_k, selections[2])


# What a layer's state keeps as tensors, besides its moments (kept as shifted sums by a tracker, as mean and M2 by
# a state).
KEPT_TENSORS = (
    "max",
    "top_values",
    "top_excerpts",
    "top_activations",
    "random_activations",
    "sample_max",
    "level_values",
    "level_excerpts",
    "level_activations",
    "bottom_values",
    "bottom_excerpts",
    "bottom_activations",
    "quiet_activations",
)


def test_shards_merged_equal_one_tracker_over_everything() -> None:
    acts = activations(40, seed=3)
    whole = shard_states(acts, [0, 40])
    for cuts in ([0, 13, 40], [0, 0, 20, 40], [0, 2, 3, 40]):
        merged = shard_states(acts, cuts)
        assert merged.count == whole.count
        torch.testing.assert_close(merged.mean, whole.mean, rtol=0, atol=1e-6)
        torch.testing.assert_close(merged.m2, whole.m2, rtol=1e-6, atol=1e-6)
        for name in KEPT_TENSORS:
            assert torch.equal(getattr(merged, name), getattr(whole, name)), (cuts, name)
    # Merged top lists are sorted best first, ties to the earlier excerpt.
    values, excerpts = whole.top_values, whole.top_excerpts
    for row_values, row_excerpts in zip(values.tolist(), excerpts.tolist(), strict=True):
        assert list(zip(row_values, row_excerpts, strict=True)) == sorted(
            zip(row_values, row_excerpts, strict=True), key=lambda pair: (-pair[0], pair[1])
        )


def test_a_merge_keeps_no_quiet_rows_when_none_were_selected() -> None:
    acts = activations(12)
    tracker, _ = track(acts, 4)
    state = tracker.state([0], [0], [])
    merged = merge_layer([state], [(0, 0)], [(0, 0)], OPTIONS.top_k)
    assert tuple(merged.quiet_activations.shape) == (0, OPTIONS.excerpt_len, 5)


# --- the scorers' excerpts as records ---------------------------------------------------------------------------------


def test_scoring_records_by_hand() -> None:
    acts = activations()
    tracker, (_, quantile_sample, quiet_sample) = track(acts, 6)
    state = tracker.state([], range(OPTIONS.quantile_sample), range(6))
    excerpt_max, excerpt_min = acts.max(axis=1), acts.min(axis=1)
    median = np.median(excerpt_max[quantile_sample.members], axis=0)
    scoring = _ScoringState.of(state, median, list(quiet_sample.members), OPTIONS.nonactivating_k)
    strings = {e: (f"e{e}", "b", "c", "d") for e in range(len(acts))}
    levels = level_members(0, len(acts), OPTIONS.seed, level_rates(OPTIONS))
    sample = np.sort(excerpt_max[quantile_sample.members], axis=0)
    expected_excerpts = set()
    for neuron in range(5):
        records = scoring.records(neuron, strings)
        values = excerpt_max[:, neuron]
        kept = {e for members in levels for e in best(values, members, OPTIONS.quantile_k)}
        order = sorted(kept, key=lambda e: -values[e])
        assert sorted(r.tokens[0] for r in records.quantile) == sorted(f"e{e}" for e in kept)
        assert [r.max_activation for r in records.quantile] == [values[e] for e in order]
        assert list(records.levels) == [float((sample[:, neuron] <= values[e]).mean()) for e in order]
        bottom = best(-excerpt_min[:, neuron], range(len(acts)), OPTIONS.bottom_k)
        assert [r.tokens[0] for r in records.bottom] == [f"e{e}" for e in bottom]
        assert [list(r.activations) for r in records.bottom] == [acts[e, :, neuron].tolist() for e in bottom]
        quiet = [e for e in quiet_sample.members if values[e] < median[neuron]][: OPTIONS.nonactivating_k]
        assert [r.tokens[0] for r in records.non_activating] == [f"e{e}" for e in quiet]
        expected_excerpts |= kept | set(bottom) | set(quiet)
    assert 0 in expected_excerpts and scoring.excerpts() >= expected_excerpts
    assert scoring.excerpts() <= set(range(len(acts)))
    # Without a quantile sample the levels are unknown; without a median no candidate counts as quiet.
    blind = _ScoringState.of(tracker.state([], [], range(6)), None, list(quiet_sample.members), 2)
    assert all(np.isnan(level) for level in blind.records(0, strings).levels)
    assert blind.records(0, strings).non_activating == ()
    bare = BARE
    nothing = _ScoringState.of(_LayerTracker(3, bare, torch.device("cpu")).state([], [], []), None, [], 0)
    assert not nothing.present and nothing.records(0, strings) is None and nothing.excerpts() == set()


# --- placement: every tensor on the device asked for --------------------------------------------------------------

META = torch.device("meta")  # tensors with a shape and a device but no data: placement checked without a GPU


def tensors(holder: object) -> dict[str, torch.Tensor]:
    return {name: value for name, value in vars(holder).items() if isinstance(value, torch.Tensor)}


def test_a_tracker_and_its_state_live_on_the_device_asked_for() -> None:
    """Each layer's state on the device where the layer runs (under --device-map, several)."""
    tracker = _LayerTracker(5, OPTIONS, META)
    held = tensors(tracker)
    # Every kind of state (the run keeps every kind of scorers' excerpt), every one on that device.
    assert set(held) == {*KEPT_TENSORS, "shifted_sum", "shifted_sum_sq"}
    assert tracker.device == META and all(tensor.device == META for tensor in held.values())
    assert {held[name].dtype for name in ("top_excerpts", "level_excerpts", "bottom_excerpts")} == {torch.int64}
    state = tracker.state([1, 0], [2], [5, 3, 4])
    assert all(tensor.device == META for tensor in tensors(state).values())
    assert state.quiet_activations is not None
    shapes = [tuple(t.shape) for t in (state.random_activations, state.sample_max, state.quiet_activations)]
    assert shapes == [(2, 4, 5), (1, 5), (3, 4, 5)]


def test_a_merge_puts_every_part_on_the_first_parts_device() -> None:
    """Rank 0's device holds the merge; a part from elsewhere is moved there (here from the CPU to "meta", a move
    that cannot go the other way, so that a part left behind fails)."""
    bare = dataclasses.replace(BARE, random_k=2)
    acts = activations(6)
    on_cpu = track(acts, 3, bare)[0].state([0, 1], [0], [])
    on_meta = _LayerTracker(5, bare, META).state([], [], [])
    # Both parts' top lists whole (top_k = their widths together), which meta tensors can order.
    merged = merge_layer([on_meta, on_cpu], [(1, 0), (1, 1)], [(1, 0)], 4)
    assert merged.count == acts.shape[0] * acts.shape[1]
    assert all(tensor.device == META for tensor in tensors(merged).values())
    shapes = [tuple(t.shape) for t in (merged.top_values, merged.random_activations, merged.sample_max)]
    assert shapes == [(5, 4), (2, 4, 5), (1, 5)]


def test_an_empty_selection_interleaves_to_no_rows_of_the_rows_shape() -> None:
    assert tuple(interleave([], [torch.zeros((0, 4, 3)), torch.zeros((0, 4, 3))]).shape) == (0, 4, 3)


def test_merges_refuse_parts_that_do_not_line_up() -> None:
    """A shard's keys without its excerpts, or counts without means, are an error rather than a shorter merge."""
    with pytest.raises(ValueError):
        select_sample([[1, 2], [3]], [[10, 20]], 3)
    with pytest.raises(ValueError):
        select_sample([[1, 2], [3]], [[10, 20], []], 3)
    with pytest.raises(ValueError):
        chan_merge([1, 1], [torch.zeros(2)], [torch.zeros(2), torch.zeros(2)])


# --- numerics, boundaries and ties ---------------------------------------------------------------------------------


def test_moments_stay_exact_for_neurons_far_from_zero_and_from_each_other() -> None:
    """Offsets of ±10⁴ around spreads of a few units: squared without each neuron's own shift, float32 would round
    the variance away."""
    acts = activations() + np.array([3e4, -3e4, 1e4, -2e4, 5e3], dtype=np.float32)
    tracker, _ = track(acts, 8)
    state = tracker.state([], [], [])
    flat = acts.reshape(-1, acts.shape[2]).astype(np.float64)
    np.testing.assert_allclose(state.mean.numpy(), flat.mean(axis=0), rtol=1e-7)
    np.testing.assert_allclose(state.m2.numpy(), ((flat - flat.mean(axis=0)) ** 2).sum(axis=0), rtol=1e-5)


def test_an_excerpt_whose_level_key_equals_the_threshold_is_left_out() -> None:
    """Members are the excerpts whose key is strictly below rate × 2⁶³: with a rate whose threshold is exactly an
    excerpt's key, that excerpt is out, and with the next rate up it is in."""
    seed, count = 5, 20_000
    keys = sample_keys(np.arange(count), seed, LEVEL_STREAM).tolist()
    # A key that a float holds exactly, so that rate × 2⁶³ gives it back.
    index = next(i for i, key in enumerate(keys) if int(float(key)) == key and key < 0.99 * 2**63)
    key = keys[index]
    rate = key / 2**63
    assert int(np.int64(rate * 2**63)) == key
    assert level_members(0, count, seed, [rate]) == [[i for i, other in enumerate(keys) if other < key]]
    assert level_members(index, 1, seed, [rate]) == [[]]
    assert level_members(index, 1, seed, [float(np.nextafter(rate, 1.0))]) == [[0]]


def splitmix64_unmix(z: int) -> int:
    """The inverse of SplitMix64's finaliser (`splitmix64_mix`): each xor-shift and odd multiplier undone."""

    def unshift(value: int, shift: int) -> int:
        result = value
        for _ in range(64 // shift + 1):
            result = value ^ (result >> shift)
        return result

    z = (unshift(z, 31) * pow(0x94D049BB133111EB, -1, 2**64)) & MASK64
    z = (unshift(z, 27) * pow(0xBF58476D1CE4E5B9, -1, 2**64)) & MASK64
    return unshift(z, 30)


def key_twin(index: int, seed: int, stream: int) -> int:
    """The other excerpt index with `index`'s key: the 64-bit output that differs only in the bit the shift to 63
    bits drops has one preimage, the finaliser and index × gamma + salt being bijections modulo 2⁶⁴."""
    salt = splitmix64_mix((seed * 2 + stream) & MASK64)
    output = splitmix64_mix((index * GAMMA + salt) & MASK64)
    return ((splitmix64_unmix(output ^ 1) - salt) * pow(GAMMA, -1, 2**64)) & MASK64


def test_a_keyed_sample_breaks_ties_in_keys_by_the_earlier_excerpt_whatever_the_order() -> None:
    """Keys can tie (63 of 64 bits); the sample is then the `size` smallest (key, excerpt), as `select_sample`
    merges them, whatever order the excerpts come in."""
    seed, stream, index = 9, 0, 21  # excerpt 21's key sits near the middle, and its twin fits in an int64
    twin = key_twin(index, seed, stream)
    key = splitmix64_key(index, seed, stream)
    assert index < twin < 2**62 and sample_keys(np.array([index, twin]), seed, stream).tolist() == [key, key]
    others = sample_keys(np.arange(100), seed, stream).tolist()
    below, above = next(i for i in range(100) if others[i] < key), next(i for i in range(100) if others[i] > key)
    offered = [index, twin, below, above]
    key_of = {excerpt: splitmix64_key(excerpt, seed, stream) for excerpt in offered}
    for size in (1, 2, 3):
        expected = sorted(sorted(offered, key=lambda excerpt: (key_of[excerpt], excerpt))[:size])
        for order in itertools.permutations(offered):
            sample = KeyedSample(size, seed, stream)
            for excerpt in order:
                sample.offer(excerpt, 1)
            assert sorted(sample.members) == expected, (size, order)
            assert sample.keys == [key_of[member] for member in sample.members]


def hand_state(**scoring: torch.Tensor) -> LayerState:
    """A one-neuron state, excerpts one token long, holding only the scorers' excerpts given."""
    return LayerState(
        count=0,
        mean=torch.zeros(1, dtype=torch.float64),
        m2=torch.zeros(1, dtype=torch.float64),
        max=torch.zeros(1),
        top_values=torch.zeros((1, 0)),
        top_excerpts=torch.zeros((1, 0), dtype=torch.long),
        top_activations=torch.zeros((1, 0, 1)),
        random_activations=torch.zeros((0, 1, 1)),
        sample_max=torch.zeros((0, 1)),
        **scoring,
    )


def test_scoring_records_need_only_the_excerpts_the_state_names_and_skip_values_that_are_not_numbers() -> None:
    """Each kind on its own: excerpt 0 is an excerpt like any other, a slot whose value is not a number (a model
    that overflowed) makes no record, and `excerpts()` names every excerpt the records are made of."""
    nan, inf = float("nan"), float("inf")
    level_kind = hand_state(
        level_values=torch.tensor([[[nan, 4.0, -inf]]]),
        level_excerpts=torch.tensor([[[2, 0, -1]]]),
        level_activations=torch.tensor([[[[nan], [4.0], [0.0]]]]),
    )
    bottom_kind = hand_state(
        bottom_values=torch.tensor([[nan, 1.0, -inf]]),
        bottom_excerpts=torch.tensor([[3, 0, -1]]),
        bottom_activations=torch.tensor([[[nan], [-1.0], [0.0]]]),
    )
    for state in (level_kind, bottom_kind):
        scoring = _ScoringState.of(state, None, [], 0)
        assert 0 in scoring.excerpts() and -1 not in scoring.excerpts()
        strings: dict[int, tuple[str, ...]] = {excerpt: (f"e{excerpt}",) for excerpt in scoring.excerpts()}
        records = scoring.records(0, strings)
        assert records is not None
        assert [(r.tokens, r.activations) for r in records.quantile + records.bottom] == [
            (("e0",), (4.0,) if state is level_kind else (-1.0,))
        ]
    # Without a median no candidate is below it: a mask of booleans, all False.
    quiet = _ScoringState.of(hand_state(quiet_activations=torch.zeros((3, 1, 1))), None, [7, 8, 9], 2)
    assert quiet.quiet_below.dtype == np.bool_ and quiet.quiet_below.shape == (1, 3) and not quiet.quiet_below.any()
    assert quiet.excerpts() == set() and quiet.records(0, {}) == ScoringRecords()


def test_tied_scoring_records_come_in_one_order_by_level_then_excerpt() -> None:
    """Quantile records tied in value come by the first level holding them, then by excerpt; bottom records, most
    negative first, by excerpt: the order of the merged lists. Each neuron's 18 level slots, sorted within a level
    but not across levels, with many ties, are more than a sort that is not stable keeps in order by luck."""
    many = CollectOptions(
        max_tokens=120 * 2,
        excerpt_len=2,
        top_k=2,
        random_k=1,
        quantile_sample=10,
        seed=1,
        quantile_levels=3,
        quantile_k=6,
        nonactivating_k=1,
        bottom_k=5,
    )
    acts = np.random.default_rng(4).integers(-9, 10, size=(120, 2, 3)).astype(np.float32)
    scoring = _ScoringState.of(shard_states(acts, [0, 50, 120], many), None, [], 0)
    strings: dict[int, tuple[str, ...]] = {excerpt: (f"e{excerpt}", "x") for excerpt in range(len(acts))}
    excerpt_max, excerpt_min = acts.max(axis=1), acts.min(axis=1)
    levels = level_members(0, len(acts), many.seed, level_rates(many))
    for neuron in range(acts.shape[2]):
        records = scoring.records(neuron, strings)
        assert records is not None
        values = excerpt_max[:, neuron]
        first_level: dict[int, int] = {}
        for level, members in enumerate(levels):
            for excerpt in best(values, members, many.quantile_k):
                first_level.setdefault(excerpt, level)
        expected = sorted(first_level, key=lambda e: (-values[e], first_level[e], e))
        assert [r.tokens[0] for r in records.quantile] == [f"e{e}" for e in expected], neuron
        bottom = best(-excerpt_min[:, neuron], range(len(acts)), many.bottom_k)
        assert [r.tokens[0] for r in records.bottom] == [f"e{e}" for e in bottom], neuron
