"""A small, documented simulator of raw-count single-cell / spatial data (the embedded default data).

Model
-----
* Genes get log-normal baseline abundances (a few highly expressed genes, a long tail).
* Each cell type has a gene program: ``program_size`` genes up-regulated by a natural-log fold change
  drawn from ``U(*up_log_fold)`` and as many down-regulated by one drawn from ``U(*down_log_fold)``.
  The defaults make types that PCA of all genes separates almost perfectly but that a short
  sequence of top-ranked genes does not reveal trivially.
* Library sizes are log-normal around ``mean_library_size``.
* Counts are negative-binomial (gamma-Poisson) with mean ``library_size x gene proportion`` and
  inverse dispersion ``theta``.
* Space: cells lie in ``n_sections`` tissue sections; each section has ``n_niches`` niches whose
  centres are spread on a circle, each with its own cell-type composition (Dirichlet, concentrated on
  a couple of types); cells are scattered around their niche centre. Cells of one niche therefore
  share neighbours of related types, which is what spatial ``neighborhood`` tokenization exploits.

Gene ids look like Ensembl ids (``ENSG9000000XXXX``; the leading 9 keeps them clear of real ids),
with symbols ``SIMGENE<i>`` in ``var["gene_symbol"]``. Everything is deterministic given ``seed``.
"""

from __future__ import annotations

from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp


@dataclass(frozen=True, kw_only=True)
class SimulationConfig:
    """Parameters of :func:`simulate_counts`; see the module docstring for the model."""

    n_cells: int = 2000
    n_genes: int = 1000
    n_cell_types: int = 8
    program_size: int = 30
    up_log_fold: tuple[float, float] = (0.5, 1.5)
    down_log_fold: tuple[float, float] = (0.5, 1.5)
    mean_library_size: float = 3000.0
    library_size_sd: float = 0.4
    theta: float = 2.0
    n_sections: int = 2
    n_niches: int = 4
    niche_radius: float = 60.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_cells", "n_genes", "n_cell_types", "n_sections", "n_niches"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if 2 * self.program_size > self.n_genes:
            raise ValueError(
                f"program_size must be <= n_genes / 2 = {self.n_genes // 2}, got {self.program_size}"
            )
        for name in ("up_log_fold", "down_log_fold"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ValueError(
                    f"{name} must be (low, high) with 0 <= low <= high, got {(low, high)}"
                )
        if self.theta <= 0 or self.mean_library_size <= 0:
            raise ValueError("theta and mean_library_size must be > 0")


def simulate_counts(config: SimulationConfig | None = None, **overrides) -> ad.AnnData:
    """Simulate raw counts with cell types, library-size variation and spatial niches.

    Returns an AnnData with CSR float32 integer counts in ``X``; ``obs`` columns ``cell_type``,
    ``section``, ``niche`` and ``n_counts`` (the true library size of each cell); ``obsm["spatial"]``;
    ``var`` with ``gene_symbol`` and ``ensembl_id``.

    >>> adata = simulate_counts(n_cells=50, n_genes=100, program_size=10, seed=1)
    >>> adata.shape, sorted(adata.obs.columns)
    ((50, 100), ['cell_type', 'n_counts', 'niche', 'section'])
    """
    if config is None:
        config = SimulationConfig(**overrides)
    elif overrides:
        raise TypeError("pass either a SimulationConfig or keyword overrides, not both")
    c = config
    rng = np.random.default_rng(c.seed)

    base = rng.lognormal(mean=0.0, sigma=1.5, size=c.n_genes)
    log_fc = np.zeros((c.n_cell_types, c.n_genes))
    for t in range(c.n_cell_types):
        genes = rng.choice(c.n_genes, size=2 * c.program_size, replace=False)
        up, down = genes[: c.program_size], genes[c.program_size :]
        log_fc[t, up] = rng.uniform(*c.up_log_fold, size=up.size)
        log_fc[t, down] = -rng.uniform(*c.down_log_fold, size=down.size)
    props = base[None, :] * np.exp(log_fc)
    props /= props.sum(axis=1, keepdims=True)

    n_niche_total = c.n_sections * c.n_niches
    composition = rng.dirichlet(np.full(c.n_cell_types, 0.3), size=n_niche_total)
    niche = rng.integers(0, n_niche_total, size=c.n_cells)
    cell_type = np.array([rng.choice(c.n_cell_types, p=composition[k]) for k in niche])
    section = niche // c.n_niches
    angle = 2 * np.pi * (niche % c.n_niches) / c.n_niches
    centres = np.stack([np.cos(angle), np.sin(angle)], axis=1) * (4 * c.niche_radius)
    coords = centres + rng.normal(scale=c.niche_radius, size=(c.n_cells, 2))

    library = rng.lognormal(
        mean=np.log(c.mean_library_size), sigma=c.library_size_sd, size=c.n_cells
    )
    mu = library[:, None] * props[cell_type]
    lam = rng.gamma(shape=c.theta, scale=mu / c.theta)
    counts = rng.poisson(lam).astype(np.float32)
    X = sp.csr_matrix(counts)

    genes = [f"ENSG9{i:010d}" for i in range(c.n_genes)]
    var = pd.DataFrame(
        {"gene_symbol": [f"SIMGENE{i}" for i in range(c.n_genes)], "ensembl_id": genes},
        index=pd.Index(genes, name="gene_id"),
    )
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical([f"type_{t}" for t in cell_type]),
            "section": pd.Categorical([f"section_{s}" for s in section]),
            "niche": pd.Categorical([f"niche_{k}" for k in niche]),
            "n_counts": np.asarray(X.sum(axis=1)).ravel().astype(np.float64),
        },
        index=pd.Index([f"cell_{i}" for i in range(c.n_cells)], name="cell_id"),
    )
    adata = ad.AnnData(X=X, obs=obs, var=var)
    adata.obsm["spatial"] = coords.astype(np.float32)
    adata.uns["simulation"] = {
        k: list(v) if isinstance(v, tuple) else v for k, v in c.__dict__.items()
    }
    return adata
