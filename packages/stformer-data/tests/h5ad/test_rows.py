from __future__ import annotations

import h5py
import numpy as np
import pytest
import scipy.sparse as sp

import stformer_data.h5ad.rows as io_mod
from stformer_data import H5adReader, iter_row_chunks, open_h5ad, read_rows, simulate_counts


@pytest.fixture
def stored(tmp_path):
    a = simulate_counts(n_cells=230, n_genes=70, program_size=5, seed=4)
    a.layers["counts"] = a.X.copy()
    a.layers["dense"] = a.X.toarray()
    a.X = sp.csc_matrix(a.X)
    a.write_h5ad(tmp_path / "x.h5ad")
    return tmp_path / "x.h5ad", sp.csr_matrix(a.layers["counts"])


def test_lazy_reader_keeps_layers_on_disk(stored):
    path, _ = stored
    r = open_h5ad(path, lazy=True)
    try:
        assert isinstance(r, H5adReader) and r.shape == (230, 70)
        assert "counts" in r.layers and "missing" not in r.layers
        assert not isinstance(r.layers["counts"], sp.spmatrix)  # a backed dataset, not a matrix
        assert isinstance(r.layers["dense"], h5py.Dataset)
        assert r.obsm["spatial"].shape == (230, 2)
    finally:
        r.file.close()


@pytest.mark.parametrize("source", ["X", "counts", "dense"])
def test_row_chunks_and_rows_are_exact_for_csc_csr_and_dense(stored, source, monkeypatch):
    path, expected = stored
    monkeypatch.setattr(io_mod, "_CSC_BUDGET", 300)  # force many bounded column blocks and passes
    r = open_h5ad(path, lazy=True)
    try:
        layer = None if source == "X" else source
        chunks = list(iter_row_chunks(r, 17, layer=layer, start=5, stop=201))
        assert [c[0] for c in chunks][:3] == [5, 22, 39] and chunks[-1][1] == 201
        got = sp.vstack([c[2] for c in chunks])
        assert (got != expected[5:201]).nnz == 0 and got.dtype == np.float32
        rows = np.array([0, 3, 99, 229])
        assert (read_rows(r, rows, layer=layer) != expected[rows]).nnz == 0
    finally:
        r.file.close()
