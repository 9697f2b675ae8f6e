"""Distributed collection: the merge functions on hand-made states, shards merged in process against one pass, and
real runs of 2 processes over gloo (torchrun, and a rank that dies) against one process on the same corpus."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from core import db as dbmod
from core.activations import CollectOptions, collect, stream_pass
from core.corpus import batched, load_corpus, token_excerpts
from core.distributed import (
    KeyedSample,
    LayerState,
    World,
    chan_merge,
    interleave,
    local_rows,
    merge_layer,
    merge_top,
    select_sample,
    select_top,
)
from core.errors import WorkbenchError
from core.models import load_subject_model
from core.records import NeuronId
from tests import tiny_models

REPO_ROOT = Path(__file__).resolve().parent.parent
OPTIONS = CollectOptions(max_tokens=1600, excerpt_len=16, top_k=6, random_k=5, batch_size=7, seed=3)
ARGS = ["--max-tokens", "1600", "--excerpt-len", "16", "--top-k", "6", "--random-k", "5", "--batch-size", "7",
        "--seed", "3", "--device", "cpu"]  # fmt: skip


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(tiny_models.TEXT * 4)
    return path


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory) -> Path:
    return tiny_models.build("gpt2", tmp_path_factory.mktemp("gpt2"))


# --- Merge functions on hand-made states -------------------------------------------------------------------------


def test_world_from_torchrun_variables():
    assert World.from_env({}) == World(0, 1, 0) and not World.from_env({}).distributed
    world = World.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (world.rank, world.world_size, world.local_rank, world.is_main) == (3, 4, 1, False)
    assert [b for b in range(10) if world.owns_batch(b)] == [3, 7]


def test_chan_merge_equals_moments_of_the_union_and_ignores_empty_parts():
    rng = np.random.default_rng(0)
    parts = [rng.normal(5, 3, (n, 4)) for n in (17, 0, 1, 40)]
    counts = [len(p) for p in parts]
    means = [torch.tensor(p.mean(axis=0) if len(p) else np.zeros(4)) for p in parts]
    m2s = [torch.tensor(((p - p.mean(axis=0)) ** 2).sum(axis=0) if len(p) else np.zeros(4)) for p in parts]
    count, mean, m2 = chan_merge(counts, means, m2s)
    union = np.concatenate(parts)
    assert count == len(union)
    np.testing.assert_allclose(mean.numpy(), union.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose((m2 / count).numpy(), union.var(axis=0), rtol=1e-12)
    assert chan_merge([0, 0], means[:2], m2s[:2])[0] == 0


def brute_force_top(values: np.ndarray, excerpts: np.ndarray, k: int) -> list[list[int]]:
    """The k best (value descending, excerpt ascending) excerpt ids per row, by sorting everything."""
    return [
        [int(e) for _, e in sorted(zip(-row_values, row_excerpts, strict=True))[:k]]
        for row_values, row_excerpts in zip(values, excerpts, strict=True)
    ]


def test_select_top_breaks_ties_by_excerpt_index():
    rng = np.random.default_rng(1)
    values = rng.integers(0, 4, (200, 30)).astype(np.float32)  # many ties at the boundary
    excerpts = np.stack([rng.permutation(100)[:30] for _ in range(200)])
    chosen = select_top(torch.tensor(values), torch.tensor(excerpts), 6).numpy()
    picked = [sorted(int(e) for e in row[c]) for row, c in zip(excerpts, chosen, strict=True)]
    assert picked == [sorted(row) for row in brute_force_top(values, excerpts, 6)]


def hand_state(values: list[list[float]], excerpts: list[list[int]], k: int, length: int = 2) -> LayerState:
    """A layer state of one neuron per row, padded to k slots the way a tracker leaves unused ones."""
    n = len(values)
    top_values = torch.full((n, k), float("-inf"))
    top_excerpts = torch.full((n, k), -1, dtype=torch.long)
    top_activations = torch.zeros((n, k, length))
    for row, (row_values, row_excerpts) in enumerate(zip(values, excerpts, strict=True)):
        for slot, (value, excerpt) in enumerate(zip(row_values, row_excerpts, strict=True)):
            top_values[row, slot], top_excerpts[row, slot] = value, excerpt
            top_activations[row, slot] = torch.tensor([excerpt, value])  # identifies the excerpt's activations
    finite = [v for row in values for v in row]
    return LayerState(
        count=len(finite),
        mean=torch.zeros(n, dtype=torch.float64),
        m2=torch.zeros(n, dtype=torch.float64),
        max=torch.tensor([max(row, default=float("-inf")) for row in values]),
        top_values=top_values,
        top_excerpts=top_excerpts,
        top_activations=top_activations,
        random_activations=torch.zeros((0, length, n)),
        sample_max=torch.zeros((0, n)),
    )


def test_merge_top_with_an_empty_shard_shards_smaller_than_k_and_ties():
    k = 4
    shards = [
        hand_state([[5.0, 1.0], [2.0]], [[10, 3], [7]], k),  # smaller than k
        hand_state([[], []], [[], []], k),  # an empty shard
        hand_state([[5.0, 4.0, 0.5, 0.1], [2.0, 2.0, 2.0, 9.0]], [[2, 8, 9, 12], [8, 1, 6, 4]], k),
    ]
    values, excerpts, activations = merge_top(
        [s.top_values for s in shards], [s.top_excerpts for s in shards], [s.top_activations for s in shards], k
    )
    # Neuron 0: 5.0 twice (excerpts 2 and 10: 2 first), then 4.0, 1.0. Neuron 1: 9.0, then three of four 2.0s by
    # excerpt index (1, 6, 7; not 8).
    assert excerpts.tolist() == [[2, 10, 8, 3], [4, 1, 6, 7]]
    assert values.tolist() == [[5.0, 5.0, 4.0, 1.0], [9.0, 2.0, 2.0, 2.0]]
    assert activations[:, :, 0].long().tolist() == excerpts.tolist()  # activations travel with their excerpt
    only_empty = merge_top([shards[1].top_values], [shards[1].top_excerpts], [shards[1].top_activations], k)
    assert torch.isinf(only_empty[0]).all() and (only_empty[1] == -1).all()


def test_keyed_samples_merge_exactly_including_empty_and_small_shards():
    size, seed = 6, 11
    whole = KeyedSample(size, seed, stream=1)
    whole.offer(0, 40)
    shards = [KeyedSample(size, seed, stream=1) for _ in range(3)]
    shards[0].offer(0, 3)  # smaller than the sample
    shards[2].offer(3, 37)  # shard 1 stays empty
    selection = select_sample([s.keys for s in shards], [s.members for s in shards], size)
    merged = [shards[shard].members[slot] for shard, slot in selection]
    expected = [whole.members[i] for i in np.argsort(whole.keys)]
    assert merged == expected
    # Rows travel with their excerpt: each shard sends its kept rows in merged order, interleave restores it.
    rows = [torch.tensor([[float(s.members[slot])] for slot in local_rows(selection, i)]).reshape(-1, 1)
            for i, s in enumerate(shards)]  # fmt: skip
    assert interleave(selection, rows)[:, 0].long().tolist() == merged


def test_merge_layer_of_one_shard_is_that_shard():
    state = hand_state([[3.0, 1.0, 2.0]], [[5, 6, 7]], k=3)
    state.random_activations, state.sample_max = torch.arange(6.0).reshape(3, 2, 1), torch.tensor([[1.0], [2.0]])
    merged = merge_layer([state], [(0, 0), (0, 1), (0, 2)], [(0, 0), (0, 1)], top_k=3)
    assert merged.top_excerpts.tolist() == [[5, 7, 6]] and merged.count == 3
    assert torch.equal(merged.random_activations, state.random_activations)
    assert torch.equal(merged.sample_max, state.sample_max)


# --- Shards merged in process against one pass ----------------------------------------------------------------


def merged_shards(subject, batches, options, world_size: int, tmp_path: Path) -> tuple[dict, list[int]]:
    """Every rank's pass run here one after another, then merged the way rank 0 merges them."""
    results = [
        stream_pass(subject, [0, 2], iter(batches), options, tmp_path, world=World(rank, world_size))
        for rank in range(world_size)
    ]
    random_selection = select_sample(
        [r.random_sample.keys for r in results], [r.random_sample.members for r in results], options.random_k
    )
    sample_selection = select_sample(
        [r.quantile_sample.keys for r in results], [r.quantile_sample.members for r in results], options.quantile_sample
    )
    states = {
        layer: merge_layer(
            [
                r.trackers[layer].state(local_rows(random_selection, rank), local_rows(sample_selection, rank))
                for rank, r in enumerate(results)
            ],
            random_selection,
            sample_selection,
            options.top_k,
        )
        for layer in (0, 2)
    }
    members = [results[shard].random_sample.members[slot] for shard, slot in random_selection]
    return states, members


