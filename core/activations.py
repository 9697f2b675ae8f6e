"""Collection: one streaming pass over the corpus that tracks, for every neuron of the chosen layers at once,
the top-k excerpts by per-excerpt max, a random sample of excerpts, running mean/variance/max and quantiles.

Design (docs/METHOD.md §1):
- Hooks read the input of each layer's MLP output projection, all neurons of a layer as one [batch, tokens, neurons]
  tensor, and all tracking is vectorised on the device where that layer runs (several devices under --device-map).
- The per-token activations of the current top-k and random excerpts are kept on the device next to their values,
  so no second forward pass is needed: a batch excerpt that enters a neuron's top-k has its activations copied into
  the slot it frees. The copies cost O(replacements), which after the first batches is a small fraction of neurons.
  Top-k is by per-excerpt max, ties broken by excerpt index (the earlier excerpt wins), so the result is one
  well-defined set however the corpus is split.
- Memory is bounded independently of corpus size: O(neurons × (top_k + random_k) × excerpt_len) for records, plus
  O(neurons × quantile_sample) for quantiles. Excerpt token ids are spilled to a temporary file, 4 bytes a token,
  in a folder next to the database that the next run removes if this one is killed.
- The random records and the quantile sample are bottom-k samples: the excerpts with the smallest hash keys of their
  index (`core.distributed.KeyedSample`), a uniform sample without replacement, the same excerpts for every neuron.
  Quantiles of the per-excerpt max are exact while the corpus has at most `quantile_sample` excerpts, and computed
  from that sample beyond. The max, mean and variance are always exact.
- Under torchrun each rank forwards its own shard of batches and the states are merged exactly on rank 0
  (`core.distributed`), which alone writes the database.
- Layers are written one transaction each, together with their "finished" mark, so a killed run never leaves a
  half-written layer, and a rerun skips finished layers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import logging
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sqlite_utils
import torch

from core import config
from core import db as dbmod
from core.corpus import Corpus, batched, load_corpus, special_token_layout, token_excerpts, token_strings
from core.distributed import (
    SINGLE,
    Group,
    KeyedSample,
    LayerState,
    World,
    merge_pass,
    process_group,
    rank_device,
    sample_keys,
    select_top,
)
from core.errors import InputError, WorkbenchError
from core.models import SubjectModel, load_subject_model
from core.records import MAX_TEXT_TOKENS, ActivationRecord, NeuronId, NeuronRecord, NeuronStats, ScoringRecords

log = logging.getLogger(__name__)

# (tokens done, tokens in all or None while unknown: a corpus streamed up to its token budget)
TokenProgress = Callable[[int, int | None], None]


RANDOM_STREAM, QUANTILE_STREAM = 0, 1  # the two samples' hash streams: independent draws from one seed
QUIET_STREAM = 2  # the non-activating candidates' sample (docs/METHOD.md §10)
LEVEL_STREAM = 3  # level j's subsample uses stream LEVEL_STREAM + j

# The scorers' excerpts (docs/METHOD.md §10): levels of the quantile sampler, excerpts kept per level, non-activating
# and bottom excerpts per neuron. Three times as many non-activating candidates are sampled as are kept, so that
# nearly always enough of them fall below the neuron's median.
DEFAULT_QUANTILE_LEVELS = 12
DEFAULT_QUANTILE_K = 2
DEFAULT_NONACTIVATING_K = 10
DEFAULT_BOTTOM_K = 5
QUIET_OVERSAMPLE = 3


@dataclass(frozen=True)
class CollectOptions:
    """Parameters of one collection run; all but batching and placement identify the run for resuming."""

    max_tokens: int = config.DEFAULT_MAX_TOKENS
    excerpt_len: int = config.DEFAULT_EXCERPT_LEN
    top_k: int = config.DEFAULT_TOP_K
    random_k: int = config.DEFAULT_RANDOM_K
    seed: int = config.DEFAULT_SEED
    batch_size: int = config.DEFAULT_BATCH_SIZE
    quantile_sample: int = config.DEFAULT_QUANTILE_SAMPLE
    device: str | None = None
    dtype: str | None = None
    device_map: str | None = None
    # The scorers' excerpts (docs/METHOD.md §10); 0 leaves a kind out.
    quantile_levels: int = DEFAULT_QUANTILE_LEVELS
    quantile_k: int = DEFAULT_QUANTILE_K
    nonactivating_k: int = DEFAULT_NONACTIVATING_K
    bottom_k: int = DEFAULT_BOTTOM_K

    def __post_init__(self) -> None:
        for name in ("max_tokens", "excerpt_len", "top_k", "random_k", "batch_size", "quantile_sample"):
            if getattr(self, name) < 1:
                raise InputError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("quantile_levels", "quantile_k", "nonactivating_k", "bottom_k"):
            if getattr(self, name) < 0:
                raise InputError(f"{name.replace('_', '-')} must be at least 0, got {getattr(self, name)}")
        if self.max_tokens < self.excerpt_len:
            raise InputError(f"max-tokens ({self.max_tokens}) is smaller than one excerpt ({self.excerpt_len} tokens)")

    @property
    def scoring_excerpts(self) -> bool:
        """Whether this run keeps the scorers' excerpts at all."""
        return bool(self.quantile_levels and self.quantile_k) or bool(self.nonactivating_k) or bool(self.bottom_k)


