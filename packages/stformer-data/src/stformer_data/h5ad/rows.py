"""Reading the rows of an AnnData file in chunks without loading or densifying the whole matrix."""

from __future__ import annotations

from collections.abc import Iterator
from os import PathLike
from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp

from stformer_data._errors import InputError


def _matrix(adata, layer: str | None, path: Path | None):
    if layer is None:
        if adata.X is None:
            raise InputError(
                path, "X", "is missing", "pass --layer with the layer holding raw counts"
            )
        return adata.X
    if layer not in adata.layers:
        raise InputError(
            path,
            f"layers[{layer!r}]",
            "does not exist",
            f"choose one of {list(adata.layers.keys())} or omit --layer to use X",
        )
    return adata.layers[layer]


def _is_backed_csc(X) -> bool:
    return getattr(X, "format", None) == "csc" and hasattr(X, "group")


_CSC_BUDGET = 1 << 25  # non-zeros held at once when reading rows out of a CSC matrix


def _csc_rows(X, rows: np.ndarray) -> sp.csr_matrix:
    """Rows (sorted, unique) of a backed CSC matrix, scanning its columns in bounded blocks."""
    g = X.group
    indptr = np.asarray(g["indptr"][:], dtype=np.int64)
    n_cols = X.shape[1]
    out_r, out_c, out_v = [], [], []
    c0 = 0
    while c0 < n_cols:
        c1 = int(np.searchsorted(indptr, indptr[c0] + _CSC_BUDGET, side="right")) - 1
        c1 = min(max(c1, c0 + 1), n_cols)
        idx = np.asarray(g["indices"][indptr[c0] : indptr[c1]], dtype=np.int64)
        val = np.asarray(g["data"][indptr[c0] : indptr[c1]])
        col = np.repeat(np.arange(c0, c1), np.diff(indptr[c0 : c1 + 1]))
        pos = np.searchsorted(rows, idx)
        hit = pos < rows.size
        hit[hit] = rows[pos[hit]] == idx[hit]
        out_r.append(pos[hit])
        out_c.append(col[hit])
        out_v.append(val[hit])
        c0 = c1
    cat = lambda p, dt: np.concatenate(p) if p else np.zeros(0, dt)  # noqa: E731
    return sp.csr_matrix(
        (cat(out_v, np.float32), (cat(out_r, np.int64), cat(out_c, np.int64))),
        shape=(rows.size, n_cols),
        dtype=np.float32,
    )


