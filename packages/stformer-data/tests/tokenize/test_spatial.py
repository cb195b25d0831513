from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from stformer_data import (
    GeneVocab,
    NeighborhoodConfig,
    NeighborhoodTokenizer,
    RankValueTokenizer,
    TokenizeConfig,
    build_neighbor_graph,
    compute_medians_exact,
    map_genes,
    tokenize_files,
)


def _grid_adata(with_obsp: bool = False) -> ad.AnnData:
    # 3 spots on a line in section A, 1 isolated spot in section B; genes a, b, c
    X = sp.csr_matrix(np.array([[10, 0, 0], [0, 1, 0], [0, 0, 100], [5, 5, 0]], dtype=np.float32))
    obs = pd.DataFrame({"section": ["A", "A", "A", "B"]}, index=[f"s{i}" for i in range(4)])
    a = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=["a", "b", "c"]))
    a.obsm["spatial"] = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [0.0, 0.0]])
    if with_obsp:
        a.obsp["spatial_connectivities"] = sp.csr_matrix(
            np.array([[0, 1, 0, 0], [1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]], dtype=np.float32)
        )
    return a


def test_graph_per_section_never_crosses_sections_and_knn_fallback():
    g = build_neighbor_graph(
        _grid_adata(), NeighborhoodConfig(section_key="section", n_neighbors=1)
    )
    dense = g.toarray()
    assert dense[3].sum() == 0 and dense[:, 3].sum() == 0  # B has one spot: no neighbours
    assert dense[0, 1] == 1 and dense[2, 1] == 1  # collinear A -> kNN fallback, k=1
    r = build_neighbor_graph(
        _grid_adata(), NeighborhoodConfig(graph="radius", radius=1.5, section_key="section")
    )
    assert r.toarray()[1].tolist() == [1, 0, 1, 0]
    w = build_neighbor_graph(
        _grid_adata(),
        NeighborhoodConfig(
            graph="radius",
            radius=2.5,
            section_key="section",
            distance_weighting="inverse",
            bandwidth=1.0,
        ),
    )
    assert w[0, 1] == pytest.approx(0.5) and w[0, 2] == pytest.approx(1 / 3)


def test_neighbours_are_normalised_by_their_own_totals(tmp_path):
    a = _grid_adata(with_obsp=True)
    a.write_h5ad(tmp_path / "g.h5ad")
    vocab = GeneVocab.from_genes(["a", "b", "c"])
    medians = {"a": 1.0, "b": 1.0, "c": 1.0}
    corpus = tokenize_files(
        [tmp_path / "g.h5ad"],
        tmp_path / "c",
        vocab=vocab,
        medians=medians,
        config=TokenizeConfig(mode="neighborhood"),
        progress=False,
    )
    rows = corpus.dataset
    # spot 1 (b only) has neighbours 0 (a: 10/10) and 2 (c: 100/100): both normalise to 1e4 -> tie -> a, c
    # (normalising by the centre's total, 1, would also tie here; spot 0's neighbour is spot 1 -> b)
    assert rows[1]["input_ids"] == [vocab["b"], vocab["a"], vocab["c"]]
    assert rows[1]["token_type_ids"] == [0, 1, 1]
    assert rows[0]["input_ids"] == [vocab["a"], vocab["b"]]
    assert rows[3]["input_ids"] == [vocab["a"], vocab["b"]] and rows[3]["token_type_ids"] == [0, 0]
    assert corpus.manifest["counts"]["spots_without_neighbours"] == 1
    assert corpus.manifest["max_length"] == 2 * 2048


def test_neighbour_weighting_uses_each_neighbours_library_size():
    # centre 0 has neighbours 1 (gene a: 1 of 1 count) and 2 (gene b: 50 of 100 counts)
    X = sp.csr_matrix(np.array([[1, 0, 0], [1, 0, 0], [0, 50, 50]], dtype=np.float32))
    a = ad.AnnData(X=X, var=pd.DataFrame(index=["a", "b", "c"]))
    a.obsp["spatial_connectivities"] = sp.csr_matrix(
        np.array([[0, 1, 1], [1, 0, 0], [1, 0, 0]], dtype=np.float32)
    )
    vocab = GeneVocab.from_genes(["a", "b", "c"])
    rank = RankValueTokenizer(vocab, {"a": 1.0, "b": 1.0, "c": 1.0})
    tok = NeighborhoodTokenizer(rank)
    mapping = map_genes(np.array(["a", "b", "c"]), vocab, vocab.special_ids)
    graph = build_neighbor_graph(a, NeighborhoodConfig())
    ids, types, off, has = tok.tokenize_block(
        a, graph, np.array([1.0, 1.0, 100.0]), 0, 1, a.X[:1], mapping, rank.column_factors(mapping)
    )
    # own totals: a = 1/1 = 1.0 > b = c = 50/100; by raw counts b and c (50) would outrank a (1)
    assert ids.tolist() == [vocab["a"], vocab["a"], vocab["b"], vocab["c"]]
    assert types.tolist() == [0, 1, 1, 1] and has.tolist() == [True]


@pytest.mark.shared_data
def test_neighbourhood_mode_on_every_real_spatial_file(shared_data, tmp_path):
    for f in sorted((shared_data / "spatial").glob("*.h5ad")):
        adata = ad.io.read_h5ad(f, backed="r")
        ids = adata.var_names
        adata.file.close()
        vocab = GeneVocab.from_genes(ids)
        medians = compute_medians_exact([f])
        section = "slice" if "paste" in f.name else ("batch" if "starmap" in f.name else None)
        out = tmp_path / f.stem
        corpus = tokenize_files(
            [f],
            out,
            vocab=vocab,
            medians=medians,
            progress=False,
            config=TokenizeConfig(
                mode="neighborhood",
                chunk_size=500,
                neighborhood=NeighborhoodConfig(section_key=section),
            ),
        )
        c = corpus.manifest["counts"]
        assert c["cells_written"] + c["cells_skipped"]["empty_after_vocab_filter"] == c["cells_in"]
        row = corpus.dataset[0]
        assert len(row["input_ids"]) == len(row["token_type_ids"]) == row["length"]
        assert set(row["token_type_ids"]) <= {0, 1}