def level_rates(options: CollectOptions) -> list[float]:
    """The sampling rate of each level's subsample (docs/METHOD.md §10): geometric from 1/2 down to the rate whose
    top `quantile_k` sit near the median of the run's excerpts (at most max_tokens / excerpt_len of them)."""
    levels, k = options.quantile_levels, options.quantile_k
    if not levels or not k:
        return []
    excerpts = max(1, options.max_tokens // options.excerpt_len)
    last = min(0.5, 2 * k / excerpts)
    if levels == 1:
        return [0.5]
    return [0.5 * (last / 0.5) ** (j / (levels - 1)) for j in range(levels)]


def level_members(first: int, count: int, seed: int, rates: Sequence[float]) -> list[list[int]]:
    """Per level, the positions in a batch of excerpts first … first+count-1 that belong to its subsample: those
    whose level key is below rate × 2⁶³. A function of the excerpt index alone, so any split of the corpus agrees."""
    indices = np.arange(first, first + count)
    members = []
    for level, rate in enumerate(rates):
        keys = sample_keys(indices, seed, LEVEL_STREAM + level)
        members.append(np.nonzero(keys < np.int64(min(rate, 0.999999) * 2**63))[0].tolist())
    return members


_PLACEMENT = ("batch_size", "device", "dtype", "device_map")  # options that do not change what is collected


class _StopForward(Exception):
    """Raised by the hook of the last layer we need, so that later layers are not computed."""


class _LayerTracker:
    """Running per-neuron state for one layer, on the device where the layer runs."""

    def __init__(self, n_neurons: int, options: CollectOptions, device: torch.device) -> None:
        k, length = options.top_k, options.excerpt_len
        self.device = torch.device(device)
        self.top_values = torch.full((n_neurons, k), float("-inf"), device=device)
        self.top_excerpts = torch.full((n_neurons, k), -1, dtype=torch.long, device=device)
        self.top_activations = torch.zeros((n_neurons, k, length), device=device)
        self.random_activations = torch.zeros((options.random_k, length, n_neurons), device=device)
        self.sample_max = torch.zeros((options.quantile_sample, n_neurons), device=device)
        self.count = 0
        self.shift: torch.Tensor | None = None
        self.shifted_sum = torch.zeros(n_neurons, dtype=torch.float64, device=device)
        self.shifted_sum_sq = torch.zeros(n_neurons, dtype=torch.float64, device=device)
        self.max = torch.full((n_neurons,), float("-inf"), device=device)
        # The scorers' excerpts (docs/METHOD.md §10), each kind None when the run keeps none of it.
        self.level_values = self.level_excerpts = self.level_activations = None
        levels = len(level_rates(options))
        if levels:
            lk = options.quantile_k
            self.level_values = torch.full((levels, n_neurons, lk), float("-inf"), device=device)
            self.level_excerpts = torch.full((levels, n_neurons, lk), -1, dtype=torch.long, device=device)
            self.level_activations = torch.zeros((levels, n_neurons, lk, length), device=device)
        self.bottom_values = self.bottom_excerpts = self.bottom_activations = None
        if options.bottom_k:
            bk = options.bottom_k
            self.bottom_values = torch.full((n_neurons, bk), float("-inf"), device=device)
            self.bottom_excerpts = torch.full((n_neurons, bk), -1, dtype=torch.long, device=device)
            self.bottom_activations = torch.zeros((n_neurons, bk, length), device=device)
        self.quiet_activations = None
        if options.nonactivating_k:
            rows = options.nonactivating_k * QUIET_OVERSAMPLE
            self.quiet_activations = torch.zeros((rows, length, n_neurons), device=device)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in vars(self).values() if isinstance(t, torch.Tensor))

    def update(
        self,
        activations: torch.Tensor,
        excerpt_ids: torch.Tensor,
        random_slots: list[tuple[int, int]],
        sample_slots: list[tuple[int, int]],
        quiet_slots: Sequence[tuple[int, int]] = (),
        level_positions: Sequence[torch.Tensor] = (),
    ) -> None:
        """Fold in one batch: activations [batch, tokens, neurons], contiguous float32. `level_positions[j]`: the
        batch positions in level j's subsample, on this tracker's device."""
        batch, length, _ = activations.shape
        flat = activations.view(batch * length, -1)
        # Moments from sums of values shifted by the first batch's mean: one cheap pass each (torch.var_mean is
        # several times slower on CPU), with the shift keeping E[x²] − E[x]² free of cancellation.
        if self.shift is None:
            self.shift = flat.mean(dim=0)
        centered = flat - self.shift
        self.shifted_sum += centered.sum(dim=0).double()
        self.shifted_sum_sq += centered.square().sum(dim=0).double()
        self.count += batch * length

        excerpt_max = activations.amax(dim=1)  # [batch, neurons]
        self.max = torch.maximum(self.max, excerpt_max.amax(dim=0))
        self._update_top(activations, excerpt_max.T, excerpt_ids)
        for position, slot in random_slots:
            self.random_activations[slot] = activations[position]
        if sample_slots:
            positions, slots = zip(*sample_slots, strict=True)
            self.sample_max[list(slots)] = excerpt_max[list(positions)]
        if self.level_values is not None:
            assert self.level_excerpts is not None and self.level_activations is not None
            for level, members in enumerate(level_positions):
                if members.numel():
                    _fold_top(
                        self.level_values[level],
                        self.level_excerpts[level],
                        self.level_activations[level],
                        activations[members],
                        excerpt_max.T[:, members],
                        excerpt_ids[members],
                    )
        if self.bottom_values is not None:
            minus_min = -activations.amin(dim=1).T  # the most negative excerpt is the "top" of minus its min
            assert self.bottom_excerpts is not None and self.bottom_activations is not None
            _fold_top(
                self.bottom_values, self.bottom_excerpts, self.bottom_activations, activations, minus_min, excerpt_ids
            )
        if self.quiet_activations is not None:
            for position, slot in quiet_slots:
                self.quiet_activations[slot] = activations[position]

    def _update_top(self, activations: torch.Tensor, batch_max: torch.Tensor, excerpt_ids: torch.Tensor) -> None:
        _fold_top(self.top_values, self.top_excerpts, self.top_activations, activations, batch_max, excerpt_ids)

    def state(
        self, random_slots: Sequence[int], sample_slots: Sequence[int], quiet_slots: Sequence[int] = ()
    ) -> LayerState:
        """This process's state, with the sample rows in `random_slots`, `sample_slots` and `quiet_slots`, in that
        order."""
        count = self.count
        if count:
            shifted_mean = self.shifted_sum / count
            shift = self.shift.double() if self.shift is not None else torch.zeros_like(shifted_mean)
            mean = shifted_mean + shift
            m2 = (self.shifted_sum_sq - self.shifted_sum * shifted_mean).clamp_min(0)
        else:
            mean, m2 = torch.zeros_like(self.shifted_sum), torch.zeros_like(self.shifted_sum)
        rows = torch.tensor(list(random_slots), dtype=torch.long, device=self.device)
        sample_rows = torch.tensor(list(sample_slots), dtype=torch.long, device=self.device)
        quiet_rows = torch.tensor(list(quiet_slots), dtype=torch.long, device=self.device)
        return LayerState(
            count=count,
            mean=mean,
            m2=m2,
            max=self.max,
            top_values=self.top_values,
            top_excerpts=self.top_excerpts,
            top_activations=self.top_activations,
            random_activations=self.random_activations[rows],
            sample_max=self.sample_max[sample_rows],
            level_values=self.level_values,
            level_excerpts=self.level_excerpts,
            level_activations=self.level_activations,
            bottom_values=self.bottom_values,
            bottom_excerpts=self.bottom_excerpts,
            bottom_activations=self.bottom_activations,
            quiet_activations=self.quiet_activations[quiet_rows] if self.quiet_activations is not None else None,
        )


