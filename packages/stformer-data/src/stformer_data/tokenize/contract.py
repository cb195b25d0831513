"""The one contract between a tokenizer and the code that feeds it cells.

Both the corpus writer (:mod:`stformer_data.corpus`) and the streaming reader
(:mod:`stformer_data.stream`) hand a tokenizer the cells of one file as :class:`Cells` and get a
:class:`TokenBlock` back, from the one method :meth:`Tokenizer.tokenize`. What a tokenizer needs to
know of a file once (the per-column factors of the rank scheme, phenotype token ids, a neighbour
graph) it derives itself and keeps in :meth:`FileCells.state`, so the callers never ask which kind
of tokenizer they hold. What the callers may need to know of a tokenizer is data on the class:
the token ``fields`` it writes, the ``obs_columns`` it reads, whether it ``needs_neighbours`` (the
whole file), and whether it ``writes_in_place``.

>>> import numpy as np, scipy.sparse as sp
>>> from stformer_data import GeneVocab, RankValueTokenizer, map_genes
>>> vocab = GeneVocab.from_genes(["g1", "g2", "g3"])
>>> tok = RankValueTokenizer(vocab, {"g1": 1.0, "g2": 2.0, "g3": 1.0})
>>> file = FileCells(mapping=map_genes(np.array(["g1", "g2", "g3"]), vocab, vocab.special_ids))
>>> block = tok.tokenize(Cells(counts=sp.csr_matrix([[1.0, 4.0, 0.0], [0.0, 0.0, 2.0]]), file=file))
>>> [block.row(i).tolist() for i in range(block.n_rows)]
[[3, 2], [4]]
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from os import PathLike
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from stformer_data._ragged import offsets_from_lengths
from stformer_data.genes.mapping import GeneMapping


@dataclass(frozen=True)
class TokenBlock:
    """The tokens of a block of cells: one flat int32 array per field, cells at ``starts``.

    Cell ``i`` is ``fields[name][starts[i] : starts[i] + lengths[i]]`` for every field (all fields
    of a cell have the same length). A compact block (:meth:`from_offsets`) has its cells back to
    back; a block written in place (:attr:`Tokenizer.writes_in_place`) has them in the slots the
    caller reserved. ``has_neighbours`` is set by neighbourhood tokenizers: whether each spot
    has neighbourhood tokens.
    """

    fields: dict[str, np.ndarray]
    starts: np.ndarray
    lengths: np.ndarray
    has_neighbours: np.ndarray | None = None

    @classmethod
    def from_offsets(
        cls,
        fields: dict[str, np.ndarray],
        offsets: np.ndarray,
        has_neighbours: np.ndarray | None = None,
    ) -> TokenBlock:
        """A compact block: cell ``i`` is ``fields[name][offsets[i] : offsets[i + 1]]``."""
        offsets = np.asarray(offsets, dtype=np.int64)
        return cls(fields, offsets[:-1], np.diff(offsets), has_neighbours)

    @property
    def n_rows(self) -> int:
        return int(self.lengths.size)

    @property
    def offsets(self) -> np.ndarray:
        """Row offsets (``n_rows + 1``) of a compact block."""
        return offsets_from_lengths(self.lengths) + (self.starts[0] if self.starts.size else 0)

    def row(self, i: int, name: str = "input_ids") -> np.ndarray:
        """Cell ``i`` of field ``name`` (a view)."""
        a = int(self.starts[i])
        return self.fields[name][a : a + int(self.lengths[i])]


@dataclass
class FileCells:
    """One file as a tokenizer sees it, built once per file by the caller.

    Parameters
    ----------
    mapping
        How the file's columns map to the tokenizer's vocabulary.
    path
        The file, for error messages.
    obs
        The ``obs`` columns named in :attr:`Tokenizer.obs_columns` that the file has, as strings,
        for every row of the file.
    obs_names
        Every ``obs`` column of the file (for the error naming a missing one).
    n_counts
        Every row's library size (from ``obs``), or ``None``: the block's row sums are used.
    adata
        The open file, for tokenizers that read other rows (:attr:`Tokenizer.needs_neighbours`).
    layer
        The layer with the counts (``None``: ``X``).
    """

    mapping: GeneMapping
    path: str | PathLike[str] | None = None
    obs: Mapping[str, np.ndarray] = field(default_factory=dict)
    obs_names: tuple[str, ...] = ()
    n_counts: np.ndarray | None = None
    adata: Any = None
    layer: str | None = None
    _state: dict[tuple[int, str], Any] = field(default_factory=dict, repr=False, compare=False)

    def state(self, owner: object, name: str, build: Callable[[], Any]) -> Any:
        """What ``owner`` derived of this file under ``name``, built on first use and kept (so the
        same object comes back every call, and forked workers inherit it)."""
        key = (id(owner), name)
        if key not in self._state:
            self._state[key] = build()
        return self._state[key]


@dataclass(frozen=True)
class Cells:
    """Consecutive rows of one file to tokenize.

    Parameters
    ----------
    counts
        Rows ``first_row, first_row + 1, ...`` of the file, in the file's own columns (float32 CSR).
    file
        The file (:class:`FileCells`).
    first_row
        The file row of ``counts``' first row.
    select
        The rows of ``counts`` to tokenize, in this order (``None``: all).
    out, out_start
        Tokenizers that :attr:`~Tokenizer.writes_in_place`: write cell ``i``'s ``input_ids`` at
        ``out[out_start[i]:]``, which has :func:`token_room` room.
    threads
        Threads the tokenizer may use for this block.
    """

    counts: sp.csr_matrix
    file: FileCells
    first_row: int = 0
    select: np.ndarray | None = None
    out: np.ndarray | None = None
    out_start: np.ndarray | None = None
    threads: int = 1

    @property
    def rows(self) -> np.ndarray:
        """The file row of each cell tokenized."""
        local = np.arange(self.counts.shape[0]) if self.select is None else self.select
        return self.first_row + np.asarray(local, dtype=np.int64)

    def matrix(self) -> sp.csr_matrix:
        """The selected rows as a CSR matrix."""
        return self.counts if self.select is None else self.counts[self.select]

    def n_counts(self, matrix: sp.csr_matrix | None = None) -> np.ndarray:
        """Library sizes of the cells: the file's, else the row sums of ``matrix`` (the selected rows)."""
        if self.file.n_counts is not None:
            return self.file.n_counts[self.rows]
        matrix = self.matrix() if matrix is None else matrix
        return np.asarray(matrix.sum(axis=1), dtype=np.float64).ravel()


