"""Collection: one streaming pass over the corpus that tracks, for every neuron of the chosen layers at once,
the top-k excerpts by per-excerpt max, a random sample of excerpts, running mean/variance/max and quantiles.

Design (SPEC.md §1):
- Hooks read the input of each layer's MLP output projection, all neurons of a layer as one [batch, tokens, neurons]
  tensor, and all tracking is vectorised on the model's device.
- The per-token activations of the current top-k and random excerpts are kept on the device next to their values,
  so no second forward pass is needed: a batch excerpt that enters a neuron's top-k has its activations copied into
  the slot it frees. The copies cost O(replacements), which after the first batches is a small fraction of neurons.
- Memory is bounded independently of corpus size: O(neurons × (top_k + random_k) × excerpt_len) for records, plus
  O(neurons × quantile_sample) for quantiles. Excerpt token ids are spilled to a temporary file, 4 bytes a token.
- Quantiles of the per-excerpt max are exact while the corpus has at most `quantile_sample` excerpts; beyond that
  they are computed from a uniform reservoir sample of that many excerpts (Algorithm R), the same excerpts for every
  neuron. The max, mean and variance are always exact.
- Layers are written one transaction each, together with their "finished" mark, so a killed run never leaves a
  half-written layer, and a rerun skips finished layers.
"""

from __future__ import annotations

import contextlib
import logging
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
from core.errors import InputError, WorkbenchError
from core.models import SubjectModel, load_subject_model
from core.records import ActivationRecord, NeuronId, NeuronRecord, NeuronStats

log = logging.getLogger(__name__)

Progress = Callable[[int, int | None], None]


@dataclass(frozen=True)
class CollectOptions:
    """Parameters of one collection run; all but batching and device identify the run for resuming."""

    max_tokens: int = config.DEFAULT_MAX_TOKENS
    excerpt_len: int = config.DEFAULT_EXCERPT_LEN
    top_k: int = config.DEFAULT_TOP_K
    random_k: int = config.DEFAULT_RANDOM_K
    seed: int = config.DEFAULT_SEED
    batch_size: int = config.DEFAULT_BATCH_SIZE
    quantile_sample: int = config.DEFAULT_QUANTILE_SAMPLE
    device: str | None = None
    dtype: str | None = None

    def __post_init__(self) -> None:
        for name in ("max_tokens", "excerpt_len", "top_k", "random_k", "batch_size", "quantile_sample"):
            if getattr(self, name) < 1:
                raise InputError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.max_tokens < self.excerpt_len:
            raise InputError(f"max-tokens ({self.max_tokens}) is smaller than one excerpt ({self.excerpt_len} tokens)")


class _StopForward(Exception):
    """Raised by the hook of the last layer we need, so that later layers are not computed."""


@dataclass
class _Reservoir:
    """Algorithm R over excerpt indices: which slot (if any) each new excerpt takes. Shared by all layers."""

    size: int
    rng: np.random.Generator
    seen: int = 0
    members: list[int] = field(default_factory=list)

    def offer(self, count: int) -> list[tuple[int, int]]:
        """Offer the next `count` excerpts; returns (position in batch, slot) for each one kept."""
        taken: dict[int, int] = {}
        for position in range(count):
            index = self.seen + position
            if index < self.size:
                slot = index
                self.members.append(index)
            else:
                slot = int(self.rng.integers(0, index + 1))
                if slot >= self.size:
                    continue
                self.members[slot] = index
            taken[slot] = position  # a later excerpt in the same batch may take the same slot again
        self.seen += count
        return [(position, slot) for slot, position in taken.items()]