def _fold_top(
    values: torch.Tensor,
    excerpts: torch.Tensor,
    stored: torch.Tensor,
    activations: torch.Tensor,
    batch_values: torch.Tensor,
    batch_excerpts: torch.Tensor,
) -> None:
    """Fold a batch into a running top-k in place: `values`/`excerpts` [neurons, k], `stored` [neurons, k, tokens];
    the batch's `activations` [batch, tokens, neurons], `batch_values` [neurons, batch], `batch_excerpts` [batch].
    Ties go to the earlier excerpt (select_top), so the result does not depend on how the corpus was split."""
    k = values.shape[1]
    candidates = torch.cat([values, batch_values], dim=1)  # [neurons, k + batch]
    candidate_excerpts = torch.cat([excerpts, batch_excerpts.expand(len(candidates), -1)], dim=1)
    chosen = select_top(candidates, candidate_excerpts, k)
    kept = torch.zeros_like(candidates, dtype=torch.bool).scatter_(1, chosen, True)
    entering = kept[:, k:]
    # Slots freed and excerpts entering are equal in number for each neuron, and nonzero() lists both in
    # neuron-major order, so the two lists pair up element by element.
    neurons_in, positions = entering.nonzero(as_tuple=True)
    if neurons_in.numel() == 0:
        return
    neurons_out, slots = (~kept[:, :k]).nonzero(as_tuple=True)
    values[neurons_out, slots] = batch_values[neurons_in, positions]
    excerpts[neurons_out, slots] = batch_excerpts[positions]
    stored[neurons_out, slots] = activations[positions, :, neurons_in]


@dataclass(frozen=True)
class LayerMemory:
    """Where a layer's tracking state lived, and its size."""

    layer: int
    device: str
    state_bytes: int