def _iter_csc(
    X, start: int, stop: int, chunk_size: int
) -> Iterator[tuple[int, int, sp.csr_matrix]]:
    """Row chunks of a backed CSC matrix: one bounded column scan per block of many rows."""
    nnz = int(X.group["indptr"][-1])
    per_row = max(nnz / max(X.shape[0], 1), 1.0)
    rows_per_pass = max(chunk_size, int(_CSC_BUDGET / per_row) // chunk_size * chunk_size)
    for a in range(start, stop, rows_per_pass):
        b = min(a + rows_per_pass, stop)
        block = _csc_rows(X, np.arange(a, b))
        for s in range(a, b, chunk_size):
            yield s, min(s + chunk_size, b), block[s - a : min(s + chunk_size, b) - a]


def iter_row_chunks(
    adata: ad.AnnData,
    chunk_size: int = 2048,
    *,
    layer: str | None = None,
    path: str | PathLike[str] | None = None,
    start: int = 0,
    stop: int | None = None,
) -> Iterator[tuple[int, int, sp.csr_matrix]]:
    """Yield ``(start, stop, csr_chunk)`` over rows ``start:stop`` of ``X`` (or a layer), as float32 CSR.

    Dense and CSR storage are read one row range at a time; nothing larger than a chunk is ever
    densified or held. Backed CSC is read by scanning its columns in blocks of at most 2**25
    non-zeros for many rows at once (memory bounded; one pass over the matrix per 2**25 non-zeros
    of rows: convert large CSC files to CSR for speed).
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be > 0, got {chunk_size}")
    path = None if path is None else Path(path)
    X = _matrix(adata, layer, path)
    n = adata.n_obs if stop is None else min(stop, adata.n_obs)
    if _is_backed_csc(X):
        for a, b, block in _iter_csc(X, start, n, chunk_size):
            yield a, b, _as_csr32(block)
        return
    for a in range(start, n, chunk_size):
        start, stop = a, min(a + chunk_size, n)
        try:
            block = X[start:stop]
        except Exception as exc:
            raise InputError(
                path,
                f"rows {start}:{stop} of {'X' if layer is None else layer}",
                f"cannot be read ({type(exc).__name__}: {exc})",
                "the file may be truncated or corrupt; re-export it",
            ) from exc
        yield start, stop, _as_csr32(block)


def read_rows(
    adata: ad.AnnData,
    rows: np.ndarray,
    *,
    layer: str | None = None,
    path: str | PathLike[str] | None = None,
) -> sp.csr_matrix:
    """Read the (sorted, unique) ``rows`` of ``X`` or a layer as float32 CSR, whatever the storage."""
    path = None if path is None else Path(path)
    X = _matrix(adata, layer, path)
    rows = np.asarray(rows, dtype=np.int64)
    try:
        block = _csc_rows(X, rows) if _is_backed_csc(X) else X[rows]
    except Exception as exc:
        raise InputError(
            path,
            f"{len(rows)} rows of {'X' if layer is None else layer}",
            f"cannot be read ({type(exc).__name__}: {exc})",
            "the file may be truncated or corrupt; re-export it",
        ) from exc
    return _as_csr32(block)


def _as_csr32(block) -> sp.csr_matrix:
    if sp.issparse(block):
        block = block.tocsr() if block.format != "csr" else block
        block = sp.csr_matrix(block) if not isinstance(block, sp.csr_matrix) else block
        if block.dtype != np.float32:
            block = block.astype(np.float32)
    else:
        block = sp.csr_matrix(np.asarray(block, dtype=np.float32))
    block.sum_duplicates()
    return block


def library_sizes(
    adata: ad.AnnData,
    block: sp.csr_matrix | None,
    start: int,
    stop: int,
    *,
    n_counts_key: str | None,
    path: str | PathLike[str] | None,
    layer: str | None = None,
) -> np.ndarray:
    """``obs[n_counts_key]`` for rows ``start:stop`` when given and present, else the row sums.

    Library sizes from ``obs`` must be finite and non-negative, and > 0 for every cell with counts
    (``block``, or the rows of ``layer`` / ``X`` when no block is given, tell which have counts):
    otherwise an :class:`InputError` names the column and the first bad cell.
    """
    if n_counts_key is not None and n_counts_key in adata.obs.columns:
        field = f"obs[{n_counts_key!r}]"
        fix = f"fix the column, or pass --n-counts-key '' to compute library sizes from {layer or 'X'}"
        try:
            n = np.asarray(adata.obs[n_counts_key].iloc[start:stop], dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InputError(path, field, f"is not numeric ({exc})", fix) from exc
        bad = ~np.isfinite(n) | (n < 0)
        problem = "NaN, infinite or negative"
        if not bad.any() and (n == 0).any():
            zero = np.flatnonzero(n == 0)
            bad[zero] = _rows_with_counts(adata, block, zero + start, start, layer, path)
            problem = "0 for a cell that has counts (a library size must be > 0)"
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            cell = adata.obs_names[start + first]
            raise InputError(
                path,
                field,
                f"is {problem} for {int(bad.sum())} cells (first: {cell!r}, row {start + first}, "
                f"value {n[first]})",
                fix,
            )
        return n
    return np.asarray(block.sum(axis=1), dtype=np.float64).ravel()


def _rows_with_counts(adata, block, rows: np.ndarray, start: int, layer, path) -> np.ndarray:
    """Whether each of ``rows`` (absolute, sorted) has a non-zero count."""
    if block is not None:
        part = block[rows - start]
    else:
        try:
            part = read_rows(adata, rows, layer=layer, path=path)
        except InputError:  # no X to look at: the tokenizer's own check on its chunks decides
            return np.zeros(rows.size, dtype=bool)
    return np.diff(part.indptr) > 0 if part.nnz else np.zeros(rows.size, dtype=bool)
