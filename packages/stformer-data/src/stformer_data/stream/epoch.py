"""Planning one epoch of a streamed corpus, in numpy: sharding, batches, buffers, measures.

The plan is a pure function of the cell counts, the strategy, the batch size, the world
(``world_size`` ranks x ``num_workers`` DataLoader workers), the seed and the epoch, so every
consumer computes the same global plan on its own and takes its share; nothing is communicated.

* The strategy orders the blocks of all files; the epoch's cell sequence is that order.
* The sequence is cut into ``world_size`` contiguous segments (one per rank), so each rank reads
  whole blocks; ``even_batches`` says how every rank gets the same number of batches:
  ``"even"`` -- every cell exactly once, ``ceil(N / (world_size * batch_size))`` batches per rank, the
  batches of a rank as equal as possible (at most ``batch_size`` cells);
  ``"drop"`` -- full batches, the last ``N mod (world_size * batch_size)`` cells of the epoch's order
  are left out (other cells each epoch);
  ``"pad"`` -- full batches, the sequence wraps around so that up to ``world_size * batch_size - 1``
  cells are seen twice (as ``torch.utils.data.DistributedSampler`` does).
* A rank's batches are grouped into shuffle buffers of ``buffer_size // batch_size`` batches; the
  cells of a buffer are permuted together; buffer ``i`` goes to DataLoader worker
  ``i % num_workers``, so workers never read the same block twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from stformer_data.stream.shuffle import BlockShuffleStrategy

EvenBatches = Literal["even", "drop", "pad"]
EVEN_BATCHES = ("even", "drop", "pad")


@dataclass(frozen=True)
class BufferPlan:
    """One shuffle buffer: the cells to read (global ids, in order) and how they are cut into batches."""

    index: int
    cells: np.ndarray
    batch_sizes: np.ndarray

    def batches(self) -> list[np.ndarray]:
        """Positions into ``cells`` of each batch, in order (no length bucketing)."""
        bounds = np.concatenate([[0], np.cumsum(self.batch_sizes)])
        return [np.arange(bounds[i], bounds[i + 1]) for i in range(len(self.batch_sizes))]


def epoch_rng(seed: int, epoch: int, *keys: int) -> np.random.Generator:
    """A generator that depends only on ``seed``, ``epoch`` and ``keys`` (never on global state)."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), *map(int, keys)])


