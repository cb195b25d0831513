"""Per-gene medians of non-zero normalised expression (counts / n_counts x target_sum)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path

import numpy as np

from stformer_data._errors import InputError
from stformer_data._io import (
    check_counts,
    iter_row_chunks,
    library_sizes,
    open_h5ad,
    resolve_gene_ids,
)


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
        adata = open_h5ad(f)
        try:
            ids = resolve_gene_ids(adata.var, gene_id_key=gene_id_key, name_to_id=name_to_id, path=f)
            col_to_gene = np.array([gene_names.setdefault(g, len(gene_names)) for g in ids], dtype=np.int64)
            for start, stop, block in iter_row_chunks(adata, chunk_size, layer=layer, path=f):
                check_counts(block, path=f, rows=(start, stop), allow_non_integer=allow_non_integer)
                n_counts = library_sizes(adata, block, start, stop, n_counts_key=n_counts_key, path=f)
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


def save_medians(medians: Mapping[str, float], path: str | PathLike[str]) -> Path:
    """Write medians as JSON (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(dict(medians), indent=0))
    tmp.replace(path)
    return path


def load_medians(path: str | PathLike[str], *, allow_pickle: bool = False) -> dict[str, float]:
    """Load medians from JSON or, with ``allow_pickle=True``, Geneformer's ``gene_median_dictionary.pkl``."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "gene median dictionary", "does not exist", "pass the path of a medians file")
    if path.suffix == ".json":
        return {str(k): float(v) for k, v in json.loads(path.read_text()).items()}
    if path.suffix in (".pkl", ".pickle"):
        if not allow_pickle:
            raise InputError(path, "gene median dictionary", "is a pickle, and loading a pickle runs code from the file",
                             "convert it to JSON, or pass allow_pickle=True (--allow-pickle) if you trust it")
        import pickle

        with path.open("rb") as fh:
            return {str(k): float(v) for k, v in pickle.load(fh).items()}
    raise InputError(path, "gene median dictionary", f"has an unknown suffix {path.suffix!r}", "use .json or .pkl")
