"""Reading AnnData files in row chunks without loading or densifying the whole matrix."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from stformer_data._errors import InputError


def open_h5ad(
    path: str | PathLike[str], *, backed: bool = True, lazy: bool = False
) -> ad.AnnData | H5adReader:
    """Open an ``.h5ad`` file read-only, with a clear error when it is unreadable.

    ``backed=True`` (default) gives anndata's backed ``AnnData`` (``X`` on disk; layers, obsm and
    obsp in memory); ``backed=False`` loads everything; ``lazy=True`` gives an :class:`H5adReader`
    that also leaves layers on disk (what the tokenizers use).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file", "does not exist", "check the path")
    try:
        if lazy:
            return H5adReader(path)
        return ad.io.read_h5ad(path, backed="r" if backed else None)
    except Exception as exc:  # h5py/anndata raise many types for truncated or corrupt files
        raise InputError(
            path,
            "file",
            f"cannot be read as h5ad ({type(exc).__name__}: {exc})",
            "re-export or re-download the file; it may be truncated or corrupt",
        ) from exc


def _on_disk(elem):
    """A sparse group as anndata's backed sparse dataset; a dense dataset as the h5py dataset."""
    if isinstance(elem, h5py.Group):
        return ad.io.sparse_dataset(elem)
    return elem


class _LazyGroup(Mapping):
    """``obsm`` / ``obsp`` / ``layers`` of an h5ad file: keys known, values read on access."""

    def __init__(self, file: h5py.File, name: str, *, on_disk: bool = False):
        self._group = file[name] if name in file else None
        self._on_disk = on_disk

    def __getitem__(self, key: str):
        if self._group is None or key not in self._group:
            raise KeyError(key)
        elem = self._group[key]
        return _on_disk(elem) if self._on_disk else ad.io.read_elem(elem)

    def __contains__(self, key: object) -> bool:
        return self._group is not None and isinstance(key, str) and key in self._group

    def __iter__(self):
        return iter(self._group.keys() if self._group is not None else ())

    def __len__(self) -> int:
        return len(self._group) if self._group is not None else 0


class H5adReader:
    """A read-only, lazy view of an ``.h5ad`` file: ``obs`` and ``var`` in memory, nothing else.

    anndata's backed mode keeps ``X`` on disk but reads every layer (and obsm/obsp) into memory;
    here layers stay on disk as well, so raw counts in a layer are read one row chunk at a time.
    It offers the attributes the tokenizers use: ``obs``, ``var``, ``n_obs``, ``n_vars``, ``X``,
    ``layers``, ``obsm``, ``obsp`` (values read when accessed) and ``file.close()``.

    >>> import os, tempfile
    >>> from stformer_data import simulate_counts
    >>> path = os.path.join(tempfile.mkdtemp(), "x.h5ad")
    >>> simulate_counts(n_cells=5, n_genes=20, program_size=2).write_h5ad(path)
    >>> r = H5adReader(path)
    >>> r.shape, "spatial" in r.obsm, list(r.layers)
    ((5, 20), True, [])
    >>> r.file.close()
    """

    isbacked = True

    def __init__(self, path: str | PathLike[str]):
        self.filename = Path(path)
        self.file = h5py.File(self.filename, "r")
        try:
            self.obs: pd.DataFrame = ad.io.read_elem(self.file["obs"])
            self.var: pd.DataFrame = ad.io.read_elem(self.file["var"])
            self.X = _on_disk(self.file["X"]) if "X" in self.file else None
        except Exception:
            self.file.close()
            raise
        self.layers = _LazyGroup(self.file, "layers", on_disk=True)
        self.obsm = _LazyGroup(self.file, "obsm")
        self.obsp = _LazyGroup(self.file, "obsp")

    @property
    def n_obs(self) -> int:
        return len(self.obs)

    @property
    def n_vars(self) -> int:
        return len(self.var)

    @property
    def shape(self) -> tuple[int, int]:
        return self.n_obs, self.n_vars

    @property
    def var_names(self) -> pd.Index:
        return self.var.index

    @property
    def obs_names(self) -> pd.Index:
        return self.obs.index


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