def batches_per_rank(
    n_cells: int, *, batch_size: int, world_size: int, even_batches: EvenBatches
) -> int:
    """How many batches every rank gets in one epoch."""
    _check_world(batch_size=batch_size, world_size=world_size, even_batches=even_batches)
    per_round = world_size * batch_size
    if even_batches == "drop":
        return n_cells // per_round
    return -(-n_cells // per_round)


def _check_world(*, batch_size: int, world_size: int, even_batches: str) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if even_batches not in EVEN_BATCHES:
        raise ValueError(f"even_batches must be one of {EVEN_BATCHES}, got {even_batches!r}")


def _rank_positions(
    n: int, *, batch_size: int, world_size: int, rank: int, even_batches: EvenBatches
) -> tuple[np.ndarray, np.ndarray]:
    """Positions (into the epoch's cell sequence) of ``rank``'s cells, and its batch sizes."""
    n_batches = batches_per_rank(
        n, batch_size=batch_size, world_size=world_size, even_batches=even_batches
    )
    if even_batches in ("drop", "pad"):
        per = n_batches * batch_size
        positions = np.arange(rank * per, (rank + 1) * per, dtype=np.int64) % max(n, 1)
        return positions, np.full(n_batches, batch_size, dtype=np.int64)
    base, extra = divmod(n, world_size)
    if base < n_batches:
        raise ValueError(
            f"even_batches='even' cannot give each of {world_size} ranks {n_batches} non-empty batches "
            f"from {n} cells; use even_batches='drop' or 'pad', or a smaller batch_size or world"
        )
    count = base + (1 if rank < extra else 0)
    start = rank * base + min(rank, extra)
    sizes = np.full(n_batches, count // n_batches, dtype=np.int64)
    sizes[: count % n_batches] += 1
    return np.arange(start, start + count, dtype=np.int64), sizes


def _cells_at(positions: np.ndarray, starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """Global cell ids at ``positions`` of the sequence made by concatenating blocks ``[start, stop)``."""
    ends = np.cumsum(stops - starts)
    block = np.searchsorted(ends, positions, side="right")
    first = ends[block] - (stops[block] - starts[block])
    return starts[block] + (positions - first)


def plan_epoch(
    counts: np.ndarray | list[int],
    strategy: BlockShuffleStrategy,
    *,
    batch_size: int,
    seed: int = 0,
    epoch: int = 0,
    world_size: int = 1,
    rank: int = 0,
    num_workers: int = 1,
    worker_id: int = 0,
    even_batches: EvenBatches = "even",
) -> list[BufferPlan]:
    """The shuffle buffers that DataLoader worker ``worker_id`` of rank ``rank`` reads this epoch.

    ``counts[f]`` is the number of cells of source ``f``; cells are numbered ``0 .. sum(counts)-1``
    with the sources concatenated. See the module docstring for the scheme.

    >>> from stformer_data import SequentialBlockStrategy
    >>> plans = plan_epoch([5, 3], SequentialBlockStrategy(), batch_size=2, world_size=2, rank=1)
    >>> [(p.cells.tolist(), p.batch_sizes.tolist()) for p in plans]
    [([4, 5, 6, 7], [2, 2])]
    """
    counts = np.asarray(counts, dtype=np.int64)
    _check_world(batch_size=batch_size, world_size=world_size, even_batches=even_batches)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    if num_workers < 1 or not 0 <= worker_id < num_workers:
        raise ValueError(f"worker_id must be in [0, num_workers={num_workers}), got {worker_id}")
    n = int(counts.sum())
    if n == 0:
        return []
    starts, stops = strategy.block_order(counts, epoch_rng(seed, epoch, 0))
    positions, sizes = _rank_positions(
        n, batch_size=batch_size, world_size=world_size, rank=rank, even_batches=even_batches
    )
    per_buffer = max(1, strategy.buffer_size // batch_size)
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    plans = []
    for index in range(worker_id, -(-len(sizes) // per_buffer), num_workers):
        lo, hi = index * per_buffer, min((index + 1) * per_buffer, len(sizes))
        cells = _cells_at(positions[bounds[lo] : bounds[hi]], starts, stops)
        if strategy.shuffle_buffer:
            cells = epoch_rng(seed, epoch, 1, rank, index).permutation(cells)
        plans.append(BufferPlan(index=index, cells=cells, batch_sizes=sizes[lo:hi]))
    return plans


def bucket_batches(
    lengths: np.ndarray, batch_sizes: np.ndarray, rng: np.random.Generator
) -> list[np.ndarray]:
    """Length bucketing inside a buffer: cut the cells, sorted by length, into batches; shuffle the batches.

    Returns positions into ``lengths``; ties are broken at random so equal-length cells still mix.
    The batch sizes are kept, so the plan's batch count is unchanged.

    >>> [b.tolist() for b in bucket_batches(np.array([5, 1, 4, 2]), np.array([2, 2]), np.random.default_rng(0))]
    [[1, 3], [2, 0]]
    """
    lengths = np.asarray(lengths)
    if int(np.sum(batch_sizes)) != lengths.size:
        raise ValueError(
            f"batch sizes sum to {int(np.sum(batch_sizes))} but there are {lengths.size} cells"
        )
    order = np.lexsort((rng.random(lengths.size), lengths))
    bounds = np.concatenate([[0], np.cumsum(batch_sizes)])
    batches = [order[bounds[i] : bounds[i + 1]] for i in range(len(batch_sizes))]
    return [batches[i] for i in rng.permutation(len(batches))]


def padding_fraction(batch_lengths: Iterable[np.ndarray]) -> float:
    """Share of padded positions when each batch is padded to its longest sequence.

    >>> padding_fraction([np.array([4, 2]), np.array([2, 4])])
    0.25
    """
    real = padded = 0
    for lengths in batch_lengths:
        lengths = np.asarray(lengths)
        if lengths.size:
            real += int(lengths.sum())
            padded += int(lengths.max()) * lengths.size
    return 0.0 if padded == 0 else 1.0 - real / padded


def batch_diversity(batch_labels: Iterable[np.ndarray]) -> float:
    """Mean entropy of the labels within a batch, relative to the entropy of all labels together.

    1.0 means batches are as mixed as the whole epoch (e.g. of source files or donors); 0.0 means every
    batch holds one label. Returns 1.0 when there is a single label overall (nothing to mix).

    >>> batch_diversity([np.array([0, 1]), np.array([0, 1])]), batch_diversity([np.array([0, 0]), np.array([1, 1])])
    (1.0, 0.0)
    """
    per_batch = []
    total: dict = {}
    for labels in batch_labels:
        values, counts = np.unique(np.asarray(labels), return_counts=True)
        if counts.sum() == 0:
            continue
        per_batch.append(_entropy(counts))
        for v, c in zip(values.tolist(), counts.tolist(), strict=True):
            total[v] = total.get(v, 0) + c
    overall = _entropy(np.fromiter(total.values(), dtype=np.float64)) if total else 0.0
    if overall == 0.0:
        return 1.0
    return float(np.mean(per_batch) / overall)


def _entropy(counts: np.ndarray) -> float:
    p = np.asarray(counts, dtype=np.float64)
    p = p[p > 0] / p.sum()
    return float(-(p * np.log(p)).sum())
