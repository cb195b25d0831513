"""numba loops over ragged rows (see :mod:`stformer_data._ragged`): gathering rows into one flat
array and padding them into a batch matrix, without a Python step per row. Both release the GIL,
so a background reader thread and the training loop run them side by side."""

from __future__ import annotations

import numba

_jit = numba.njit(cache=True, nogil=True)


@_jit
def gather_rows(src, src_start, lengths, dst, dst_start):
    """``dst[dst_start[i]:][:lengths[i]] = src[src_start[i]:][:lengths[i]]`` for every row ``i``."""
    for i in range(lengths.size):
        a, b, n = src_start[i], dst_start[i], lengths[i]
        dst[b : b + n] = src[a : a + n]


@_jit
def pad_rows(values, start, lengths, positions, pad, out, mask):
    """Row ``r`` of ``out`` is the row ``positions[r]`` of ``values`` then ``pad`` up to the width;
    ``mask`` (same shape, or 0 rows to skip it) gets 1 on the row's values, 0 on its padding.
    Slice assignments per row: numba compiles them to plain copy/fill loops without the per-element
    negative-index checks of ``out[r, q]`` (measured 1.3-1.9x faster)."""
    width = out.shape[1]
    with_mask = mask.shape[0] > 0
    for r in range(positions.size):
        i = positions[r]
        a, n = start[i], min(lengths[i], width)
        row = out[r]
        row[:n] = values[a : a + n]
        row[n:] = pad
        if with_mask:
            ones = mask[r]
            ones[:n] = 1
            ones[n:] = 0
