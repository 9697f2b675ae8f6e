"""Collection against a brute-force oracle, plus resume, idempotence and failure handling."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats

from core import db as dbmod
from core.__main__ import main
from core.activations import CollectOptions, collect
from core.corpus import load_corpus, special_token_layout, token_excerpts, token_strings
from core.distributed import KeyedSample
from core.errors import InputError, WorkbenchError
from core.models import load_subject_model
from core.records import NeuronId
from tests import tiny_models

OPTIONS = CollectOptions(max_tokens=1600, excerpt_len=16, top_k=6, random_k=5, batch_size=7, seed=3)


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(tiny_models.TEXT * 4)
    return path


@pytest.fixture(scope="module", params=["gpt2", "llama", "bert"])
def tiny_model(request, tmp_path_factory) -> tuple[str, Path]:
    return request.param, tiny_models.build(request.param, tmp_path_factory.mktemp(request.param))


def all_activations(model_path: Path, corpus_file: Path, options: CollectOptions, layer: int):
    """Oracle: every excerpt through the model, the MLP output projection's input captured by a plain hook."""
    subject = load_subject_model(str(model_path), device="cpu")
    excerpts = list(
        token_excerpts(load_corpus(str(corpus_file)), subject.tokenizer, options.excerpt_len, options.max_tokens)
    )
    prefix, suffix = special_token_layout(subject.tokenizer)
    captured = []
    hook = subject.mlp_out(layer).register_forward_pre_hook(lambda _m, inputs: captured.append(inputs[0]))
    with torch.inference_mode():
        subject.model(input_ids=torch.tensor([prefix + e + suffix for e in excerpts]))
    hook.remove()
    acts = captured[0][:, len(prefix) : len(prefix) + options.excerpt_len].double().numpy()
    return subject, excerpts, acts


def test_collection_matches_brute_force(tiny_model, corpus_file, db):
    _, model_path = tiny_model
    report = collect(db, str(model_path), [0, 2], str(corpus_file), OPTIONS)
    assert report.layers == [0, 2] and report.n_excerpts == OPTIONS.max_tokens // OPTIONS.excerpt_len
    subject, excerpts, acts = all_activations(model_path, corpus_file, OPTIONS, layer=2)
    strings = [tuple(token_strings(subject.tokenizer, e)) for e in excerpts]
    excerpt_max = acts.max(axis=1)  # [excerpts, neurons]
    for index in range(subject.n_neurons):
        record = dbmod.get_neuron(db, str(model_path), NeuronId(2, index))
        expected_order = np.argsort(-excerpt_max[:, index], kind="stable")[: OPTIONS.top_k]
        np.testing.assert_allclose(
            [r.max_activation for r in record.top], excerpt_max[expected_order, index], rtol=1e-5, atol=1e-6
        )
        for rec, excerpt in zip(record.top, expected_order, strict=True):
            assert rec.tokens == strings[excerpt] or rec.max_activation == pytest.approx(excerpt_max[excerpt, index])
            matches = [e for e, s in enumerate(strings) if s == rec.tokens]
            assert any(np.allclose(rec.activations, acts[e, :, index], atol=1e-5) for e in matches)
        flat = acts[:, :, index].ravel()
        assert record.stats.mean == pytest.approx(flat.mean(), abs=1e-6)
        assert record.stats.variance == pytest.approx(flat.var(), rel=1e-4, abs=1e-8)
        assert record.stats.max == pytest.approx(flat.max(), rel=1e-6)
        for level, value in record.stats.quantiles.items():
            assert value == pytest.approx(np.quantile(excerpt_max[:, index], level), rel=1e-5, abs=1e-6)
        # Random records: the same excerpts for every neuron, each with this neuron's true activations.
        assert len(record.random) == OPTIONS.random_k
        for rec in record.random:
            matches = [e for e, s in enumerate(strings) if s == rec.tokens]
            assert any(np.allclose(rec.activations, acts[e, :, index], atol=1e-5) for e in matches)


def test_top_records_sorted_and_splits(tiny_model, corpus_file, db):
    _, model_path = tiny_model
    collect(db, str(model_path), [1], str(corpus_file), CollectOptions(max_tokens=2048, excerpt_len=16, top_k=20))
    record = dbmod.get_neuron(db, str(model_path), NeuronId(1, 5))
    maxima = [r.max_activation for r in record.top]
    assert maxima == sorted(maxima, reverse=True) and len(maxima) == 20
    assert record.split("valid") == [record.top[i] for i in (2, 6, 10, 14, 18)] + [
        record.random[i] for i in (1, 4, 7, 10, 13)
    ]