@dataclass(frozen=True)
class CollectReport:
    model: str
    corpus: str
    layers: list[int]
    skipped_layers: list[int]
    n_excerpts: int
    n_tokens: int
    seconds: float
    tokens_per_second: float  # all ranks together: tokens over the slowest rank's pass
    world_size: int = 1
    tokens_per_rank: list[int] = field(default_factory=list)
    tokens_per_second_per_rank: list[float] = field(default_factory=list)
    merge_seconds: float = 0.0
    peak_memory_bytes_per_rank: list[int] = field(default_factory=list)  # GPU allocated on cuda, else process RSS
    layer_memory: list[LayerMemory] = field(default_factory=list)  # rank 0's tracking state per layer

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def collect(
    db: sqlite_utils.Database | None,
    model: str | None = None,
    layers: Sequence[int] | None = None,
    corpus: str | Corpus | None = None,
    options: CollectOptions = CollectOptions(),
    progress: TokenProgress | None = None,
    replace: bool = False,
) -> CollectReport:
    """Collect records and stats for every neuron of `layers` (all layers by default) and store them.

    Resumes: layers already finished under the same run parameters are skipped. Idempotent: a finished run does
    nothing. Bad input raises before anything is written. A layer that already holds neurons from other settings
    (or imported ones) is an InputError unless `replace`, since its explanations were made from those records.

    Under torchrun (RANK/WORLD_SIZE set) every rank calls this with the same arguments; only rank 0 gets a
    database (`db` is not used elsewhere) and writes it, after the exact merge of all ranks' states.
    """
    world = World.from_env()
    if world.is_main and db is None:
        raise ValueError("rank 0 needs the database")
    if world.distributed and options.device_map:
        raise InputError(
            "--device-map spreads one model over several GPUs, torchrun runs one model per GPU: use one or the other"
        )
    device = rank_device(world, config.resolve_device(options.device))
    with process_group(world, device) as group:
        return _collect(db, model, layers, corpus, options, progress, replace, group, device)


def _collect(
    db: sqlite_utils.Database | None,
    model: str | None,
    layers: Sequence[int] | None,
    corpus: str | Corpus | None,
    options: CollectOptions,
    progress: TokenProgress | None,
    replace: bool,
    group: Group,
    device: str,
) -> CollectReport:
    world = group.world
    subject = load_subject_model(model, device, options.dtype, options.device_map)
    layers = sorted(set(range(subject.n_layers) if layers is None else layers))
    subject.check_layers(layers)
    prefix, suffix = special_token_layout(subject.tokenizer)
    if subject.max_positions and options.excerpt_len + len(prefix) + len(suffix) > subject.max_positions:
        raise InputError(
            f"excerpt length {options.excerpt_len} does not fit {subject.name}'s context of {subject.max_positions}"
            f" tokens (with {len(prefix) + len(suffix)} special tokens); use --excerpt-len ≤"
            f" {subject.max_positions - len(prefix) - len(suffix)}"
        )
    corpus = corpus if isinstance(corpus, Corpus) else load_corpus(corpus)
    params = {
        "model": subject.name,
        "revision": subject.revision,
        "corpus": corpus.name,
        **{k: v for k, v in asdict(options).items() if k not in _PLACEMENT},
    }
    # Rank 0 alone reads the database; the others learn the plan (or the error) from it.
    plan: tuple[list[int], list[int]] | str = ([], [])
    if world.is_main:
        assert db is not None
        try:
            run_id = dbmod.find_run(db, params)
            done = dbmod.finished_layers(db, run_id) if run_id is not None else set()
            todo = [layer for layer in layers if layer not in done]
            if todo and not replace:
                _refuse_to_replace(dbmod.other_layer_sources(db, subject.name, todo, run_id), subject.name)
            plan = (todo, sorted(done & set(layers)))
        except InputError as exc:
            group.broadcast(str(exc))
            raise
    plan = group.broadcast(plan)
    if isinstance(plan, str):
        raise InputError(plan)
    todo, skipped = plan
    if not todo:
        return CollectReport(subject.name, corpus.name, [], skipped, 0, 0, 0.0, 0.0, world_size=world.world_size)

    started = time.perf_counter()
    spill_parent, spill_prefix = _spill_location(db) if db is not None else (Path(tempfile.gettempdir()), "collect-")
    if world.is_main:
        _remove_stale_spills(spill_parent, spill_prefix)
    with tempfile.TemporaryDirectory(prefix=f"{spill_prefix}{os.getpid()}-", dir=spill_parent) as spill_dir:
        excerpts = token_excerpts(corpus, subject.tokenizer, options.excerpt_len, options.max_tokens)
        result = stream_pass(
            subject, todo, batched(excerpts, options.batch_size), options, Path(spill_dir), progress, world
        )
        if result.n_read == 0:  # every rank read the same corpus, so every rank stops here
            raise InputError(
                f"corpus {corpus.name!r} has no complete excerpt of {options.excerpt_len} tokens; "
                "give a larger corpus or a smaller --excerpt-len"
            )
        layer_memory = [
            LayerMemory(layer, str(tracker.device), tracker.nbytes()) for layer, tracker in result.trackers.items()
        ]
        merged = merge_pass(result, todo, options, group)
        pass_seconds = time.perf_counter() - started
        n_tokens = result.n_read * options.excerpt_len
        ranks = merged.ranks
        report = CollectReport(
            model=subject.name,
            corpus=corpus.name,
            layers=todo,
            skipped_layers=skipped,
            n_excerpts=result.n_read,
            n_tokens=n_tokens,
            seconds=0.0,
            tokens_per_second=n_tokens / max(r.seconds for r in ranks) if ranks else 0.0,
            world_size=world.world_size,
            tokens_per_rank=[r.n_excerpts * options.excerpt_len for r in ranks],
            tokens_per_second_per_rank=[
                r.n_excerpts * options.excerpt_len / r.seconds if r.seconds else 0.0 for r in ranks
            ],
            merge_seconds=merged.merge_seconds,
            peak_memory_bytes_per_rank=[r.peak_memory_bytes for r in ranks],
            layer_memory=layer_memory,
        )
        if not world.is_main:
            return report
        assert db is not None
        excerpt_ids = np.fromfile(result.token_file, dtype=np.int32).reshape(-1, options.excerpt_len)
        for layer in todo:
            neurons = _layer_records(
                subject,
                layer,
                merged.states.pop(layer),
                merged.random_members,
                excerpt_ids,
                merged.quiet_members,
                options.nonactivating_k,
            )
            try:
                dbmod.write_neurons(
                    db,
                    subject.name,
                    neurons,
                    source="collected",
                    run=params,
                    run_totals=(result.n_read, n_tokens),
                    finished_layer=(layer, pass_seconds),
                )
            except sqlite3.Error as exc:
                raise WorkbenchError(
                    f"could not write layer {layer} to the database ({exc}); nothing of it was kept. Free space or"
                    " fix the database, then rerun the same command: finished layers are not redone"
                ) from exc
    return dataclasses.replace(report, seconds=time.perf_counter() - started)