def check_counts(
    block: sp.csr_matrix,
    *,
    path: str | PathLike[str] | None,
    rows: tuple[int, int],
    allow_non_integer: bool = False,
) -> None:
    """Raise :class:`InputError` for NaN/inf, negative or (unless allowed) non-integer values."""
    data = block.data
    where = f"X rows {rows[0]}:{rows[1]}"
    if not np.all(np.isfinite(data)):
        raise InputError(
            path, where, "contains NaN or infinite values", "clean the matrix before tokenizing"
        )
    if data.size and data.min() < 0:
        raise InputError(
            path,
            where,
            "contains negative values; raw counts are expected",
            "pass raw counts (e.g. --layer counts) instead of scaled data",
        )
    if not allow_non_integer and data.size and not np.all(data == np.round(data)):
        raise InputError(
            path,
            where,
            "contains non-integer values; raw counts are expected",
            "point --layer at raw counts, or pass --allow-non-integer for normalised input",
        )


@dataclass(frozen=True)
class GeneMapping:
    """How the columns of one file map to vocabulary tokens.

    ``column_token[j]`` is the token id of column ``j`` or ``-1`` when the gene is not in the vocabulary.
    Columns that share a gene id are **summed** (as Geneformer does, with a warning):
    ``representative[j]`` is the first column of ``j``'s gene, and :meth:`collapse` adds every
    duplicate column into it (the others become empty).
    """

    column_token: np.ndarray
    n_genes: int
    n_in_vocab: int
    gene_ids: np.ndarray
    representative: np.ndarray | None = None

    @property
    def fraction_in_vocab(self) -> float:
        return self.n_in_vocab / self.n_genes if self.n_genes else 0.0

    @property
    def n_duplicate_columns(self) -> int:
        if self.representative is None:
            return 0
        return int((self.representative != np.arange(self.n_genes)).sum())

    def collapse(self, block: sp.csr_matrix) -> sp.csr_matrix:
        """Sum duplicate-gene columns of a CSR chunk into their representative column."""
        if self.representative is None:
            return block
        n = self.n_genes
        agg = sp.csr_matrix(
            (np.ones(n, dtype=np.float32), self.representative, np.arange(n + 1)), shape=(n, n)
        )
        out = sp.csr_matrix(block @ agg)
        out.sort_indices()
        return out


def resolve_gene_ids(
    var: pd.DataFrame,
    *,
    gene_id_key: str | None = None,
    name_to_id: Mapping[str, str] | None = None,
    path: str | PathLike[str] | None = None,
) -> np.ndarray:
    """The gene id of each column: ``var[gene_id_key]`` or the var index, mapped through ``name_to_id``."""
    if gene_id_key is None:
        ids = np.asarray(var.index.astype(str))
    else:
        if gene_id_key not in var.columns:
            raise InputError(
                path,
                f"var[{gene_id_key!r}]",
                "does not exist",
                f"choose one of {list(var.columns)} or omit the gene id key to use var_names",
            )
        ids = np.asarray(var[gene_id_key].astype(str))
    if name_to_id is not None:
        ids = np.asarray([name_to_id.get(g, g) for g in ids])
    return ids


