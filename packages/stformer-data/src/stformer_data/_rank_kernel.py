"""The hot loop of rank-value tokenization, compiled with numba: per cell, build the sort keys of
its expressed genes and radix-sort them (LSD, 8-bit digits; stable and exact), then keep the head.

Keys are ``(0x7FFFFFFF - float32_bits(value)) << token_bits | token`` (token_bits a multiple of 8): ascending key order is value
descending, then token ascending, the documented rule. Without numba the numpy path in
``_rank.py`` (one ``np.sort`` per cell) gives the same tokens.
"""

from __future__ import annotations

from functools import cache

import numpy as np

_DIGIT = 8
_BUCKETS = 1 << _DIGIT


def _rank_rows(
    indptr,
    indices,
    data,
    f32,
    column_token,
    token_bits,
    first_digit,
    limit,
    out_tokens,
    out_lengths,
):
    n_rows = indptr.size - 1
    n_digits = (31 + token_bits + _DIGIT - 1) // _DIGIT
    width = 0
    for i in range(n_rows):
        width = max(width, indptr[i + 1] - indptr[i])
    keys = np.empty(width, np.int64)
    tmp = np.empty(width, np.int64)
    hist = np.zeros((n_digits, _BUCKETS), np.int64)
    fbuf = np.empty(1, np.float32)
    ibuf = fbuf.view(np.int32)  # the float32 bits of a value
    mask = (np.int64(1) << token_bits) - 1
    pos = 0
    for i in range(n_rows):
        hist[:, :] = 0
        m = 0
        for p in range(indptr[i], indptr[i + 1]):
            j = indices[p]
            fbuf[0] = np.float32(data[p]) * f32[j]  # the float32 product (same as numpy's)
            if fbuf[0] > 0:  # false for NaN and for genes without a usable median (factor 0)
                k = ((np.int64(0x7FFFFFFF) - np.int64(ibuf[0])) << token_bits) | column_token[j]
                keys[m] = k
                m += 1
                for d in range(first_digit, n_digits):
                    hist[d, (k >> (d * _DIGIT)) & (_BUCKETS - 1)] += 1
        src, dst = keys, tmp
        for d in range(first_digit, n_digits):
            if m == 0 or hist[d, (src[0] >> (d * _DIGIT)) & (_BUCKETS - 1)] == m:
                continue  # every key has the same digit here: nothing to move
            total = 0
            for b in range(_BUCKETS):
                c = hist[d, b]
                hist[d, b] = total
                total += c
            for q in range(m):
                k = src[q]
                b = (k >> (d * _DIGIT)) & (_BUCKETS - 1)
                dst[hist[d, b]] = k
                hist[d, b] += 1
            src, dst = dst, src
        n = min(m, limit)
        for q in range(n):
            out_tokens[pos + q] = src[q] & mask
        out_lengths[i] = n
        pos += n
    return pos


@cache
def compiled():
    """The numba-compiled kernel (imported on first use: numba takes a moment to load), or None."""
    try:
        import numba
    except ImportError:  # numba is a dependency; the numpy path stays as a fallback
        return None
    return numba.njit(cache=True, nogil=True)(_rank_rows)


def rank_block(
    block, f32: np.ndarray, column_token: np.ndarray, limit: int
) -> tuple[np.ndarray, np.ndarray]:
    """Flat tokens (int32) and offsets (int64) of the first ``limit`` ranked genes of each row."""
    # the token takes whole digits, so that when a row's entries already come in token order (CSR
    # columns sorted, tokens increasing with the column) the token digits need no pass: LSD radix
    # sorting is stable, so sorting on the value digits alone keeps ties in token order.
    token_bits = -(-max(int(column_token.max(initial=1)).bit_length(), 1) // _DIGIT) * _DIGIT
    usable = column_token[f32 > 0]
    in_order = block.has_sorted_indices and bool(np.all(usable[1:] > usable[:-1]))
    first_digit = token_bits // _DIGIT if in_order else 0
    out_tokens = np.empty(min(block.nnz, limit * block.shape[0]), dtype=np.int32)
    lengths = np.empty(block.shape[0], dtype=np.int64)
    n = compiled()(
        block.indptr.astype(np.int64, copy=False),
        block.indices,
        block.data.astype(np.float32, copy=False),
        f32,
        column_token,
        token_bits,
        first_digit,
        limit,
        out_tokens,
        lengths,
    )
    offsets = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return out_tokens[:n], offsets


def warm_up() -> None:
    """Compile (or load from numba's cache) before worker processes are forked, so they share it."""
    if compiled() is None:
        return
    import scipy.sparse as sp

    block = sp.csr_matrix(np.array([[1.0, 2.0]], dtype=np.float32))
    rank_block(block, np.ones(2, np.float32), np.array([2, 3], dtype=np.int64), 2)