def _spill_location(db: sqlite_utils.Database) -> tuple[Path, str]:
    """The folder and name prefix of a run's spill folder: next to the database file, named for it, so that the
    folders of killed runs are found (their pid is in the name) and removed by the next run."""
    file = next((row[2] for row in db.conn.execute("PRAGMA database_list") if row[1] == "main"), "")
    if not file:  # an in-memory database
        return Path(tempfile.gettempdir()), "neuron-workbench-collect-"
    return Path(file).parent, f"{Path(file).name}-collect-"


def _process_alive(pid: int) -> bool:
    if os.name != "posix":  # os.kill(pid, 0) is no probe elsewhere: assume it lives
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _remove_stale_spills(parent: Path, prefix: str) -> None:
    """Remove the spill folders `<prefix><pid>-…` of collections whose process is gone (killed, or lost power)."""
    for folder in parent.glob(f"{glob.escape(prefix)}*"):
        pid = folder.name[len(prefix) :].split("-", 1)[0]
        if folder.is_dir() and pid.isdigit() and int(pid) != os.getpid() and not _process_alive(int(pid)):
            log.info("removing %s, left behind by a collection that was killed", folder)
            shutil.rmtree(folder, ignore_errors=True)


def _refuse_to_replace(sources: list[dict[str, Any]], model: str) -> None:
    if not sources:
        return
    first = sources[0]
    if first["corpus"] is None:
        origin = f"{first['source']} neurons"
    else:
        origin = (
            f"neurons collected with other settings (corpus {first['corpus']}, max_tokens {first['max_tokens']},"
            f" excerpt_len {first['excerpt_len']}, top_k {first['top_k']}, random_k {first['random_k']},"
            f" seed {first['seed']})"
        )
    layers = ",".join(str(layer) for layer in dict.fromkeys(row["layer"] for row in sources))
    raise InputError(
        f"layer {first['layer']} of {model} already holds {first['n_neurons']} {origin}; collecting layer(s)"
        f" {layers} again would replace them and the records their explanations were made from. Repeat those"
        " settings to resume, pass --replace to overwrite, or use another --db"
    )


@dataclass
class PassResult:
    """What one process's pass leaves: its trackers, its samples, and (on rank 0) every excerpt's token ids."""

    trackers: dict[int, _LayerTracker]
    n_excerpts: int  # excerpts this process forwarded
    n_read: int  # excerpts in the corpus, all shards together
    token_file: Path
    random_sample: KeyedSample
    quantile_sample: KeyedSample
    seconds: float
    quiet_sample: KeyedSample | None = None  # the non-activating candidates (docs/METHOD.md §10)


