"""The hot loop of rank-value tokenization, compiled with numba: CSR rows in, ragged tokens out.

One fused pass per row, no Python per row: check the counts (NaN/inf, negative, non-integer),
look up each column's token and ``target_sum / median`` factor, form the float32 product, and
turn it into a 31-bit unsigned key ``0x7FFFFFFF - float32_bits(value)`` (ascending key = value
descending; positive float32 values order like their bit patterns). The keys of a row are
LSD-radix sorted (stable) over only the bits in which they differ (``key - min``, 1 to 3 passes
of at most 11 bits), carrying the token along; runs of equal keys are then put in token order,
so ties break by the lower token whatever the column order. The head (``limit`` tokens) is
written straight into the output buffer. Rows are split among threads (the kernel releases the
GIL), each with its own scratch space.

Without numba the numpy path in ``_rank.py`` (one ``np.sort`` per cell) gives the same tokens.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from functools import cache

import numpy as np

#: flag bits returned by the kernel (any set flag stops it; the caller raises or falls back)
BAD_VALUES, UNSORTED, BAD_INDEX = 1, 2, 4
#: ``check`` levels: none; finite and non-negative; also integer (raw counts)
NO_CHECK, CHECK_FINITE, CHECK_COUNTS = 0, 1, 2


@cache
def _compiled():
    try:
        from stformer_data import _rank_jit
    except ImportError:  # numba is a dependency; the numpy path stays as a fallback
        return None
    return _rank_jit.rank_rows, _rank_jit.compact


def compiled() -> bool:
    """Whether the numba kernel is available (numba is imported on first use: it takes a moment)."""
    return _compiled() is not None


def _split_rows(sizes: np.ndarray, parts: int) -> list[tuple[int, int]]:
    """``parts`` row ranges with about the same number of stored values each."""
    n = sizes.size
    if parts <= 1 or n < 2 * parts:
        return [(0, n)]
    cum = np.cumsum(sizes)
    cuts = np.searchsorted(cum, cum[-1] * np.arange(1, parts) / parts).clip(0, n)
    bounds = [0, *sorted(set(int(c) for c in cuts) - {0, n}), n]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def rank_csr(
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    factor: np.ndarray,
    column_token: np.ndarray,
    limit: int,
    *,
    rows: np.ndarray | None = None,
    check: int = NO_CHECK,
    threads: int = 1,
    pool: Executor | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Rank the rows of a CSR matrix given as arrays: ``(tokens int32, offsets int64, flags)``.

    ``indptr`` (int64) indexes ``indices``/``data`` directly; ``rows`` picks (and orders) the rows
    to rank (default: all). ``factor`` (float32) and ``column_token`` (int32, -1 outside the
    vocabulary) are per column. ``check`` (:data:`CHECK_FINITE` / :data:`CHECK_COUNTS`) refuses
    NaN/inf and negative values (and non-integer ones) with flag :data:`BAD_VALUES` (run
    :func:`stformer_data.check_counts` for the message); rows whose columns are not strictly
    increasing give :data:`UNSORTED` (sort and sum duplicates first) and out-of-range columns
    :data:`BAD_INDEX`. When ``flags`` is not 0 the tokens are not valid. ``threads`` > 1 splits
    the rows among that many threads (of ``pool`` when given, else of a pool shared by the calls
    of this process).
    """
    args = (indptr, indices, data, factor, column_token, limit, check, threads, rows)
    if pool is None and threads > 1:
        pool = _shared_pool(threads, os.getpid())
    return rank_csr_async(pool, *args)()


@cache
def _shared_pool(threads: int, pid: int) -> ThreadPoolExecutor:
    """One pool per process and size, reused by every call (starting threads per call cost more
    than the ranking on small blocks). Keyed by pid: a forked child (e.g. a DataLoader worker)
    never uses its parent's pool, whose threads it does not have."""
    return ThreadPoolExecutor(threads, thread_name_prefix=f"stformer-rank-{pid}")


def rank_csr_async(
    pool: Executor | None,
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    factor: np.ndarray,
    column_token: np.ndarray,
    limit: int,
    check: int,
    parts: int,
    rows: np.ndarray | None = None,
) -> Callable[[], tuple[np.ndarray, np.ndarray, int]]:
    """Start :func:`rank_csr` on ``pool`` (``parts`` row ranges); call the result to wait for it.

    Without a pool the work is done before returning. The input arrays must stay unchanged
    until the result is collected.
    """
    rank_rows, compact = _compiled()
    indptr = np.asarray(indptr, dtype=np.int64)
    if rows is None:
        starts, ends = indptr[:-1], indptr[1:]
    else:
        rows = np.asarray(rows, dtype=np.int64)
        starts, ends = indptr[rows], indptr[rows + 1]
    n = starts.size
    sizes = ends - starts
    reserved = np.minimum(sizes, limit)
    out_start = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(reserved, out=out_start[1:])
    out = np.empty(int(out_start[-1]), dtype=np.int32)
    lengths = np.zeros(n, dtype=np.int64)
    args = (starts, ends, indices, data, factor, column_token, limit, check)
    if pool is None:
        done = [rank_rows(*args, 0, n, out_start, out, lengths)]
        futures = []
    else:
        done = []
        futures = [
            pool.submit(rank_rows, *args, a, b, out_start, out, lengths)
            for a, b in _split_rows(sizes, parts)
        ]

    def result() -> tuple[np.ndarray, np.ndarray, int]:
        flags = 0
        for part in done + [fut.result() for fut in futures]:
            flags |= int(part)
        if flags:
            return out[:0], np.zeros(n + 1, dtype=np.int64), flags
        if np.array_equal(lengths, reserved):
            return out, out_start, 0
        offsets = np.empty(n + 1, dtype=np.int64)
        total = compact(out, out_start, lengths, offsets)
        return out[:total], offsets, 0

    return result


def rank_block(
    block, f32: np.ndarray, column_token: np.ndarray, limit: int, *, threads: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Flat tokens (int32) and offsets (int64) of the first ``limit`` ranked genes of each row of
    a scipy CSR matrix (duplicate entries already summed)."""
    if not block.has_canonical_format:
        block = block.copy()
        block.sum_duplicates()
    tokens, offsets, flags = rank_csr(
        block.indptr.astype(np.int64, copy=False),
        block.indices,
        block.data,
        f32.astype(np.float32, copy=False),
        column_token.astype(np.int32, copy=False),
        limit,
        threads=threads,
    )
    if flags:
        raise ValueError(f"rank kernel refused the block (flags {flags})")
    return tokens, offsets


def warm_up() -> None:
    """Compile (or load from numba's cache) the common signatures before any worker starts."""
    if not compiled():
        return
    import scipy.sparse as sp

    block = sp.csr_matrix(np.array([[1.0, 2.0]], dtype=np.float32))
    rank_block(block, np.ones(2, np.float32), np.array([2, 3], dtype=np.int64), 2)
