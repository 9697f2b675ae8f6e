"""Collection across processes with torch.distributed (launched by `torchrun`), and the exact merge of the tracking
states of several processes into what one process would have produced.

- `World` is this process's place in the run, read from the variables torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK).
  NCCL moves tensors between GPUs, gloo between CPUs; small Python objects always go over gloo.
- Shards: rank r forwards the batches b of the corpus with b % world_size == r (batch b holds excerpts
  b·batch_size …), so the shards are disjoint, deterministic, and their union is the single-process corpus.
- Merges are pure functions on states, usable and tested without any process group:
  - top-k: the k best of the union of the per-rank top-k in the total order (value descending, excerpt index
    ascending), the order single-process streaming keeps too, so the result is identical, ties included;
  - count, mean and M2 (sum of squared deviations) by Chan et al.'s pairwise formulas; max elementwise;
  - samples of excerpts (random records, quantile sample): each is a bottom-k sample by a hash key of the excerpt
    index (`KeyedSample`), and the bottom-k of a union is the bottom-k of the parts' bottom-k: exact, no weights.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import resource
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from core.errors import InputError, WorkbenchError

if TYPE_CHECKING:
    from core.activations import CollectOptions, PassResult

ENV_TIMEOUT = "EVAL_DIST_TIMEOUT_S"
# How long a rank waits for the others at a collective: it must cover the spread of the ranks' finishing times.
DEFAULT_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class World:
    """This process's place in a distributed run; the default is one process on its own."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> World:
        """The world torchrun describes in RANK, WORLD_SIZE and LOCAL_RANK; one process when they are not set."""
        env = os.environ if environ is None else environ
        try:
            world = cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))
        except ValueError:
            raise InputError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (as torchrun sets them)") from None
        if not 0 <= world.rank < world.world_size:
            raise InputError(f"RANK {world.rank} is outside WORLD_SIZE {world.world_size}")
        return world

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def owns_batch(self, batch_number: int) -> bool:
        return batch_number % self.world_size == self.rank


SINGLE = World()


def rank_device(world: World, device: str) -> str:
    """Each rank on a GPU of its own: `cuda` (or `cuda:N`) becomes cuda:LOCAL_RANK under torchrun."""
    if world.distributed and device.startswith("cuda"):
        if world.local_rank >= torch.cuda.device_count():
            raise InputError(
                f"LOCAL_RANK {world.local_rank} has no GPU: this node has {torch.cuda.device_count()};"
                " use --nproc-per-node ≤ the number of GPUs"
            )
        return f"cuda:{world.local_rank}"
    return device


def timeout() -> timedelta:
    raw = os.environ.get(ENV_TIMEOUT)
    try:
        seconds = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise InputError(f"${ENV_TIMEOUT} must be a number of seconds, got {raw!r}") from None
    return timedelta(seconds=seconds)


