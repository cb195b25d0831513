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
import os
import warnings
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
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
from stformer_data._ragged import gather_rows, offsets_from_lengths, pad_rows

TOKENIZE_ROWS = 512  # rows handed to a tokenizer at once


class BlockTokenizer(Protocol):
    """What on-the-fly tokenization needs of a tokenizer with one ``input_ids`` sequence per cell
    (the interface of :class:`stformer_data.RankValueTokenizer`; one with ``tokenize_csr`` is fed
    CSR arrays straight from the file). :class:`stformer_data.BinnedTokenizer` is also accepted
    (bins in ``input_ids``, genes in ``token_type_ids``, phenotype tokens from ``obs``)."""

    def column_factors(self, mapping: GeneMapping) -> np.ndarray: ...

    def tokenize_block(
        self,
        block: sp.csr_matrix,
        n_counts: np.ndarray,
        mapping: GeneMapping,
        factors: np.ndarray | None = None,
    ) -> list[np.ndarray]: ...


def _tokenizer_mode(tokenizer: Any) -> str | None:
    """How :class:`H5adReader` drives ``tokenizer``: ``"csr"``, ``"binned"`` or ``"blocks"``."""
    if tokenizer is None:
        return None
    if hasattr(tokenizer, "tokenize_csr"):
        return "csr"
    if hasattr(tokenizer, "gene_vocab") and hasattr(tokenizer, "phenotype_ids"):
        return "binned"
    if hasattr(tokenizer, "column_factors") and hasattr(tokenizer, "tokenize_block"):
        return "blocks"
    raise TypeError(
        f"{type(tokenizer).__name__} cannot tokenize streamed cells: on the fly, a cell is "
        "tokenized from its own counts only (RankValueTokenizer, BinnedTokenizer, or any "
        "tokenizer with column_factors() and tokenize_block()). Neighbourhood (spatial) tokens "
        "need each spot's neighbours: write a corpus with `stformer tokenize --mode neighborhood` "
        "and stream it with CorpusStreamDataset"
    )


