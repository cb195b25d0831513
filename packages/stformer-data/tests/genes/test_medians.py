from __future__ import annotations

import pickle

import numpy as np
import pytest
import scipy.sparse as sp

from stformer_data import (
    MedianSketch,
    compute_medians,
    iter_row_chunks,
    library_sizes,
    open_h5ad,
    resolve_gene_ids,
    simulate_counts,
)


def _values_by_gene(files) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {}
    for f in files:
        adata = open_h5ad(f)
        try:
            ids = resolve_gene_ids(adata.var, path=f)
            for start, stop, block in iter_row_chunks(adata, 4096, path=f):
                n = library_sizes(adata, block, start, stop, n_counts_key="n_counts", path=f)
                with np.errstate(divide="ignore"):
                    scale = np.where(n > 0, 10_000.0 / n, 0.0)
                csc = (sp.diags(scale) @ block.astype(np.float64)).tocsc()
                for j in np.flatnonzero(np.diff(csc.indptr)):
                    parts.setdefault(str(ids[j]), []).append(
                        csc.data[csc.indptr[j] : csc.indptr[j + 1]]
                    )
        finally:
            adata.file.close()
    return {g: np.sort(np.concatenate(p)) for g, p in parts.items()}


@pytest.mark.shared_data
@pytest.mark.parametrize("accuracy", [0.005, 0.05])
def test_sketch_medians_within_stated_relative_accuracy_on_real_files(shared_data, accuracy):
    files = sorted((shared_data / "sc").glob("*.h5ad"))
    files = [
        f for f in files if "celltypist" not in f.name
    ]  # (duplicate symbols; covered elsewhere)
    values = _values_by_gene(files)
    est = compute_medians(files, relative_accuracy=accuracy)
    assert set(est) == set(values)
    for g, v in values.items():
        lower_middle = v[(v.size + 1) // 2 - 1]  # smallest value whose inclusive rank reaches 0.5
        assert abs(est[g] - lower_middle) <= accuracy * lower_middle * (1 + 1e-9), g


@pytest.mark.shared_data
def test_exact_mode_is_the_true_median(shared_data):
    f = shared_data / "sc" / "pbmc68k_reduced_700_counts.h5ad"
    values = _values_by_gene([f])
    exact = compute_medians([f], exact=True)
    for g in list(values)[:200]:
        assert exact[g] == pytest.approx(float(np.median(values[g])))


def test_sketch_is_deterministic_whatever_the_processes_chunks_and_merge_order(tmp_path):
    a = simulate_counts(n_cells=600, n_genes=80, program_size=10, seed=3)
    a.write_h5ad(tmp_path / "a.h5ad")
    one = compute_medians([tmp_path / "a.h5ad"])
    assert one == compute_medians([tmp_path / "a.h5ad"])
    many = compute_medians([tmp_path / "a.h5ad"], num_proc=2, rows_per_unit=150)
    small_chunks = compute_medians([tmp_path / "a.h5ad"], chunk_size=7, rows_per_unit=61)
    assert list(one.items()) == list(many.items()) == list(small_chunks.items())  # bit for bit
    rng = np.random.default_rng(0)
    blocks = [sp.random(40, 5, density=0.5, random_state=rng, format="csr") * 50 for _ in range(4)]
    n = [rng.uniform(100, 1000, 40) for _ in range(4)]
    genes = np.array(list("vwxyz"))
    parts = []
    for blk, nc in zip(blocks, n, strict=True):
        part = MedianSketch()
        part.update_block(blk, nc, genes)
        parts.append(part)
    forward, backward = MedianSketch(), MedianSketch()
    for p in parts:
        forward.merge(p)
    for p in reversed(parts):
        backward.merge(p)
    assert forward.medians() == backward.medians()
    s = MedianSketch(0.01)
    s.update_block(sp.csr_matrix(np.array([[1.0, 2.0]])), np.array([3.0]), np.array(["x", "y"]))
    assert pickle.loads(pickle.dumps(s)).medians() == s.medians()
    with pytest.raises(ValueError, match="relative_accuracy"):
        s.merge(MedianSketch(0.02))
