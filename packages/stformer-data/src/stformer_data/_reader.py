"""Reading planned cells from many h5ad files or from a tokenized corpus (numpy only, no torch).

:class:`H5adSource` describes the files (read once, in the main process) and opens per-worker
readers that fetch a shuffle buffer's cells with a few contiguous slices per file: CSR matrices
are read straight from the HDF5 datasets (``indptr`` cached, ``data``/``indices`` sliced), other
encodings through anndata's backed access. :class:`CorpusSource` memory-maps the Arrow files of a
corpus written by :func:`stformer_data.tokenize_files` and gathers token sequences without copying
the corpus.
"""

from __future__ import annotations

import json
import mmap
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, Protocol

import h5py
import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from stformer_data._errors import InputError
from stformer_data._io import GeneMapping, check_counts, map_genes, open_h5ad, resolve_gene_ids

TOKENIZE_ROWS = 512  # rows handed to a tokenizer at once


class BlockTokenizer(Protocol):
    """What on-the-fly tokenization needs: the interface of :class:`stformer_data.RankValueTokenizer`."""

    def column_factors(self, mapping: GeneMapping) -> np.ndarray: ...

    def tokenize_block(
        self,
        block: sp.csr_matrix,
        n_counts: np.ndarray,
        mapping: GeneMapping,
        factors: np.ndarray | None = None,
    ) -> list[np.ndarray]: ...


