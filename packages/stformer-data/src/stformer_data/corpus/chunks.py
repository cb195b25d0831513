"""The chunks of one unit of work (a file's row range), tokenized through the tokenizer contract.

:class:`FileChunks` reads any storage through anndata (row chunks of ``chunk_size``) and hands
each chunk to :meth:`Tokenizer.tokenize <stformer_data.tokenize.contract.Tokenizer.tokenize>`.
:class:`CsrRankChunks` is the rank tokenizer's pipelined path for sparse X in spot mode: the
compiled kernel reads the file's ``data`` and ``indices`` where they lie (memory-mapped when
uncompressed, :mod:`stformer_data.h5ad.direct`) and ranks later chunks on ``threads`` threads
while earlier ones are written. Both yield ``(start, stop, TokenBlock)``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from stformer_data._errors import InputError
from stformer_data.corpus.plan import Job
from stformer_data.h5ad.checks import check_counts
from stformer_data.h5ad.direct import MappedSegments as _MappedSegments
from stformer_data.h5ad.direct import direct_view as _direct_view
from stformer_data.h5ad.open import open_h5ad
from stformer_data.h5ad.rows import iter_row_chunks, library_sizes
from stformer_data.tokenize import rank_kernel as _kernel
from stformer_data.tokenize.contract import Cells, FileCells, TokenBlock, Tokenizer
from stformer_data.tokenize.rank import RankValueTokenizer

_AHEAD = 3  # chunks ranked ahead of the one being written (the kernel threads never wait)

Chunk = tuple[int, int, TokenBlock]


def open_chunks(job: Job, tokenizer: Tokenizer) -> FileChunks | CsrRankChunks:
    """The chunks of ``job``: the rank tokenizer's pipelined CSR path where it applies."""
    return CsrRankChunks.open(job, tokenizer) or FileChunks(job, tokenizer)


def _unreadable(path, where: str, exc: Exception) -> InputError:
    return InputError(
        path,
        where,
        f"cannot be read ({type(exc).__name__}: {exc})",
        "the file may be truncated or corrupt; re-export it",
    )


class FileChunks:
    """Any storage, scheme and mode: anndata-backed row chunks through ``tokenizer.tokenize``."""

    def __init__(self, job: Job, tokenizer: Tokenizer) -> None:
        self.job, self.tokenizer = job, tokenizer
        self.adata = open_h5ad(job.path, lazy=True)

    def obs(self) -> pd.DataFrame:
        return self.adata.obs

    def close(self) -> None:
        self.adata.file.close()

    def _file(self) -> FileCells:
        """The file as the tokenizer sees it (library sizes from ``obs`` where the key is there)."""
        adata, job, tok = self.adata, self.job, self.tokenizer
        key = tok.n_counts_key
        n_counts = None
        if key is not None and key in adata.obs.columns:
            n_counts = library_sizes(adata, None, 0, adata.n_obs, n_counts_key=key, path=job.path)
        columns = list(adata.obs.columns)
        return FileCells(
            mapping=job.mapping,
            path=job.path,
            obs={c: adata.obs[c].astype(str).to_numpy() for c in tok.obs_columns if c in columns},
            obs_names=tuple(columns),
            n_counts=n_counts,
            adata=adata,
            layer=job.config.layer,
        )

    def chunks(self) -> Iterator[Chunk]:
        job, cfg = self.job, self.job.config
        file = self._file()
        for start, stop, block in iter_row_chunks(
            self.adata,
            cfg.chunk_size,
            layer=cfg.layer,
            path=job.path,
            start=job.unit.start,
            stop=job.unit.stop,
        ):
            check_counts(
                block, path=job.path, rows=(start, stop), allow_non_integer=cfg.allow_non_integer
            )
            yield (
                start,
                stop,
                self.tokenizer.tokenize(Cells(counts=block, file=file, first_row=start)),
            )