def map_genes(
    gene_ids: np.ndarray,
    vocab: Mapping[str, int],
    special_ids: frozenset[int],
    *,
    path: str | PathLike[str] | None = None,
) -> GeneMapping:
    """Map gene ids to tokens; raise when none of them is in the vocabulary; sum duplicate ids.

    Duplicate gene ids among the columns found in the vocabulary are summed (with a warning), the
    behaviour of Geneformer's tokenizer; see :meth:`GeneMapping.collapse`.
    """
    gene_ids = np.asarray(gene_ids)
    if hasattr(vocab, "lookup"):  # GeneVocab: one C-level pass
        tokens = vocab.lookup(gene_ids)
    else:
        tokens = np.fromiter(
            (vocab.get(g, -1) for g in gene_ids), dtype=np.int64, count=len(gene_ids)
        )
    if special_ids:
        tokens[np.isin(tokens, list(special_ids))] = -1
    n_in = int((tokens >= 0).sum())
    if n_in == 0:
        example = ", ".join(map(str, gene_ids[:3]))
        raise InputError(
            path,
            "var gene ids",
            f"match no gene of the vocabulary (first ids: {example})",
            "use the vocabulary's id type (e.g. Ensembl ids via --gene-id-key or a symbol->id "
            "dictionary), or build the vocabulary from this data",
        )
    representative = None
    in_vocab = np.flatnonzero(tokens >= 0)
    uniq, first = np.unique(tokens[in_vocab], return_index=True)
    if uniq.size < in_vocab.size:
        rep_of_token = dict(zip(uniq.tolist(), in_vocab[first].tolist(), strict=True))
        representative = np.arange(len(gene_ids), dtype=np.int64)
        representative[in_vocab] = [rep_of_token[t] for t in tokens[in_vocab].tolist()]
        dup = in_vocab[representative[in_vocab] != in_vocab]
        warnings.warn(
            f"{path}: {dup.size} columns repeat a gene id already present "
            f"(e.g. {gene_ids[dup[0]]!r}); their counts are summed into the first column",
            stacklevel=2,
        )
        tokens[dup] = -1
        n_in = int((tokens >= 0).sum())
    return GeneMapping(
        column_token=tokens,
        n_genes=len(gene_ids),
        n_in_vocab=n_in,
        gene_ids=gene_ids,
        representative=representative,
    )


def load_name_to_id(path: str | PathLike[str], *, allow_pickle: bool = False) -> dict[str, str]:
    """Load a gene symbol -> Ensembl id dictionary (JSON, or Geneformer's ``gene_name_id_dict.pkl``).

    Unpickling runs code stored in the file, so a pickle is loaded only with ``allow_pickle=True``.
    """
    import json
    import pickle

    path = Path(path)
    if not path.exists():
        raise InputError(
            path,
            "gene name -> id dictionary",
            "does not exist",
            "pass the path of a .json or .pkl file",
        )
    if path.suffix == ".json":
        payload = json.loads(path.read_text())
    elif path.suffix in (".pkl", ".pickle"):
        if not allow_pickle:
            raise InputError(
                path,
                "gene name -> id dictionary",
                "is a pickle, and loading a pickle runs code from the file",
                "convert it to JSON, or pass --allow-pickle if you trust it",
            )
        with path.open("rb") as fh:
            payload = pickle.load(fh)
    else:
        raise InputError(
            path,
            "gene name -> id dictionary",
            f"has an unknown suffix {path.suffix!r}",
            "use .json or .pkl",
        )
    if not isinstance(payload, Mapping):
        raise InputError(
            path, "gene name -> id dictionary", "is not a mapping", "store a {symbol: id} object"
        )
    return {str(k): str(v) for k, v in payload.items()}


def library_sizes(
    adata: ad.AnnData,
    block: sp.csr_matrix | None,
    start: int,
    stop: int,
    *,
    n_counts_key: str | None,
    path: str | PathLike[str] | None,
) -> np.ndarray:
    """``obs[n_counts_key]`` for rows ``start:stop`` when given and present, else the row sums."""
    if n_counts_key is not None and n_counts_key in adata.obs.columns:
        n = np.asarray(adata.obs[n_counts_key].iloc[start:stop], dtype=np.float64)
        if not np.all(np.isfinite(n)) or np.any(n < 0):
            raise InputError(
                path,
                f"obs[{n_counts_key!r}]",
                "has NaN, infinite or negative values",
                "fix the column, or pass --n-counts-key '' to compute library sizes from X",
            )
        return n
    return np.asarray(block.sum(axis=1), dtype=np.float64).ravel()