@dataclass
class Buffer:
    """The cells of one shuffle buffer, in planned order.

    Raw expression is kept as the slices read (``pieces`` of ``(data, indices)``) with each cell's
    piece, start and length, so a batch is gathered with one copy (:meth:`csr_rows`); tokens are
    one int array per cell. ``lengths`` is the token count or, for raw expression, the number of
    stored values of each cell.
    """

    lengths: np.ndarray
    file_index: np.ndarray
    cell_index: np.ndarray
    n_columns: int = 0
    pieces: list[tuple[np.ndarray, np.ndarray]] | None = None
    piece_of: np.ndarray | None = None
    start: np.ndarray | None = None
    tokens: list[np.ndarray] | None = None
    obs: dict[str, np.ndarray] = field(default_factory=dict)

    def csr_rows(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(indptr, indices, data)`` of the cells at ``positions`` (a CSR matrix, one copy of the values)."""
        lengths = self.lengths[positions]
        indptr = np.zeros(positions.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        rows = list(
            zip(
                self.piece_of[positions].tolist(),
                self.start[positions].tolist(),
                (self.start[positions] + lengths).tolist(),
                strict=True,
            )
        )
        if not rows:
            return indptr, np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float32)
        # one concatenate per array (a single copy, the loop over cells only makes views)
        data = np.concatenate(
            [self.pieces[p][0][a:b] for p, a, b in rows], dtype=np.float32, casting="unsafe"
        )
        indices = np.concatenate(
            [self.pieces[p][1][a:b] for p, a, b in rows], dtype=np.int32, casting="unsafe"
        )
        return indptr, indices, data

    def matrix(self, positions: np.ndarray | None = None) -> sp.csr_matrix:
        """The cells at ``positions`` (default: all, in planned order) as a scipy CSR matrix."""
        positions = np.arange(self.lengths.size) if positions is None else positions
        indptr, indices, data = self.csr_rows(positions)
        return sp.csr_matrix((data, indices, indptr), shape=(positions.size, self.n_columns))


def _locate(cells: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    source = np.searchsorted(offsets, cells, side="right") - 1
    return source, cells - offsets[source]


def _runs(rows: np.ndarray, max_gap: int) -> list[tuple[int, int]]:
    """Contiguous ranges ``[a, b)`` covering sorted ``rows``, bridging gaps of up to ``max_gap`` rows."""
    if rows.size == 0:
        return []
    cut = np.flatnonzero(np.diff(rows) > max_gap + 1) + 1
    firsts = np.concatenate([[0], cut])
    lasts = np.concatenate([cut - 1, [rows.size - 1]])
    return [(int(rows[a]), int(rows[b]) + 1) for a, b in zip(firsts, lasts, strict=True)]


def _stack_csr(parts: Sequence[sp.csr_matrix], n_cols: int) -> sp.csr_matrix:
    if len(parts) == 1:
        return parts[0]
    indptr = [np.zeros(1, dtype=np.int64)]
    base = 0
    for p in parts:
        indptr.append(p.indptr[1:].astype(np.int64) + base)
        base += int(p.indptr[-1])
    return sp.csr_matrix(
        (
            np.concatenate([p.data for p in parts]),
            np.concatenate([p.indices for p in parts]),
            np.concatenate(indptr),
        ),
        shape=(sum(p.shape[0] for p in parts), n_cols),
    )


def _align_columns(block: sp.csr_matrix, column_map: np.ndarray, n_cols: int) -> sp.csr_matrix:
    """Map a file's columns into the common gene space; genes outside it are dropped."""
    cols = column_map[block.indices]
    keep = cols >= 0
    row_of = np.repeat(np.arange(block.shape[0]), np.diff(block.indptr))[keep]
    indptr = np.concatenate([[0], np.cumsum(np.bincount(row_of, minlength=block.shape[0]))])
    return sp.csr_matrix(
        (block.data[keep], cols[keep].astype(np.int32), indptr), shape=(block.shape[0], n_cols)
    )


@dataclass
class _FileInfo:
    path: Path
    size: int
    mtime_ns: int
    n_obs: int
    rows: np.ndarray | None
    mapping: GeneMapping | None
    column_map: np.ndarray | None
    factors: np.ndarray | None
    n_counts: np.ndarray | None
    obs: dict[str, np.ndarray]

    @property
    def count(self) -> int:
        return self.n_obs if self.rows is None else int(self.rows.size)


class H5adSource:
    """Many h5ad files seen as one sequence of cells, read in planned buffers.

    Parameters
    ----------
    files
        The ``.h5ad`` files (files with no cells are skipped with a warning).
    rows
        Per file, the sorted rows to use (e.g. a split's rows) or ``None`` for all.
    tokenizer
        Tokenize on the fly with it (``column_factors`` / ``tokenize_block`` interface); its
        ``vocab`` maps genes to tokens. ``None`` yields raw expression.
    genes
        Raw expression only: a vocabulary or list of gene ids that fixes the output columns; files
        are aligned to it. ``None`` requires every file to have the same genes in the same order.
    gene_id_key, name_to_id
        How gene ids are read from ``var`` (see :func:`stformer_data.resolve_gene_ids`).
    layer
        Layer with the counts; ``None`` uses ``X``.
    obs_keys
        ``obs`` columns returned with every cell (as strings).
    n_counts_key
        ``obs`` column with library sizes for tokenization; row sums are used where it is absent.
    check_values
        Refuse NaN, negative or non-integer values in every read (costs a pass over the data).
    """

    def __init__(
        self,
        files: Sequence[str | PathLike[str]],
        *,
        rows: Sequence[np.ndarray | None] | None = None,
        tokenizer: BlockTokenizer | None = None,
        genes: Mapping[str, int] | Sequence[str] | None = None,
        gene_id_key: str | None = None,
        name_to_id: Mapping[str, str] | None = None,
        layer: str | None = None,
        obs_keys: Sequence[str] = (),
        n_counts_key: str | None = "n_counts",
        check_values: bool = False,
        max_gap: int = 16,
    ) -> None:
        files = [Path(f) for f in files]
        if not files:
            raise ValueError("no input files given")
        if rows is not None and len(rows) != len(files):
            raise ValueError(f"rows has {len(rows)} entries for {len(files)} files")
        if tokenizer is not None and genes is not None:
            raise ValueError("pass either tokenizer (tokens) or genes (raw expression), not both")
        self.tokenizer = tokenizer
        if hasattr(tokenizer, "warm_up"):
            tokenizer.warm_up()  # compiled code loaded once here, inherited by forked workers
        self.layer = layer
        self.obs_keys = tuple(obs_keys)
        self.check_values = check_values
        self.max_gap = max_gap
        vocab = getattr(tokenizer, "vocab", None) if tokenizer is not None else None
        if genes is not None and not isinstance(genes, Mapping):
            genes = {str(g): i for i, g in enumerate(genes)}
        target = vocab if vocab is not None else genes
        self.n_columns: int | None = len(target) if target is not None else None
        special = frozenset(getattr(target, "special_ids", frozenset()))
        self.files: list[_FileInfo] = []
        reference: tuple[Path, np.ndarray] | None = None
        for i, path in enumerate(files):
            adata = open_h5ad(path)
            try:
                ids = resolve_gene_ids(
                    adata.var, gene_id_key=gene_id_key, name_to_id=name_to_id, path=path
                )
                mapping = column_map = factors = None
                if target is not None:
                    mapping = map_genes(ids, target, special, path=path)
                    column_map = mapping.column_token
                    factors = tokenizer.column_factors(mapping) if tokenizer is not None else None
                elif reference is None:
                    reference = (path, ids)
                    self.n_columns = ids.size
                elif ids.size != reference[1].size or not np.array_equal(ids, reference[1]):
                    n_diff = len(set(ids.tolist()) ^ set(reference[1].tolist()))
                    raise InputError(
                        path,
                        "var gene ids",
                        f"differ from those of {reference[0]} "
                        f"({ids.size} vs {reference[1].size} genes, {n_diff} not shared"
                        f"{'' if n_diff else ', same genes in another order'})",
                        "pass genes= (a vocabulary or gene list) to align every file to one gene space",
                    )
                missing = [k for k in self.obs_keys if k not in adata.obs.columns]
                if missing:
                    raise InputError(
                        path,
                        f"obs columns {missing}",
                        "do not exist",
                        f"choose among {list(adata.obs.columns)}",
                    )
                obs = {k: adata.obs[k].astype(str).to_numpy() for k in self.obs_keys}
                n_counts = None
                if tokenizer is not None and n_counts_key and n_counts_key in adata.obs.columns:
                    n_counts = np.asarray(adata.obs[n_counts_key], dtype=np.float64)
                    if not np.all(np.isfinite(n_counts)) or np.any(n_counts < 0):
                        raise InputError(
                            path,
                            f"obs[{n_counts_key!r}]",
                            "has NaN, infinite or negative values",
                            "fix the column, or set n_counts_key=None to use row sums",
                        )
                n_obs = adata.n_obs
            finally:
                adata.file.close()
            sel = None if rows is None or rows[i] is None else np.asarray(rows[i], dtype=np.int64)
            if (
                sel is not None
                and sel.size
                and (sel.min() < 0 or sel.max() >= n_obs or np.any(np.diff(sel) <= 0))
            ):
                raise ValueError(f"rows for {path} must be sorted, unique and in [0, {n_obs})")
            if n_obs == 0:
                warnings.warn(f"{path}: has no cells; it is skipped", stacklevel=2)
            st = path.stat()
            self.files.append(
                _FileInfo(
                    path=path,
                    size=st.st_size,
                    mtime_ns=st.st_mtime_ns,
                    n_obs=n_obs,
                    rows=sel,
                    mapping=mapping,
                    column_map=column_map,
                    factors=factors,
                    n_counts=n_counts,
                    obs=obs,
                )
            )
        self.counts = np.array([f.count for f in self.files], dtype=np.int64)
        if self.counts.sum() == 0:
            raise InputError(
                files[0] if len(files) == 1 else None,
                "cells",
                f"none to read in {len(files)} file(s) (all empty or no rows selected)",
                "pass files that contain cells",
            )
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)])

    @property
    def n_cells(self) -> int:
        return int(self.offsets[-1])

    def open(self) -> H5adReader:
        return H5adReader(self)