def stream_pass(
    subject: SubjectModel,
    layers: list[int],
    batches: Iterable[list[list[int]]],
    options: CollectOptions,
    spill_dir: Path,
    progress: TokenProgress | None = None,
    world: World = SINGLE,
) -> PassResult:
    """The single forward pass over this rank's batches (every batch on one process); rank 0 spills the ids of every
    excerpt read, its shard or not, to `spill_dir`."""
    started = time.perf_counter()
    prefix, suffix = special_token_layout(subject.tokenizer) if subject.tokenizer is not None else ([], [])
    input_device = torch.device(subject.device)
    trackers = {layer: _LayerTracker(subject.n_neurons, options, subject.layer_device(layer)) for layer in layers}
    random_sample = KeyedSample(options.random_k, options.seed, RANDOM_STREAM)
    quantile_sample = KeyedSample(options.quantile_sample, options.seed, QUANTILE_STREAM)
    quiet_sample = (
        KeyedSample(options.nonactivating_k * QUIET_OVERSAMPLE, options.seed, QUIET_STREAM)
        if options.nonactivating_k
        else None
    )
    rates = level_rates(options)
    start, stop = len(prefix), len(prefix) + options.excerpt_len
    state: dict[str, Any] = {}

    def excerpt_ids(device: torch.device) -> torch.Tensor:
        ids = state["ids"]
        if device not in ids:
            ids[device] = ids[input_device].to(device)
        return ids[device]

    def level_positions(device: torch.device) -> list[torch.Tensor]:
        levels = state["levels"]
        if device not in levels:
            levels[device] = [positions.to(device) for positions in levels[input_device]]
        return levels[device]

    def make_hook(layer: int) -> Callable[..., None]:
        tracker = trackers[layer]

        def hook(_module: Any, inputs: tuple[torch.Tensor, ...]) -> None:
            activations = inputs[0][:, start:stop].to(tracker.device, torch.float32).contiguous()
            tracker.update(
                activations,
                excerpt_ids(tracker.device),
                state["random"],
                state["sample"],
                state["quiet"],
                level_positions(tracker.device),
            )
            if layer == layers[-1]:
                raise _StopForward

        return hook

    handles = [subject.mlp_out(layer).register_forward_pre_hook(make_hook(layer)) for layer in layers]
    token_file = spill_dir / "tokens.int32"
    n_read = n_excerpts = 0
    try:
        with token_file.open("wb") as spill, torch.inference_mode():
            for number, batch in enumerate(batches):
                first, n_read = n_read, n_read + len(batch)
                if world.is_main:
                    np.asarray(batch, dtype=np.int32).tofile(spill)
                if world.owns_batch(number):
                    state["ids"] = {input_device: torch.arange(first, n_read, device=input_device)}
                    state["random"] = random_sample.offer(first, len(batch))
                    state["sample"] = quantile_sample.offer(first, len(batch))
                    state["quiet"] = quiet_sample.offer(first, len(batch)) if quiet_sample is not None else []
                    state["levels"] = {
                        input_device: [
                            torch.tensor(members, dtype=torch.long, device=input_device)
                            for members in level_members(first, len(batch), options.seed, rates)
                        ]
                    }
                    inputs = torch.tensor([prefix + row + suffix for row in batch], device=input_device)
                    with contextlib.suppress(_StopForward):
                        subject.model(input_ids=inputs, attention_mask=torch.ones_like(inputs))
                    n_excerpts += len(batch)
                if progress:
                    progress(n_read * options.excerpt_len, options.max_tokens)
    finally:
        for handle in handles:
            handle.remove()
    for tracker in trackers.values():
        if tracker.device.type == "cuda":
            torch.cuda.synchronize(tracker.device)
    return PassResult(
        trackers=trackers,
        n_excerpts=n_excerpts,
        n_read=n_read,
        token_file=token_file,
        random_sample=random_sample,
        quantile_sample=quantile_sample,
        seconds=time.perf_counter() - started,
        quiet_sample=quiet_sample,
    )


def _layer_records(
    subject: SubjectModel,
    layer: int,
    state: LayerState,
    random_members: list[int],
    excerpt_ids: np.ndarray,
    quiet_members: Sequence[int] = (),
    nonactivating_k: int = 0,
) -> list[NeuronRecord]:
    """Turn a layer's merged state into NeuronRecords; top records come sorted by max activation, descending."""
    rows = len(state.sample_max)
    levels = torch.tensor(config.QUANTILES, dtype=torch.float64, device=state.sample_max.device)
    # numpy's default ("linear") interpolation, so the result matches np.quantile on the same values.
    if rows:
        quantiles = torch.quantile(state.sample_max.double(), levels, dim=0).cpu().numpy()
    else:
        quantiles = np.full((len(levels), subject.n_neurons), np.nan)
    mean = state.mean.cpu().numpy()
    variance = (state.m2 / max(state.count, 1)).cpu().numpy()
    max_values = state.max.cpu().numpy()
    top_values = state.top_values.cpu().numpy()
    top_excerpts = state.top_excerpts.cpu().numpy()
    top_acts = state.top_activations.cpu().numpy()
    random_acts = state.random_activations.permute(2, 0, 1).cpu().numpy()
    scoring = _ScoringState.of(state, quantiles[0] if rows else None, list(quiet_members), nonactivating_k)
    needed = {int(e) for e in np.unique(top_excerpts) if e >= 0} | set(random_members) | scoring.excerpts()
    strings = {e: tuple(token_strings(subject.tokenizer, excerpt_ids[e].tolist())) for e in needed}
    neurons = []
    for index in range(subject.n_neurons):
        top = tuple(
            ActivationRecord(strings[int(e)], tuple(top_acts[index, rank].tolist()))
            for rank, e in enumerate(top_excerpts[index])
            if e >= 0 and np.isfinite(top_values[index, rank])
        )
        random = tuple(
            ActivationRecord(strings[e], tuple(random_acts[index, slot].tolist()))
            for slot, e in enumerate(random_members)
        )
        stats = NeuronStats(
            mean=float(mean[index]),
            variance=float(variance[index]),
            max=float(max_values[index]),
            quantiles={q: float(quantiles[i, index]) for i, q in enumerate(config.QUANTILES)},
        )
        neurons.append(
            NeuronRecord(subject.name, NeuronId(layer, index), top, random, stats, scoring.records(index, strings))
        )
    return neurons


