"""``stformer_train.embed``: scanpy-style embeddings into an AnnData in memory (issue 18.2)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

import stformer_data as sd
import stformer_train as st
from stformer_train import TrainConfig
from stformer_train.downstream import embed_h5ad
from stformer_train.hf import pretrain_mlm


@pytest.fixture(scope="module")
def run(tiny_corpus, tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("api") / "run"
    train = TrainConfig(
        max_steps=2, per_device_train_batch_size=16, logging_steps=1, save_steps=100, seed=0
    )
    pretrain_mlm(tiny_corpus, root, model=tiny, train=train, progress=False)
    return root


@pytest.fixture(scope="module")
def reference(run, tiny_h5ad, tmp_path_factory):
    """Embeddings of the file, through the file-to-file path."""
    out = embed_h5ad(run, tiny_h5ad, tmp_path_factory.mktemp("ref") / "e.h5ad", progress=False)
    return ad.io.read_h5ad(out).obsm["X_stformer"]


def test_embed_writes_obsm_and_uns_in_place_and_returns_none(run, tiny_h5ad, reference):
    adata = ad.io.read_h5ad(tiny_h5ad)
    assert st.embed(adata, run) is None
    np.testing.assert_allclose(adata.obsm["X_stformer"], reference, atol=1e-6)
    params = adata.uns["X_stformer"]["params"]
    assert params["pooling"] == "mean" and params["hidden_layer"] == -1
    assert params["model"] == str(run / "model") and params["n_embedded"] == adata.n_obs
    assert adata.obs["stformer_embedded"].all()


def test_embed_copy_returns_a_new_anndata_and_leaves_the_input_alone(run, tiny_h5ad, reference):
    adata = ad.io.read_h5ad(tiny_h5ad)
    got = st.embed(adata, run, key_added="X_mine", copy=True, pooling="cls")
    assert got is not adata and "X_mine" not in adata.obsm and "X_mine" not in adata.uns
    assert got.obsm["X_mine"].shape == reference.shape
    assert got.uns["X_mine"]["params"]["pooling"] == "cls"
    assert "mine_embedded" in got.obs


def test_embed_a_path_returns_the_anndata(run, tiny_h5ad, reference):
    got = st.embed(tiny_h5ad, run)
    np.testing.assert_allclose(got.obsm["X_stformer"], reference, atol=1e-6)


def test_embed_reads_gene_ids_from_a_var_column_and_counts_from_a_layer(run, tiny_h5ad, reference):
    """A new AnnData with gene symbols as var_names and normalised X: the friction of 18.2."""
    adata = ad.io.read_h5ad(tiny_h5ad)
    counts = sp.csr_matrix(adata.X, dtype=np.float32)
    adata.var["gene_ids"] = adata.var_names.to_numpy()
    adata.var_names = [f"SYM{i}" for i in range(adata.n_vars)]
    adata.layers["counts"] = counts
    adata.X = counts.multiply(1 / np.maximum(counts.sum(axis=1), 1)).tocsr() * 0.5
    with pytest.raises(sd.InputError, match="the AnnData") as err:
        st.embed(adata, run, layer="counts")  # the symbols are not in the vocabulary
    assert "gene" in str(err.value).lower()
    with pytest.raises(sd.InputError, match="non-integer|integer"):
        st.embed(adata, run, gene_id_key="gene_ids")  # X is normalised
    st.embed(adata, run, gene_id_key="gene_ids", layer="counts")
    np.testing.assert_allclose(adata.obsm["X_stformer"], reference, atol=1e-6)
    assert adata.uns["X_stformer"]["params"]["gene_id_key"] == "gene_ids"
    with pytest.raises(sd.InputError, match="layers\\['raw'\\]"):
        st.embed(adata, run, layer="raw")


def test_embed_refuses_what_is_not_an_anndata(run):
    with pytest.raises(TypeError, match="AnnData"):
        st.embed(np.zeros((2, 2)), run)