class CsrRankChunks:
    """Rank scheme, spot mode, CSR storage: the rank tokenizer's compiled kernel reads the file's
    ``data`` and ``indices`` where they lie (memory-mapped when uncompressed) and ranks each chunk
    on ``job.threads`` threads while the previous chunk is written."""

    def __init__(self, job: Job, rank: RankValueTokenizer, h5: h5py.File, node: h5py.Group) -> None:
        cfg = job.config
        self.job, self.rank, self.h5 = job, rank, h5
        self.indptr = np.asarray(node["indptr"][job.unit.start : job.unit.stop + 1], np.int64)
        self.data = _direct_view(Path(job.path), node["data"])
        self.indices = _direct_view(Path(job.path), node["indices"])
        self.n_vars = int(node.attrs["shape"][1])
        self.tokens = job.mapping.column_token.astype(np.int32)
        self.check = _kernel.CHECK_FINITE if cfg.allow_non_integer else _kernel.CHECK_COUNTS
        self.where = "X" if cfg.layer is None else f"layers/{cfg.layer}"

    @classmethod
    def open(cls, job: Job, tokenizer: Tokenizer) -> CsrRankChunks | None:
        """The pipelined chunks of this job, or ``None`` when they do not apply."""
        if not (
            isinstance(tokenizer, RankValueTokenizer)
            and job.factors is not None
            and job.mapping.representative is None  # duplicate gene ids: summed by FileChunks
            and tokenizer.kernel_ready
        ):
            return None
        try:
            h5 = h5py.File(job.path, "r")
        except OSError:
            return None  # FileChunks reports unreadable files
        try:
            key = "X" if job.config.layer is None else f"layers/{job.config.layer}"
            node = h5.get(key)
            if isinstance(node, h5py.Group) and node.attrs.get("encoding-type") == "csr_matrix":
                return cls(job, tokenizer, h5, node)
        except (OSError, KeyError, ValueError):
            pass  # unusual layouts: FileChunks reads them or reports the error
        h5.close()
        return None

    def obs(self) -> pd.DataFrame:
        try:
            return ad.io.read_elem(self.h5["obs"])
        except Exception as exc:
            raise _unreadable(self.job.path, "obs", exc) from exc

    def close(self) -> None:
        self.h5.close()
        self.data = self.indices = None  # unmaps the file

    def _submit(self, pool: ThreadPoolExecutor, a: int, b: int) -> tuple:
        unit = self.job.unit
        indptr = self.indptr[a - unit.start : b - unit.start + 1]
        p0, p1 = int(indptr[0]), int(indptr[-1])
        try:
            data, indices = self.data[p0:p1], self.indices[p0:p1]
            if data.size != p1 - p0 or indices.size != p1 - p0:
                raise OSError(f"read {data.size} of {p1 - p0} stored values")
        except Exception as exc:
            raise _unreadable(self.job.path, f"rows {a}:{b} of {self.where}", exc) from exc
        local = indptr - p0
        result = self.rank.rank_csr_async(
            pool,
            local,
            indices,
            data,
            self.job.factors,
            self.tokens,
            check=self.check,
            threads=self.job.threads,
        )
        return a, b, (local, indices, data), result

    def _finish(self, a: int, b: int, arrays: tuple, result: Any) -> Chunk:
        tokens, offsets, flags = result()
        if flags:
            tokens, offsets = self._redo(a, b, arrays, flags)
        p0, p1 = (
            int(self.indptr[a - self.job.unit.start]),
            int(self.indptr[b - self.job.unit.start]),
        )
        for stored in (self.data, self.indices):  # resident memory follows the chunks
            if isinstance(stored, _MappedSegments):
                stored.release(p0, p1)
        ids, offsets = self.rank.with_specials(tokens, offsets)
        return a, b, TokenBlock.from_offsets({"input_ids": ids}, offsets)

    def _redo(self, a: int, b: int, arrays: tuple, flags: int) -> tuple[np.ndarray, np.ndarray]:
        """Chunks the kernel refused: raise the input error, or sort and sum their entries."""
        local, indices, data = arrays
        path = self.job.path
        if flags & _kernel.BAD_INDEX or (indices.size and int(indices.max()) >= self.n_vars):
            raise InputError(
                path,
                f"rows {a}:{b} of {self.where}",
                f"has column indices outside 0..{self.n_vars - 1}",
                "the file is corrupt; re-export it",
            )
        block = sp.csr_matrix((b - a, self.n_vars), dtype=np.float32)  # no index checks
        block.data, block.indices, block.indptr = (
            np.asarray(data, dtype=np.float32),
            np.asarray(indices),
            local,
        )
        check_counts(
            block,
            path=path,
            rows=(a, b),
            allow_non_integer=self.job.config.allow_non_integer,
        )
        block = block.copy()
        block.sum_duplicates()  # unsorted columns or repeated entries
        return _kernel.rank_block(block, self.job.factors, self.tokens, self.rank.max_genes)

    def _bounds(self) -> list[int]:
        """Chunk boundaries: every ``chunk_size`` rows, and where the stored values cross from
        one mapped segment of the file to another (so that each chunk is read without a copy;
        a row that straddles two segments becomes a chunk of its own)."""
        unit, step = self.job.unit, self.job.config.chunk_size
        breaks = [a.breaks for a in (self.data, self.indices) if isinstance(a, _MappedSegments)]
        cuts = set(range(unit.start, unit.stop, step)) | {unit.stop}
        if breaks:
            e = np.unique(np.concatenate(breaks))
            r = np.searchsorted(self.indptr, e, side="right") - 1
            inside = (r >= 0) & (r < self.indptr.size - 1)
            e, r = e[inside], r[inside]
            straddle = r[self.indptr[r] != e] + 1
            cuts.update((np.concatenate([r, straddle]) + unit.start).tolist())
        return sorted(c for c in cuts if unit.start <= c <= unit.stop)

    def chunks(self) -> Iterator[Chunk]:
        bounds = self._bounds()
        with ThreadPoolExecutor(self.job.threads) as pool:  # lives for this unit only
            pending: deque = deque()
            for a, b in zip(bounds[:-1], bounds[1:], strict=True):
                if b <= a:
                    continue
                pending.append(self._submit(pool, a, b))
                if len(pending) > _AHEAD:
                    yield self._finish(*pending.popleft())  # written while later chunks rank
            while pending:
                yield self._finish(*pending.popleft())
