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

Raw counts are small integers, so most values of a row are one of ``n_columns x xmax`` (column,
count) pairs whose order never changes. Once enough values have been ranked with the same
factors, a *rank table* is built (once per distinct set of factors and tokens, cached by
content): the global rank of every pair in (key, token, column) order. A row is then sorted by
setting one bit per value in a bitmap over these ranks and reading the set bits back in order,
two cheap passes instead of the radix passes (1.3x faster at 2,000 genes; only for gene panels
small enough for the table to stay in cache, see :data:`TABLE_COLUMNS`). Values outside the table
(counts above ``xmax``, fractions) are radix-sorted apart and merged in, so the tokens are exactly
the same either way.

The hot loops index with unsigned integers where the index is known to be >= 0: numba then
leaves out its negative-index wraparound, which made the radix path 1.4x faster (measured).

Without numba the numpy path in ``tokenize/rank.py`` (one ``np.sort`` per cell) gives the same tokens.
"""

from __future__ import annotations

import hashlib
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache

import numpy as np

#: flag bits returned by the kernel (any set flag stops it; the caller raises or falls back)
BAD_VALUES, UNSORTED, BAD_INDEX = 1, 2, 4
#: ``check`` levels: none; finite and non-negative; also integer (raw counts)
NO_CHECK, CHECK_FINITE, CHECK_COUNTS = 0, 1, 2


@cache
def _compiled():
    try:
        from stformer_data.tokenize import rank_jit as _rank_jit
    except ImportError:  # numba is a dependency; the numpy path stays as a fallback
        return None
    return _rank_jit.rank_rows, _rank_jit.compact, _rank_jit.rank_rows_table


def compiled() -> bool:
    """Whether the numba kernel is available (numba is imported on first use: it takes a moment)."""
    return _compiled() is not None


#: a rank table covers the counts 1..TABLE_COUNTS (rarely exceeded by raw counts in a cell of a
#: few thousand genes; larger ones are merged in) of at most TABLE_COLUMNS usable columns. The
#: bitmap pass wins only while the table stays in the CPU cache: measured per row of 1,500-2,000
#: values, 1.3x faster than the radix passes at 2,000 genes and 1.1x at 4,000, but slower at
#: 8,000 (0.89x) and 25,000 genes (0.53x), so full-transcriptome vocabularies keep the radix
#: passes and gene panels (e.g. 2,000 highly variable genes) get the table.
TABLE_COUNTS = 32
TABLE_COLUMNS = 4096


@dataclass(frozen=True)
class RankTable:
    """Global ranks of (column, count) pairs; see the module docstring."""

    pair_rank: np.ndarray  # int32: the rank of (column j, count x) at j * xmax + x - 1
    rank_token: np.ndarray  # int32: the token of each rank
    rank_key: np.ndarray  # uint32: the key of each rank (for merging values outside the table)
    xmax: int


def build_table(factor: np.ndarray, column_token: np.ndarray) -> RankTable | None:
    """The rank table of float32 ``factor`` and int32 ``column_token`` (None: no usable column)."""
    usable = np.flatnonzero((column_token >= 0) & (factor > 0))
    if usable.size == 0:
        return None
    xmax = TABLE_COUNTS
    counts = np.arange(1, xmax + 1, dtype=np.float32)
    values = factor[usable][:, None] * counts[None, :]  # float32 products, as in the kernel
    keys = (np.uint32(0x7FFFFFFF) - values.view(np.uint32)).ravel()
    tokens = np.repeat(column_token[usable].astype(np.int64), xmax)
    # (key, token), ties in column order: pairs are laid out column by column, the sort is stable
    order = np.argsort(
        (keys.astype(np.uint64) << np.uint64(32)) | tokens.astype(np.uint64), kind="stable"
    )
    rank = np.empty(order.size, dtype=np.int32)
    rank[order] = np.arange(order.size, dtype=np.int32)
    pair_rank = np.full((factor.size, xmax), -1, dtype=np.int32)
    pair_rank[usable] = rank.reshape(usable.size, xmax)
    return RankTable(
        pair_rank.ravel(), tokens[order].astype(np.int32), keys[order].astype(np.uint32), xmax
    )


class _Tables:
    """Rank tables by content of (factor, column_token), built once enough values were ranked
    without one to pay for it (a table costs about as much as sorting its pairs once); none for
    more than :data:`TABLE_COLUMNS` usable columns."""

    def __init__(self, size: int = 8) -> None:
        self._lock = threading.Lock()
        self._digests: OrderedDict[tuple[int, int], tuple] = OrderedDict()
        self._tables: OrderedDict[bytes, RankTable | None] = OrderedDict()
        self._pending: dict[bytes, int] = {}
        self._too_big: set[bytes] = set()
        self.size = size

    def _digest(self, factor: np.ndarray, column_token: np.ndarray) -> bytes:
        """Content digest, remembered per pair of array objects (the callers pass the same
        per-file arrays again and again; hashing them each call would cost up to a millisecond)."""
        key = (id(factor), id(column_token))
        hit = self._digests.get(key)
        if hit is not None and hit[0]() is factor and hit[1]() is column_token:
            self._digests.move_to_end(key)
            return hit[2]
        h = hashlib.blake2b(digest_size=16)
        h.update(np.ascontiguousarray(factor, dtype=np.float32).tobytes())
        h.update(np.ascontiguousarray(column_token, dtype=np.int32).tobytes())
        digest = h.digest()
        try:
            self._digests[key] = (weakref.ref(factor), weakref.ref(column_token), digest)
        except TypeError:  # not weak-referenceable: not remembered
            return digest
        while len(self._digests) > 64:
            self._digests.popitem(last=False)
        return digest

    def get(
        self, factor: np.ndarray, column_token: np.ndarray, n_values: int, force: bool = False
    ) -> RankTable | None:
        """The table for these arrays, building it when ``force`` or when the values ranked with
        them so far (``n_values`` now included) reach its number of pairs; else None."""
        with self._lock:
            digest = self._digest(factor, column_token)
            if digest in self._tables:
                self._tables.move_to_end(digest)
                return self._tables[digest]
            if not force:
                if digest in self._too_big:
                    return None
                usable = int(np.count_nonzero((column_token >= 0) & (factor > 0)))
                if usable > TABLE_COLUMNS:  # the radix passes are faster (see TABLE_COLUMNS)
                    if len(self._too_big) > 256:
                        self._too_big.clear()
                    self._too_big.add(digest)
                    return None
                seen = self._pending.get(digest, 0) + n_values
                if seen < usable * TABLE_COUNTS:
                    if len(self._pending) > 256:
                        self._pending.clear()
                    self._pending[digest] = seen
                    return None
            self._pending.pop(digest, None)
            table = build_table(
                np.asarray(factor, dtype=np.float32), np.asarray(column_token, dtype=np.int32)
            )
            self._tables[digest] = table
            while len(self._tables) > self.size:
                self._tables.popitem(last=False)
            return table

    def clear(self) -> None:
        with self._lock:
            self._digests.clear()
            self._tables.clear()
            self._pending.clear()
            self._too_big.clear()


_TABLES = _Tables()
# a fork while another thread holds the lock (e.g. building a table) must not deadlock the child
os.register_at_fork(after_in_child=lambda: setattr(_TABLES, "_lock", threading.Lock()))


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
    table: bool | None = None,
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
    of this process). ``table``: use a rank table (True: build it now if needed), never (False),
    or once enough values were ranked with these factors (None); the tokens are the same.
    """
    args = (indptr, indices, data, factor, column_token, limit, check, threads, rows)
    if pool is None and threads > 1:
        pool = _shared_pool(threads, os.getpid())
    return rank_csr_async(pool, *args, table=table)()


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
    *,
    table: bool | None = None,
) -> Callable[[], tuple[np.ndarray, np.ndarray, int]]:
    """Start :func:`rank_csr` on ``pool`` (``parts`` row ranges); call the result to wait for it.

    Without a pool the work is done before returning. The input arrays must stay unchanged
    until the result is collected. Pass the same ``factor``/``column_token`` objects for the
    same file: their rank table is found by object first (see :class:`_Tables`).
    """
    compact = _compiled()[1]
    starts, ends = _row_bounds(indptr, rows)
    n = starts.size
    sizes = ends - starts
    reserved = np.minimum(sizes, limit)
    out_start = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(reserved, out=out_start[1:])
    out = np.empty(int(out_start[-1]), dtype=np.int32)
    lengths = np.zeros(n, dtype=np.int64)
    kernel, args, extra = _kernel_call(
        starts, ends, indices, data, factor, column_token, limit, check, table
    )
    if pool is None:
        done = [kernel(*args, 0, n, out_start, out, lengths, *extra)]
        futures = []
    else:
        done = []
        futures = [
            pool.submit(kernel, *args, a, b, out_start, out, lengths, *extra)
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


def _row_bounds(indptr: np.ndarray, rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    indptr = np.asarray(indptr, dtype=np.int64)
    if rows is None:
        return indptr[:-1], indptr[1:]
    rows = np.asarray(rows, dtype=np.int64)
    return indptr[rows], indptr[rows + 1]


def _kernel_call(starts, ends, indices, data, factor, column_token, limit, check, table):
    """The kernel for these rows (with the rank table when there is one) and its arguments:
    ``kernel(*args, r0, r1, out_start, out, lengths, *extra)``."""
    rank_rows, _, rank_rows_table = _compiled()
    ranks = None
    if table is not False and starts.size:
        nnz = int((ends - starts).sum())
        ranks = _TABLES.get(factor, column_token, nnz, force=bool(table))
    factor = np.asarray(factor, dtype=np.float32)
    column_token = np.asarray(column_token, dtype=np.int32)
    args = (starts, ends, indices, data, factor, column_token, limit, check)
    if ranks is None:
        return rank_rows, args, ()
    return rank_rows_table, args, (ranks.pair_rank, ranks.rank_token, ranks.rank_key, ranks.xmax)


def rank_csr_into(
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    factor: np.ndarray,
    column_token: np.ndarray,
    limit: int,
    *,
    out: np.ndarray,
    out_start: np.ndarray,
    rows: np.ndarray | None = None,
    check: int = NO_CHECK,
    table: bool | None = None,
) -> tuple[np.ndarray, int]:
    """:func:`rank_csr` on this thread, row ``i`` written at ``out[out_start[i]:]`` (int32, room
    for ``min(stored values, limit)`` tokens): ``(lengths, flags)``; with flags the rows are not
    all written."""
    starts, ends = _row_bounds(indptr, rows)
    lengths = np.zeros(starts.size, dtype=np.int64)
    kernel, args, extra = _kernel_call(
        starts, ends, indices, data, factor, column_token, limit, check, table
    )
    out_start = np.asarray(out_start, dtype=np.int64)
    flags = int(kernel(*args, 0, starts.size, out_start, out, lengths, *extra))
    return lengths, flags


def rank_block(
    block, factor: np.ndarray, column_token: np.ndarray, limit: int, *, threads: int = 1
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
        factor,
        column_token,
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
    rank_csr(  # and the kernel with a rank table
        block.indptr.astype(np.int64),
        block.indices,
        block.data,
        np.ones(2, np.float32),
        np.array([2, 3], dtype=np.int32),
        2,
        table=True,
    )
