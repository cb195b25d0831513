"""Block strategies: in which order stformer's streaming datasets read the cells of many files.

(protoplast's documented ``ShuffleStrategy`` / ``SequentialShuffleStrategy`` -- strategies that
split files into ``SplitInfo`` ranges -- are in :mod:`stformer_data.stream.ranges`; these are
stformer's own, used by :func:`stformer_data.plan_epoch` and ``stformer_data.torch.H5adStreamDataset``.)


Cells are read in contiguous *blocks* of rows (fast: one slice per block) and mixed in a *shuffle
buffer* (a group of blocks whose cells are permuted together), the scheme of protoplast and
scDataset. A strategy only decides the block order and whether the buffer is shuffled; sharding
across ranks and workers and the cutting into batches are done by :func:`stformer_data.plan_epoch`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, kw_only=True)
class BlockShuffleStrategy:
    """Block shuffle with a shuffle buffer (the default block strategy; formerly ``ShuffleStrategy``).

    The rows of every file are cut into blocks of ``block_size`` consecutive rows; the blocks of all
    files are put in a random order (new each epoch); every ``buffer_size`` consecutive cells of that
    order are permuted together. A batch therefore mixes about ``buffer_size / block_size`` blocks,
    usually from different files, while the disk sees only ``block_size``-row slices.

    Parameters
    ----------
    block_size
        Consecutive rows read together (1 = every cell on its own: full random order).
    buffer_size
        Cells permuted together (rounded to whole batches when planned); memory is bounded by it.
    shuffle_blocks
        Put the blocks in a random order; ``False`` keeps file order.
    shuffle_buffer
        Permute the cells inside each buffer.

    >>> s = BlockShuffleStrategy(block_size=2, buffer_size=4)
    >>> starts, stops = s.block_order(np.array([3, 2]), np.random.default_rng(0))
    >>> sorted(zip(starts.tolist(), stops.tolist()))
    [(0, 2), (2, 3), (3, 5)]
    """

    block_size: int = 256
    buffer_size: int = 16_384
    shuffle_blocks: bool = True
    shuffle_buffer: bool = True

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        if self.buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {self.buffer_size}")

    @property
    def name(self) -> str:
        return type(self).__name__

    def block_order(
        self, counts: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Blocks ``[start, stop)`` in global cell ids (files concatenated), in reading order.

        ``counts[f]`` is the number of cells of file ``f``; a block never crosses a file boundary.
        """
        counts = np.asarray(counts, dtype=np.int64)
        if np.any(counts < 0):
            raise ValueError("counts must be >= 0")
        offsets = np.concatenate([[0], np.cumsum(counts)])
        starts = [
            np.arange(offsets[f], offsets[f + 1], self.block_size, dtype=np.int64)
            for f in range(len(counts))
        ]
        start = np.concatenate(starts) if starts else np.zeros(0, dtype=np.int64)
        file_of = np.searchsorted(offsets, start, side="right") - 1
        stop = np.minimum(start + self.block_size, offsets[file_of + 1])
        if self.shuffle_blocks and start.size:
            perm = rng.permutation(start.size)
            start, stop = start[perm], stop[perm]
        return start, stop


@dataclass(frozen=True, kw_only=True)
class SequentialBlockStrategy(BlockShuffleStrategy):
    """No shuffling (formerly ``SequentialShuffleStrategy``): files in the order given, rows in file order (evaluation, embedding, debugging).

    >>> SequentialBlockStrategy().shuffle_buffer
    False
    """

    block_size: int = 4096
    buffer_size: int = 4096
    shuffle_blocks: bool = False
    shuffle_buffer: bool = False


@dataclass(frozen=True, kw_only=True)
class RandomShuffleStrategy(BlockShuffleStrategy):
    """Full random order: every cell is its own block (the best mixing, the slowest reads).

    >>> RandomShuffleStrategy().block_size
    1
    """

    block_size: int = 1
    buffer_size: int = 16_384