class H5adReader:
    """Open files of an :class:`H5adSource` in one worker (opened lazily, closed by :meth:`close`)."""

    def __init__(self, source: H5adSource) -> None:
        self.source = source
        self._open: dict[int, Any] = {}

    def __enter__(self) -> H5adReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for handle in self._open.values():
            handle["file"].close()
        self._open.clear()

    def _handle(self, f: int) -> dict:
        if f in self._open:
            return self._open[f]
        info = self.source.files[f]
        self._check_unchanged(f)
        try:
            h5 = h5py.File(info.path, "r")
            key = "X" if self.source.layer is None else f"layers/{self.source.layer}"
            node = h5[key]
            encoding = (
                node.attrs.get("encoding-type", "array")
                if isinstance(node, h5py.Group)
                else "array"
            )
            handle: dict[str, Any] = {"file": h5, "encoding": encoding, "node": node}
            if encoding == "csr_matrix":
                handle["indptr"] = node["indptr"][:].astype(np.int64)
                handle["data"] = _direct_view(info.path, node["data"])
                handle["indices"] = _direct_view(info.path, node["indices"])
                handle["n_vars"] = int(node.attrs["shape"][1])
            elif encoding != "array":
                handle["adata"] = open_h5ad(info.path)
                handle["file"].close()
                handle["file"] = handle["adata"].file
        except InputError:
            raise
        except Exception as exc:
            raise _read_error(info.path, "file", exc) from exc
        self._open[f] = handle
        return handle

    def _check_unchanged(self, f: int) -> None:
        """A vanished, truncated or rewritten file is an error naming it (checked before every buffer)."""
        info = self.source.files[f]
        try:
            st = info.path.stat()
        except FileNotFoundError:
            raise InputError(
                info.path,
                "file",
                "vanished after the dataset was created",
                "restore the file, or rebuild the dataset without it",
            ) from None
        if st.st_size != info.size or st.st_mtime_ns != info.mtime_ns:
            raise InputError(
                info.path,
                "file",
                f"changed after the dataset was created (size {info.size} -> "
                f"{st.st_size} bytes): truncated or rewritten",
                "restore the file, or rebuild the dataset",
            )

    def _read_range(self, f: int, a: int, b: int) -> sp.csr_matrix:
        handle = self._handle(f)
        info = self.source.files[f]
        try:
            if handle["encoding"] == "csr_matrix":
                indptr = handle["indptr"]
                p0, p1 = int(indptr[a]), int(indptr[b])
                data = handle["data"][p0:p1]
                indices = handle["indices"][p0:p1]
                if data.size != p1 - p0 or indices.size != p1 - p0:
                    raise OSError(f"read {data.size} of {p1 - p0} stored values")
                m = sp.csr_matrix((b - a, handle["n_vars"]), dtype=np.float32)  # no index checks
                m.data, m.indices, m.indptr = (
                    data.astype(np.float32, copy=False),
                    indices,
                    indptr[a : b + 1] - p0,
                )
                return m
            if handle["encoding"] == "array":
                return sp.csr_matrix(np.asarray(handle["node"][a:b], dtype=np.float32))
            block = (
                handle["adata"].X[a:b]
                if self.source.layer is None
                else handle["adata"].layers[self.source.layer][a:b]
            )
            return sp.csr_matrix(block, dtype=np.float32)
        except Exception as exc:
            raise _read_error(
                info.path, f"rows {a}:{b} of {self.source.layer or 'X'}", exc
            ) from exc

    def read(self, cells: np.ndarray) -> Buffer:
        """Read the cells (global ids) of one buffer; the result is in the order of ``cells``."""
        src = self.source
        sorted_ids = np.unique(cells)
        file_of, local = _locate(sorted_ids, src.offsets)
        rows_all = np.empty(sorted_ids.size, dtype=np.int64)
        tokens: list[np.ndarray] = []
        pieces: list[tuple[np.ndarray, np.ndarray]] = []
        piece_of = np.empty(sorted_ids.size, dtype=np.int64)
        start = np.empty(sorted_ids.size, dtype=np.int64)
        nnz = np.empty(sorted_ids.size, dtype=np.int64)
        fused = hasattr(src.tokenizer, "tokenize_csr")
        token_parts: list[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]] = []
        for f in np.unique(file_of).tolist():
            info = src.files[f]
            sel = np.flatnonzero(file_of == f)
            rows = local[sel] if info.rows is None else info.rows[local[sel]]
            rows_all[sel] = rows
            if f in self._open:
                self._check_unchanged(f)
            blocks, done = [], 0
            for a, b in _runs(rows, src.max_gap):
                block = self._read_range(f, a, b)
                wanted = rows[done : done + np.searchsorted(rows[done:], b)] - a
                here = sel[done : done + wanted.size]
                done += wanted.size
                if src.check_values:
                    check_counts(block, path=info.path, rows=(a, b))
                if fused:  # the whole run at once, no per-row Python, no matrix copies
                    tok, off = src.tokenizer.tokenize_csr(
                        block.indptr,
                        block.indices,
                        block.data,
                        info.mapping,
                        info.factors,
                        rows=None if wanted.size == b - a else wanted,
                    )
                    token_parts.append((here, tok, off))
                    continue
                if src.tokenizer is not None:
                    blocks.append(block if wanted.size == b - a else block[wanted])
                    continue
                if info.column_map is not None:
                    block = _align_columns(block, info.column_map, src.n_columns)
                pieces.append((block.data, block.indices))
                piece_of[here] = len(pieces) - 1
                start[here] = block.indptr[wanted]
                nnz[here] = block.indptr[wanted + 1] - block.indptr[wanted]
            if src.tokenizer is not None and not fused:
                block = _stack_csr(blocks, blocks[0].shape[1])
                n_counts = (
                    info.n_counts[rows]
                    if info.n_counts is not None
                    else np.asarray(block.sum(axis=1), dtype=np.float64).ravel()
                )
                for c in range(0, block.shape[0], TOKENIZE_ROWS):  # bounded memory and sort sizes
                    tokens.extend(
                        src.tokenizer.tokenize_block(
                            block[c : c + TOKENIZE_ROWS],
                            n_counts[c : c + TOKENIZE_ROWS],
                            info.mapping,
                            info.factors,
                        )
                    )
                    token_parts.append((sel[c : c + TOKENIZE_ROWS], None, None))
        order = np.searchsorted(sorted_ids, cells)
        obs = {
            k: np.concatenate(
                [src.files[f].obs[k][rows_all[file_of == f]] for f in np.unique(file_of)]
            )[order]
            for k in src.obs_keys
        }
        buf = Buffer(
            lengths=np.zeros(0, dtype=np.int64),
            file_index=file_of[order],
            cell_index=rows_all[order],
            n_columns=int(src.n_columns or 0),
            obs=obs,
        )
        if src.tokenizer is not None:
            buf.tokens, buf.lengths = _tokens_in_order(token_parts, tokens, sorted_ids.size, order)
        else:
            buf.pieces, buf.piece_of, buf.start, buf.lengths = (
                pieces,
                piece_of[order],
                start[order],
                nnz[order],
            )
        return buf


