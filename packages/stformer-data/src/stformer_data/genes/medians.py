"""Per-gene medians of non-zero normalised expression (counts / n_counts x target_sum)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_all_start_methods, get_context
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from datasketches import kll_doubles_sketch

from stformer_data._errors import InputError
from stformer_data.atomic import atomic_write_text
from stformer_data.genes.mapping import GeneMapping, map_genes, resolve_gene_ids
from stformer_data.h5ad.checks import check_counts
from stformer_data.h5ad.open import open_h5ad
from stformer_data.h5ad.rows import iter_row_chunks, library_sizes


def compute_medians_exact(
    files: Sequence[str | PathLike[str]],
    *,
    gene_id_key: str | None = None,
    name_to_id: Mapping[str, str] | None = None,
    n_counts_key: str | None = "n_counts",
    target_sum: float = 10_000.0,
    layer: str | None = None,
    chunk_size: int = 2048,
    allow_non_integer: bool = False,
) -> dict[str, float]:
    """Exact per-gene median of the non-zero values of ``counts / n_counts * target_sum``.

    Holds every non-zero value in memory (8 bytes each plus an index): meant for small data and as
    the reference for streaming estimates. Genes that are never expressed get no entry.
    """
    gene_parts: list[np.ndarray] = []
    value_parts: list[np.ndarray] = []
    gene_names: dict[str, int] = {}
    for f in files:
        adata = open_h5ad(f, lazy=True)
        try:
            ids = resolve_gene_ids(
                adata.var, gene_id_key=gene_id_key, name_to_id=name_to_id, path=f
            )
            col_to_gene = np.array(
                [gene_names.setdefault(g, len(gene_names)) for g in ids], dtype=np.int64
            )
            dedup = _dedup_mapping(ids, f)
            for start, stop, block in iter_row_chunks(adata, chunk_size, layer=layer, path=f):
                check_counts(block, path=f, rows=(start, stop), allow_non_integer=allow_non_integer)
                n_counts = library_sizes(
                    adata, block, start, stop, n_counts_key=n_counts_key, path=f
                )
                if dedup is not None:
                    block = dedup.collapse(block)
                    block.eliminate_zeros()
                rows = np.repeat(np.arange(block.shape[0]), np.diff(block.indptr))
                with np.errstate(divide="ignore", invalid="ignore"):
                    vals = block.data.astype(np.float64) / n_counts[rows] * target_sum
                keep = (block.data > 0) & np.isfinite(vals)
                gene_parts.append(col_to_gene[block.indices[keep]])
                value_parts.append(vals[keep])
        finally:
            if adata.isbacked:
                adata.file.close()
    if not gene_parts:
        return {}
    genes = np.concatenate(gene_parts)
    values = np.concatenate(value_parts)
    order = np.lexsort((values, genes))
    genes, values = genes[order], values[order]
    uniq, starts, counts = np.unique(genes, return_index=True, return_counts=True)
    lo = values[starts + (counts - 1) // 2]
    hi = values[starts + counts // 2]
    med = (lo + hi) / 2
    names = np.empty(len(gene_names), dtype=object)
    for g, i in gene_names.items():
        names[i] = g
    return {str(names[g]): float(m) for g, m in zip(uniq, med, strict=True)}


class MedianSketch:
    """Streaming per-gene quantile sketches of non-zero normalised expression; mergeable.

    One Apache DataSketches KLL sketch (``kll_doubles_sketch``) per gene. Memory is bounded by the
    number of genes times the sketch size (a few KB each at the default ``k=200``), whatever the
    number of cells; sketches of different files or processes merge exactly as if built in one pass.

    Error: the value returned as a gene's median has a true **normalised rank** within
    ``rank_error`` of 0.5 (KLL single-query bound, 99% confidence; 1.33% at ``k=200``). Genes with
    fewer than about ``k`` values are held exactly; the median reported is always the lower middle
    retained value (the smallest value whose inclusive rank reaches 0.5).

    >>> import numpy as np, scipy.sparse as sp
    >>> s = MedianSketch(k=200)
    >>> s.update_block(sp.csr_matrix([[1., 0.], [3., 2.]]), np.array([1., 5.]), np.array(["a", "b"]), 10.0)
    >>> s.medians()
    {'a': 6.0, 'b': 4.0}
    """

    def __init__(self, k: int = 200):
        if not 8 <= k <= 65535:
            raise ValueError(f"k must be in [8, 65535], got {k}")
        self.k = k
        self._sketches: dict[str, Any] = {}

    @property
    def rank_error(self) -> float:
        return float(kll_doubles_sketch(self.k).normalized_rank_error(False))

    def __len__(self) -> int:
        return len(self._sketches)

    def update_block(
        self,
        block: sp.csr_matrix,
        n_counts: np.ndarray,
        gene_ids: np.ndarray,
        target_sum: float = 10_000.0,
    ) -> None:
        """Add the non-zero values of ``block / n_counts * target_sum`` (columns named by ``gene_ids``)."""
        with np.errstate(divide="ignore"):
            scale = np.where(n_counts > 0, target_sum / np.where(n_counts > 0, n_counts, 1.0), 0.0)
        csc = (sp.diags(scale) @ block.astype(np.float64)).tocsc()
        csc.eliminate_zeros()
        indptr, data = csc.indptr, csc.data
        for j in np.flatnonzero(np.diff(indptr)):
            gene = str(gene_ids[j])
            sketch = self._sketches.get(gene)
            if sketch is None:
                sketch = self._sketches[gene] = kll_doubles_sketch(self.k)
            sketch.update(data[indptr[j] : indptr[j + 1]])

    def merge(self, other: MedianSketch) -> MedianSketch:
        """Fold ``other`` into this sketch (in place) and return ``self``."""
        if other.k != self.k:
            raise ValueError(f"cannot merge sketches with k={other.k} into k={self.k}")
        for gene, sk in other._sketches.items():
            mine = self._sketches.get(gene)
            if mine is None:
                self._sketches[gene] = kll_doubles_sketch.deserialize(sk.serialize())
            else:
                mine.merge(sk)
        return self

    def medians(self) -> dict[str, float]:
        return {
            str(g): float(sk.get_quantile(0.5, inclusive=True))
            for g, sk in self._sketches.items()
            if not sk.is_empty()
        }

    def __getstate__(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "sketches": {g: bytes(sk.serialize()) for g, sk in self._sketches.items()},
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.k = state["k"]
        self._sketches = {
            g: kll_doubles_sketch.deserialize(b) for g, b in state["sketches"].items()
        }


def _sketch_unit(args) -> MedianSketch:
    path, start, stop, opts = args
    sketch = MedianSketch(opts["k"])
    adata = open_h5ad(path, lazy=True)
    try:
        ids = resolve_gene_ids(
            adata.var, gene_id_key=opts["gene_id_key"], name_to_id=opts["name_to_id"], path=path
        )
        mapping = _dedup_mapping(ids, path)
        gene_ids = ids if mapping is None else ids[mapping.representative]
        for a, b, block in iter_row_chunks(
            adata, opts["chunk_size"], layer=opts["layer"], path=path, start=start, stop=stop
        ):
            check_counts(block, path=path, rows=(a, b), allow_non_integer=opts["allow_non_integer"])
            n_counts = library_sizes(
                adata, block, a, b, n_counts_key=opts["n_counts_key"], path=path
            )
            if mapping is not None:
                block = mapping.collapse(block)
            sketch.update_block(block, n_counts, gene_ids, opts["target_sum"])
    finally:
        adata.file.close()
    return sketch


def _dedup_mapping(ids: np.ndarray, path) -> GeneMapping | None:
    """A mapping that sums duplicate gene ids (None when there are none)."""
    if len(set(ids.tolist())) == len(ids):
        return None
    own = {g: i for i, g in enumerate(dict.fromkeys(ids.tolist()))}
    return map_genes(ids, own, frozenset(), path=path)


def compute_medians(
    files: Sequence[str | PathLike[str]],
    *,
    exact: bool = False,
    k: int = 200,
    num_proc: int = 1,
    rows_per_unit: int = 65536,
    gene_id_key: str | None = None,
    name_to_id: Mapping[str, str] | None = None,
    n_counts_key: str | None = "n_counts",
    target_sum: float = 10_000.0,
    layer: str | None = None,
    chunk_size: int = 2048,
    allow_non_integer: bool = False,
) -> dict[str, float]:
    """Per-gene medians of non-zero ``counts / n_counts * target_sum`` over many files, in one pass.

    ``exact=False`` (default): :class:`MedianSketch` (KLL; rank error ``MedianSketch(k).rank_error``),
    memory independent of the number of cells, over ``num_proc`` processes (files x row ranges)
    merged. ``exact=True``: :func:`compute_medians_exact` (holds every non-zero value).
    Duplicate gene ids within a file are summed first, as in tokenization.
    """
    if exact:
        return compute_medians_exact(
            files,
            gene_id_key=gene_id_key,
            name_to_id=name_to_id,
            n_counts_key=n_counts_key,
            target_sum=target_sum,
            layer=layer,
            chunk_size=chunk_size,
            allow_non_integer=allow_non_integer,
        )
    if num_proc <= 0 or rows_per_unit <= 0:
        raise ValueError("num_proc and rows_per_unit must be > 0")
    opts = {
        "k": k,
        "gene_id_key": gene_id_key,
        "name_to_id": name_to_id,
        "n_counts_key": n_counts_key,
        "target_sum": target_sum,
        "layer": layer,
        "chunk_size": chunk_size,
        "allow_non_integer": allow_non_integer,
    }
    units = []
    for f in files:
        adata = open_h5ad(f, lazy=True)
        try:
            n = adata.n_obs
        finally:
            adata.file.close()
        units += [(str(f), a, min(a + rows_per_unit, n), opts) for a in range(0, n, rows_per_unit)]
    total = MedianSketch(k)
    if num_proc == 1 or len(units) <= 1:
        for u in units:
            total.merge(_sketch_unit(u))
    else:
        method = "fork" if "fork" in get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(
            max_workers=min(num_proc, len(units)), mp_context=get_context(method)
        ) as pool:
            for part in pool.map(_sketch_unit, units):
                total.merge(part)
    return total.medians()


def save_medians(medians: Mapping[str, float], path: str | PathLike[str]) -> Path:
    """Write medians as JSON (atomically)."""
    return atomic_write_text(path, json.dumps(dict(medians)))  # C encoder: no indent


def load_medians(path: str | PathLike[str], *, allow_pickle: bool = False) -> dict[str, float]:
    """Load medians from JSON or, with ``allow_pickle=True``, Geneformer's ``gene_median_dictionary.pkl``."""
    path = Path(path)
    if not path.exists():
        raise InputError(
            path, "gene median dictionary", "does not exist", "pass the path of a medians file"
        )
    if path.suffix == ".json":
        return {str(k): float(v) for k, v in json.loads(path.read_text()).items()}
    if path.suffix in (".pkl", ".pickle"):
        if not allow_pickle:
            raise InputError(
                path,
                "gene median dictionary",
                "is a pickle, and loading a pickle runs code from the file",
                "convert it to JSON, or pass allow_pickle=True (--allow-pickle) if you trust it",
            )
        import pickle

        with path.open("rb") as fh:
            return {str(k): float(v) for k, v in pickle.load(fh).items()}
    raise InputError(
        path,
        "gene median dictionary",
        f"has an unknown suffix {path.suffix!r}",
        "use .json or .pkl",
    )