class Group:
    """The process groups of a run: `tensors` (NCCL on GPU, gloo on CPU) and `objects` (always gloo)."""

    def __init__(self, world: World, device: str) -> None:
        import torch.distributed as dist

        self.world = world
        self.owned = False
        self.tensors: Any = None
        self.objects: Any = None
        if not world.distributed:
            return
        if not dist.is_initialized():
            backend = "nccl" if device.startswith("cuda") else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(device)
            with _collective("starting the process group (torch.distributed, env://)"):
                dist.init_process_group(backend, timeout=timeout())
            self.owned = True
        elif dist.get_world_size() != world.world_size:
            raise InputError(f"the process group has {dist.get_world_size()} ranks, WORLD_SIZE says {world.world_size}")
        self.tensors = dist.group.WORLD
        gloo = dist.get_backend() == "gloo"
        self.objects = dist.group.WORLD if gloo else dist.new_group(backend="gloo", timeout=timeout())

    def close(self) -> None:
        import torch.distributed as dist

        if self.owned and dist.is_initialized():
            dist.destroy_process_group()
            self.owned = False

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value`, on every rank."""
        if not self.world.distributed:
            return value
        import torch.distributed as dist

        box = [value]
        with _collective("receiving rank 0's plan"):
            dist.broadcast_object_list(box, src=0, group=self.objects)
        return box[0]

    def all_gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, by rank, on every rank."""
        if not self.world.distributed:
            return [value]
        import torch.distributed as dist

        values: list[Any] = [None] * self.world.world_size
        with _collective("exchanging per-rank summaries"):
            dist.all_gather_object(values, value, group=self.objects)
        return values

    def barrier(self, what: str) -> None:
        """Wait for every rank; on gloo a monitored barrier that names the ranks that did not arrive."""
        if not self.world.distributed:
            return
        import torch.distributed as dist

        with _collective(what):
            dist.monitored_barrier(group=self.objects, timeout=timeout(), wait_all_ranks=True)

    def gather(self, tensor: torch.Tensor, rows: int | None = None) -> list[torch.Tensor] | None:
        """Every rank's `tensor` on rank 0 (None elsewhere). With `rows`, the first dimension may differ between
        ranks: each is padded to `rows` for the transfer and trimmed again on rank 0."""
        if not self.world.distributed:
            return [tensor]
        import torch.distributed as dist

        sizes = self.all_gather(tensor.shape[0]) if rows is not None else None
        sent = tensor.contiguous()
        if rows is not None and tensor.shape[0] < rows:
            sent = torch.cat([sent, sent.new_zeros((rows - tensor.shape[0], *tensor.shape[1:]))])
        received = [torch.empty_like(sent) for _ in range(self.world.world_size)] if self.world.is_main else None
        with _collective("gathering tracking states on rank 0"):
            dist.gather(sent, received, dst=0, group=self.tensors)
        if received is None:
            return None
        if sizes is not None:
            received = [part[:size] for part, size in zip(received, sizes, strict=True)]
        return received


@contextlib.contextmanager
def _collective(what: str) -> Iterator[None]:
    """A collective that fails (a rank died, a timeout) is one WorkbenchError that says what to do."""
    try:
        yield
    except (RuntimeError, ValueError) as exc:  # torch.distributed's errors (DistError…) are RuntimeErrors
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WorkbenchError(
            f"distributed collection failed while {what}: another process stopped or could not be reached"
            f" ({reason[:300]}). Nothing was written for the layers in progress; rerun the same command: finished"
            " layers are not redone"
        ) from exc


@contextlib.contextmanager
def process_group(world: World, device: str) -> Iterator[Group]:
    """The process groups for this run, started if torchrun has not, and torn down on the way out."""
    group = Group(world, device)
    try:
        yield group
    finally:
        group.close()


# --- Samples of excerpts: bottom-k by a hash key ---------------------------------------------------------------


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser (Steele, Lea & Flood 2014), elementwise on uint64 (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def sample_keys(indices: np.ndarray, seed: int, stream: int) -> np.ndarray:
    """A uniform 63-bit key per excerpt index, fixed by (seed, stream): SplitMix64's output number `index`."""
    salt = _mix(np.array([(seed * 2 + stream) & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
    golden = np.uint64(0x9E3779B97F4A7C15)
    return (_mix(np.asarray(indices, dtype=np.uint64) * golden + salt) >> np.uint64(1)).astype(np.int64)


@dataclass
class KeyedSample:
    """The `size` excerpts with the smallest keys seen so far, each in a slot of its own.

    Keys are independent uniform draws per excerpt, so the kept set is a uniform sample without replacement, as
    Algorithm R's is; unlike Algorithm R's, it does not depend on the order in which excerpts arrive, which is what
    makes the merge of several shards exact.
    """

    size: int
    seed: int
    stream: int
    keys: list[int] = field(default_factory=list)  # by slot
    members: list[int] = field(default_factory=list)  # excerpt index, by slot
    _heap: list[tuple[int, int, int]] = field(default_factory=list)  # (-key, -member, slot): root leaves first

    def offer(self, first: int, count: int) -> list[tuple[int, int]]:
        """Offer excerpts first … first+count-1; returns (position in batch, slot) for each one kept."""
        keys = sample_keys(np.arange(first, first + count), self.seed, self.stream).tolist()
        taken: dict[int, int] = {}
        for position, key in enumerate(keys):
            member = first + position
            if len(self.members) < self.size:
                slot = len(self.members)
                self.members.append(member)
                self.keys.append(key)
                heapq.heappush(self._heap, (-key, -member, slot))
            elif (key, member) < (-self._heap[0][0], -self._heap[0][1]):
                slot = self._heap[0][2]
                self.members[slot], self.keys[slot] = member, key
                heapq.heapreplace(self._heap, (-key, -member, slot))
            else:
                continue
            taken[slot] = position  # a later excerpt in the same batch may take the same slot again
        return [(position, slot) for slot, position in taken.items()]


def select_sample(keys: Sequence[Sequence[int]], members: Sequence[Sequence[int]], size: int) -> list[tuple[int, int]]:
    """The merged sample of several shards' samples: (shard, slot) of the `size` smallest (key, excerpt), in key
    order."""
    candidates = sorted(
        (key, member, shard, slot)
        for shard, (shard_keys, shard_members) in enumerate(zip(keys, members, strict=True))
        for slot, (key, member) in enumerate(zip(shard_keys, shard_members, strict=True))
    )
    return [(shard, slot) for _, _, shard, slot in candidates[:size]]


def local_rows(selection: Sequence[tuple[int, int]], shard: int) -> list[int]:
    """The slots of `shard` that the merged sample keeps, in merged order."""
    return [slot for owner, slot in selection if owner == shard]


def interleave(selection: Sequence[tuple[int, int]], rows: Sequence[torch.Tensor]) -> torch.Tensor:
    """Rows in merged order from each shard's `local_rows` (rows[shard][i] is that shard's i-th kept row)."""
    device = rows[0].device
    offsets = np.cumsum([0, *(len(part) for part in rows)])
    seen = [0] * len(rows)
    index = []
    for shard, _ in selection:
        index.append(int(offsets[shard]) + seen[shard])
        seen[shard] += 1
    return torch.cat([part.to(device) for part in rows])[torch.tensor(index, dtype=torch.long, device=device)]


# --- Layer states and their merge ------------------------------------------------------------------------------


@dataclass
class LayerState:
    """One layer's tracking state, reduced to what records and stats are made of. Tensors share one device.

    Sample rows hold only the rows this shard contributes to the merged samples, in merged order (`local_rows`).
    """

    count: int  # tokens seen
    mean: torch.Tensor  # [neurons] float64
    m2: torch.Tensor  # [neurons] float64, the sum of squared deviations from the mean
    max: torch.Tensor  # [neurons]
    top_values: torch.Tensor  # [neurons, k], -inf in unused slots
    top_excerpts: torch.Tensor  # [neurons, k] int64, -1 in unused slots
    top_activations: torch.Tensor  # [neurons, k, excerpt_len]
    random_activations: torch.Tensor  # [rows, excerpt_len, neurons]
    sample_max: torch.Tensor  # [rows, neurons]
    # The scorers' excerpts (docs/METHOD.md §10); None in a state made without them.
    level_values: torch.Tensor | None = None  # [levels, neurons, k]: top-k per level subsample, -inf unused
    level_excerpts: torch.Tensor | None = None  # [levels, neurons, k] int64, -1 unused
    level_activations: torch.Tensor | None = None  # [levels, neurons, k, excerpt_len]
    bottom_values: torch.Tensor | None = None  # [neurons, k]: minus the per-excerpt min, -inf unused
    bottom_excerpts: torch.Tensor | None = None  # [neurons, k] int64, -1 unused
    bottom_activations: torch.Tensor | None = None  # [neurons, k, excerpt_len]
    quiet_activations: torch.Tensor | None = None  # [rows, excerpt_len, neurons]: the non-activating candidates

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in vars(self).values() if isinstance(t, torch.Tensor))


def chan_merge(
    counts: Sequence[int], means: Sequence[torch.Tensor], m2s: Sequence[torch.Tensor]
) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(count, mean, M2) of the union of parts, by Chan, Golub & LeVeque's pairwise update; empty parts count for
    nothing."""
    count, mean, m2 = 0, torch.zeros_like(means[0]), torch.zeros_like(m2s[0])
    for part_count, part_mean, part_m2 in zip(counts, means, m2s, strict=True):
        if part_count == 0:
            continue
        total = count + part_count
        delta = part_mean.to(mean.device) - mean
        mean = mean + delta * (part_count / total)
        m2 = m2 + part_m2.to(m2.device) + delta.square() * (count * part_count / total)
        count = total
    return count, mean, m2


def _lexicographic(values: torch.Tensor, excerpts: torch.Tensor) -> torch.Tensor:
    """Per row, the permutation that orders candidates by value descending, then excerpt index ascending."""
    by_excerpt = excerpts.argsort(dim=1, stable=True)
    by_value = values.gather(1, by_excerpt).argsort(dim=1, descending=True, stable=True)
    return by_excerpt.gather(1, by_value)


def select_top(values: torch.Tensor, excerpts: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k best candidates of each row in the order (value descending, excerpt index ascending), not
    sorted. topk decides every row whose k-th and (k+1)-th values differ; only rows tied there are sorted fully."""
    width = values.shape[1]
    if width <= k:
        return _lexicographic(values, excerpts)
    best = values.topk(k + 1, dim=1)
    chosen = best.indices[:, :k]
    tied = (best.values[:, k - 1] == best.values[:, k]).nonzero(as_tuple=True)[0]
    if tied.numel():
        chosen = chosen.clone()
        chosen[tied] = _lexicographic(values[tied], excerpts[tied])[:, :k]
    return chosen


def merge_top(
    values: Sequence[torch.Tensor], excerpts: Sequence[torch.Tensor], activations: Sequence[torch.Tensor], k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The k best of several top-k lists (per row: neuron), sorted best first; rows of `activations` follow."""
    device = values[0].device
    all_values = torch.cat([v.to(device) for v in values], dim=1)
    all_excerpts = torch.cat([e.to(device) for e in excerpts], dim=1)
    chosen = select_top(all_values, all_excerpts, k)
    order = chosen.gather(1, _lexicographic(all_values.gather(1, chosen), all_excerpts.gather(1, chosen)))
    all_activations = torch.cat([a.to(device) for a in activations], dim=1)
    picked = all_activations.gather(1, order[:, :, None].expand(-1, -1, all_activations.shape[2]))
    return all_values.gather(1, order), all_excerpts.gather(1, order), picked


def merge_layer(
    states: Sequence[LayerState],
    random_selection: Sequence[tuple[int, int]],
    sample_selection: Sequence[tuple[int, int]],
    top_k: int,
    quiet_selection: Sequence[tuple[int, int]] = (),
) -> LayerState:
    """What one process would hold after the whole corpus: states by shard, each with its `local_rows` of the
    merged samples (`random_selection`, `sample_selection`, `quiet_selection` from `select_sample`)."""
    count, mean, m2 = chan_merge([s.count for s in states], [s.mean for s in states], [s.m2 for s in states])
    device = states[0].max.device
    top_values, top_excerpts, top_activations = merge_top(
        [s.top_values for s in states], [s.top_excerpts for s in states], [s.top_activations for s in states], top_k
    )
    merged = LayerState(
        count=count,
        mean=mean,
        m2=m2,
        max=torch.stack([s.max.to(device) for s in states]).amax(dim=0),
        top_values=top_values,
        top_excerpts=top_excerpts,
        top_activations=top_activations,
        random_activations=interleave(random_selection, [s.random_activations for s in states]),
        sample_max=interleave(sample_selection, [s.sample_max for s in states]),
    )
    first = states[0]
    if first.level_values is not None:
        merged.level_values, merged.level_excerpts, merged.level_activations = _merge_levels(states)
    if first.bottom_values is not None:
        merged.bottom_values, merged.bottom_excerpts, merged.bottom_activations = merge_top(
            [s.bottom_values for s in states],  # type: ignore[misc]
            [s.bottom_excerpts for s in states],  # type: ignore[misc]
            [s.bottom_activations for s in states],  # type: ignore[misc]
            first.bottom_values.shape[1],
        )
    if first.quiet_activations is not None:
        merged.quiet_activations = (
            interleave(quiet_selection, [s.quiet_activations for s in states])  # type: ignore[misc]
            if quiet_selection
            else first.quiet_activations[:0]
        )
    return merged


def _merge_levels(states: Sequence[LayerState]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each level's top-k merged like the top records: a level is a top-k over one subsample of the excerpts."""
    levels, neurons, k = states[0].level_values.shape  # type: ignore[union-attr]
    length = states[0].level_activations.shape[-1]  # type: ignore[union-attr]
    values, excerpts, activations = merge_top(
        [s.level_values.reshape(levels * neurons, k) for s in states],  # type: ignore[union-attr]
        [s.level_excerpts.reshape(levels * neurons, k) for s in states],  # type: ignore[union-attr]
        [s.level_activations.reshape(levels * neurons, k, length) for s in states],  # type: ignore[union-attr]
        k,
    )
    return (
        values.reshape(levels, neurons, k),
        excerpts.reshape(levels, neurons, k),
        activations.reshape(levels, neurons, k, length),
    )


# --- Merging the passes of all ranks -------------------------------------------------------------------------


@dataclass(frozen=True)
class RankSummary:
    rank: int
    n_excerpts: int
    seconds: float
    peak_memory_bytes: int


@dataclass
class MergedPass:
    """The whole corpus's states, as one process would have them: `states` on rank 0 only."""

    states: dict[int, LayerState]
    random_members: list[int]  # excerpt indices of the random records, in sample order
    ranks: list[RankSummary]
    merge_seconds: float
    quiet_members: list[int] = field(default_factory=list)  # excerpt indices of the non-activating candidates


def peak_memory_bytes(devices: Iterable[torch.device]) -> int:
    """The peak GPU memory allocated on these devices when any is a GPU, else this process's peak RSS."""
    cuda = {d for d in devices if d.type == "cuda"}
    if cuda:
        return sum(torch.cuda.max_memory_allocated(d) for d in cuda)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def merge_pass(result: PassResult, layers: list[int], options: CollectOptions, group: Group) -> MergedPass:
    """Merge every rank's pass into rank 0's `states` (one process: the same code, with one shard), layer by layer,
    freeing each rank's trackers as it goes."""
    world = group.world
    group.barrier("waiting for every rank to finish its pass")
    started = time.perf_counter()
    mine = (
        result.n_excerpts,
        result.seconds,
        result.random_sample.keys,
        result.random_sample.members,
        result.quantile_sample.keys,
        result.quantile_sample.members,
        result.quiet_sample.keys if result.quiet_sample is not None else [],
        result.quiet_sample.members if result.quiet_sample is not None else [],
    )
    everyone = group.all_gather(mine)
    random_selection = select_sample([e[2] for e in everyone], [e[3] for e in everyone], options.random_k)
    sample_selection = select_sample([e[4] for e in everyone], [e[5] for e in everyone], options.quantile_sample)
    quiet_size = result.quiet_sample.size if result.quiet_sample is not None else 0
    quiet_selection = select_sample([e[6] for e in everyone], [e[7] for e in everyone], quiet_size)
    random_rows, sample_rows = local_rows(random_selection, world.rank), local_rows(sample_selection, world.rank)
    quiet_rows = local_rows(quiet_selection, world.rank)
    most_random = max(len(local_rows(random_selection, r)) for r in range(world.world_size))
    most_sample = max(len(local_rows(sample_selection, r)) for r in range(world.world_size))
    most_quiet = max(len(local_rows(quiet_selection, r)) for r in range(world.world_size))
    devices = [tracker.device for tracker in result.trackers.values()]
    states: dict[int, LayerState] = {}
    for layer in layers:
        local = result.trackers.pop(layer).state(random_rows, sample_rows, quiet_rows)
        counts = [e[0] * options.excerpt_len for e in everyone]
        parts = _gather_state(group, local, counts, most_random, most_sample, most_quiet)
        del local
        if parts is not None:
            states[layer] = merge_layer(parts, random_selection, sample_selection, options.top_k, quiet_selection)
    merge_seconds = time.perf_counter() - started
    summaries = group.all_gather((world.rank, peak_memory_bytes(devices)))
    ranks = [
        RankSummary(rank, n_excerpts, seconds, peak)
        for (rank, peak), (n_excerpts, seconds, *_) in zip(summaries, everyone, strict=True)
    ]
    members = [everyone[shard][3][slot] for shard, slot in random_selection]
    quiet_members = [everyone[shard][7][slot] for shard, slot in quiet_selection]
    return MergedPass(states, members, ranks, merge_seconds, quiet_members)


def _gather_state(
    group: Group, state: LayerState, counts: list[int], random_rows: int, sample_rows: int, quiet_rows: int = 0
) -> list[LayerState] | None:
    """Every rank's layer state on rank 0 (None elsewhere); one process: its own state."""
    if not group.world.distributed:
        return [state]
    moments = torch.stack([state.mean, state.m2, state.max.double()])
    gathered = {
        "moments": group.gather(moments),
        "top_values": group.gather(state.top_values),
        "top_excerpts": group.gather(state.top_excerpts),
        "top_activations": group.gather(state.top_activations),
        "random_activations": group.gather(state.random_activations, rows=random_rows),
        "sample_max": group.gather(state.sample_max, rows=sample_rows),
    }
    # The scorers' excerpts: every rank made its state with the same options, so all have them or none do.
    for name in ("level_values", "level_excerpts", "level_activations", "bottom_values", "bottom_excerpts",
                 "bottom_activations"):  # fmt: skip
        tensor = getattr(state, name)
        if tensor is not None:
            gathered[name] = group.gather(tensor)
    if state.quiet_activations is not None:
        gathered["quiet_activations"] = group.gather(state.quiet_activations, rows=quiet_rows)
    if not group.world.is_main:
        return None
    parts = []
    for rank, count in enumerate(counts):
        mean, m2, max_values = gathered["moments"][rank]  # type: ignore[index]
        parts.append(
            LayerState(
                count=count,
                mean=mean,
                m2=m2,
                max=max_values.float(),
                **{name: tensors[rank] for name, tensors in gathered.items() if name != "moments"},  # type: ignore[index]
            )
        )
    return parts
