"""Geneformer-style rank-value encoding of cells, vectorised over row chunks."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from stformer_data._errors import InputError
from stformer_data._io import GeneMapping
from stformer_data._vocab import GeneVocab


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
            raise ValueError(f"model_input_size must be > {n_special} (the special tokens), got {self.model_input_size}")
        if not self.target_sum > 0:
            raise ValueError(f"target_sum must be > 0, got {self.target_sum}")


class RankValueTokenizer:
    """Turn raw counts into Geneformer rank-value token sequences.

    Each cell's counts are divided by its library size, scaled to ``target_sum`` and divided by each
    gene's non-zero median; the **non-zero** genes of the vocabulary are then sorted by that value,
    descending (ties: lower token id first), and truncated to ``model_input_size``.

    >>> import numpy as np, scipy.sparse as sp
    >>> from stformer_data import GeneVocab, map_genes
    >>> vocab = GeneVocab.from_genes(["g1", "g2", "g3"])
    >>> tok = RankValueTokenizer(vocab, {"g1": 1.0, "g2": 2.0, "g3": 1.0})
    >>> mapping = map_genes(np.array(["g1", "g2", "g3"]), vocab, vocab.special_ids)
    >>> [t.tolist() for t in tok.tokenize_block(sp.csr_matrix([[1., 4., 0.]]), np.array([5.]), mapping)]
    [[3, 2]]
    """

    def __init__(self, vocab: GeneVocab, medians: Mapping[str, float], config: RankTokenizerConfig | None = None):
        self.vocab = vocab
        self.config = config or RankTokenizerConfig()
        if self.config.add_cls and vocab.cls_id is None:
            raise InputError(None, "token dictionary", "has no <cls> token but add_cls=True",
                             "build the vocabulary with cls_token=True or disable add_cls")
        if self.config.add_eos and vocab.eos_id is None:
            raise InputError(None, "token dictionary", "has no <eos> token but add_eos=True",
                             "build the vocabulary with eos_token=True or disable add_eos")
        # median by token id; NaN where the gene has no usable median
        self._median_by_token = np.full(len(vocab), np.nan)
        for gene, med in medians.items():
            tid = vocab.get(gene)
            if tid is not None and med is not None and np.isfinite(med) and med > 0:
                self._median_by_token[tid] = float(med)

    @property
    def max_genes(self) -> int:
        return self.config.model_input_size - int(self.config.add_cls) - int(self.config.add_eos)

    def column_factors(self, mapping: GeneMapping) -> np.ndarray:
        """Per column ``target_sum / median``; 0 where the gene is not tokenizable."""
        factors = np.zeros(mapping.n_genes, dtype=np.float64)
        ok = mapping.column_token >= 0
        med = self._median_by_token[mapping.column_token[ok]]
        with np.errstate(invalid="ignore", divide="ignore"):
            factors[ok] = np.where(np.isfinite(med), self.config.target_sum / med, 0.0)
        return factors

    def tokenize_block(self, block: sp.csr_matrix, n_counts: np.ndarray, mapping: GeneMapping,
                       factors: np.ndarray | None = None) -> list[np.ndarray]:
        """Tokenize a CSR chunk of cells; returns one int array per row (empty for empty cells)."""
        if factors is None:
            factors = self.column_factors(mapping)
        n_rows = block.shape[0]
        row_nnz = np.diff(block.indptr)
        rows = np.repeat(np.arange(n_rows), row_nnz)
        cols = block.indices
        with np.errstate(invalid="ignore", divide="ignore"):
            values = block.data.astype(np.float64) * factors[cols] / n_counts[rows]
        keep = (values > 0) & np.isfinite(values)
        rows, cols, values = rows[keep], cols[keep], values[keep]
        tokens = mapping.column_token[cols]
        order = np.lexsort((tokens, -values, rows))
        tokens = tokens[order]
        counts = np.bincount(rows, minlength=n_rows)
        bounds = np.concatenate([[0], np.cumsum(counts)])
        limit = self.max_genes
        cls_id, eos_id = self.vocab.cls_id, self.vocab.eos_id
        out: list[np.ndarray] = []
        for i in range(n_rows):
            seq = tokens[bounds[i]: min(bounds[i + 1], bounds[i] + limit)]
            if seq.size and (self.config.add_cls or self.config.add_eos):
                parts = ([np.array([cls_id])] if self.config.add_cls else []) + [seq] + (
                    [np.array([eos_id])] if self.config.add_eos else [])
                seq = np.concatenate(parts)
            out.append(seq.astype(np.int32, copy=False))
        return out
