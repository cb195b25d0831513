"""stFormer's spatial ``neighborhood`` mode: a spot's own tokens followed by its neighbourhood's.

The neighbour graph comes from ``obsp[connectivities_key]`` when the file has it, otherwise it is
built per tissue section (``obs[section_key]``) from ``obsm[spatial_key]`` by Delaunay
triangulation, k nearest neighbours or a radius (scipy). Each neighbour's counts are normalised
by **that neighbour's own** library size (the stFormer reference divides by the centre spot's,
a defect), optionally weighted by distance, and summed or averaged; the result is rank-value
tokenized like a spot. ``token_type_ids`` is 0 on the spot half and 1 on the neighbourhood half.
"""

from __future__ import annotations

from dataclasses import dataclass
from os import PathLike

import anndata as ad
import numpy as np
import scipy.sparse as sp
from scipy.spatial import Delaunay, QhullError, cKDTree

from stformer_data._errors import InputError
from stformer_data._ragged import concat_rows
from stformer_data.genes.mapping import GeneMapping
from stformer_data.h5ad.rows import iter_row_chunks, library_sizes, read_rows
from stformer_data.tokenize.contract import Cells, FileCells, TokenBlock, Tokenizer
from stformer_data.tokenize.rank import RankValueTokenizer, rank_keys, take_heads

_LIBRARY_CHUNK = 2048  # rows summed at once for the library sizes of a file without obs totals

_GRAPHS = ("auto", "obsp", "delaunay", "knn", "radius")
_AGGREGATES = ("sum", "mean")
_WEIGHTINGS = ("none", "inverse", "gaussian")