@dataclass
class _ScoringState:
    """A merged layer's scorers' excerpts as numpy arrays, turned into each neuron's ScoringRecords
    (docs/METHOD.md §10). `present` is False for a run that kept none."""

    present: bool
    level_values: np.ndarray  # [neurons, candidates]: every level's slots side by side
    level_excerpts: np.ndarray
    level_activations: np.ndarray  # [neurons, candidates, tokens]
    levels: np.ndarray  # [neurons, candidates]: the share of sampled excerpt maxima at most each value
    bottom_excerpts: np.ndarray  # [neurons, k]
    bottom_activations: np.ndarray
    bottom_values: np.ndarray
    quiet_members: list[int]
    quiet_activations: np.ndarray  # [neurons, rows, tokens]
    quiet_below: np.ndarray  # [neurons, rows]: whether the candidate's max is below the neuron's median
    nonactivating_k: int

    @classmethod
    def of(
        cls, state: LayerState, median: np.ndarray | None, quiet_members: list[int], nonactivating_k: int
    ) -> _ScoringState:
        empty: np.ndarray = np.zeros((0, 0))
        present = any(t is not None for t in (state.level_values, state.bottom_values, state.quiet_activations))
        level_values = level_excerpts = level_activations = levels = empty
        if state.level_values is not None:
            # The tracker makes a level's values, excerpts and activations together.
            assert state.level_excerpts is not None and state.level_activations is not None
            n_levels, n_neurons, k = state.level_values.shape
            values = state.level_values.permute(1, 0, 2).reshape(n_neurons, n_levels * k)
            # A value's level: the share of the quantile sample's maxima at or below it (the sample is exact while
            # the corpus has at most --quantile-sample excerpts).
            rows = len(state.sample_max)
            if rows:
                ordered = state.sample_max.T.contiguous().sort(dim=1).values
                finite = torch.where(torch.isfinite(values), values, torch.zeros_like(values))
                levels = (torch.searchsorted(ordered, finite.contiguous(), right=True).double() / rows).cpu().numpy()
            else:
                levels = np.full(tuple(values.shape), np.nan)
            level_values = values.cpu().numpy()
            level_excerpts = state.level_excerpts.permute(1, 0, 2).reshape(n_neurons, n_levels * k).cpu().numpy()
            level_activations = (
                state.level_activations.permute(1, 0, 2, 3).reshape(n_neurons, n_levels * k, -1).cpu().numpy()
            )
        bottom_values = bottom_excerpts = bottom_activations = empty
        if state.bottom_values is not None:
            assert state.bottom_excerpts is not None and state.bottom_activations is not None  # made together
            bottom_values = state.bottom_values.cpu().numpy()
            bottom_excerpts = state.bottom_excerpts.cpu().numpy()
            bottom_activations = state.bottom_activations.cpu().numpy()
        quiet_activations = quiet_below = empty
        if state.quiet_activations is not None:
            quiet_activations = state.quiet_activations.permute(2, 0, 1).cpu().numpy()  # [neurons, rows, tokens]
            quiet_max = quiet_activations.max(axis=2)  # [neurons, rows]
            quiet_below = (
                quiet_max < np.asarray(median)[:, None] if median is not None else np.zeros_like(quiet_max, bool)
            )
        return cls(
            present, level_values, level_excerpts, level_activations, levels, bottom_excerpts, bottom_activations,
            bottom_values, quiet_members, quiet_activations, quiet_below, nonactivating_k,
        )  # fmt: skip

    def excerpts(self) -> set[int]:
        """Every excerpt index some neuron keeps."""
        found = {int(e) for e in np.unique(self.level_excerpts) if e >= 0}
        found |= {int(e) for e in np.unique(self.bottom_excerpts) if e >= 0}
        if self.quiet_below.size:
            found |= {self.quiet_members[row] for row in np.nonzero(self.quiet_below.any(axis=0))[0]}
        return found

    def records(self, index: int, strings: dict[int, tuple[str, ...]]) -> ScoringRecords | None:
        if not self.present:
            return None
        quantile, levels, seen = [], [], set()
        if self.level_values.size:
            for slot in np.argsort(-self.level_values[index], kind="stable"):
                excerpt, value = int(self.level_excerpts[index, slot]), self.level_values[index, slot]
                if excerpt < 0 or not np.isfinite(value) or excerpt in seen:
                    continue  # an excerpt in several levels' subsamples is kept once
                seen.add(excerpt)
                quantile.append(ActivationRecord(strings[excerpt], tuple(self.level_activations[index, slot].tolist())))
                levels.append(float(self.levels[index, slot]))
        bottom = []
        if self.bottom_values.size:
            for slot in np.argsort(-self.bottom_values[index], kind="stable"):
                excerpt = int(self.bottom_excerpts[index, slot])
                if excerpt >= 0 and np.isfinite(self.bottom_values[index, slot]):
                    values = tuple(self.bottom_activations[index, slot].tolist())
                    bottom.append(ActivationRecord(strings[excerpt], values))
        quiet = []
        if self.quiet_below.size:
            for row in np.nonzero(self.quiet_below[index])[0][: self.nonactivating_k]:
                excerpt = self.quiet_members[row]
                quiet.append(ActivationRecord(strings[excerpt], tuple(self.quiet_activations[index, row].tolist())))
        return ScoringRecords(tuple(quantile), tuple(levels), tuple(quiet), tuple(bottom))