def test_resume_skips_finished_layers_and_is_idempotent(corpus_file, db, tmp_path):
    model_path = str(tiny_models.build("gpt2", tmp_path / "gpt2"))
    first = collect(db, model_path, [0], str(corpus_file), OPTIONS)
    before = dbmod.get_neuron(db, model_path, NeuronId(0, 3))
    second = collect(db, model_path, [0, 1], str(corpus_file), OPTIONS)
    assert (first.layers, second.layers, second.skipped_layers) == ([0], [1], [0])
    assert dbmod.get_neuron(db, model_path, NeuronId(0, 3)) == before
    third = collect(db, model_path, [0, 1], str(corpus_file), OPTIONS)
    assert third.layers == [] and third.skipped_layers == [0, 1]
    assert dbmod.list_layers(db, model_path) == [(0, 48), (1, 48)]


def test_other_settings_never_silently_replace_a_collected_layer(corpus_file, db, db_path, tmp_path, capsys):
    model_path = str(tiny_models.build("gpt2", tmp_path / "gpt2"))
    collect(db, model_path, [0], str(corpus_file), OPTIONS)
    before = dbmod.get_neuron(db, model_path, NeuronId(0, 3))
    smaller = CollectOptions(max_tokens=800, excerpt_len=16, top_k=6, random_k=5, batch_size=7, seed=3)
    with pytest.raises(InputError, match=r"layer 0 of .* already holds 48 neurons collected with other settings"):
        collect(db, model_path, [0, 1], str(corpus_file), smaller)
    assert dbmod.get_neuron(db, model_path, NeuronId(0, 3)) == before and dbmod.list_layers(db, model_path) == [(0, 48)]
    imported = dbmod.get_neuron(db, model_path, NeuronId(0, 3))
    dbmod.write_neurons(db, model_path, [replace(imported, neuron=NeuronId(2, 0))], source="openai")
    with pytest.raises(InputError, match=r"layer 2 .* already holds 1 openai neurons"):
        collect(db, model_path, [2], str(corpus_file), OPTIONS)
    args = ["collect", "--db", str(db_path), "--model", model_path, "--corpus", str(corpus_file), "--layers", "0",
            "--max-tokens", "800", "--excerpt-len", "16", "--top-k", "6", "--random-k", "5", "--seed", "3",
            "--device", "cpu"]  # fmt: skip
    assert main(args) == 2 and "pass --replace to overwrite" in capsys.readouterr().err
    assert main([*args, "--replace"]) == 0
    assert dbmod.get_neuron(db, model_path, NeuronId(0, 3)) != before


def test_bad_input_leaves_db_unchanged(corpus_file, db, tmp_path):
    model_path = str(tiny_models.build("gpt2", tmp_path / "gpt2"))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(InputError, match="no complete excerpt"):
        collect(db, model_path, [0], str(empty), OPTIONS)
    with pytest.raises(InputError, match=r"does not fit .* context of 128"):
        collect(db, model_path, [0], str(corpus_file), CollectOptions(excerpt_len=200, max_tokens=1000))
    with pytest.raises(InputError, match="layer 9 out of range"):
        collect(db, model_path, [9], str(corpus_file), OPTIONS)
    with pytest.raises(InputError, match="not found"):
        collect(db, model_path, [0], str(tmp_path / "missing.txt"), OPTIONS)
    counts = dbmod.summary(db)["counts"]
    assert counts["neurons"] == 0
    assert db.conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0


def test_full_disk_fails_cleanly_and_rerun_completes(corpus_file, db_path, tmp_path):
    model_path = str(tiny_models.build("gpt2", tmp_path / "gpt2"))
    database = dbmod.connect(db_path)
    pages = database.conn.execute("PRAGMA page_count").fetchone()[0]
    database.conn.execute(f"PRAGMA max_page_count = {pages + 30}")  # SQLite's own "disk full" (SQLITE_FULL)
    with pytest.raises(WorkbenchError, match="database or disk is full"):
        collect(database, model_path, [0, 1, 2], str(corpus_file), OPTIONS)
    finished = database.conn.execute("SELECT layer, n_neurons FROM run_layers").fetchall()
    for layer, n_neurons in finished:  # a finished layer is whole; nothing half written is visible
        assert dbmod.layer_neuron_count(database, model_path, layer) == n_neurons
    assert database.conn.execute("SELECT COUNT(*) FROM records r LEFT JOIN neurons n ON n.id = r.neuron_id"
                                 " WHERE n.id IS NULL").fetchone()[0] == 0  # fmt: skip
    database.conn.close()
    database = dbmod.connect(db_path)
    report = collect(database, model_path, [0, 1, 2], str(corpus_file), OPTIONS)
    assert sorted(report.layers + report.skipped_layers) == [0, 1, 2]
    assert [count for _, count in dbmod.list_layers(database, model_path)] == [48, 48, 48]