@dataclass
class Buffer:
    """The cells of one shuffle buffer, in planned order, copied out of the files.

    Raw expression is kept as the runs read (``pieces`` of ``{"data", "indices"}``, private
    copies), with each cell's piece, ``start`` in it and length, so a batch is gathered with one
    copy (:meth:`csr_rows`). Tokens are flat arrays (``fields``: ``input_ids`` and, for binned
    tokens, ``token_type_ids``) in which cell ``i`` starts at ``start[i]``, cells in buffer order;
    a batch is padded from them in one compiled pass (:meth:`padded`). ``lengths`` is the number
    of stored values (raw) or tokens of each cell. Nothing points into a file, so a file changed
    meanwhile cannot corrupt a batch. Batches are copies: once a buffer is done its reader may
    refill its token arrays (``storage``) with a later buffer (:meth:`H5adReader.release`), which
    spares the page faults of a fresh allocation of this size on every buffer.
    """

    lengths: np.ndarray
    file_index: np.ndarray
    cell_index: np.ndarray
    start: np.ndarray
    fields: dict[str, np.ndarray]
    raw: bool = False
    n_columns: int = 0
    obs: dict[str, np.ndarray] = field(default_factory=dict)
    storage: dict[str, np.ndarray] = field(default_factory=dict)
    pieces: list[dict[str, np.ndarray]] = field(default_factory=list)
    piece_of: np.ndarray | None = None

    def csr_rows(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(indptr, indices, data)`` of the cells at ``positions`` (raw expression; one copy)."""
        positions = np.asarray(positions, dtype=np.int64)
        lengths = self.lengths[positions]
        indptr = offsets_from_lengths(lengths)
        if not positions.size:
            return indptr, np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float32)
        rows = list(
            zip(
                self.piece_of[positions].tolist(),
                self.start[positions].tolist(),
                (self.start[positions] + lengths).tolist(),
                strict=True,
            )
        )
        # one concatenate per array (the loop over cells only makes views)
        data = np.concatenate([self.pieces[p]["data"][a:b] for p, a, b in rows])
        indices = np.concatenate([self.pieces[p]["indices"][a:b] for p, a, b in rows])
        return indptr, indices, data

    def matrix(self, positions: np.ndarray | None = None) -> sp.csr_matrix:
        """The cells at ``positions`` (default: all, in planned order) as a scipy CSR matrix."""
        positions = np.arange(self.lengths.size) if positions is None else positions
        indptr, indices, data = self.csr_rows(positions)
        return sp.csr_matrix((data, indices, indptr), shape=(positions.size, self.n_columns))

    def token_row(self, i: int, name: str = "input_ids") -> np.ndarray:
        """The values (a view) of cell ``i`` in field ``name``."""
        a = int(self.start[i])
        return self.fields[name][a : a + int(self.lengths[i])]

    def padded(
        self, positions: np.ndarray, pads: Mapping[str, int], empty: Any = None
    ) -> dict[str, np.ndarray]:
        """Each token field of the cells at ``positions`` right-padded to the longest of them (int64
        ``(rows, width)``; field ``name`` padded with ``pads.get(name, 0)``), and ``attention_mask``;
        ``empty`` allocates them (see :func:`stformer_data._ragged.pad_rows`)."""
        out: dict[str, np.ndarray] = {}
        width = None
        for name, values in self.fields.items():
            first = not out
            ids, mask = pad_rows(
                values,
                self.start,
                self.lengths,
                positions,
                pads.get(name, 0),
                width=width,
                mask=first,
                empty=empty,
            )
            out[name] = ids
            if first:
                out["attention_mask"], width = mask, ids.shape[1]
        return out


@dataclass
class _Part:
    """Rows read from one place: sorted-cell ``positions``, their ``starts``/``lengths`` in the
    ``flats`` arrays (views into a file, or a tokenizer's output)."""

    positions: np.ndarray
    flats: dict[str, np.ndarray]
    starts: np.ndarray
    lengths: np.ndarray


@dataclass
class _Run:
    """Rows ``a:b`` of file ``file`` read at once; ``wanted`` (relative to ``a``) are the cells
    at sorted-cell positions ``here``."""

    file: int
    a: int
    b: int
    wanted: np.ndarray
    here: np.ndarray


class _Recycler:
    """Field arrays of released buffers, refilled by later reads of the same reader."""

    def __init__(self) -> None:
        self._spare: list[dict[str, np.ndarray]] = []

    def release(self, buf: Buffer) -> None:
        """``buf`` and every view of its fields are no longer used: its arrays may be refilled."""
        if buf.storage:
            self._spare.append(buf.storage)
            buf.fields, buf.storage = {}, {}

    def _arrays(self, sizes: Mapping[str, tuple[int, Any]]) -> tuple[dict, dict]:
        """``(fields, storage)``: a ``size`` array of ``dtype`` per name, from a spare set when big enough."""
        storage = self._spare.pop() if self._spare else {}
        fields = {}
        for name, (size, dtype) in sizes.items():
            arr = storage.get(name)
            if arr is None or arr.dtype != dtype or arr.size < size:
                arr = storage[name] = np.empty(size + size // 8, dtype=dtype)  # room to grow
            fields[name] = arr[:size]
        return fields, storage


def _assemble(
    parts: list[_Part],
    n: int,
    order: np.ndarray,
    dtypes: Mapping[str, Any],
    recycler: _Recycler,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Copy the rows of ``parts`` (``n`` sorted cells) into one flat array per field, in buffer order
    (buffer position ``p`` holds sorted cell ``order[p]``); returns the fields, starts, lengths
    and the storage behind the fields."""
    part_of = np.zeros(n, dtype=np.int64)
    src = np.zeros(n, dtype=np.int64)
    lengths = np.zeros(n, dtype=np.int64)
    for k, part in enumerate(parts):
        part_of[part.positions], src[part.positions] = k, part.starts
        lengths[part.positions] = part.lengths
    part_of, src, lengths = part_of[order], src[order], lengths[order]
    start = offsets_from_lengths(lengths)
    by_part = np.argsort(part_of, kind="stable")
    groups = np.split(by_part, np.flatnonzero(np.diff(part_of[by_part])) + 1) if order.size else []
    fields, storage = recycler._arrays(
        {k: (int(start[-1]), np.dtype(t)) for k, t in dtypes.items()}
    )
    for name, out in fields.items():
        for sel in groups:  # one compiled copy per part and field
            flat = parts[int(part_of[sel[0]])].flats[name]
            gather_rows(flat, src[sel], lengths[sel], out, start[sel])
    return fields, start[:-1], lengths, storage


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
    phenotype_ids: np.ndarray | None = None

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
        self.mode = _tokenizer_mode(tokenizer)
        if hasattr(tokenizer, "warm_up"):
            tokenizer.warm_up()  # compiled code loaded once here, inherited by forked workers
        self.layer = layer
        self.obs_keys = tuple(obs_keys)
        self.check_values = check_values
        self.max_gap = max_gap
        if self.mode == "binned":
            vocab = tokenizer.gene_vocab
            pad_id = tokenizer.token_vocab.pad_id
            phenotypes = tuple(tokenizer.config.phenotypes)
        else:
            vocab = getattr(tokenizer, "vocab", None) if tokenizer is not None else None
            pad_id = getattr(vocab, "pad_id", None)
            phenotypes = ()
        #: pad value of each token field (tokens only)
        self.pads = {"input_ids": 0 if pad_id is None else int(pad_id), "token_type_ids": 0}
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
                    factors = (
                        tokenizer.column_factors(mapping)
                        if hasattr(tokenizer, "column_factors")
                        else None
                    )
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
                missing = [k for k in phenotypes if k not in adata.obs.columns]
                if missing:
                    raise InputError(
                        path,
                        f"obs columns {missing}",
                        "are phenotypes of the binned tokenizer but do not exist",
                        f"choose phenotypes among {list(adata.obs.columns)}",
                    )
                phenotype_ids = (
                    np.stack(
                        [
                            tokenizer.phenotype_ids(k, adata.obs[k].astype(str).to_numpy(), path)
                            for k in phenotypes
                        ],
                        axis=1,
                    )
                    if phenotypes
                    else None
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
                    phenotype_ids=phenotype_ids,
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

    def open(self, *, threads: int = 1) -> H5adReader:
        """A reader for one worker; ``threads`` rank each read on that many threads (tokenizers
        with ``tokenize_csr``)."""
        return H5adReader(self, threads=threads)


class H5adReader(_Recycler):
    """Open files of an :class:`H5adSource` in one worker (opened lazily, closed by :meth:`close`)."""

    def __init__(self, source: H5adSource, *, threads: int = 1) -> None:
        super().__init__()
        self.source = source
        self.threads = threads
        self._open: dict[int, Any] = {}
        self._pool: ThreadPoolExecutor | None = None  # reads and ranks runs of rank-value tokens

    def __enter__(self) -> H5adReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        for handle in self._open.values():
            handle["file"].close()
            for key in ("data", "indices"):
                if isinstance(handle.get(key), _PreadSegments):
                    handle[key].close()
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
                # read into private arrays: batches outlive the read (a map would die on truncation)
                handle["data"] = _direct_view(info.path, node["data"], private=True)
                handle["indices"] = _direct_view(info.path, node["indices"], private=True)
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
        runs = list(self._plan_runs(file_of, local, rows_all))
        order = np.searchsorted(sorted_ids, cells)
        if src.mode == "csr":
            buf = self._buffer(None, sorted_ids, file_of, rows_all, order)
            buf.fields, buf.start, buf.lengths, buf.storage = self._pipelined(
                runs, sorted_ids.size, order
            )
            return buf
        parts: list[_Part] = []
        for run in runs:
            info = src.files[run.file]
            block = self._read_range(run.file, run.a, run.b)
            if src.check_values:
                check_counts(block, path=info.path, rows=(run.a, run.b))
            if src.tokenizer is not None:
                fields, offsets = self._tokenize(info, block, run.a, run.wanted)
                parts.append(_Part(run.here, fields, offsets[:-1], np.diff(offsets)))
                continue
            if info.column_map is not None:
                block = _align_columns(block, info.column_map, src.n_columns)
            first = block.indptr[run.wanted]
            parts.append(
                _Part(
                    run.here,
                    {"data": block.data, "indices": block.indices},
                    first,
                    block.indptr[run.wanted + 1] - first,
                )
            )
        return self._buffer(parts, sorted_ids, file_of, rows_all, order)

    def _plan_runs(
        self, file_of: np.ndarray, local: np.ndarray, rows_all: np.ndarray
    ) -> Iterator[_Run]:
        """The runs of rows covering the cells, file by file (checking that each open file is
        unchanged); fills ``rows_all`` with each cell's file row."""
        src = self.source
        for f in np.unique(file_of).tolist():
            info = src.files[f]
            sel = np.flatnonzero(file_of == f)
            rows = local[sel] if info.rows is None else info.rows[local[sel]]
            rows_all[sel] = rows
            if f in self._open:
                self._check_unchanged(f)
            done = 0
            for a, b in _runs(rows, src.max_gap):
                wanted = rows[done : done + np.searchsorted(rows[done:], b)] - a
                yield _Run(f, a, b, wanted, sel[done : done + wanted.size])
                done += wanted.size

    def _pipelined(
        self, runs: list[_Run], n: int, order: np.ndarray
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Rank-value tokens of the runs as a buffer's ``(fields, start, lengths, storage)``: each
        run is read and ranked by one thread of a pool of ``threads`` (the runs in flight are
        bounded). From sparse X every cell's tokens are written straight into one buffer array, in
        slots reserved from the file's ``indptr``; otherwise each run's tokens are copied into it
        afterwards (:func:`_assemble`)."""
        tok = self.source.tokenizer
        # files are opened here, in this thread: the pool threads only read them
        encodings = {self._handle(f)["encoding"] for f in {run.file for run in runs}}
        direct = hasattr(tok, "tokenize_csr_into") and encodings <= {"csr_matrix"}
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="stformer-tokenize")
        if direct:
            reserved = np.zeros(n, dtype=np.int64)
            for run in runs:
                indptr = self._handle(run.file)["indptr"]
                rows = run.a + run.wanted
                reserved[run.here] = tok.csr_slots(indptr[rows + 1] - indptr[rows])
            start = offsets_from_lengths(reserved)
            fields, storage = self._arrays({"input_ids": (int(start[-1]), np.dtype(np.int32))})
            lengths = np.zeros(n, dtype=np.int64)
        parts: list[_Part] = []
        pending: deque[tuple[_Run, Future]] = deque()

        def collect(run: _Run, fut: Future) -> None:
            if direct:
                lengths[run.here] = fut.result()
            else:
                parts.append(_Part(run.here, *fut.result()))

        try:
            for run in runs:
                if direct:
                    args = (fields["input_ids"], start[run.here])
                    fut = self._pool.submit(self._rank_run, run, *args)
                else:
                    fut = self._pool.submit(self._rank_run, run)
                pending.append((run, fut))
                while len(pending) > 2 * self.threads:  # bounded memory: wait for the oldest
                    collect(*pending.popleft())
            while pending:
                collect(*pending.popleft())
        finally:
            for _, fut in pending:  # failed: drop what was not started, wait for the rest
                fut.cancel()
            for _, fut in pending:
                if not fut.cancelled():
                    fut.exception()
        if direct:  # cells keep the slots reserved for them
            return fields, start[:-1][order], lengths[order], storage
        return _assemble(parts, n, order, {"input_ids": np.int32}, self)

    def _rank_run(
        self, run: _Run, out: np.ndarray | None = None, start: np.ndarray | None = None
    ) -> Any:
        """Read a run and rank it (on a pool thread): into ``out`` at ``start`` (returns the
        lengths), or as ``_Part`` fields, starts and lengths when ``out`` is None."""
        info = self.source.files[run.file]
        block = self._read_range(run.file, run.a, run.b)
        if self.source.check_values:
            check_counts(block, path=info.path, rows=(run.a, run.b))
        rows = None if run.wanted.size == block.shape[0] else run.wanted
        try:
            if out is not None:
                return self.source.tokenizer.tokenize_csr_into(
                    block.indptr,
                    block.indices,
                    block.data,
                    info.mapping,
                    info.factors,
                    rows=rows,
                    out=out,
                    out_start=start,
                )
            ids, offsets = self.source.tokenizer.tokenize_csr(
                block.indptr,
                block.indices,
                block.data,
                info.mapping,
                info.factors,
                rows=rows,
                threads=1,
            )
        except InputError:
            raise
        except ValueError as exc:  # the kernel refused the file's column indices
            where = f"rows {run.a}:{run.b} of {self.source.layer or 'X'}"
            raise _read_error(info.path, where, exc) from exc
        return {"input_ids": ids}, offsets[:-1], np.diff(offsets)

    def _buffer(
        self,
        parts: list[_Part] | None,
        sorted_ids: np.ndarray,
        file_of: np.ndarray,
        rows_all: np.ndarray,
        order: np.ndarray,
    ) -> Buffer:
        """The buffer of the parts read (cells in the order ``order`` of the sorted ids); with
        ``parts=None`` its values are left for the caller to fill."""
        src = self.source
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
            start=np.zeros(0, dtype=np.int64),
            fields={},
            raw=src.tokenizer is None,
            n_columns=int(src.n_columns or 0),
            obs=obs,
        )
        if parts is None:
            return buf
        if buf.raw:
            piece_of = np.zeros(sorted_ids.size, dtype=np.int64)
            start = np.zeros(sorted_ids.size, dtype=np.int64)
            lengths = np.zeros(sorted_ids.size, dtype=np.int64)
            for k, part in enumerate(parts):
                piece_of[part.positions], start[part.positions] = k, part.starts
                lengths[part.positions] = part.lengths
            buf.pieces = [part.flats for part in parts]
            buf.piece_of, buf.start, buf.lengths = piece_of[order], start[order], lengths[order]
        else:
            names = ("input_ids", "token_type_ids") if src.mode == "binned" else ("input_ids",)
            buf.fields, buf.start, buf.lengths, buf.storage = _assemble(
                parts, sorted_ids.size, order, dict.fromkeys(names, np.int32), self
            )
        return buf

    def _tokenize(
        self, info: _FileInfo, block: sp.csr_matrix, a: int, wanted: np.ndarray
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Token fields (flat) and offsets of rows ``wanted`` of ``block`` (file rows ``a + wanted``),
        for the ``binned`` and ``blocks`` modes (``csr``: :meth:`_pipelined`)."""
        tok = self.source.tokenizer
        if wanted.size != block.shape[0]:
            block = block[wanted]
        file_rows = a + wanted
        names = ("input_ids", "token_type_ids") if self.source.mode == "binned" else ("input_ids",)
        flats: dict[str, list[np.ndarray]] = {name: [] for name in names}
        lengths = []
        for c in range(0, block.shape[0], TOKENIZE_ROWS):  # bounded memory and sort sizes
            sub = block[c : c + TOKENIZE_ROWS]
            rows = file_rows[c : c + TOKENIZE_ROWS]
            n_counts = (
                info.n_counts[rows]
                if info.n_counts is not None
                else np.asarray(sub.sum(axis=1), dtype=np.float64).ravel()
            )
            if self.source.mode == "binned":
                pheno = None if info.phenotype_ids is None else info.phenotype_ids[rows]
                ids, types, off = tok.tokenize_block(sub, n_counts, info.mapping, pheno)
                flats["input_ids"].append(ids)
                flats["token_type_ids"].append(types)
                lengths.append(np.diff(off))
            else:
                seqs = tok.tokenize_block(sub, n_counts, info.mapping, info.factors)
                flats["input_ids"].extend(seqs)
                lengths.append(np.fromiter((t.size for t in seqs), np.int64, count=len(seqs)))
        fields = {
            name: np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
            for name, parts in flats.items()
        }
        lengths_all = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
        return fields, offsets_from_lengths(lengths_all)


class _MappedSegments:
    """Slices of a 1-D HDF5 dataset served from a memory map of its file, segment by segment."""

    def __init__(
        self, path: Path, dtype: np.dtype, size: int, segments: list[tuple[int, int, int]]
    ) -> None:
        self.path = path
        self.dtype, self.size = dtype, size
        self._starts = np.array([s[0] for s in segments], dtype=np.int64)
        self._segments = segments  # (first element, stop element, byte offset)
        self._open()

    def _open(self) -> None:
        mapped = np.memmap(self.path, dtype=np.uint8, mode="r")
        self._mmap = mapped._mmap  # for madvise in release()
        # a plain ndarray over the map: slicing a np.memmap builds memmap objects (slow per row)
        self._file = mapped.view(np.ndarray)

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


class _PreadSegments(_MappedSegments):
    """Like :class:`_MappedSegments`, but every slice is read (``pread``) into a new array: a file
    truncated while it is being read gives a short read, which is an error naming it, where a
    memory map would kill the process with SIGBUS. Used where the data outlive the read."""

    def _open(self) -> None:
        self._fd = os.open(self.path, os.O_RDONLY)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def release(self, a: int, b: int) -> None:
        """Nothing is mapped."""

    def _view(self, k: int, a: int, b: int) -> np.ndarray:
        first, _, byte = self._segments[k]
        out = np.empty(b - a, dtype=self.dtype)
        offset = byte + (a - first) * self.dtype.itemsize
        got = os.preadv(self._fd, [memoryview(out).cast("B")], offset)
        if got != out.nbytes:
            raise OSError(
                f"read {got} of {out.nbytes} bytes at offset {offset}: the file is shorter"
            )
        return out


def _direct_view(
    path: Path, dataset: h5py.Dataset, *, private: bool = False
) -> _MappedSegments | h5py.Dataset:
    """Serve an uncompressed 1-D dataset straight from the page cache (memory map; with
    ``private``, ``pread`` into new arrays: :class:`_PreadSegments`), else use HDF5.

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
    kind = _PreadSegments if private else _MappedSegments
    try:
        offset = dataset.id.get_offset()
        if offset is not None:
            return kind(path, dataset.dtype, dataset.size, [(0, dataset.size, offset)])
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
        return kind(path, dataset.dtype, size, [tuple(s) for s in segments])
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
    ``input_ids`` and, where the corpus has them (binned and neighbourhood corpora),
    ``token_type_ids`` are streamed.
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
        self.pads = {"input_ids": int(self.vocab.pad_id), "token_type_ids": 0}
        self.fields: tuple[str, ...] = ("input_ids",)
        counts = []
        self._batches: list[tuple[int, int]] = []  # (arrow file, record batch)
        for i, arrow in enumerate(self.arrow_files):
            reader = pa.ipc.open_stream(pa.memory_map(str(arrow), "r"))
            if i == 0 and "token_type_ids" in reader.schema.names:
                self.fields = ("input_ids", "token_type_ids")
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

    def open(self, *, threads: int = 1) -> CorpusReader:
        """A reader for one worker (``threads`` is unused: the corpus is already tokenized)."""
        return CorpusReader(self)


class CorpusReader(_Recycler):
    """Memory-mapped record batches of a :class:`CorpusSource`, opened in one worker."""

    def __init__(self, source: CorpusSource) -> None:
        super().__init__()
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
                            "file_index": batch.column("file_index").to_numpy(),
                            "cell_index": batch.column("cell_index").to_numpy(),
                        }
                        for name in self.source.fields:
                            column = batch.column(name)
                            if not np.array_equal(column.offsets.to_numpy(), entry["offsets"]):
                                raise pa.ArrowInvalid(
                                    f"{name} and input_ids have different lengths"
                                )
                            entry[name] = column.values.to_numpy()
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
        n = local.size
        file_index, cell_index = np.empty(n, np.int64), np.empty(n, np.int64)
        obs = {k: np.empty(n, dtype=object) for k in self.source.obs_keys}
        parts = []
        for b in np.unique(batch_of).tolist():  # one part per record batch
            sel = np.flatnonzero(batch_of == b)
            c, r = cols[b], local[sel]
            first = c["offsets"][r]
            file_index[sel], cell_index[sel] = c["file_index"][r], c["cell_index"][r]
            for k in obs:
                obs[k][sel] = c[k][r]
            flats = {name: c[name] for name in self.source.fields}
            parts.append(_Part(sel, flats, first, c["offsets"][r + 1] - first))
        dtypes = {name: cols[0][name].dtype for name in self.source.fields}
        fields, start, lengths, storage = _assemble(parts, n, np.arange(n), dtypes, self)
        return Buffer(
            lengths=lengths,
            file_index=file_index,
            cell_index=cell_index,
            start=start,
            fields=fields,
            obs=obs,
            storage=storage,
        )
