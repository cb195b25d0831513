"""Geneformer-style rank-value encoding of cells, vectorised over row chunks."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from stformer_data._errors import InputError
from stformer_data._ragged import concat_rows, fixed_rows, gather_rows, head_positions
from stformer_data.genes.mapping import GeneMapping
from stformer_data.genes.vocab import GeneVocab
from stformer_data.tokenize import rank_kernel as _kernel
from stformer_data.tokenize.contract import Cells, FileCells, TokenBlock, Tokenizer, token_room


@dataclass(frozen=True, kw_only=True)
class RankTokenizerConfig:
    """Settings of rank-value tokenization.

    Parameters
    ----------
    model_input_size
        Longest sequence written, special tokens included (Geneformer: 2048).
    target_sum
        Counts are scaled to this many per cell before dividing by the gene medians (10,000).
    add_cls, add_eos
        Prepend ``<cls>`` / append ``<eos>``; the vocabulary must have them.
    n_counts_key
        ``obs`` column with library sizes; when absent (or ``None``) the row sums of ``X`` are used.
    """

    model_input_size: int = 2048
    target_sum: float = 10_000.0
    add_cls: bool = False
    add_eos: bool = False
    n_counts_key: str | None = "n_counts"

    def __post_init__(self) -> None:
        n_special = int(self.add_cls) + int(self.add_eos)
        if self.model_input_size <= n_special:
            raise ValueError(
                f"model_input_size must be > {n_special} (the special tokens), got {self.model_input_size}"
            )
        if not self.target_sum > 0:
            raise ValueError(f"target_sum must be > 0, got {self.target_sum}")


class RankValueTokenizer(Tokenizer):
    """Turn raw counts into Geneformer rank-value token sequences.

    Each cell's counts are divided by its library size, scaled to ``target_sum`` and divided by each
    gene's non-zero median; only the **non-zero** genes of the vocabulary that have a median are
    kept (never padded with unexpressed genes), sorted by that value, descending, and truncated to
    ``model_input_size`` (special tokens included).

    Order rule (exact and deterministic): the library size scales every value of a cell by the same
    factor, so it cannot change the order; genes are ordered by the float32 product
    ``float32(count) * float32(target_sum / median)`` descending, ties (equal float32 values) broken
    by the lower token id.

    ``threads`` is how many threads :meth:`tokenize_csr` ranks a block on by default (1: the
    DataLoader workers give the parallelism; more when tokens are made in the main process).

    >>> import numpy as np, scipy.sparse as sp
    >>> from stformer_data import GeneVocab, map_genes
    >>> vocab = GeneVocab.from_genes(["g1", "g2", "g3"])
    >>> tok = RankValueTokenizer(vocab, {"g1": 1.0, "g2": 2.0, "g3": 1.0})
    >>> mapping = map_genes(np.array(["g1", "g2", "g3"]), vocab, vocab.special_ids)
    >>> [t.tolist() for t in tok.tokenize_block(sp.csr_matrix([[1., 4., 0.]]), np.array([5.]), mapping)]
    [[3, 2]]
    """

    #: use the compiled (numba) kernel when available; the numpy path gives identical tokens
    use_kernel: bool = True
    #: :meth:`tokenize` writes into ``Cells.out`` (the compiled kernel, in place)
    writes_in_place = True
    #: :meth:`tokenize` runs compiled code that releases the GIL
    releases_gil = True

    def __init__(
        self,
        vocab: GeneVocab,
        medians: Mapping[str, float],
        config: RankTokenizerConfig | None = None,
        *,
        threads: int = 1,
    ):
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.vocab = vocab
        self.gene_vocab = vocab  # genes are tokens
        self.threads = threads  # default of tokenize_csr (e.g. on-the-fly tokens without workers)
        self.config = config or RankTokenizerConfig()
        if self.config.add_cls and vocab.cls_id is None:
            raise InputError(
                None,
                "token dictionary",
                "has no <cls> token but add_cls=True",
                "build the vocabulary with cls_token=True or disable add_cls",
            )
        if self.config.add_eos and vocab.eos_id is None:
            raise InputError(
                None,
                "token dictionary",
                "has no <eos> token but add_eos=True",
                "build the vocabulary with eos_token=True or disable add_eos",
            )
        # median by token id; NaN where the gene has no usable median
        self._median_by_token = np.full(len(vocab), np.nan)
        tid = (
            vocab.lookup(medians)
            if hasattr(vocab, "lookup")
            else np.fromiter((vocab.get(g, -1) for g in medians), np.int64, count=len(medians))
        )
        med = np.fromiter(
            (np.nan if m is None else m for m in medians.values()),
            dtype=np.float64,
            count=len(medians),
        )
        ok = (tid >= 0) & np.isfinite(med) & (med > 0)
        self._median_by_token[tid[ok]] = med[ok]

    def warm_up(self) -> None:
        """Load the compiled kernel now (importing numba and loading its cached machine code take
        about half a second): call it before timing, or before DataLoader workers fork."""
        if self.use_kernel:
            _kernel.warm_up()

    @property
    def max_genes(self) -> int:
        """Genes kept per cell (``model_input_size`` less the special tokens)."""
        return self.config.model_input_size - self.fixed_tokens

    @property
    def max_length(self) -> int:
        return self.config.model_input_size

    @property
    def fixed_tokens(self) -> int:
        return int(self.config.add_cls) + int(self.config.add_eos)

    @property
    def n_counts_key(self) -> str | None:
        return self.config.n_counts_key

    @property
    def specials(self) -> tuple[int | None, int | None]:
        """``(cls_id, eos_id)`` written around every non-empty cell (``None``: not written)."""
        return (
            self.vocab.cls_id if self.config.add_cls else None,
            self.vocab.eos_id if self.config.add_eos else None,
        )

    @property
    def kernel_ready(self) -> bool:
        """Whether the compiled kernel ranks (``use_kernel`` and numba available)."""
        return self.use_kernel and _kernel.compiled()

    def rank_csr_async(
        self,
        pool: Any,
        indptr: np.ndarray,
        indices: np.ndarray,
        data: np.ndarray,
        factors: np.ndarray,
        column_token: np.ndarray,
        *,
        check: int,
        threads: int,
    ) -> Callable[[], tuple[np.ndarray, np.ndarray, int]]:
        """Start ranking CSR rows with the compiled kernel on ``threads`` threads of ``pool`` (the
        corpus writer ranks later chunks while it writes earlier ones); returns a function that
        waits and gives ``(genes, offsets, flags)``, without special tokens (:meth:`with_specials`).
        ``check`` asks the kernel to check the values (``rank_kernel.CHECK_*``)."""
        return _kernel.rank_csr_async(
            pool, indptr, indices, data, factors, column_token, self.max_genes, check, threads
        )

    def with_specials(
        self, tokens: np.ndarray, offsets: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """``<cls>`` / ``<eos>`` around every non-empty row, as the config asks."""
        return add_specials(tokens, offsets, *self.specials)

    def file_factors(self, file: FileCells) -> np.ndarray:
        """:meth:`column_factors` of a file, computed once (loading the compiled kernel) and then
        the same object every call: the kernel caches its rank table by it."""

        def build() -> np.ndarray:
            self.warm_up()
            return self.column_factors(file.mapping)

        return file.state(self, "factors", build)

    def tokenize(self, cells: Cells) -> TokenBlock:
        """The contract (:class:`~stformer_data.tokenize.contract.Tokenizer`): the compiled kernel
        ranks the CSR arrays of ``cells`` where they lie (:meth:`tokenize_csr`), or writes the
        tokens in place (:meth:`tokenize_csr_into`) when ``cells.out`` is given."""
        factors = self.file_factors(cells.file)
        c, mapping = cells.counts, cells.file.mapping
        n = c.shape[0] if cells.select is None else len(cells.select)
        if n == 0:  # e.g. a source preparing a file's state
            empty = np.zeros(0, dtype=np.int64)
            return TokenBlock({"input_ids": np.zeros(0, dtype=np.int32)}, empty, empty)
        if cells.out is not None:
            lengths = self.tokenize_csr_into(
                c.indptr,
                c.indices,
                c.data,
                mapping,
                factors,
                rows=cells.select,
                out=cells.out,
                out_start=cells.out_start,
            )
            starts = np.asarray(cells.out_start, dtype=np.int64)
            return TokenBlock({"input_ids": cells.out}, starts, lengths)
        ids, offsets = self.tokenize_csr(
            c.indptr, c.indices, c.data, mapping, factors, rows=cells.select, threads=cells.threads
        )
        return TokenBlock.from_offsets({"input_ids": ids}, offsets)

    def column_factors(self, mapping: GeneMapping) -> np.ndarray:
        """Per column ``target_sum / median``; 0 where the gene is not tokenizable."""
        factors = np.zeros(mapping.n_genes, dtype=np.float64)
        ok = mapping.column_token >= 0
        med = self._median_by_token[mapping.column_token[ok]]
        with np.errstate(invalid="ignore", divide="ignore"):
            factors[ok] = np.where(np.isfinite(med), self.config.target_sum / med, 0.0)
        return factors

    def tokenize_block(
        self,
        block: sp.csr_matrix,
        n_counts: np.ndarray,
        mapping: GeneMapping,
        factors: np.ndarray | None = None,
    ) -> list[np.ndarray]:
        """Tokenize a CSR chunk of cells; returns one int32 array per row (empty for empty cells)."""
        tokens, offsets = self.tokenize_block_flat(block, n_counts, mapping, factors)
        return [tokens[offsets[i] : offsets[i + 1]] for i in range(block.shape[0])]

    def tokenize_block_flat(
        self,
        block: sp.csr_matrix,
        n_counts: np.ndarray | None,
        mapping: GeneMapping,
        factors: np.ndarray | None = None,
        *,
        limit: int | None = None,
        specials: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Tokenize a CSR chunk into flat ``tokens`` (int32) and row ``offsets`` (int64, ``n_rows + 1``).

        Row ``i`` is ``tokens[offsets[i]:offsets[i + 1]]`` (empty for cells with no tokenizable gene).
        ``n_counts`` does not affect the order (see the class notes) and may be ``None``. ``limit``
        overrides the number of genes kept; ``specials=False`` leaves out ``<cls>``/``<eos>``.
        """
        del n_counts  # a per-cell positive scale: it cannot change the order within a cell
        if factors is None:
            factors = self.column_factors(mapping)
        block = mapping.collapse(block)
        limit = self.max_genes if limit is None else limit
        if self.use_kernel and _kernel.compiled():
            genes, offsets = _kernel.rank_block(block, factors, mapping.column_token, limit)
        else:
            sorted_keys, bounds = rank_keys(block, factors, mapping.column_token)
            genes, offsets = take_heads(sorted_keys, bounds, limit)
        if not specials:
            return genes, offsets
        return add_specials(genes, offsets, *self.specials)

    def tokenize_csr(
        self,
        indptr: np.ndarray,
        indices: np.ndarray,
        data: np.ndarray,
        mapping: GeneMapping,
        factors: np.ndarray | None = None,
        *,
        rows: np.ndarray | None = None,
        threads: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Tokenize CSR rows given as arrays (e.g. memory-mapped slices of a file), without
        building a matrix: flat ``tokens`` (int32) and ``offsets`` (int64), as
        :meth:`tokenize_block_flat` returns them.

        ``indptr`` indexes ``indices``/``data`` directly; ``rows`` picks and orders the rows
        (default: all). The compiled kernel ranks the rows on ``threads`` threads (default: the
        tokenizer's ``threads``) with no
        per-row Python; unsorted or repeated columns and duplicate gene ids take the exact
        scipy path.

        >>> import numpy as np
        >>> from stformer_data import GeneVocab, map_genes
        >>> vocab = GeneVocab.from_genes(["g1", "g2", "g3"])
        >>> tok = RankValueTokenizer(vocab, {"g1": 1.0, "g2": 2.0, "g3": 1.0})
        >>> mapping = map_genes(np.array(["g1", "g2", "g3"]), vocab, vocab.special_ids)
        >>> indptr, indices, data = np.array([0, 2, 3]), np.array([0, 1, 2]), np.array([1.0, 4.0, 3.0])
        >>> [a.tolist() for a in tok.tokenize_csr(indptr, indices, data, mapping, rows=np.array([1, 0]))]
        [[4, 3, 2], [0, 1, 3]]
        """
        if factors is None:
            factors = self.column_factors(mapping)
        indptr = np.asarray(indptr, dtype=np.int64)
        if self.use_kernel and _kernel.compiled() and mapping.representative is None:
            tokens, offsets, flags = _kernel.rank_csr(
                indptr,
                indices,
                data,
                factors,  # the same objects call after call: their rank table is cached
                mapping.column_token,
                self.max_genes,
                rows=rows,
                threads=self.threads if threads is None else threads,
            )
            if flags & _kernel.BAD_INDEX:
                raise ValueError(f"column indices outside 0..{mapping.n_genes - 1}")
            if not flags:
                return add_specials(tokens, offsets, *self.specials)
        lo, hi = int(indptr[0]), int(indptr[-1])
        block = sp.csr_matrix(
            (np.asarray(data[lo:hi], dtype=np.float32), indices[lo:hi], indptr - lo),
            shape=(indptr.size - 1, mapping.n_genes),
        )
        if rows is not None:
            block = block[np.asarray(rows, dtype=np.int64)]
        block.sum_duplicates()
        return self.tokenize_block_flat(block, None, mapping, factors)

    def csr_slots(self, nnz: np.ndarray) -> np.ndarray:
        """Room :meth:`tokenize_csr_into` needs per row, from each row's number of stored values."""
        return token_room(self, nnz)

    def tokenize_csr_into(
        self,
        indptr: np.ndarray,
        indices: np.ndarray,
        data: np.ndarray,
        mapping: GeneMapping,
        factors: np.ndarray | None = None,
        *,
        rows: np.ndarray | None = None,
        out: np.ndarray,
        out_start: np.ndarray,
    ) -> np.ndarray:
        """:meth:`tokenize_csr` (on this thread) writing row ``i`` in place at
        ``out[out_start[i]:]``, which must have :meth:`csr_slots` room; returns each row's number
        of tokens. Spares the copy of a flat result into a larger buffer (on-the-fly tokens).

        >>> import numpy as np
        >>> from stformer_data import GeneVocab, map_genes
        >>> vocab = GeneVocab.from_genes(["g1", "g2", "g3"])
        >>> tok = RankValueTokenizer(vocab, {"g1": 1.0, "g2": 2.0, "g3": 1.0})
        >>> mapping = map_genes(np.array(["g1", "g2", "g3"]), vocab, vocab.special_ids)
        >>> out = np.zeros(6, dtype=np.int32)
        >>> indptr, indices, data = np.array([0, 2, 3]), np.array([0, 1, 2]), np.array([1.0, 4.0, 3.0])
        >>> tok.tokenize_csr_into(indptr, indices, data, mapping, out=out, out_start=np.array([3, 0])).tolist()
        [2, 1]
        >>> out.tolist()
        [4, 0, 0, 3, 2, 0]
        """
        if factors is None:
            factors = self.column_factors(mapping)
        indptr = np.asarray(indptr, dtype=np.int64)
        out_start = np.asarray(out_start, dtype=np.int64)
        cls_id, eos_id = self.specials
        if self.use_kernel and _kernel.compiled() and mapping.representative is None:
            pre = int(cls_id is not None)
            lengths, flags = _kernel.rank_csr_into(
                indptr,
                indices,
                data,
                factors,
                mapping.column_token,
                self.max_genes,
                rows=rows,
                out=out,
                out_start=out_start + pre,
            )
            if flags & _kernel.BAD_INDEX:
                raise ValueError(f"column indices outside 0..{mapping.n_genes - 1}")
            if not flags:
                nonempty = np.flatnonzero(lengths)
                if cls_id is not None:
                    out[out_start[nonempty]] = cls_id
                if eos_id is not None:
                    out[out_start[nonempty] + pre + lengths[nonempty]] = eos_id
                lengths[nonempty] += pre + int(eos_id is not None)
                return lengths
        tokens, offsets = self.tokenize_csr(
            indptr, indices, data, mapping, factors, rows=rows, threads=1
        )
        lengths = np.diff(offsets)
        gather_rows(tokens, offsets[:-1], lengths, out, out_start)
        return lengths


def rank_keys(
    block: sp.csr_matrix,
    factors: np.ndarray,
    column_token: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the sorted int64 keys ``(~float32 value) << 32 | token`` of the tokenizable genes.

    Returns ``(keys, bounds)``: row ``i`` owns ``keys[bounds[i]:bounds[i + 1]]``, sorted ascending,
    i.e. value descending then token ascending. Only entries with ``count * factor > 0`` are kept.
    """
    cols = block.indices
    f32 = factors.astype(np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        values = block.data.astype(np.float32, copy=False) * f32[cols]  # the float32 product
    keep = values > 0  # also drops NaN
    tokens = column_token[cols]
    if keep.all():
        bounds = block.indptr.astype(np.int64, copy=True)
    else:
        kept_before = np.zeros(keep.size + 1, dtype=np.int64)
        np.cumsum(keep, out=kept_before[1:])
        bounds = kept_before[block.indptr]
        values, tokens = values[keep], tokens[keep]
    keys = np.int64(0x7FFFFFFF) - values.view(np.int32)  # int64: larger value -> smaller key
    keys <<= np.int64(32)
    keys |= tokens
    _sort_rows(keys, bounds)
    return keys, bounds


def _sort_rows(keys: np.ndarray, bounds: np.ndarray) -> None:
    """Sort each row's slice of ``keys`` in place (numpy's SIMD sort, one call per row; measured
    faster than one padded 2-D sort)."""
    for i in range(bounds.size - 1):
        a, b = bounds[i], bounds[i + 1]
        if b - a > 1:
            keys[a:b].sort()


def _tokens_of(keys: np.ndarray) -> np.ndarray:
    """The low 32 bits (the token) of int64 keys, as a contiguous int32 array."""
    low = 0 if np.little_endian else 1
    return np.ascontiguousarray(keys.view(np.int32)[low::2])


def take_heads(keys: np.ndarray, bounds: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``limit`` tokens of each row of sorted keys, as flat tokens and offsets."""
    if int(np.diff(bounds).max(initial=0)) <= limit:
        return _tokens_of(keys), bounds - bounds[0]
    pos, offsets = head_positions(bounds, limit)
    return _tokens_of(keys[pos]), offsets


def add_specials(
    tokens: np.ndarray,
    offsets: np.ndarray,
    cls_id: int | None,
    eos_id: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Prepend ``cls_id`` / append ``eos_id`` to every non-empty row of a flat token array."""
    if cls_id is None and eos_id is None:
        return tokens, offsets
    nonempty = np.diff(offsets) > 0
    parts = []
    if cls_id is not None:
        parts.append(fixed_rows(np.full((nonempty.size, 1), cls_id, dtype=np.int32), nonempty))
    parts.append((tokens, offsets))
    if eos_id is not None:
        parts.append(fixed_rows(np.full((nonempty.size, 1), eos_id, dtype=np.int32), nonempty))
    return concat_rows(parts)