# --- A neuron on any text: `activate` and the Neurons page's "Try your own text" ------------------------------------


@dataclass(frozen=True)
class TextActivations:
    """Every neuron of one layer on one text, processed as collection processes an excerpt: the text tokenised
    without special tokens, wrapped in the model's own (BERT's [CLS] … [SEP], Llama's BOS), run once, and the input
    of the layer's MLP output projection read at the text's tokens. `activations` is [tokens, neurons], float32.
    `dropped_tokens` counts the tokens past the cap that were not run."""

    model: str
    layer: int
    tokens: tuple[str, ...]
    activations: np.ndarray
    dropped_tokens: int = 0

    @property
    def n_neurons(self) -> int:
        return int(self.activations.shape[1])

    def record(self, neuron: int) -> ActivationRecord:
        """The text as an activation record of one neuron."""
        if not 0 <= neuron < self.n_neurons:
            raise InputError(
                f"neuron {neuron} out of range: layer {self.layer} of {self.model} has 0..{self.n_neurons - 1}"
            )
        return ActivationRecord(self.tokens, tuple(self.activations[:, neuron].tolist()))

    def top_neurons(self, count: int) -> list[tuple[int, float]]:
        """The `count` neurons with the highest max activation on the text, highest first: (index, max)."""
        if count < 1:
            raise InputError(f"--top must be at least 1, got {count}")
        if not len(self.tokens):
            return []
        maxima = self.activations.max(axis=0)
        order = np.argsort(-maxima, kind="stable")[:count]
        return [(int(i), float(maxima[i])) for i in order]

    def to_json(self, neuron: int | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {"model": self.model, "layer": self.layer, "tokens": list(self.tokens)}
        if neuron is not None:
            data |= {"neuron": neuron, "activations": list(self.record(neuron).activations)}
        if self.dropped_tokens:
            data["dropped_tokens"] = self.dropped_tokens
        return data


def text_token_ids(subject: SubjectModel, text: str, max_tokens: int = MAX_TEXT_TOKENS) -> tuple[list[int], int]:
    """The token ids collection would give `text` (no special tokens), cut at `max_tokens` and at what the model's
    context holds with its special tokens; (ids, tokens dropped)."""
    if not isinstance(text, str) or not text.strip():
        raise InputError("give some text to run the model on")
    ids = subject.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    prefix, suffix = special_token_layout(subject.tokenizer)
    limit = max_tokens
    if subject.max_positions:
        limit = min(limit, subject.max_positions - len(prefix) - len(suffix))
    return ids[:limit], max(0, len(ids) - limit)


def activate_text(
    model: str | SubjectModel | None,
    layer: int,
    text: str,
    *,
    device: str | None = None,
    dtype: str | None = None,
    max_tokens: int = MAX_TEXT_TOKENS,
) -> TextActivations:
    """Run the subject model on `text` and read every neuron of `layer` (TextActivations). Text past `max_tokens`
    (512 by default) is not run and is counted in `dropped_tokens`. The model is loaded once per process."""
    subject = model if isinstance(model, SubjectModel) else load_subject_model(model, device, dtype)
    subject.check_layers([layer])
    ids, dropped = text_token_ids(subject, text, max_tokens)
    prefix, suffix = special_token_layout(subject.tokenizer)
    start, stop = len(prefix), len(prefix) + len(ids)
    captured: list[torch.Tensor] = []

    def hook(_module: Any, inputs: tuple[torch.Tensor, ...]) -> None:
        captured.append(inputs[0][0, start:stop].to("cpu", torch.float32))
        raise _StopForward

    handle = subject.mlp_out(layer).register_forward_pre_hook(hook)
    try:
        inputs = torch.tensor([prefix + ids + suffix], device=subject.device)
        with torch.inference_mode(), contextlib.suppress(_StopForward):
            subject.model(input_ids=inputs, attention_mask=torch.ones_like(inputs))
    finally:
        handle.remove()
    tokens = tuple(token_strings(subject.tokenizer, ids))
    return TextActivations(subject.name, layer, tokens, captured[0].numpy(), dropped)
