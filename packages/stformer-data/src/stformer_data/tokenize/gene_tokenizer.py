"""Transformeromics' ``GeneTokenizer``: one AnnData cell into bin tokens, gene token types, phenotypes.

A cell becomes ``[CLS]``, one token per included phenotype, one token per expressed gene, ``[EOS]``:

* ``input_ids``: a distinct id per special token (``[CLS] [EOS] [MASK] [PAD]``, ids 0-3) and per
  phenotype value (``"cell_type=T cell"``), and one id per expression bin (``bin_1 .. bin_K``).
* ``token_type_ids``: 0 for the special tokens, ``1 .. P`` for the ``P`` phenotype categories (the
  category stays known when its token is masked), ``1 + P + g`` for gene ``g`` of the gene list.

Bins come from ``bin_edges`` ``e_1 < ... < e_K`` on the values as stored in the file (normalise or
log-transform beforehand if wanted): a value ``v`` is in bin ``b = #{e_i <= v}``; genes below the
first edge (zeros included) are not expressed and are left out, so the sequence is built from the
sparse row without densifying it. ``bin_edges=[0.1]`` gives one bin: "expressed".
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from stformer_data._errors import InputError
from stformer_data.atomic import atomic_write_text

__all__ = ["GeneTokenizer"]

SPECIAL_TOKENS = ("[CLS]", "[EOS]", "[MASK]", "[PAD]")
TOKENIZER_FILE = "gene_tokenizer.json"


def _load_phenotype_map(path: str | PathLike[str]) -> dict[str, list[str]]:
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(
            path,
            "vocab_path",
            f"cannot be read as JSON ({exc})",
            "pass a JSON file mapping each phenotype category to its values",
        ) from None
    if not isinstance(raw, Mapping):
        raise InputError(
            path, "vocab_path", "is not a JSON object", 'write {"cell_type": ["B cell", ...], ...}'
        )
    return {
        str(k): [str(v) for v in (vals.keys() if isinstance(vals, Mapping) else vals)]
        for k, vals in raw.items()
    }


class GeneTokenizer:
    """Tokenize individual AnnData cells: ``tok(adata[0])`` -> ``{"input_ids", "token_type_ids"}``.

    Parameters
    ----------
    config
        Optional object with any of the attributes below (perturbgene's ``BaseConfig``, the result
        of ``parse_args()``); explicit keywords win.
    bin_edges
        Increasing expression thresholds; values below the first are dropped.
    max_length
        Longest sequence, ``[CLS]``, phenotypes and ``[EOS]`` included; the most expressed genes are kept.
    num_top_genes
        Size of the gene list: the first ``num_top_genes`` genes of ``gene_names`` (or of the first
        cell's ``var_names``); other genes are left out.
    gene_names
        The gene list (token type ``1 + P + position``); default: taken from the first cell tokenized.
    included_phenotypes
        ``obs`` columns written as phenotype tokens, in this order.
    phenotype_values
        The values of each included phenotype (``{"cell_type": [...]}``); or ``vocab_path``, a JSON
        file of that mapping (perturbgene's ``phenotypic_tokens_map.json``).

    >>> import anndata, numpy as np, pandas as pd
    >>> a = anndata.AnnData(np.array([[0.0, 2.0, 0.05, 7.0]], dtype=np.float32),
    ...                     obs=pd.DataFrame({"sex": ["F"]}, index=["c"]))
    >>> tok = GeneTokenizer(bin_edges=[0.1, 5.0], included_phenotypes=["sex"],
    ...                     phenotype_values={"sex": ["F", "M"]})
    >>> out = tok(a[0])
    >>> tok.convert_ids_to_tokens(out["input_ids"].tolist())
    ['[CLS]', 'sex=F', 'bin_1', 'bin_2', '[EOS]']
    >>> out["token_type_ids"].tolist()  # gene 1 -> 2 + 1, gene 3 -> 2 + 3
    [0, 1, 3, 5, 0]
    """

    special_tokens = SPECIAL_TOKENS
    cls_token, eos_token, mask_token, pad_token = SPECIAL_TOKENS

    def __init__(
        self,
        config: Any = None,
        *,
        bin_edges: Sequence[float] | None = None,
        max_length: int | None = None,
        num_top_genes: int | None = None,
        gene_names: Sequence[str] | None = None,
        included_phenotypes: Sequence[str] | None = None,
        phenotype_values: Mapping[str, Sequence[str]] | None = None,
        vocab_path: str | PathLike[str] | None = None,
    ):
        def pick(value, name, default):
            if value is not None:
                return value
            got = getattr(config, name, None) if config is not None else None
            return default if got is None else got

        edges = np.asarray(pick(bin_edges, "bin_edges", (0.1,)), dtype=np.float64).reshape(-1)
        if edges.size == 0 or np.any(np.diff(edges) <= 0) or not np.all(np.isfinite(edges)):
            raise ValueError(
                f"bin_edges must be one or more increasing numbers, got {edges.tolist()}"
            )
        self.bin_edges = edges
        self.max_length = int(pick(max_length, "max_length", 2048))
        top = pick(num_top_genes, "num_top_genes", None)
        self.num_top_genes = None if top is None else int(top)
        if self.num_top_genes is not None and self.num_top_genes < 1:
            raise ValueError(f"num_top_genes must be >= 1, got {self.num_top_genes}")
        self.included_phenotypes = tuple(pick(included_phenotypes, "included_phenotypes", ()))
        vocab_path = pick(vocab_path, "vocab_path", None)
        if phenotype_values is None and vocab_path is not None:
            phenotype_values = _load_phenotype_map(vocab_path)
        phenotype_values = dict(phenotype_values or {})
        missing = [p for p in self.included_phenotypes if p not in phenotype_values]
        if missing:
            raise InputError(
                vocab_path,
                f"phenotype values of {missing}",
                "are not given",
                "pass phenotype_values={column: [values]}, a vocab_path JSON, or use GeneTokenizer.from_adata",
            )
        if self.max_length <= 2 + len(self.included_phenotypes):
            raise ValueError(
                f"max_length must be > {2 + len(self.included_phenotypes)} ([CLS], phenotypes, [EOS]), got {self.max_length}"
            )
        tokens = list(SPECIAL_TOKENS) + [f"bin_{b}" for b in range(1, edges.size + 1)]
        self.phenotype_values = {
            p: sorted({str(v) for v in phenotype_values[p]}) for p in self.included_phenotypes
        }
        for p in self.included_phenotypes:
            tokens += [f"{p}={v}" for v in self.phenotype_values[p]]
        self.vocab: dict[str, int] = {t: i for i, t in enumerate(tokens)}
        if len(self.vocab) != len(tokens):
            raise ValueError("phenotype tokens collide; rename the values or categories")
        self.ids_to_tokens = tokens
        self.phenotype_token_ids = frozenset(
            self.vocab[f"{p}={v}"]
            for p in self.included_phenotypes
            for v in self.phenotype_values[p]
        )
        self.gene_names: list[str] | None = None
        self._gene_index: dict[str, int] = {}
        self._column_cache: tuple[Any, np.ndarray] | None = None
        if gene_names is not None:
            self.set_gene_names(gene_names)

    # --- construction helpers -----------------------------------------------------------------
    @classmethod
    def from_adata(cls, adata: Any, config: Any = None, **kwargs: Any) -> GeneTokenizer:
        """A tokenizer whose phenotype values and gene list are those of ``adata`` (or several)."""
        adatas = adata if isinstance(adata, (list, tuple)) else [adata]
        phenos = kwargs.pop("included_phenotypes", None)
        if phenos is None:
            phenos = getattr(config, "included_phenotypes", None) or ()
        values: dict[str, set[str]] = {p: set() for p in phenos}
        for a in adatas:
            for p in phenos:
                if p not in a.obs:
                    raise InputError(
                        getattr(a, "filename", None),
                        f"obs[{p!r}]",
                        "does not exist",
                        f"choose included_phenotypes among {list(a.obs.columns)}",
                    )
                values[p].update(str(v) for v in np.unique(np.asarray(a.obs[p]).astype(str)))
        kwargs.setdefault("gene_names", list(map(str, adatas[0].var_names)))
        return cls(config, included_phenotypes=phenos, phenotype_values=values, **kwargs)

    def set_gene_names(self, names: Sequence[str]) -> None:
        names = [str(n) for n in names]
        if self.num_top_genes is not None:
            names = names[: self.num_top_genes]
        if len(set(names)) != len(names):
            raise ValueError("gene_names has duplicates")
        self.gene_names = names
        self._gene_index = {g: i for i, g in enumerate(names)}
        self._column_cache = None

    def save_vocab(self, path: str | PathLike[str]) -> Path:
        """Write the phenotype map (``vocab_path`` format) and the gene list as JSON."""
        payload = {
            "phenotypes": self.phenotype_values,
            "genes": self.gene_names,
            "bin_edges": self.bin_edges.tolist(),
            "max_length": self.max_length,
        }
        return atomic_write_text(path, json.dumps(payload, indent=1))

    def save_pretrained(self, directory: str | PathLike[str]) -> Path:
        """Write ``gene_tokenizer.json`` into ``directory`` (what the HF ``Trainer`` calls on save)."""
        Path(directory).mkdir(parents=True, exist_ok=True)
        return self.save_vocab(Path(directory) / TOKENIZER_FILE)

    @classmethod
    def from_pretrained(cls, directory: str | PathLike[str]) -> GeneTokenizer:
        """The tokenizer :meth:`save_pretrained` wrote into ``directory``."""
        path = Path(directory) / TOKENIZER_FILE
        if not path.is_file():
            raise InputError(
                path, TOKENIZER_FILE, "is missing", "save the tokenizer with save_pretrained"
            )
        saved = json.loads(path.read_text())
        return cls(
            bin_edges=saved["bin_edges"],
            max_length=saved["max_length"],
            gene_names=saved["genes"],
            included_phenotypes=list(saved["phenotypes"]),
            phenotype_values=saved["phenotypes"],
        )

    # --- the TokenSpec protocol and HF-tokenizer names ----------------------------------------
    def __len__(self) -> int:
        return len(self.ids_to_tokens)

    @property
    def pad_id(self) -> int:
        return self.vocab[self.pad_token]

    @property
    def mask_id(self) -> int:
        return self.vocab[self.mask_token]

    @property
    def cls_id(self) -> int:
        return self.vocab[self.cls_token]

    @property
    def eos_id(self) -> int:
        return self.vocab[self.eos_token]

    pad_token_id = pad_id
    mask_token_id = mask_id

    @property
    def special_ids(self) -> frozenset[int]:
        return frozenset(range(len(SPECIAL_TOKENS)))

    @property
    def num_bins(self) -> int:
        return int(self.bin_edges.size)

    @property
    def phenotype_type_ids(self) -> frozenset[int]:
        """``token_type_ids`` of the phenotype categories (``1 .. P``)."""
        return frozenset(range(1, 1 + len(self.included_phenotypes)))

    @property
    def gene_token_type_offset(self) -> int:
        return 1 + len(self.included_phenotypes)

    @property
    def type_vocab_size(self) -> int:
        n_genes = len(self.gene_names) if self.gene_names is not None else self.num_top_genes
        if n_genes is None:
            raise ValueError("the gene list is not known yet: give gene_names or num_top_genes")
        return self.gene_token_type_offset + n_genes

    def convert_tokens_to_ids(self, tokens):
        if isinstance(tokens, str):
            return self.vocab[tokens]
        return [self.vocab[t] for t in tokens]

    def convert_ids_to_tokens(self, ids):
        if isinstance(ids, (int, np.integer)):
            return self.ids_to_tokens[int(ids)]
        return [self.ids_to_tokens[int(i)] for i in ids]

    # --- tokenization -------------------------------------------------------------------------
    def _columns(self, var_names: Any) -> np.ndarray:
        """Gene-list position of every column of a file (-1: not in the list), cached per var_names."""
        cached = self._column_cache
        if cached is not None and (cached[0] is var_names or cached[0].equals(var_names)):
            return cached[1]
        if self.gene_names is None:
            self.set_gene_names(list(var_names))
        cols = np.array([self._gene_index.get(str(g), -1) for g in var_names], dtype=np.int64)
        self._column_cache = (var_names, cols)
        return cols

    def phenotype_ids(self, obs_row: Mapping[str, Any], path: Any = None) -> list[int]:
        out = []
        for p in self.included_phenotypes:
            if p not in obs_row:
                raise InputError(
                    path,
                    f"obs[{p!r}]",
                    "does not exist",
                    "tokenize cells that have every included phenotype",
                )
            token = f"{p}={obs_row[p]}"
            if token not in self.vocab:
                raise InputError(
                    path,
                    f"obs[{p!r}]",
                    f"has the value {obs_row[p]!r}, missing from the phenotype vocabulary",
                    "add it to the vocab_path JSON (or build the tokenizer with from_adata)",
                )
            out.append(self.vocab[token])
        return out

    def encode_row(
        self, values: np.ndarray, columns: np.ndarray, var_names: Any, phenotype_ids: Sequence[int]
    ) -> dict[str, np.ndarray]:
        """Tokenize one cell given its non-zero ``values`` at ``columns`` of a file with ``var_names``."""
        gene = self._columns(var_names)[columns]
        values = np.asarray(values, dtype=np.float64)
        keep = (gene >= 0) & (values >= self.bin_edges[0])
        gene, values = gene[keep], values[keep]
        room = self.max_length - 2 - len(phenotype_ids)
        if gene.size > room:  # keep the most expressed, ties by gene position
            top = np.lexsort((gene, -values))[:room]
            gene, values = gene[top], values[top]
        order = np.argsort(gene, kind="stable")
        gene, values = gene[order], values[order]
        bins = np.searchsorted(self.bin_edges, values, side="right")  # 1..K
        first_bin = len(SPECIAL_TOKENS) - 1
        input_ids = np.concatenate(
            ([self.cls_id], phenotype_ids, first_bin + bins, [self.eos_id])
        ).astype(np.int64)
        types = np.concatenate(
            ([0], np.arange(1, 1 + len(phenotype_ids)), self.gene_token_type_offset + gene, [0])
        ).astype(np.int64)
        return {"input_ids": input_ids, "token_type_ids": types}

    def __call__(self, cell: Any) -> dict[str, np.ndarray]:
        """Tokenize one cell: an AnnData of one row (``adata[i]``)."""
        if cell.n_obs != 1:
            raise ValueError(
                f"GeneTokenizer tokenizes one cell at a time (adata[i]); got {cell.n_obs} cells"
            )
        row = cell.X
        if sp.issparse(row):
            row = sp.csr_matrix(row)
            values, columns = row.data, row.indices
        else:
            dense = np.asarray(row).reshape(-1)
            columns = np.flatnonzero(dense)
            values = dense[columns]
        obs = cell.obs.iloc[0]
        pheno = self.phenotype_ids(
            {p: obs[p] for p in self.included_phenotypes if p in cell.obs},
            getattr(cell, "filename", None),
        )
        var_names = cell.var_names
        return self.encode_row(values, columns, var_names, pheno)
