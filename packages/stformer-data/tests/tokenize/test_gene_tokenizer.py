"""GeneTokenizer (Transformeromics) on real cells: specials, bins, token types, dropped genes."""

import json

import anndata
import numpy as np
import pytest

from stformer_data import GeneTokenizer, InputError

PBMC = "sc/pbmc68k_reduced_700_counts.h5ad"


@pytest.fixture(scope="module")
def pbmc(shared_data):
    return anndata.io.read_h5ad(shared_data / PBMC)


def test_layout_of_a_cell(pbmc):
    tok = GeneTokenizer.from_adata(pbmc, bin_edges=[0.1, 3.0], included_phenotypes=["louvain"])
    out = tok(pbmc[5])
    tokens = tok.convert_ids_to_tokens(out["input_ids"].tolist())
    assert (
        tokens[:2] == ["[CLS]", f"louvain={pbmc.obs['louvain'].iloc[5]}"] and tokens[-1] == "[EOS]"
    )
    assert out["token_type_ids"][:2].tolist() == [0, 1] and out["token_type_ids"][-1] == 0
    row = pbmc.X[5].toarray().ravel()
    genes = out["token_type_ids"][2:-1] - tok.gene_token_type_offset
    assert genes.tolist() == np.flatnonzero(row >= 0.1).tolist()
    assert all(t in ("bin_1", "bin_2") for t in tokens[2:-1])
    assert len(tok) == 4 + 2 + pbmc.obs["louvain"].nunique()


def test_dense_and_sparse_rows_agree(pbmc):
    tok = GeneTokenizer(bin_edges=[0.5])
    dense = pbmc[:3].copy()
    dense.X = dense.X.toarray()
    for i in range(3):
        a, b = tok(pbmc[i]), tok(dense[i])
        assert (a["input_ids"] == b["input_ids"]).all() and (
            a["token_type_ids"] == b["token_type_ids"]
        ).all()


def test_vocab_path_and_save_pretrained(pbmc, tmp_path):
    path = tmp_path / "phenotypic_tokens_map.json"
    path.write_text(json.dumps({"phase": sorted(pbmc.obs["phase"].astype(str).unique())}))
    tok = GeneTokenizer(bin_edges=[0.1], vocab_path=path, included_phenotypes=["phase"])
    out = tok(pbmc[0])
    tok.save_pretrained(tmp_path / "m")
    again = GeneTokenizer.from_pretrained(tmp_path / "m")
    assert (again(pbmc[0])["input_ids"] == out["input_ids"]).all()


def test_errors(pbmc):
    with pytest.raises(ValueError, match="increasing"):
        GeneTokenizer(bin_edges=[1.0, 0.5])
    with pytest.raises(InputError, match="phenotype values"):
        GeneTokenizer(included_phenotypes=["louvain"])
    tok = GeneTokenizer(included_phenotypes=["louvain"], phenotype_values={"louvain": ["0"]})
    with pytest.raises(InputError, match="missing from the phenotype vocabulary"):
        tok(pbmc[np.flatnonzero(pbmc.obs["louvain"].astype(str) != "0")[0]])
    with pytest.raises(ValueError, match="one cell"):
        tok(pbmc[:2])