def test_killed_process_then_rerun_completes(corpus_file, db_path, tmp_path):
    """SIGKILL the CLI after its first layer is committed: nothing half written, and a rerun finishes the job."""
    model_path = str(tiny_models.build("gpt2", tmp_path / "gpt2"))
    args = [sys.executable, "-m", "core", "collect", "--db", str(db_path), "--model", model_path,
            "--corpus", str(corpus_file), "--layers", "0,1,2", "--max-tokens", "1600", "--excerpt-len", "16",
            "--top-k", "6", "--random-k", "5", "--seed", "3", "--batch-size", "7", "--device", "cpu"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    killed_midway = False
    while process.poll() is None and time.monotonic() < deadline:
        try:
            with sqlite3.connect(db_path, timeout=1) as conn:
                if conn.execute("SELECT COUNT(*) FROM run_layers").fetchone()[0] >= 1:
                    process.send_signal(signal.SIGKILL)
                    killed_midway = True
                    break
        except sqlite3.OperationalError:
            pass
        time.sleep(0.005)
    process.wait(timeout=60)
    database = dbmod.connect(db_path)
    for layer, n_neurons in database.conn.execute("SELECT layer, n_neurons FROM run_layers").fetchall():
        assert dbmod.layer_neuron_count(database, model_path, layer) == n_neurons == 48
    rerun = subprocess.run([*args, "--json"], env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert [count for _, count in dbmod.list_layers(database, model_path)] == [48, 48, 48]
    if killed_midway:
        assert '"skipped_layers": []' not in rerun.stdout


def test_keyed_sample_is_uniform_and_ignores_arrival_order():
    counts = np.zeros(50)
    for seed in range(1000):
        sample = KeyedSample(5, seed, stream=0)
        for first in range(0, 50, 5):
            sample.offer(first, 5)
        counts[sample.members] += 1
        backwards = KeyedSample(5, seed, stream=0)
        for first in range(45, -5, -5):
            backwards.offer(first, 5)
        assert sorted(backwards.members) == sorted(sample.members)
    # Every excerpt is kept with probability 5/50, 100 times in 1000 trials on average: a chi-square test of
    # uniformity (fixed seeds, so it always gives the same p-value) refuses a sampler that favours or never keeps
    # one of them.
    assert counts.sum() == 5000
    assert scipy_stats.chisquare(counts).pvalue > 0.001


def test_quantiles_from_a_sample_when_the_corpus_is_large(corpus_file, db, tmp_path):
    model_path = str(tiny_models.build("gpt2", tmp_path / "gpt2"))
    options = CollectOptions(max_tokens=1600, excerpt_len=16, top_k=6, random_k=5, quantile_sample=40)
    collect(db, model_path, [0], str(corpus_file), options)
    _, _, acts = all_activations(Path(model_path), corpus_file, options, layer=0)
    excerpt_max = acts.max(axis=1)
    errors = []
    for index in range(48):
        median = dbmod.get_neuron(db, model_path, NeuronId(0, index)).stats.quantiles[0.5]
        spread = excerpt_max[:, index].max() - excerpt_max[:, index].min()
        errors.append(abs(median - np.median(excerpt_max[:, index])) / spread)
    assert np.mean(errors) < 0.1  # 40 of 100 excerpts: close, not exact


def test_device_map_collects_the_same_as_one_device(corpus_file, tmp_path):
    """--device-map's code path on CPU: modules placed by accelerate, one block offloaded to disk so that its
    weights live on the meta device and accelerate's dispatch hooks run around every module (a map of only "cpu"
    pieces is loaded without them). The hooks read the same neurons, and state sits on each layer's device."""
    model_path = str(tiny_models.build("gpt2", tmp_path / "gpt2"))
    placed = {"wte": "cpu", "wpe": "cpu", "h.0": "cpu", "h.1": "disk", "h.2": "cpu", "ln_f": "cpu"}
    plain_db, mapped_db = dbmod.connect(tmp_path / "plain.db"), dbmod.connect(tmp_path / "mapped.db")
    collect(plain_db, model_path, [0, 1, 2], str(corpus_file), OPTIONS)
    mapped_options = replace(OPTIONS, device_map=json.dumps(placed))
    report = collect(mapped_db, model_path, [0, 1, 2], str(corpus_file), mapped_options)
    subject = load_subject_model(model_path, "cpu", None, json.dumps(placed))
    assert subject.mlp_out(1).weight.device.type == "meta" and hasattr(subject.mlp_out(1), "_hf_hook")
    assert [(m.layer, m.device) for m in report.layer_memory] == [(0, "cpu"), (1, "cpu"), (2, "cpu")]
    assert all(m.state_bytes > 0 for m in report.layer_memory)
    for layer in (0, 1, 2):
        for index in range(0, 48, 5):
            plain = dbmod.get_neuron(plain_db, model_path, NeuronId(layer, index))
            mapped = dbmod.get_neuron(mapped_db, model_path, NeuronId(layer, index))
            assert [r.tokens for r in plain.top + plain.random] == [r.tokens for r in mapped.top + mapped.random]
            np.testing.assert_allclose(
                [r.activations for r in plain.top + plain.random],
                [r.activations for r in mapped.top + mapped.random],
                rtol=1e-5,
                atol=1e-6,
            )
            assert mapped.stats.mean == pytest.approx(plain.stats.mean, rel=1e-5, abs=1e-7)


# --- The scorers' excerpts (docs/METHOD.md §10): quantile samples, non-activating, bottom -----------------------------


def _brute_top(values: np.ndarray, candidates: list[int], k: int) -> list[int]:
    """The k best candidates by value, ties to the earlier excerpt (collection's order)."""
    return sorted(candidates, key=lambda e: (-values[e], e))[:k]


def test_scoring_excerpts_match_brute_force(corpus_file, db, tmp_path):
    from core.activations import QUIET_OVERSAMPLE, QUIET_STREAM, level_members, level_rates
    from core.distributed import sample_keys

    model_path = tiny_models.build("gpt2", tmp_path / "gpt2")
    collect(db, str(model_path), [2], str(corpus_file), OPTIONS)
    _, excerpts, acts = all_activations(model_path, corpus_file, OPTIONS, layer=2)
    n = len(excerpts)
    excerpt_max, excerpt_min = acts.max(axis=1), acts.min(axis=1)  # [excerpts, neurons]
    levels = level_members(0, n, OPTIONS.seed, level_rates(OPTIONS))
    assert len(levels) == OPTIONS.quantile_levels and len(levels[0]) > len(levels[-1]) > 0
    keys = sample_keys(np.arange(n), OPTIONS.seed, QUIET_STREAM)
    quiet = sorted(range(n), key=lambda e: (keys[e], e))[: OPTIONS.nonactivating_k * QUIET_OVERSAMPLE]
    for index in range(0, tiny_models.INTERMEDIATE, 3):
        record = dbmod.get_neuron(db, str(model_path), NeuronId(2, index))
        scoring = record.scoring
        values = excerpt_max[:, index]
        # Quantile samples: each level's top-k within its subsample, an excerpt kept once, highest first.
        kept = sorted({e for members in levels for e in _brute_top(values, members, OPTIONS.quantile_k)},
                      key=lambda e: -values[e])  # fmt: skip
        np.testing.assert_allclose([r.max_activation for r in scoring.quantile], values[kept], rtol=1e-5, atol=1e-6)
        # Their level: the share of the corpus's excerpts whose max is at most theirs (exact: the sample is all).
        expected_levels = [(values <= values[e] + 1e-7).mean() for e in kept]
        np.testing.assert_allclose(scoring.levels, expected_levels, atol=1.5 / n)
        # Bottom: the most negative excerpts by their min.
        bottom = _brute_top(-excerpt_min[:, index], list(range(n)), OPTIONS.bottom_k)
        np.testing.assert_allclose([min(r.activations) for r in scoring.bottom], excerpt_min[bottom, index], atol=1e-6)
        # Non-activating: the sampled candidates below the median, in key order, the first k of them.
        median = record.stats.quantiles[0.5]
        below = [e for e in quiet if values[e] < median][: OPTIONS.nonactivating_k]
        np.testing.assert_allclose([r.max_activation for r in scoring.non_activating], values[below], atol=1e-6)
        assert all(r.max_activation < median for r in scoring.non_activating)


def test_scoring_excerpts_merge_exactly_across_shards(corpus_file, tmp_path):
    from core.activations import stream_pass
    from core.corpus import batched
    from core.distributed import World, local_rows, merge_layer, select_sample

    model_path = tiny_models.build("gpt2", tmp_path / "gpt2")
    subject = load_subject_model(str(model_path), device="cpu")
    excerpts = token_excerpts(load_corpus(str(corpus_file)), subject.tokenizer, 16, OPTIONS.max_tokens)
    batches = list(batched(excerpts, OPTIONS.batch_size))

    def merged(some: list, world_size: int):
        results = [stream_pass(subject, [2], iter(some), OPTIONS, tmp_path, world=World(rank, world_size))
                   for rank in range(world_size)]  # fmt: skip
        pick = {}
        for name in ("random_sample", "quantile_sample", "quiet_sample"):
            samples = [getattr(r, name) for r in results]
            pick[name] = select_sample([s.keys for s in samples], [s.members for s in samples], samples[0].size)
        states = [
            r.trackers[2].state(*(local_rows(pick[name], rank) for name in pick)) for rank, r in enumerate(results)
        ]
        state = merge_layer(states, pick["random_sample"], pick["quantile_sample"], OPTIONS.top_k, pick["quiet_sample"])
        members = [results[shard].quiet_sample.members[slot] for shard, slot in pick["quiet_sample"]]
        return state, members

    for some, world_size in ((batches, 2), (batches[:3], 5)):
        (one, one_quiet), (many, many_quiet) = merged(some, 1), merged(some, world_size)
        assert one_quiet == many_quiet
        assert torch.equal(one.level_excerpts, many.level_excerpts)
        assert torch.equal(one.bottom_excerpts, many.bottom_excerpts)
        for name in ("level_values", "level_activations", "bottom_values", "bottom_activations", "quiet_activations"):
            torch.testing.assert_close(getattr(one, name), getattr(many, name), rtol=1e-5, atol=1e-6)


def test_torchrun_two_processes_keep_the_same_scoring_excerpts(corpus_file, tmp_path):
    model_path = str(tiny_models.build("gpt2", tmp_path / "gpt2"))
    single = dbmod.connect(tmp_path / "single.db")
    collect(single, model_path, [2], str(corpus_file), OPTIONS)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "core",
               "collect", "--db", str(tmp_path / "two.db"), "--model", model_path, "--corpus", str(corpus_file),
               "--layers", "2", "--max-tokens", "1600", "--excerpt-len", "16", "--top-k", "6", "--random-k", "5",
               "--batch-size", "7", "--seed", "3", "--device", "cpu"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    two = dbmod.connect(tmp_path / "two.db")
    for index in range(tiny_models.INTERMEDIATE):
        a = dbmod.get_neuron(single, model_path, NeuronId(2, index)).scoring
        b = dbmod.get_neuron(two, model_path, NeuronId(2, index)).scoring
        for kind in ("quantile", "non_activating", "bottom"):
            assert [r.tokens for r in getattr(a, kind)] == [r.tokens for r in getattr(b, kind)], (index, kind)
            np.testing.assert_allclose([r.activations for r in getattr(a, kind)],
                                       [r.activations for r in getattr(b, kind)], rtol=1e-5, atol=1e-6)  # fmt: skip
        assert a.levels == pytest.approx(b.levels)


def test_a_run_without_scoring_excerpts_stores_none(corpus_file, db, tmp_path):
    model_path = str(tiny_models.build("gpt2", tmp_path / "gpt2"))
    bare = replace(OPTIONS, quantile_levels=0, nonactivating_k=0, bottom_k=0)
    without = collect(db, model_path, [0], str(corpus_file), bare)
    assert dbmod.get_neuron(db, model_path, NeuronId(0, 1)).scoring is None
    with_them = collect(dbmod.connect(tmp_path / "other.db"), model_path, [0], str(corpus_file), OPTIONS)
    extra = with_them.layer_memory[0].state_bytes - without.layer_memory[0].state_bytes
    # Bounded by the settings alone: levels × k + bottom k per neuron, plus 3 × k non-activating candidates.
    per_neuron = (OPTIONS.quantile_levels * OPTIONS.quantile_k + OPTIONS.bottom_k) * (16 * 4 + 12)
    per_neuron += OPTIONS.nonactivating_k * 3 * 16 * 4
    assert extra == per_neuron * tiny_models.INTERMEDIATE
    from core.db.neurons import layers_without_scoring_records

    assert layers_without_scoring_records(db, model_path) == [0]