def _tokens_in_order(
    parts: list[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]],
    listed: list[np.ndarray],
    n: int,
    order: np.ndarray,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Each cell's tokens (views) in buffer order, and their lengths.

    ``parts`` are ``(positions, flat tokens, offsets)`` in reading order; a part without flat
    tokens takes its rows, in order, from ``listed`` (tokenizers without ``tokenize_csr``).
    """
    by_position: list[np.ndarray | None] = [None] * n
    taken = 0
    for positions, flat, offsets in parts:
        if flat is None:
            rows = listed[taken : taken + positions.size]
            taken += positions.size
        else:
            bounds = offsets.tolist()
            rows = [flat[bounds[k] : bounds[k + 1]] for k in range(positions.size)]
        for p, row in zip(positions.tolist(), rows, strict=True):
            by_position[p] = row
    tokens = [by_position[i] for i in order.tolist()]
    lengths = np.fromiter((t.size for t in tokens), dtype=np.int64, count=len(tokens))
    return tokens, lengths


class _MappedSegments:
    """Slices of a 1-D HDF5 dataset served from a memory map of its file, segment by segment."""

    def __init__(
        self, path: Path, dtype: np.dtype, size: int, segments: list[tuple[int, int, int]]
    ) -> None:
        mapped = np.memmap(path, dtype=np.uint8, mode="r")
        self._mmap = mapped._mmap  # for madvise in release()
        # a plain ndarray over the map: slicing a np.memmap builds memmap objects (slow per row)
        self._file = mapped.view(np.ndarray)
        self.dtype, self.size = dtype, size
        self._starts = np.array([s[0] for s in segments], dtype=np.int64)
        self._segments = segments  # (first element, stop element, byte offset)

    @property
    def breaks(self) -> np.ndarray:
        """Element positions where a new segment starts: a slice across one is copied."""
        return self._starts[1:]

    def release(self, a: int, b: int) -> None:
        """Unmap the pages of elements ``a:b`` from this process (they stay in the page cache and
        come back if read again), so that resident memory follows the chunk being read."""
        if b <= a:
            return
        k = int(np.searchsorted(self._starts, a, side="right")) - 1
        while a < b and k < len(self._segments):
            first, stop, byte = self._segments[k]
            end = min(b, stop)
            lo = byte + (a - first) * self.dtype.itemsize
            hi = byte + (end - first) * self.dtype.itemsize
            lo, hi = -(-lo // mmap.PAGESIZE) * mmap.PAGESIZE, hi // mmap.PAGESIZE * mmap.PAGESIZE
            if hi > lo:
                self._mmap.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
            a, k = end, k + 1

    def _view(self, k: int, a: int, b: int) -> np.ndarray:
        first, _, byte = self._segments[k]
        lo = byte + (a - first) * self.dtype.itemsize
        return self._file[lo : lo + (b - a) * self.dtype.itemsize].view(self.dtype)

    def __getitem__(self, item: slice) -> np.ndarray:
        a, b, _ = item.indices(self.size)
        if b <= a:
            return np.zeros(0, dtype=self.dtype)
        k = int(np.searchsorted(self._starts, a, side="right")) - 1
        parts = []
        while a < b:
            stop = min(b, self._segments[k][1])
            parts.append(self._view(k, a, stop))
            a, k = stop, k + 1
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _direct_view(path: Path, dataset: h5py.Dataset) -> _MappedSegments | h5py.Dataset:
    """Serve an uncompressed 1-D dataset straight from the page cache (memory map), else use HDF5.

    Contiguous datasets map in one piece; chunked ones (anndata writes them chunked) are mapped as
    runs of back-to-back unfiltered chunks. Anything else (compression, filters) stays with h5py.
    """
    if (
        dataset.ndim != 1
        or dataset.size == 0
        or dataset.compression is not None
        or dataset.dtype.hasobject
    ):
        return dataset
    try:
        offset = dataset.id.get_offset()
        if offset is not None:
            return _MappedSegments(path, dataset.dtype, dataset.size, [(0, dataset.size, offset)])
        if dataset.chunks is None:
            return dataset
        infos: list[tuple[int, int, int, int]] = []
        dataset.id.chunk_iter(
            lambda c: infos.append((c.chunk_offset[0], c.filter_mask, c.byte_offset, c.size))
        )
        infos.sort()
        chunk = dataset.chunks[0]
        itemsize, size = dataset.dtype.itemsize, dataset.size  # h5py computes both per access
        chunk_bytes = chunk * itemsize
        if len(infos) != -(-size // chunk) or any(
            m != 0 or n != chunk_bytes for _, m, _, n in infos
        ):
            return dataset
        segments: list[list[int]] = []
        for first, _, byte, _ in infos:
            prev = segments[-1] if segments else None
            if prev is not None and byte == prev[2] + (first - prev[0]) * itemsize:
                prev[1] = min(first + chunk, size)
            else:
                segments.append([first, min(first + chunk, size), byte])
        return _MappedSegments(path, dataset.dtype, size, [tuple(s) for s in segments])
    except (AttributeError, OSError, ValueError):  # h5py/HDF5 without chunk queries, odd layouts
        return dataset


def _read_error(path: Path, field: str, exc: Exception) -> InputError:
    return InputError(
        path,
        field,
        f"could not be read ({type(exc).__name__}: {exc}); the file vanished, "
        "is truncated or is corrupt",
        "restore or re-export the file",
    )


class CorpusSource:
    """A tokenized corpus on disk (see :func:`stformer_data.tokenize_files`), memory-mapped.

    Every Arrow record batch of the corpus is one planning unit ("file"); sequences are gathered
    from the memory-mapped buffers, so the corpus is neither copied nor decoded row by row.
    """

    def __init__(self, path: str | PathLike[str], *, obs_keys: Sequence[str] = ()) -> None:
        from stformer_data._corpus import is_complete_corpus
        from stformer_data._vocab import GeneVocab

        self.path = Path(path)
        if not is_complete_corpus(self.path):
            raise InputError(
                self.path,
                "manifest.json",
                "is missing: this is not a complete stformer corpus",
                "tokenize again with `stformer tokenize`",
            )
        self.vocab = GeneVocab.load(self.path / "token_dictionary.json")
        self.obs_keys = tuple(obs_keys)
        data_dir = self.path / "dataset"
        state = json.loads((data_dir / "state.json").read_text())
        self.arrow_files = [data_dir / d["filename"] for d in state["_data_files"]]
        counts = []
        self._batches: list[tuple[int, int]] = []  # (arrow file, record batch)
        for i, arrow in enumerate(self.arrow_files):
            reader = pa.ipc.open_stream(pa.memory_map(str(arrow), "r"))
            for j, batch in enumerate(reader):
                counts.append(batch.num_rows)
                self._batches.append((i, j))
            if self.obs_keys:
                missing = [k for k in self.obs_keys if k not in reader.schema.names]
                if missing:
                    raise InputError(
                        arrow,
                        f"columns {missing}",
                        "do not exist in the corpus",
                        f"choose among {reader.schema.names}",
                    )
        self.counts = np.array(counts, dtype=np.int64)
        if self.counts.sum() == 0:
            raise InputError(
                self.path, "dataset", "holds no cells", "tokenize files that contain cells"
            )
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)])

    @property
    def n_cells(self) -> int:
        return int(self.offsets[-1])

    def open(self) -> CorpusReader:
        return CorpusReader(self)


class CorpusReader:
    """Memory-mapped record batches of a :class:`CorpusSource`, opened in one worker."""

    def __init__(self, source: CorpusSource) -> None:
        self.source = source
        self._cols: list[dict[str, np.ndarray]] | None = None

    def __enter__(self) -> CorpusReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._cols = None

    def close(self) -> None:
        self._cols = None

    def _columns(self) -> list[dict[str, np.ndarray]]:
        if self._cols is None:
            cols = []
            for arrow in self.source.arrow_files:
                if not arrow.exists():
                    raise InputError(
                        arrow,
                        "file",
                        "vanished after the dataset was created",
                        "restore the corpus or tokenize again",
                    )
                try:
                    for batch in pa.ipc.open_stream(pa.memory_map(str(arrow), "r")):
                        ids = batch.column("input_ids")
                        entry = {
                            "offsets": ids.offsets.to_numpy(),
                            "values": ids.values.to_numpy(),
                            "file_index": batch.column("file_index").to_numpy(),
                            "cell_index": batch.column("cell_index").to_numpy(),
                        }
                        for k in self.source.obs_keys:
                            entry[k] = np.asarray(batch.column(k).to_pylist(), dtype=object)
                        cols.append(entry)
                except (OSError, pa.ArrowException) as exc:
                    raise _read_error(arrow, "record batches", exc) from exc
            if len(cols) != len(self.source.counts):
                raise InputError(
                    self.source.path,
                    "dataset",
                    "changed after the dataset was created",
                    "restore the corpus or rebuild the dataset",
                )
            self._cols = cols
        return self._cols

    def read(self, cells: np.ndarray) -> Buffer:
        cols = self._columns()
        batch_of, local = _locate(np.asarray(cells), self.source.offsets)
        tokens, file_index, cell_index = (
            [],
            np.empty(local.size, np.int64),
            np.empty(local.size, np.int64),
        )
        obs = {k: np.empty(local.size, dtype=object) for k in self.source.obs_keys}
        for i, (b, r) in enumerate(zip(batch_of.tolist(), local.tolist(), strict=True)):
            c = cols[b]
            tokens.append(c["values"][c["offsets"][r] : c["offsets"][r + 1]])
            file_index[i], cell_index[i] = c["file_index"][r], c["cell_index"][r]
            for k in obs:
                obs[k][i] = c[k][r]
        lengths = np.fromiter((t.size for t in tokens), dtype=np.int64, count=len(tokens))
        return Buffer(
            lengths=lengths, file_index=file_index, cell_index=cell_index, tokens=tokens, obs=obs
        )