def test_shards_merged_equal_one_pass_exactly(gpt2, corpus_file, tmp_path):
    options = CollectOptions(max_tokens=1600, excerpt_len=16, top_k=6, random_k=5, batch_size=7, quantile_sample=30)
    subject = load_subject_model(str(gpt2), device="cpu")
    excerpts = token_excerpts(load_corpus(str(corpus_file)), subject.tokenizer, 16, options.max_tokens)
    batches = list(batched(excerpts, options.batch_size))  # 15 batches, the last one of 2 excerpts
    # 2 ranks over the corpus; 5 ranks over its first 3 batches, so that two shards are empty.
    for some_batches, world_size in ((batches, 2), (batches[:3], 5)):
        one, one_members = merged_shards(subject, some_batches, options, 1, tmp_path)
        many, many_members = merged_shards(subject, some_batches, options, world_size, tmp_path)
        assert many_members == one_members
        for layer in (0, 2):
            a, b = one[layer], many[layer]
            assert a.count == b.count == sum(map(len, some_batches)) * 16
            assert torch.equal(a.top_excerpts, b.top_excerpts)
            torch.testing.assert_close(a.top_values, b.top_values, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(a.top_activations, b.top_activations, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(a.random_activations, b.random_activations, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(a.sample_max, b.sample_max, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(a.mean, b.mean, rtol=1e-6, atol=1e-7)
            torch.testing.assert_close(a.m2, b.m2, rtol=1e-5, atol=1e-6)
            assert torch.equal(a.max, b.max)


# --- Real processes over gloo ----------------------------------------------------------------------------------


def assert_same_neurons(db_a, db_b, model: str, layers: list[int]) -> None:
    for layer in layers:
        for index in range(tiny_models.INTERMEDIATE):
            a = dbmod.get_neuron(db_a, model, NeuronId(layer, index))
            b = dbmod.get_neuron(db_b, model, NeuronId(layer, index))
            for kind in ("top", "random"):
                records_a, records_b = getattr(a, kind), getattr(b, kind)
                assert [r.tokens for r in records_a] == [r.tokens for r in records_b], (layer, index, kind)
                np.testing.assert_allclose(
                    [r.activations for r in records_a], [r.activations for r in records_b], rtol=1e-5, atol=1e-6
                )
            stats_a, stats_b = a.stats, b.stats
            assert stats_a.quantiles.keys() == stats_b.quantiles.keys()
            np.testing.assert_allclose(
                [stats_a.mean, stats_a.variance, stats_a.max, *stats_a.quantiles.values()],
                [stats_b.mean, stats_b.variance, stats_b.max, *stats_b.quantiles.values()],
                rtol=1e-5,
                atol=1e-7,
            )


def test_torchrun_two_processes_equal_one_process(gpt2, corpus_file, tmp_path):
    single = dbmod.connect(tmp_path / "single.db")
    collect(single, str(gpt2), [0, 2], str(corpus_file), OPTIONS)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "core", "collect", "--db", str(tmp_path / "two.db"), "--model", str(gpt2),
               "--corpus", str(corpus_file), "--layers", "0,2", *ARGS, "--json"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)  # one report, from rank 0
    assert report["world_size"] == 2 and sum(report["tokens_per_rank"]) == report["n_tokens"] == 1600
    assert len(report["tokens_per_second_per_rank"]) == len(report["peak_memory_bytes_per_rank"]) == 2
    assert report["merge_seconds"] >= 0 and [m["layer"] for m in report["layer_memory"]] == [0, 2]
    two = dbmod.connect(tmp_path / "two.db")
    assert_same_neurons(single, two, str(gpt2), [0, 2])
    runs = [two.conn.execute("SELECT n_excerpts, n_tokens FROM runs").fetchall(),
            single.conn.execute("SELECT n_excerpts, n_tokens FROM runs").fetchall()]  # fmt: skip
    assert runs[0] == runs[1] == [(100, 1600)]


def _rank_main(rank: int, port: int, db_path: str, model: str, corpus: str, error_file: str) -> None:
    """One rank of a 2-process run over gloo, as torchrun would start it; rank 1 dies after its first batch."""
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))  # fmt: skip
    torch.set_num_threads(1)

    def die(_done: int, _total: int | None) -> None:
        os._exit(3)

    database = dbmod.connect(db_path) if rank == 0 else None
    try:
        collect(database, model, [0, 1], corpus, OPTIONS, progress=die if rank == 1 else None)
    except WorkbenchError as exc:
        Path(error_file).write_text(str(exc))
        raise SystemExit(2) from None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_rank_that_dies_fails_the_run_cleanly_and_a_rerun_resumes(gpt2, corpus_file, tmp_path):
    db_path = tmp_path / "run.db"
    database = dbmod.connect(db_path)
    collect(database, str(gpt2), [0], str(corpus_file), OPTIONS)  # layer 0 finished by an earlier run
    before = dbmod.get_neuron(database, str(gpt2), NeuronId(0, 3))
    error_file = tmp_path / "rank0-error.txt"
    context = multiprocessing.get_context("spawn")
    port = free_port()
    ranks = [
        context.Process(target=_rank_main, args=(r, port, str(db_path), str(gpt2), str(corpus_file), str(error_file)))
        for r in range(2)
    ]
    for process in ranks:
        process.start()
    for process in ranks:
        process.join(timeout=120)
    assert [process.exitcode for process in ranks] == [2, 3]
    assert "distributed collection failed" in error_file.read_text()
    assert "rerun the same command" in error_file.read_text()
    # Nothing of layer 1 was written; layer 0 is untouched.
    assert dbmod.list_layers(database, str(gpt2)) == [(0, tiny_models.INTERMEDIATE)]
    assert database.conn.execute("SELECT layer FROM run_layers").fetchall() == [(0,)]
    assert dbmod.get_neuron(database, str(gpt2), NeuronId(0, 3)) == before
    rerun = collect(database, str(gpt2), [0, 1], str(corpus_file), OPTIONS)
    assert (rerun.layers, rerun.skipped_layers) == ([1], [0])
    assert [count for _, count in dbmod.list_layers(database, str(gpt2))] == [tiny_models.INTERMEDIATE] * 2
