"""Many h5ad files seen as one sequence of cells (:class:`H5adSource`), described once.

The source is built in the main process: it checks every file (gene mapping, ``obs`` columns,
library sizes, selected rows) and lets the tokenizer derive what it needs of each file once
(:class:`~stformer_data.tokenize.contract.FileCells`), so DataLoader workers inherit it. Each
worker then opens its own reader (:meth:`H5adSource.open`,
:class:`~stformer_data.stream.h5ad_reader.H5adSourceReader`).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from stformer_data._errors import InputError
from stformer_data.genes.mapping import map_genes, resolve_gene_ids
from stformer_data.h5ad.files import FileStamp
from stformer_data.h5ad.open import open_h5ad
from stformer_data.stream.h5ad_reader import H5adSourceReader
from stformer_data.tokenize.contract import Cells, FileCells, Tokenizer


def _check_tokenizer(tokenizer: Any) -> Tokenizer | None:
    """``tokenizer`` if cells can be tokenized with it one buffer at a time."""
    if tokenizer is None:
        return None
    if isinstance(tokenizer, Tokenizer) and not tokenizer.needs_neighbours:
        return tokenizer
    raise TypeError(
        f"{type(tokenizer).__name__} cannot tokenize streamed cells: on the fly, a cell is "
        "tokenized from its own counts only (RankValueTokenizer, BinnedTokenizer, or any "
        "stformer_data.Tokenizer). Neighbourhood (spatial) tokens "
        "need each spot's neighbours: write a corpus with `stformer tokenize --mode neighborhood` "
        "and stream it with CorpusStreamDataset"
    )


@dataclass
class _FileInfo:
    """One file of an :class:`H5adSource`: its stamp, size, rows, and how it is read."""

    stamp: FileStamp
    n_obs: int
    rows: np.ndarray | None
    cells: FileCells | None  # tokens: the file as the tokenizer sees it
    column_map: np.ndarray | None  # raw expression aligned to genes=: file column -> output column
    obs: dict[str, np.ndarray]

    @property
    def path(self) -> Path:
        return self.stamp.path

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
        Tokenize on the fly with it (a :class:`~stformer_data.Tokenizer`: rank-value, binned, or
        your own); genes are mapped to its ``gene_vocab``. ``None`` yields raw expression.
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
    max_gap
        Rows of a file read at once may bridge gaps of up to this many unwanted rows.

    >>> from stformer_data.stream import H5adSource
    >>> source = H5adSource(["a.h5ad", "b.h5ad"])  # doctest: +SKIP
    >>> with source.open() as reader:  # doctest: +SKIP
    ...     buffer = reader.read(np.arange(16))
    """

    def __init__(
        self,
        files: Sequence[str | PathLike[str]],
        *,
        rows: Sequence[np.ndarray | None] | None = None,
        tokenizer: Tokenizer | None = None,
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
        self.tokenizer = _check_tokenizer(tokenizer)
        self.layer = layer
        self.obs_keys = tuple(obs_keys)
        self.check_values = check_values
        self.max_gap = max_gap
        self._gene_id_key, self._name_to_id = gene_id_key, name_to_id
        self._n_counts_key = n_counts_key
        #: pad value of each token field (tokens only)
        self.pads = (
            dict(self.tokenizer.pads)
            if self.tokenizer is not None
            else {"input_ids": 0, "token_type_ids": 0}
        )
        #: the token fields of every buffer (tokens only)
        self.fields = self.tokenizer.fields if self.tokenizer is not None else ()
        if genes is not None and not isinstance(genes, Mapping):
            genes = {str(g): i for i, g in enumerate(genes)}
        self._target = self.tokenizer.gene_vocab if self.tokenizer is not None else genes
        self.n_columns: int | None = len(self._target) if self._target is not None else None
        self._reference: tuple[Path, np.ndarray] | None = None
        self.files: list[_FileInfo] = []
        for i, path in enumerate(files):
            self.files.append(self._describe(path, None if rows is None else rows[i]))
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

    @property
    def stamps(self) -> list[FileStamp]:
        return [f.stamp for f in self.files]

    def open(self, *, threads: int = 1) -> H5adSourceReader:
        """A reader for one worker; ``threads`` tokenize each read on that many threads
        (tokenizers that release the GIL)."""
        return H5adSourceReader(self, threads=threads)

    # --- describing one file ---------------------------------------------------------------------
    def _describe(self, path: Path, rows: np.ndarray | None) -> _FileInfo:
        adata = open_h5ad(path)
        try:
            ids = resolve_gene_ids(
                adata.var, gene_id_key=self._gene_id_key, name_to_id=self._name_to_id, path=path
            )
            cells = column_map = None
            if self._target is not None:
                special = frozenset(getattr(self._target, "special_ids", frozenset()))
                mapping = map_genes(ids, self._target, special, path=path)
                if self.tokenizer is not None:
                    cells = self._file_cells(path, adata, mapping)
                else:
                    column_map = mapping.column_token
            else:
                self._check_same_genes(path, ids)
            missing = [k for k in self.obs_keys if k not in adata.obs.columns]
            if missing:
                raise InputError(
                    path,
                    f"obs columns {missing}",
                    "do not exist",
                    f"choose among {list(adata.obs.columns)}",
                )
            obs = {k: adata.obs[k].astype(str).to_numpy() for k in self.obs_keys}
            n_obs = adata.n_obs
        finally:
            adata.file.close()
        sel = None if rows is None else np.asarray(rows, dtype=np.int64)
        if (
            sel is not None
            and sel.size
            and (sel.min() < 0 or sel.max() >= n_obs or np.any(np.diff(sel) <= 0))
        ):
            raise ValueError(f"rows for {path} must be sorted, unique and in [0, {n_obs})")
        if n_obs == 0:
            warnings.warn(f"{path}: has no cells; it is skipped", stacklevel=3)
        return _FileInfo(
            stamp=FileStamp.of(path),
            n_obs=n_obs,
            rows=sel,
            cells=cells,
            column_map=column_map,
            obs=obs,
        )

    def _check_same_genes(self, path: Path, ids: np.ndarray) -> None:
        """Raw expression without ``genes=``: every file has the first file's genes, in order."""
        if self._reference is None:
            self._reference = (path, ids)
            self.n_columns = ids.size
            return
        ref_path, ref = self._reference
        if ids.size != ref.size or not np.array_equal(ids, ref):
            n_diff = len(set(ids.tolist()) ^ set(ref.tolist()))
            raise InputError(
                path,
                "var gene ids",
                f"differ from those of {ref_path} "
                f"({ids.size} vs {ref.size} genes, {n_diff} not shared"
                f"{'' if n_diff else ', same genes in another order'})",
                "pass genes= (a vocabulary or gene list) to align every file to one gene space",
            )

    def _file_cells(self, path: Path, adata: Any, mapping: Any) -> FileCells:
        """The file as the tokenizer sees it; the tokenizer derives its per-file state now (an
        empty block), so errors name the file here and workers inherit the state."""
        tok = self.tokenizer
        columns = list(adata.obs.columns)
        key = self._n_counts_key
        n_counts = None
        if key and key in adata.obs.columns:
            n_counts = np.asarray(adata.obs[key], dtype=np.float64)
            if not np.all(np.isfinite(n_counts)) or np.any(n_counts < 0):
                raise InputError(
                    path,
                    f"obs[{key!r}]",
                    "has NaN, infinite or negative values",
                    "fix the column, or set n_counts_key=None to use row sums",
                )
        file = FileCells(
            mapping=mapping,
            path=path,
            obs={k: adata.obs[k].astype(str).to_numpy() for k in tok.obs_columns if k in columns},
            obs_names=tuple(columns),
            n_counts=n_counts,
            layer=self.layer,
        )
        empty = sp.csr_matrix((0, mapping.n_genes), dtype=np.float32)
        tok.tokenize(Cells(counts=empty, file=file))
        return file