class Tokenizer(ABC):
    """What every tokenizer is to the corpus writer and the streaming reader.

    Subclasses implement :meth:`tokenize` and set the class data below where it differs.
    """

    #: the token fields of every :class:`TokenBlock`, ``input_ids`` first
    fields: ClassVar[tuple[str, ...]] = ("input_ids",)
    #: a cell's tokens need other rows of its file (a streamed buffer cannot give them)
    needs_neighbours: ClassVar[bool] = False
    #: :meth:`tokenize` writes ``input_ids`` into ``Cells.out`` when it is given
    writes_in_place: ClassVar[bool] = False
    #: :meth:`tokenize` runs compiled code without the GIL: callers may run it on many threads
    releases_gil: ClassVar[bool] = False
    #: the vocabulary of ``input_ids`` (its ``pad_id`` pads them)
    vocab: Any
    #: the vocabulary the genes of a file are mapped to (:attr:`FileCells.mapping`)
    gene_vocab: Any

    @property
    def obs_columns(self) -> tuple[str, ...]:
        """``obs`` columns :meth:`tokenize` reads from :attr:`FileCells.obs`."""
        return ()

    @property
    def n_counts_key(self) -> str | None:
        """``obs`` column with library sizes (:attr:`FileCells.n_counts`)."""
        return None

    @property
    def max_length(self) -> int:
        """The longest sequence, special tokens included."""
        raise NotImplementedError

    @property
    def fixed_tokens(self) -> int:
        """Tokens of a non-empty cell that are not one of its genes (specials, phenotypes)."""
        return 0

    @property
    def pads(self) -> dict[str, int]:
        """Pad value of each field."""
        return {"input_ids": int(self.vocab.pad_id), "token_type_ids": 0}

    @abstractmethod
    def tokenize(self, cells: Cells) -> TokenBlock:
        """Tokenize ``cells``; cells with no tokenizable gene get empty rows."""


def token_room(tokenizer: Tokenizer, nnz: np.ndarray) -> np.ndarray:
    """Room a cell with ``nnz`` stored values needs in ``Cells.out``: at most one token per stored
    value plus the fixed tokens, and never more than ``max_length``."""
    nnz = np.asarray(nnz, dtype=np.int64)
    return np.minimum(nnz + tokenizer.fixed_tokens, tokenizer.max_length)
