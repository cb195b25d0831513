"""Per-gene medians of non-zero normalised expression (counts / n_counts x target_sum)."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_all_start_methods, get_context
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

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
    """Streaming per-gene medians of non-zero normalised expression: deterministic and mergeable.

    Each gene's values are counted in logarithmic buckets (the DDSketch mapping: bucket ``i`` holds
    the values in ``(gamma**(i-1), gamma**i]``, ``gamma = (1 + a) / (1 - a)`` for the relative
    accuracy ``a``). Bucket counts are integers, so updating and merging are exact and commutative:
    the result depends only on the values, never on how the rows were chunked, how many processes
    built partial sketches or in which order these were merged; the same input gives the same
    medians bit for bit.

    Error: the median returned for a gene is within a relative ``relative_accuracy`` of its lower
    middle value (the smallest value whose inclusive rank reaches 0.5): a bound on the value,
    always, not a probabilistic bound on the rank. Memory is bounded by the number of genes times
    the number of occupied buckets (at most ``log(max/min) / log(gamma)`` per gene, about 230 per
    factor 10 of range at the default 0.005), whatever the number of cells.

    >>> import numpy as np, scipy.sparse as sp
    >>> s = MedianSketch()
    >>> s.update_block(sp.csr_matrix([[1., 0.], [3., 2.]]), np.array([1., 5.]), np.array(["a", "b"]), 10.0)
    >>> {g: round(m, 1) for g, m in s.medians().items()}
    {'a': 6.0, 'b': 4.0}
    """

    _SHIFT = 32  # key = gene << 32 | (bucket + 2**31)
    _OFFSET = 1 << 31
    _COMPACT_AT = 1 << 22  # pending (key, count) pairs folded into the sorted table at once

    def __init__(self, relative_accuracy: float = 0.005):
        if not 1e-4 <= relative_accuracy <= 0.5:
            raise ValueError(f"relative_accuracy must be in [1e-4, 0.5], got {relative_accuracy}")
        self.relative_accuracy = float(relative_accuracy)
        a = self.relative_accuracy
        self._gamma = (1 + a) / (1 - a)
        self._log_gamma = float(np.log(self._gamma))
        self._genes: dict[str, int] = {}
        self._keys = np.zeros(0, np.int64)
        self._counts = np.zeros(0, np.int64)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._n_pending = 0

    def __len__(self) -> int:
        self._compact()
        return int(np.unique(self._keys >> self._SHIFT).size)

    def _gene_index(self, gene_ids: np.ndarray) -> np.ndarray:
        return np.fromiter(
            (self._genes.setdefault(str(g), len(self._genes)) for g in gene_ids),
            dtype=np.int64,
            count=len(gene_ids),
        )

    def _add(self, keys: np.ndarray, counts: np.ndarray) -> None:
        if keys.size:
            self._pending.append((keys, counts))
            self._n_pending += keys.size
            if self._n_pending >= self._COMPACT_AT:
                self._compact()

    def _compact(self) -> None:
        if not self._pending:
            return
        keys = np.concatenate([self._keys] + [k for k, _ in self._pending])
        counts = np.concatenate([self._counts] + [c for _, c in self._pending])
        self._pending, self._n_pending = [], 0
        order = np.argsort(keys, kind="stable")
        keys, counts = keys[order], counts[order]
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        self._keys = keys[starts]
        self._counts = np.add.reduceat(counts, starts) if starts.size else counts[:0]

    def update_block(
        self,
        block: sp.csr_matrix,
        n_counts: np.ndarray,
        gene_ids: np.ndarray,
        target_sum: float = 10_000.0,
    ) -> None:
        """Add the non-zero values of ``block / n_counts * target_sum`` (columns named by ``gene_ids``)."""
        block = sp.csr_matrix(block)
        n_counts = np.asarray(n_counts, dtype=np.float64)
        with np.errstate(divide="ignore"):
            scale = np.where(n_counts > 0, target_sum / np.where(n_counts > 0, n_counts, 1.0), 0.0)
        rows = np.repeat(np.arange(block.shape[0]), np.diff(block.indptr))
        values = block.data.astype(np.float64) * scale[rows]
        keep = (values > 0) & np.isfinite(values)
        if not keep.any():
            return
        genes = self._gene_index(np.asarray(gene_ids))[block.indices[keep]]
        bucket = np.ceil(np.log(values[keep]) / self._log_gamma).astype(np.int64)
        keys = (genes << self._SHIFT) | (bucket + self._OFFSET)
        uniq, counts = np.unique(keys, return_counts=True)
        self._add(uniq, counts.astype(np.int64))

    def merge(self, other: MedianSketch) -> MedianSketch:
        """Fold ``other`` into this sketch (in place) and return ``self``."""
        if other.relative_accuracy != self.relative_accuracy:
            raise ValueError(
                f"cannot merge a sketch with relative_accuracy={other.relative_accuracy} into "
                f"one with relative_accuracy={self.relative_accuracy}"
            )
        other._compact()
        if other._keys.size:
            names = sorted(other._genes, key=other._genes.__getitem__)
            remap = self._gene_index(np.asarray(names, dtype=object))
            low = other._keys & ((1 << self._SHIFT) - 1)
            self._add(
                (remap[other._keys >> self._SHIFT] << self._SHIFT) | low, other._counts.copy()
            )
        return self

    def medians(self) -> dict[str, float]:
        """Gene id -> median (sorted by gene id, so equal sketches give equal dictionaries)."""
        self._compact()
        if not self._keys.size:
            return {}
        genes = self._keys >> self._SHIFT
        bucket = (self._keys & ((1 << self._SHIFT) - 1)) - self._OFFSET
        starts = np.flatnonzero(np.r_[True, genes[1:] != genes[:-1]])
        cum = np.cumsum(self._counts)
        before = np.r_[0, cum[starts[1:] - 1]]
        totals = np.add.reduceat(self._counts, starts)
        at = np.searchsorted(cum, before + (totals + 1) // 2, side="left")
        value = 2.0 * np.exp(bucket[at] * self._log_gamma) / (1.0 + self._gamma)
        names = sorted(self._genes, key=self._genes.__getitem__)
        out = {names[g]: float(v) for g, v in zip(genes[starts], value, strict=True)}
        return dict(sorted(out.items()))

    def __getstate__(self) -> dict[str, Any]:
        self._compact()
        return {
            "relative_accuracy": self.relative_accuracy,
            "genes": sorted(self._genes, key=self._genes.__getitem__),
            "keys": self._keys,
            "counts": self._counts,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["relative_accuracy"])
        self._genes = {g: i for i, g in enumerate(state["genes"])}
        self._keys, self._counts = state["keys"], state["counts"]


def _sketch_unit(args) -> MedianSketch:
    path, start, stop, opts = args
    sketch = MedianSketch(opts["relative_accuracy"])
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
    relative_accuracy: float = 0.005,
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

    ``exact=False`` (default): :class:`MedianSketch` (each median within a relative
    ``relative_accuracy`` of the gene's lower middle value), memory independent of the number of
    cells, over ``num_proc`` processes (files x row ranges) merged. The result is deterministic:
    the same files give the same medians bit for bit, whatever ``num_proc`` and ``rows_per_unit``. ``exact=True``: :func:`compute_medians_exact` (holds every non-zero value).
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
        "relative_accuracy": relative_accuracy,
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
    total = MedianSketch(relative_accuracy)
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


def load_medians(
    path: str | PathLike[str],
    *,
    allow_pickle: bool | Literal["plain"] = False,
    drop_invalid: bool = False,
) -> dict[str, float]:
    """Load medians from JSON or, with ``allow_pickle=True``, Geneformer's ``gene_median_dictionary.pkl``.

    A median must be a finite number > 0 (genes are ranked by ``value / median``). Invalid ones
    (0, negative, NaN, infinite, not a number) are an :class:`InputError` naming how many there
    are; ``drop_invalid=True`` drops those genes instead and reports the count on stderr.
    """
    raw = _read_medians(Path(path), allow_pickle)
    good: dict[str, float] = {}
    bad: list[str] = []
    for gene, value in raw.items():
        try:
            v = float(value)
        except (TypeError, ValueError):
            v = float("nan")
        if np.isfinite(v) and v > 0:
            good[str(gene)] = v
        else:
            bad.append(str(gene))
    if bad:
        what = (
            f"{len(bad)} of {len(raw)} genes with a median that is 0, negative or not a finite "
            f"number (e.g. {', '.join(bad[:3])})"
        )
        if not drop_invalid:
            raise InputError(
                path,
                "gene medians",
                f"has {what}; those genes cannot be ranked",
                "correct the medians file, omit --medians to compute them from the inputs, or "
                "pass --drop-invalid-medians to leave those genes out",
            )
        print(f"{path}: dropped {what}", file=sys.stderr)
    return good


def _read_medians(path: Path, allow_pickle: bool | Literal["plain"]) -> Mapping[Any, Any]:
    if not path.exists():
        raise InputError(
            path, "gene median dictionary", "does not exist", "pass the path of a medians file"
        )
    if path.suffix == ".json":
        try:
            payload = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(
                path, "gene median dictionary", f"is not valid JSON ({exc})", "re-export it"
            ) from exc
        if not isinstance(payload, dict):
            raise InputError(
                path,
                "gene median dictionary",
                f"is a JSON {type(payload).__name__}, not an object of gene id -> median",
                'write it as {"ENSG...": median, ...}',
            )
        return payload
    if path.suffix in (".pkl", ".pickle"):
        if not allow_pickle:
            raise InputError(
                path,
                "gene median dictionary",
                "is a pickle, and loading a pickle runs code from the file",
                "convert it to JSON, or pass allow_pickle=True (--allow-pickle) if you trust it",
            )
        if allow_pickle == "plain":
            from stformer_data.genes.plain_pickle import load_plain_pickle

            payload = load_plain_pickle(path, "gene median dictionary")
        else:
            import pickle

            with path.open("rb") as fh:
                payload = pickle.load(fh)
        if not isinstance(payload, Mapping):
            raise InputError(
                path,
                "gene median dictionary",
                f"holds a {type(payload).__name__}, not a dictionary of gene id -> median",
                "pass Geneformer's gene_median_dictionary.pkl",
            )
        return payload
    raise InputError(
        path,
        "gene median dictionary",
        f"has an unknown suffix {path.suffix!r}",
        "use .json or .pkl",
    )