@dataclass(frozen=True, kw_only=True)
class NeighborhoodConfig:
    """How neighbourhoods are defined and aggregated.

    Parameters
    ----------
    graph
        ``"auto"`` (``obsp[connectivities_key]`` if present, else Delaunay), ``"obsp"``,
        ``"delaunay"``, ``"knn"`` or ``"radius"``. Delaunay falls back to kNN for a section with
        fewer than 3 points or all points on a line.
    section_key
        ``obs`` column separating tissue sections (slides, libraries); graphs never cross sections.
        ``None``: the whole file is one section.
    n_neighbors, radius
        For ``"knn"`` (and the Delaunay fallback) and ``"radius"``.
    aggregate
        ``"sum"`` or ``"mean"`` (divided by the total weight) of the neighbours' normalised counts.
    distance_weighting
        ``"none"``; ``"inverse"``: ``1 / (1 + d / bandwidth)``; ``"gaussian"``:
        ``exp(-(d / bandwidth)^2 / 2)``. ``bandwidth`` defaults to the median edge length of the file.
    """

    graph: str = "auto"
    connectivities_key: str = "spatial_connectivities"
    spatial_key: str = "spatial"
    section_key: str | None = None
    n_neighbors: int = 6
    radius: float | None = None
    aggregate: str = "sum"
    distance_weighting: str = "none"
    bandwidth: float | None = None

    def __post_init__(self) -> None:
        for name, allowed in (
            ("graph", _GRAPHS),
            ("aggregate", _AGGREGATES),
            ("distance_weighting", _WEIGHTINGS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.n_neighbors < 1:
            raise ValueError(f"n_neighbors must be >= 1, got {self.n_neighbors}")
        if self.graph == "radius" and not (self.radius is not None and self.radius > 0):
            raise ValueError(f"radius must be > 0 for graph='radius', got {self.radius}")
        if self.bandwidth is not None and not self.bandwidth > 0:
            raise ValueError(f"bandwidth must be > 0, got {self.bandwidth}")


def _coordinates(
    adata: ad.AnnData, config: NeighborhoodConfig, path, *, required: bool
) -> np.ndarray | None:
    if config.spatial_key not in adata.obsm:
        if not required:
            return None
        raise InputError(
            path,
            f"obsm[{config.spatial_key!r}]",
            "does not exist, and neighbourhood mode needs "
            "spot coordinates (or obsp[...] connectivities)",
            "add the coordinates, name their key with --spatial-key, or use --mode spot",
        )
    field = f"obsm[{config.spatial_key!r}]"
    try:
        coords = np.asarray(adata.obsm[config.spatial_key], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(path, field, f"is not numeric ({exc})", "fix the coordinates") from exc
    if coords.ndim != 2 or coords.shape[1] < 2:
        raise InputError(
            path,
            field,
            f"has shape {coords.shape}, not (n_obs, 2+)",
            "store one row of x, y per spot, or name the right key with --spatial-key",
        )
    coords = coords[:, :2]
    bad = ~np.all(np.isfinite(coords), axis=1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise InputError(
            path,
            field,
            f"has NaN or infinite coordinates for {int(bad.sum())} spots (first: "
            f"{adata.obs_names[first]!r}, row {first})",
            "drop or fix those spots, or use --mode spot",
        )
    return coords


def _check_spread(pts: np.ndarray, path, config: NeighborhoodConfig, section) -> None:
    """Refuse a section whose spots all lie at one point (no neighbourhood means anything)."""
    if pts.shape[0] >= 2 and not np.ptp(pts, axis=0).any():
        where = "" if section is None else f" of section {section!r} (obs[{config.section_key!r}])"
        raise InputError(
            path,
            f"obsm[{config.spatial_key!r}]",
            f"puts all {pts.shape[0]} spots{where} at one point {tuple(pts[0].tolist())}, so no "
            "neighbourhood can be built",
            "store the real spot coordinates (name their key with --spatial-key), or use --mode spot",
        )


def _section_edges(pts: np.ndarray, config: NeighborhoodConfig) -> tuple[np.ndarray, np.ndarray]:
    """Directed edges (i, j), i != j, within one section (local indices)."""
    n = pts.shape[0]
    if n < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    method = "delaunay" if config.graph in ("auto", "delaunay") else config.graph
    if method == "delaunay":
        try:
            if n < 3:
                raise QhullError("fewer than 3 points")
            indptr, indices = Delaunay(pts).vertex_neighbor_vertices
            src = np.repeat(np.arange(n), np.diff(indptr))
            return src, indices.astype(np.int64)
        except QhullError:
            method = "knn"
    tree = cKDTree(pts)
    if method == "knn":
        k = min(config.n_neighbors, n - 1)
        _, idx = tree.query(pts, k=k + 1)
        idx = idx.reshape(n, k + 1)
        src = np.repeat(np.arange(n), k + 1)
        dst = idx.ravel()
    else:
        pairs = tree.query_pairs(config.radius, output_type="ndarray")
        src = np.concatenate([pairs[:, 0], pairs[:, 1]])
        dst = np.concatenate([pairs[:, 1], pairs[:, 0]])
    keep = src != dst
    return src[keep].astype(np.int64), dst[keep].astype(np.int64)


def build_neighbor_graph(
    adata: ad.AnnData, config: NeighborhoodConfig, path: str | PathLike[str] | None = None
) -> sp.csr_matrix:
    """The weighted ``(n_obs, n_obs)`` neighbour graph of a file (no self loops)."""
    n = adata.n_obs
    use_obsp = config.graph == "obsp" or (
        config.graph == "auto" and config.connectivities_key in adata.obsp
    )
    if use_obsp:
        if config.connectivities_key not in adata.obsp:
            raise InputError(
                path,
                f"obsp[{config.connectivities_key!r}]",
                "does not exist",
                "compute it (e.g. squidpy.gr.spatial_neighbors) or choose --graph delaunay|knn|radius",
            )
        graph = sp.coo_matrix(adata.obsp[config.connectivities_key])
        keep = (graph.row != graph.col) & (graph.data != 0)
        src, dst = graph.row[keep].astype(np.int64), graph.col[keep].astype(np.int64)
        coords = _coordinates(adata, config, path, required=config.distance_weighting != "none")
    else:
        coords = _coordinates(adata, config, path, required=True)
        if config.section_key is None:
            sections = np.zeros(n, dtype=np.int64)
        elif config.section_key not in adata.obs.columns:
            raise InputError(
                path,
                f"obs[{config.section_key!r}]",
                "does not exist",
                f"choose a section column among {list(adata.obs.columns)} or omit --section-key",
            )
        else:
            labels, sections = np.unique(
                adata.obs[config.section_key].astype(str).to_numpy(), return_inverse=True
            )
        parts_src, parts_dst = [], []
        for s in np.unique(sections):
            members = np.flatnonzero(sections == s)
            _check_spread(
                coords[members], path, config, None if config.section_key is None else labels[s]
            )
            a, b = _section_edges(coords[members], config)
            parts_src.append(members[a])
            parts_dst.append(members[b])
        src = np.concatenate(parts_src) if parts_src else np.zeros(0, np.int64)
        dst = np.concatenate(parts_dst) if parts_dst else np.zeros(0, np.int64)
    weights = np.ones(src.size, dtype=np.float64)
    if config.distance_weighting != "none" and src.size:
        dist = np.linalg.norm(coords[src] - coords[dst], axis=1)
        bw = config.bandwidth
        if bw is None:
            bw = float(np.median(dist[dist > 0])) if np.any(dist > 0) else 1.0
        if config.distance_weighting == "inverse":
            weights = 1.0 / (1.0 + dist / bw)
        else:
            weights = np.exp(-0.5 * (dist / bw) ** 2)
    graph = sp.csr_matrix((weights, (src, dst)), shape=(n, n))
    graph.sum_duplicates()
    return graph


class NeighborhoodTokenizer(Tokenizer):
    """Spot tokens + neighbourhood tokens, with segment ids, for a chunk of spots.

    The maximum length is ``2 * model_input_size``: the spot half as :class:`RankValueTokenizer`
    writes it (special tokens included), then up to ``model_input_size`` neighbourhood genes.

    >>> from stformer_data import GeneVocab, RankValueTokenizer
    >>> NeighborhoodTokenizer(RankValueTokenizer(GeneVocab.from_genes(["a"]), {"a": 1.0})).max_length
    4096
    """

    fields = ("input_ids", "token_type_ids")
    needs_neighbours = True

    def __init__(self, rank: RankValueTokenizer, config: NeighborhoodConfig | None = None):
        self.rank = rank
        self.config = config or NeighborhoodConfig()
        self.vocab = self.gene_vocab = rank.vocab

    @property
    def max_length(self) -> int:
        return 2 * self.rank.config.model_input_size

    @property
    def n_counts_key(self) -> str | None:
        return self.rank.config.n_counts_key

    def tokenize(self, cells: Cells) -> TokenBlock:
        """The contract (:class:`~stformer_data.tokenize.contract.Tokenizer`): consecutive rows of
        an open file (``cells.file.adata``); its neighbour graph and library sizes are built once."""
        if cells.select is not None:
            raise ValueError("neighbourhood tokens are made for consecutive rows (select=None)")
        file = cells.file
        graph = file.state(
            self, "graph", lambda: build_neighbor_graph(file.adata, self.config, file.path)
        )
        library = file.state(self, "library", lambda: self._library(file))
        start = cells.first_row
        ids, types, offsets, has = self.tokenize_block(
            file.adata,
            graph,
            library,
            start,
            start + cells.counts.shape[0],
            cells.counts,
            file.mapping,
            self.rank.file_factors(file),
            layer=file.layer,
            path=file.path,
        )
        return TokenBlock.from_offsets({"input_ids": ids, "token_type_ids": types}, offsets, has)

    def _library(self, file: FileCells) -> np.ndarray:
        """Every row's library size: the file's (``obs``), else its row sums."""
        adata = file.adata
        key = self.n_counts_key
        if key is not None and key in adata.obs.columns:
            return library_sizes(
                adata, None, 0, adata.n_obs, n_counts_key=key, path=file.path, layer=file.layer
            )
        parts = [
            np.asarray(b.sum(axis=1), dtype=np.float64).ravel()
            for _, _, b in iter_row_chunks(adata, _LIBRARY_CHUNK, layer=file.layer, path=file.path)
        ]
        return np.concatenate(parts) if parts else np.zeros(0)

    def tokenize_block(
        self,
        adata: ad.AnnData,
        graph: sp.csr_matrix,
        library: np.ndarray,
        start: int,
        stop: int,
        block: sp.csr_matrix,
        mapping: GeneMapping,
        factors: np.ndarray,
        *,
        layer: str | None = None,
        path=None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(input_ids, token_type_ids, offsets, has_neighbours)`` for rows ``start:stop``.

        ``library`` holds every row's library size (neighbours' own totals normalise their counts).
        """
        spot, spot_off = self.rank.tokenize_block_flat(block, None, mapping, factors)
        sub = graph[start:stop]
        nb = np.unique(sub.indices)
        n_rows = stop - start
        if nb.size:
            nb_block = read_rows(adata, nb, layer=layer, path=path)
            with np.errstate(divide="ignore"):
                scale = np.where(library[nb] > 0, self.rank.config.target_sum / library[nb], 0.0)
            normalised = sp.diags(scale) @ nb_block
            local = sp.csr_matrix(
                (sub.data, np.searchsorted(nb, sub.indices), sub.indptr), shape=(n_rows, nb.size)
            )
            agg = sp.csr_matrix(local @ normalised)
            if self.config.aggregate == "mean":
                total = np.asarray(sub.sum(axis=1)).ravel()
                agg = sp.csr_matrix(
                    sp.diags(np.where(total > 0, 1.0 / np.where(total > 0, total, 1), 0.0)) @ agg
                )
        else:
            agg = sp.csr_matrix((n_rows, block.shape[1]), dtype=np.float64)
        agg = mapping.collapse(agg)
        keys, bounds = rank_keys(agg, factors, mapping.column_token)
        hood, hood_off = take_heads(keys, bounds, self.rank.max_genes)
        has_spot = np.diff(spot_off) > 0
        has_hood = np.diff(hood_off) > 0
        # a spot with no tokens of its own is skipped (counted by the writer): drop its neighbourhood too
        hood_lengths = np.where(has_spot, np.diff(hood_off), 0)
        keep_pos = np.repeat(has_spot, np.diff(hood_off))
        hood, hood_off = hood[keep_pos], np.concatenate([[0], np.cumsum(hood_lengths)])
        ids, offsets = concat_rows([(spot, spot_off), (hood, hood_off)])
        types, _ = concat_rows(
            [(np.zeros(spot.size, np.int32), spot_off), (np.ones(hood.size, np.int32), hood_off)]
        )
        return ids, types, offsets, has_hood