class _LayerTracker:
    """Running per-neuron state for one layer, on the model's device."""

    def __init__(self, n_neurons: int, options: CollectOptions, device: torch.device) -> None:
        k, length = options.top_k, options.excerpt_len
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

    def update(
        self,
        activations: torch.Tensor,
        excerpt_ids: torch.Tensor,
        random_slots: list[tuple[int, int]],
        sample_slots: list[tuple[int, int]],
    ) -> None:
        """Fold in one batch: activations [batch, tokens, neurons], contiguous float32."""
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

    def _update_top(self, activations: torch.Tensor, batch_max: torch.Tensor, excerpt_ids: torch.Tensor) -> None:
        k = self.top_values.shape[1]
        candidates = torch.cat([self.top_values, batch_max], dim=1)  # [neurons, k + batch]
        chosen = candidates.topk(k, dim=1).indices
        kept = torch.zeros_like(candidates, dtype=torch.bool).scatter_(1, chosen, True)
        entering = kept[:, k:]
        # Slots freed and excerpts entering are equal in number for each neuron, and nonzero() lists both in
        # neuron-major order, so the two lists pair up element by element.
        neurons_in, positions = entering.nonzero(as_tuple=True)
        if neurons_in.numel() == 0:
            return
        neurons_out, slots = (~kept[:, :k]).nonzero(as_tuple=True)
        self.top_values[neurons_out, slots] = batch_max[neurons_in, positions]
        self.top_excerpts[neurons_out, slots] = excerpt_ids[positions]
        self.top_activations[neurons_out, slots] = activations[positions, :, neurons_in]

    def stats(self, quantile_rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(mean, variance, max, quantiles [levels, neurons]) as numpy arrays."""
        sample = self.sample_max[:quantile_rows].double()
        levels = torch.tensor(config.QUANTILES, dtype=torch.float64, device=sample.device)
        # numpy's default ("linear") interpolation, so the result matches np.quantile on the same values.
        quantiles = torch.quantile(sample, levels, dim=0) if quantile_rows else torch.full_like(levels, float("nan"))
        count = max(self.count, 1)
        shifted_mean = self.shifted_sum / count
        variance = (self.shifted_sum_sq / count - shifted_mean.square()).clamp_min(0)
        shift = self.shift.double() if self.shift is not None else torch.zeros_like(shifted_mean)
        return (
            (shifted_mean + shift).cpu().numpy(),
            variance.cpu().numpy(),
            self.max.cpu().numpy(),
            np.atleast_2d(quantiles.cpu().numpy()),
        )


@dataclass(frozen=True)
class CollectReport:
    model: str
    corpus: str
    layers: list[int]
    skipped_layers: list[int]
    n_excerpts: int
    n_tokens: int
    seconds: float
    tokens_per_second: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def collect(
    db: sqlite_utils.Database,
    model: str | None = None,
    layers: Sequence[int] | None = None,
    corpus: str | Corpus | None = None,
    options: CollectOptions = CollectOptions(),
    progress: Progress | None = None,
    replace: bool = False,
) -> CollectReport:
    """Collect records and stats for every neuron of `layers` (all layers by default) and store them.

    Resumes: layers already finished under the same run parameters are skipped. Idempotent: a finished run does
    nothing. Bad input raises before anything is written. A layer that already holds neurons from other settings
    (or imported ones) is an InputError unless `replace`, since its explanations were made from those records.
    """
    subject = load_subject_model(model, options.device, options.dtype)
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
        **{k: v for k, v in asdict(options).items() if k not in ("batch_size", "device", "dtype")},
    }
    run_id = dbmod.find_run(db, params)
    done = dbmod.finished_layers(db, run_id) if run_id is not None else set()
    todo = [layer for layer in layers if layer not in done]
    if not todo:
        return CollectReport(subject.name, corpus.name, [], layers, 0, 0, 0.0, 0.0)
    if not replace:
        _refuse_to_replace(dbmod.other_layer_sources(db, subject.name, todo, run_id), subject.name)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="collect-") as spill_dir:
        excerpts = token_excerpts(corpus, subject.tokenizer, options.excerpt_len, options.max_tokens)
        result = stream_pass(subject, todo, batched(excerpts, options.batch_size), options, Path(spill_dir), progress)
        if result.n_excerpts == 0:
            raise InputError(
                f"corpus {corpus.name!r} has no complete excerpt of {options.excerpt_len} tokens; "
                "give a larger corpus or a smaller --excerpt-len"
            )
        pass_seconds = time.perf_counter() - started
        excerpt_ids = np.fromfile(result.token_file, dtype=np.int32).reshape(-1, options.excerpt_len)
        n_tokens = result.n_excerpts * options.excerpt_len
        for layer in todo:
            neurons = _layer_records(subject, layer, result, excerpt_ids)
            try:
                dbmod.write_neurons(
                    db,
                    subject.name,
                    neurons,
                    source="collected",
                    run=params,
                    run_totals=(result.n_excerpts, n_tokens),
                    finished_layer=(layer, pass_seconds),
                )
            except sqlite3.Error as exc:
                raise WorkbenchError(
                    f"could not write layer {layer} to the database ({exc}); nothing of it was kept. Free space or"
                    " fix the database, then rerun the same command: finished layers are not redone"
                ) from exc
    seconds = time.perf_counter() - started
    return CollectReport(
        model=subject.name,
        corpus=corpus.name,
        layers=todo,
        skipped_layers=sorted(done & set(layers)),
        n_excerpts=result.n_excerpts,
        n_tokens=n_tokens,
        seconds=seconds,
        tokens_per_second=n_tokens / pass_seconds if pass_seconds else 0.0,
    )


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
    trackers: dict[int, _LayerTracker]
    n_excerpts: int
    token_file: Path
    random_members: list[int]
    sample_rows: int


def stream_pass(
    subject: SubjectModel,
    layers: list[int],
    batches: Iterable[list[list[int]]],
    options: CollectOptions,
    spill_dir: Path,
    progress: Progress | None = None,
) -> PassResult:
    """The single forward pass over batches of excerpt token ids; spills the ids to `spill_dir`."""
    prefix, suffix = special_token_layout(subject.tokenizer) if subject.tokenizer is not None else ([], [])
    device = next(subject.model.parameters()).device
    trackers = {layer: _LayerTracker(subject.n_neurons, options, device) for layer in layers}
    random_reservoir = _Reservoir(options.random_k, np.random.default_rng(options.seed))
    sample_reservoir = _Reservoir(options.quantile_sample, np.random.default_rng([options.seed, 1]))
    start, stop = len(prefix), len(prefix) + options.excerpt_len
    state: dict[str, Any] = {}

    def make_hook(layer: int) -> Callable[..., None]:
        def hook(_module: Any, inputs: tuple[torch.Tensor, ...]) -> None:
            activations = inputs[0][:, start:stop].float().contiguous()
            trackers[layer].update(activations, state["ids"], state["random"], state["sample"])
            if layer == layers[-1]:
                raise _StopForward

        return hook

    handles = [subject.mlp_out(layer).register_forward_pre_hook(make_hook(layer)) for layer in layers]
    token_file = spill_dir / "tokens.int32"
    n_excerpts = 0
    try:
        with token_file.open("wb") as spill, torch.inference_mode():
            for batch in batches:
                ids = np.asarray(batch, dtype=np.int32)
                ids.tofile(spill)
                state["ids"] = torch.arange(n_excerpts, n_excerpts + len(batch), device=device)
                state["random"] = random_reservoir.offer(len(batch))
                state["sample"] = sample_reservoir.offer(len(batch))
                inputs = torch.tensor([prefix + row + suffix for row in batch], device=device)
                with contextlib.suppress(_StopForward):
                    subject.model(input_ids=inputs, attention_mask=torch.ones_like(inputs))
                n_excerpts += len(batch)
                if progress:
                    progress(n_excerpts * options.excerpt_len, options.max_tokens)
    finally:
        for handle in handles:
            handle.remove()
    return PassResult(
        trackers=trackers,
        n_excerpts=n_excerpts,
        token_file=token_file,
        random_members=list(random_reservoir.members),
        sample_rows=min(sample_reservoir.seen, options.quantile_sample),
    )


def _layer_records(
    subject: SubjectModel, layer: int, result: PassResult, excerpt_ids: np.ndarray
) -> list[NeuronRecord]:
    """Turn a layer's tracker into NeuronRecords, top records sorted by max activation, descending."""
    tracker, random_members = result.trackers[layer], result.random_members
    mean, variance, max_values, quantiles = tracker.stats(result.sample_rows)
    order = tracker.top_values.argsort(dim=1, descending=True)
    top_values = tracker.top_values.gather(1, order).cpu().numpy()
    top_excerpts = tracker.top_excerpts.gather(1, order).cpu().numpy()
    top_acts = tracker.top_activations.gather(1, order[:, :, None].expand_as(tracker.top_activations)).cpu().numpy()
    random_acts = tracker.random_activations[: len(random_members)].permute(2, 0, 1).cpu().numpy()
    needed = {int(e) for e in np.unique(top_excerpts) if e >= 0} | set(random_members)
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
        neurons.append(NeuronRecord(subject.name, NeuronId(layer, index), top, random, stats))
    return neurons
