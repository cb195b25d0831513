from __future__ import annotations

import pytest

from stformer_data import GeneVocab, compute_medians_exact, simulate_counts


@pytest.fixture
def small_h5ad(tmp_path):
    """A 400-cell simulated file with sections and coordinates, its vocabulary and medians."""
    adata = simulate_counts(n_cells=400, n_genes=120, program_size=10, seed=7)
    path = tmp_path / "small.h5ad"
    adata.write_h5ad(path)
    vocab = GeneVocab.from_genes(adata.var_names)
    return path, adata, vocab, compute_medians_exact([path])
