"""Which vocabulary token each column of a file is: gene ids, symbol->id dictionaries, the mapping."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from stformer_data._errors import InputError


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
