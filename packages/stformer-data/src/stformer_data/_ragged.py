"""Ragged rows stored flat: ``values`` plus ``offsets`` (row ``i`` is ``values[offsets[i]:offsets[i+1]]``).

The tokenizers build whole chunks of sequences at once in this form; the corpus writer turns it
into an Arrow ``ListArray`` without copying row by row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache, partial

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


@cache
def _row_kernels():
    try:
        from stformer_data import _rows_jit
    except ImportError:  # numba is a dependency; numpy gives the same result, slower
        return None
    return _rows_jit


def gather_rows(
    src: np.ndarray,
    src_start: np.ndarray,
    lengths: np.ndarray,
    dst: np.ndarray,
    dst_start: np.ndarray,
) -> None:
    """Copy row ``i`` (``lengths[i]`` values from ``src[src_start[i]]``) to ``dst[dst_start[i]]``."""
    kernels = _row_kernels()
    if kernels is not None:
        kernels.gather_rows(src, src_start, lengths, dst, dst_start)
        return
    if lengths.size:
        row = np.repeat(np.arange(lengths.size), lengths)
        within = np.arange(row.size) - np.repeat(offsets_from_lengths(lengths)[:-1], lengths)
        dst[dst_start[row] + within] = src[src_start[row] + within]


def pad_rows(
    values: np.ndarray,
    start: np.ndarray,
    lengths: np.ndarray,
    positions: np.ndarray,
    pad: int,
    *,
    width: int | None = None,
    mask: bool = False,
    empty: Callable[[tuple[int, int]], np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The rows at ``positions`` right-padded with ``pad`` into an int64 ``(rows, width)`` matrix
    (default width: the longest row, at least 1), and with ``mask`` an int64 attention mask.
    ``empty(shape)`` allocates the int64 outputs (default ``np.empty``; e.g. torch's allocator,
    which reuses memory where numpy's huge-page advice makes every fresh batch fault its pages in).

    >>> ids, m = pad_rows(np.array([5, 6, 7]), np.array([0, 2]), np.array([2, 1]), np.array([1, 0]), 0, mask=True)
    >>> ids.tolist(), m.tolist()
    ([[7, 0], [5, 6]], [[1, 0], [1, 1]])
    """
    positions = np.asarray(positions, dtype=np.int64)
    rows = lengths[positions]
    if width is None:
        width = max(int(rows.max()), 1) if rows.size else 1
    if empty is None:
        empty = partial(np.empty, dtype=np.int64)
    out = empty((positions.size, width))
    att = empty((positions.size if mask else 0, width))
    kernels = _row_kernels()
    if kernels is not None:
        kernels.pad_rows(values, start, lengths, positions, pad, out, att)
        return out, att if mask else None
    keep = np.arange(width) < np.minimum(rows, width)[:, None]
    out.fill(pad)
    if positions.size:
        n = np.minimum(rows, width)
        src = np.repeat(start[positions], n) + (
            np.arange(int(n.sum())) - np.repeat(offsets_from_lengths(n)[:-1], n)
        )
        out[keep] = values[src]
    return out, keep.astype(np.int64) if mask else None
