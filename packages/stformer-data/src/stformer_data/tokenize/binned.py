"""Binned expression tokenization (Transformeromics ``GeneTokenizer``; scGPT-style value bins).

A cell becomes ``[CLS] phenotype tokens... gene tokens... [EOS]`` where, for the genes,
``input_ids`` are expression-bin tokens and ``token_type_ids`` say which gene each one is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from stformer_data._errors import InputError
from stformer_data._ragged import concat_rows, fixed_rows, head_positions
from stformer_data.genes.mapping import GeneMapping
from stformer_data.genes.vocab import CLS, EOS, MASK, PAD, GeneVocab
from stformer_data.tokenize.contract import Cells, FileCells, TokenBlock, Tokenizer
from stformer_data.tokenize.rank import _tokens_of, rank_keys

_BINNINGS = ("quantile", "edges")
_ORDERS = ("ranked", "index")


@dataclass(frozen=True, kw_only=True)
class BinnedTokenizerConfig:
    """Settings of binned tokenization.

    Parameters
    ----------
    n_bins
        Number of expression bins, bin 0 (zero expression) included as in scGPT's 51 bins; only
        expressed genes are written, so the tokens used are ``bin_1 .. bin_{n_bins-1}``.
    binning
        ``"quantile"``: per-cell equal-frequency bins of the expressed genes (equal values share a
        bin; bin = 1 + floor(#smaller values x (n_bins - 1) / #expressed)). ``"edges"``: shared
        thresholds ``bin_edges`` on ``log1p(count / n_counts x target_sum)``; bin = 1 + number of
        edges <= value.
    bin_edges
        Increasing thresholds, exactly ``n_bins - 2`` of them; required for ``"edges"``.
    gene_order
        ``"ranked"``: by expression, descending, ties by lower gene token. ``"index"``: by gene
        token id. Either way, truncation keeps the most expressed genes.
    model_input_size
        Longest sequence, special and phenotype tokens included.
    phenotypes
        ``obs`` columns written as leading tokens, one each; each column has its own type id.
    add_cls, add_eos
        Prepend ``<cls>`` / append ``<eos>``.
    """

    n_bins: int = 51
    binning: str = "quantile"
    bin_edges: tuple[float, ...] | None = None
    gene_order: str = "ranked"
    model_input_size: int = 2048
    target_sum: float = 10_000.0
    phenotypes: tuple[str, ...] = ()
    add_cls: bool = True
    add_eos: bool = True
    n_counts_key: str | None = "n_counts"

    def __post_init__(self) -> None:
        object.__setattr__(self, "phenotypes", tuple(self.phenotypes))
        if self.n_bins < 2:
            raise ValueError(f"n_bins must be >= 2, got {self.n_bins}")
        if self.binning not in _BINNINGS:
            raise ValueError(f"binning must be one of {_BINNINGS}, got {self.binning!r}")
        if self.gene_order not in _ORDERS:
            raise ValueError(f"gene_order must be one of {_ORDERS}, got {self.gene_order!r}")
        if self.binning == "edges":
            edges = np.asarray(
                self.bin_edges if self.bin_edges is not None else [], dtype=np.float64
            )
            if edges.size != self.n_bins - 2 or np.any(np.diff(edges) <= 0):
                raise ValueError(
                    f"bin_edges must be {self.n_bins - 2} increasing values for binning='edges'"
                )
            object.__setattr__(self, "bin_edges", tuple(float(e) for e in edges))
        n_fixed = int(self.add_cls) + int(self.add_eos) + len(self.phenotypes)
        if self.model_input_size <= n_fixed:
            raise ValueError(
                f"model_input_size must be > {n_fixed} (special + phenotype tokens), "
                f"got {self.model_input_size}"
            )
        if not self.target_sum > 0:
            raise ValueError(f"target_sum must be > 0, got {self.target_sum}")


def binned_vocab(
    n_bins: int, phenotype_values: Mapping[str, Sequence[str]] | None = None
) -> GeneVocab:
    """The token vocabulary of binned sequences: specials, ``bin_1..bin_{n-1}``, ``column=value``.

    >>> v = binned_vocab(4, {"sex": ["F", "M"]})
    >>> v["bin_1"], v["sex=M"], len(v)
    (4, 8, 9)
    """
    tokens = [PAD, MASK, CLS, EOS] + [f"bin_{b}" for b in range(1, n_bins)]
    for column, values in (phenotype_values or {}).items():
        tokens += [f"{column}={v}" for v in sorted({str(x) for x in values})]
    return GeneVocab({t: i for i, t in enumerate(tokens)}, special_tokens=[PAD, MASK, CLS, EOS])


class BinnedTokenizer(Tokenizer):
    """Expression-bin tokens with gene identities in ``token_type_ids``.

    ``token_type_ids``: 0 for ``<cls>``/``<eos>``; a gene's token id in ``gene_vocab`` for a gene
    (special ids of ``gene_vocab`` are never genes, so 0 stays reserved); ``len(gene_vocab) + k``
    for the ``k``-th phenotype column. ``type_vocab_size`` is their number.

    >>> import numpy as np, scipy.sparse as sp
    >>> from stformer_data import GeneVocab, map_genes
    >>> genes = GeneVocab.from_genes(["a", "b", "c"])
    >>> tok = BinnedTokenizer(genes, binned_vocab(3), BinnedTokenizerConfig(n_bins=3))
    >>> m = map_genes(np.array(["a", "b", "c"]), genes, genes.special_ids)
    >>> ids, types, off = tok.tokenize_block(sp.csr_matrix([[5., 1., 0.]]), np.array([6.]), m)
    >>> ids.tolist(), types.tolist()
    ([2, 5, 4, 3], [0, 2, 3, 0])
    """

    fields = ("input_ids", "token_type_ids")

    def __init__(
        self,
        gene_vocab: GeneVocab,
        token_vocab: GeneVocab,
        config: BinnedTokenizerConfig | None = None,
    ):
        self.gene_vocab = gene_vocab
        self.token_vocab = token_vocab
        self.vocab = token_vocab  # the vocabulary of input_ids (the contract's name)
        self.config = config or BinnedTokenizerConfig()
        missing = [
            f"bin_{b}" for b in range(1, self.config.n_bins) if f"bin_{b}" not in token_vocab
        ]
        if missing:
            raise InputError(
                None,
                "binned token dictionary",
                f"lacks {missing[:3]}",
                f"build it with binned_vocab(n_bins={self.config.n_bins}, ...)",
            )
        self._bin_token = np.array(
            [-1] + [token_vocab[f"bin_{b}"] for b in range(1, self.config.n_bins)], dtype=np.int32
        )

    @property
    def type_vocab_size(self) -> int:
        return len(self.gene_vocab) + len(self.config.phenotypes)

    @property
    def max_genes(self) -> int:
        return self.config.model_input_size - self.fixed_tokens

    @property
    def max_length(self) -> int:
        return self.config.model_input_size

    @property
    def fixed_tokens(self) -> int:
        c = self.config
        return int(c.add_cls) + int(c.add_eos) + len(c.phenotypes)

    @property
    def obs_columns(self) -> tuple[str, ...]:
        return tuple(self.config.phenotypes)

    @property
    def n_counts_key(self) -> str | None:
        return self.config.n_counts_key

    def file_phenotypes(self, file: FileCells) -> np.ndarray | None:
        """Phenotype token ids of every row of a file, ``(n_obs, len(phenotypes))`` (computed once;
        an error names a missing column or a value missing from the token dictionary)."""
        phenotypes = self.obs_columns
        if not phenotypes:
            return None

        def build() -> np.ndarray:
            missing = [k for k in phenotypes if k not in file.obs]
            if missing:
                raise InputError(
                    file.path,
                    f"obs columns {missing}",
                    "are phenotypes of the binned tokenizer but do not exist",
                    f"choose phenotypes among {list(file.obs_names)}",
                )
            ids = [self.phenotype_ids(k, np.asarray(file.obs[k]), file.path) for k in phenotypes]
            return np.stack(ids, axis=1)

        return file.state(self, "phenotype_ids", build)

    def tokenize(self, cells: Cells) -> TokenBlock:
        """The contract (:class:`~stformer_data.tokenize.contract.Tokenizer`): :meth:`tokenize_block`
        with the library sizes and phenotype tokens of the cells' rows."""
        block = cells.matrix()
        pheno = self.file_phenotypes(cells.file)
        ids, types, offsets = self.tokenize_block(
            block,
            cells.n_counts(block),
            cells.file.mapping,
            None if pheno is None else pheno[cells.rows],
        )
        return TokenBlock.from_offsets({"input_ids": ids, "token_type_ids": types}, offsets)

    def phenotype_ids(self, column: str, values: np.ndarray, path=None) -> np.ndarray:
        """Token ids of ``column=value`` for an array of ``obs`` values (all must be in the vocabulary)."""
        lookup = {v: self.token_vocab.get(f"{column}={v}", -1) for v in np.unique(values)}
        ids = np.array([lookup[v] for v in values], dtype=np.int32)
        if np.any(ids < 0):
            bad = sorted({v for v, i in lookup.items() if i < 0})[:3]
            raise InputError(
                path,
                f"obs[{column!r}]",
                f"has values missing from the token dictionary ({bad})",
                "rebuild the binned vocabulary with every file's phenotype values",
            )
        return ids

    def tokenize_block(
        self,
        block: sp.csr_matrix,
        n_counts: np.ndarray,
        mapping: GeneMapping,
        phenotype_ids: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Tokenize a CSR chunk: ``(input_ids, token_type_ids, offsets)`` flat; empty cells give empty rows.

        ``phenotype_ids`` is ``(n_rows, len(config.phenotypes))`` from :meth:`phenotype_ids`.
        """
        c = self.config
        block = mapping.collapse(block)
        n_rows = block.shape[0]
        ones = (mapping.column_token >= 0).astype(np.float64)
        keys, bounds = rank_keys(block, ones, mapping.column_token)  # by count, descending
        bins = self._bins(keys, bounds, np.asarray(n_counts, dtype=np.float64))
        pos, offsets = head_positions(bounds, self.max_genes)
        genes = _tokens_of(keys[pos])
        bins = bins[pos]
        if c.gene_order == "index":
            row = np.repeat(np.arange(n_rows), np.diff(offsets))
            order = np.lexsort((genes, row))
            genes, bins = genes[order], bins[order]
        body_ids, body_types = self._bin_token[bins], genes
        nonempty = np.diff(offsets) > 0
        ids_parts, type_parts = [], []
        prefix_ids, prefix_types = [], []
        if c.add_cls:
            prefix_ids.append(np.full((n_rows, 1), self.token_vocab.cls_id, dtype=np.int32))
            prefix_types.append(np.zeros((n_rows, 1), dtype=np.int32))
        if c.phenotypes:
            if phenotype_ids is None or phenotype_ids.shape != (n_rows, len(c.phenotypes)):
                raise ValueError(f"phenotype_ids must have shape ({n_rows}, {len(c.phenotypes)})")
            prefix_ids.append(phenotype_ids.astype(np.int32))
            types = len(self.gene_vocab) + np.arange(len(c.phenotypes), dtype=np.int32)
            prefix_types.append(np.broadcast_to(types, (n_rows, len(c.phenotypes))))
        if prefix_ids:
            ids_parts.append(fixed_rows(np.hstack(prefix_ids), nonempty))
            type_parts.append(fixed_rows(np.hstack(prefix_types), nonempty))
        ids_parts.append((body_ids, offsets))
        type_parts.append((body_types, offsets))
        if c.add_eos:
            ids_parts.append(
                fixed_rows(np.full((n_rows, 1), self.token_vocab.eos_id, dtype=np.int32), nonempty)
            )
            type_parts.append(fixed_rows(np.zeros((n_rows, 1), dtype=np.int32), nonempty))
        ids, out_offsets = concat_rows(ids_parts)
        types, _ = concat_rows(type_parts)
        return ids, types, out_offsets

    def _bins(self, keys: np.ndarray, bounds: np.ndarray, n_counts: np.ndarray) -> np.ndarray:
        """Bin (1..n_bins-1) of every sorted key."""
        c = self.config
        lengths = np.diff(bounds)
        row = np.repeat(np.arange(lengths.size), lengths)
        if c.binning == "edges":
            counts = (
                (np.int64(0x7FFFFFFF) - (keys >> np.int64(32))).astype(np.int32).view(np.float32)
            )
            with np.errstate(divide="ignore", invalid="ignore"):
                value = np.log1p(counts.astype(np.float64) / n_counts[row] * c.target_sum)
            return (1 + np.searchsorted(np.asarray(c.bin_edges), value, side="right")).astype(
                np.int64
            )
        # quantile: keys are sorted by value descending; find the end of each run of equal values
        value_key = keys >> np.int64(32)
        n = keys.size
        new_run = np.ones(n, dtype=bool)
        if n:
            new_run[1:] = (value_key[1:] != value_key[:-1]) | (row[1:] != row[:-1])
        run_start = np.flatnonzero(new_run)
        run_end = np.append(run_start[1:], n) - 1
        end = run_end[np.cumsum(new_run) - 1]
        smaller = bounds[1:][row] - 1 - end  # values after the run are smaller
        m = lengths[row]
        return 1 + (smaller * (c.n_bins - 1)) // np.maximum(m, 1)
