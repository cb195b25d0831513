import numpy as np
import pytest
import scipy.sparse as sp

from stformer_data import SimulationConfig, simulate_counts


def test_deterministic_by_seed():
    a = simulate_counts(n_cells=80, n_genes=120, program_size=10, seed=3)
    b = simulate_counts(n_cells=80, n_genes=120, program_size=10, seed=3)
    c = simulate_counts(n_cells=80, n_genes=120, program_size=10, seed=4)
    assert (a.X != b.X).nnz == 0
    assert (a.X != c.X).nnz > 0
    np.testing.assert_array_equal(a.obsm["spatial"], b.obsm["spatial"])


def test_counts_are_raw_integers_with_varying_library_sizes():
    adata = simulate_counts(n_cells=300, n_genes=200, program_size=20, seed=0)
    assert sp.isspmatrix_csr(adata.X) and adata.X.dtype == np.float32
    data = adata.X.data
    assert np.all(data >= 0) and np.all(data == np.round(data))
    totals = np.asarray(adata.X.sum(axis=1)).ravel()
    np.testing.assert_allclose(adata.obs["n_counts"].to_numpy(), totals)
    assert totals.std() / totals.mean() > 0.2  # library sizes vary


def test_cell_types_have_distinct_programs():
    adata = simulate_counts(n_cells=600, n_genes=300, n_cell_types=3, program_size=20, seed=1)
    X = adata.X.toarray()
    X = X / X.sum(axis=1, keepdims=True)
    means = np.stack(
        [
            X[(adata.obs["cell_type"] == t).to_numpy()].mean(0)
            for t in adata.obs["cell_type"].cat.categories
        ]
    )
    # the most enriched gene of each type differs between types
    top = [int(np.argmax(m / means.mean(0))) for m in means]
    assert len(set(top)) == len(top)


def test_spatial_niches_are_compact():
    adata = simulate_counts(
        n_cells=400, n_genes=100, program_size=10, n_sections=1, n_niches=4, seed=2
    )
    xy = adata.obsm["spatial"]
    niche = adata.obs["niche"].to_numpy()
    within = np.mean([xy[niche == k].std(0).mean() for k in np.unique(niche)])
    assert within < xy.std(0).mean()
    assert adata.var_names[0].startswith("ENSG9") and "gene_symbol" in adata.var


@pytest.mark.parametrize(
    "bad", [dict(n_cells=0), dict(theta=0.0), dict(n_genes=10, program_size=6)]
)
def test_invalid_settings_are_rejected(bad):
    with pytest.raises(ValueError):
        SimulationConfig(**bad)
