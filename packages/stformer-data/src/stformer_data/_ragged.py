"""Ragged rows stored flat: ``values`` plus ``offsets`` (row ``i`` is ``values[offsets[i]:offsets[i+1]]``).

The tokenizers build whole chunks of sequences at once in this form; the corpus writer turns it
into an Arrow ``ListArray`` without copying row by row.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def offsets_from_lengths(lengths: np.ndarray) -> np.ndarray:
    out = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=out[1:])
    return out


def head_positions(bounds: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the first ``limit`` items of every row of ``bounds``, and the new offsets."""
    counts = np.minimum(np.diff(bounds), limit)
    offsets = offsets_from_lengths(counts)
    pos = np.arange(offsets[-1], dtype=np.int64) - np.repeat(offsets[:-1] - bounds[:-1], counts)
    return pos, offsets


def fixed_rows(matrix: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A ``(rows, width)`` matrix as ragged rows; rows where ``keep`` is False become empty."""
    width = matrix.shape[1] if matrix.ndim == 2 else 0
    lengths = keep.astype(np.int64) * width
    return np.ascontiguousarray(matrix[keep]).ravel(), offsets_from_lengths(lengths)


def concat_rows(
    parts: Sequence[tuple[np.ndarray, np.ndarray]], dtype=np.int32
) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate ragged row sets row by row: row ``i`` = part0 row ``i`` + part1 row ``i`` + ..."""
    lengths = [np.diff(off) for _, off in parts]
    total = np.sum(lengths, axis=0) if lengths else np.zeros(0, dtype=np.int64)
    new_offsets = offsets_from_lengths(np.asarray(total, dtype=np.int64))
    out = np.empty(int(new_offsets[-1]), dtype=dtype)
    before = np.zeros(new_offsets.size - 1, dtype=np.int64)
    for (values, off), n in zip(parts, lengths, strict=True):
        if values.size:
            row = np.repeat(np.arange(n.size), n)
            dest = (
                np.arange(values.size, dtype=np.int64) - off[row] + new_offsets[row] + before[row]
            )
            out[dest] = values
        before += n
    return out, new_offsets
