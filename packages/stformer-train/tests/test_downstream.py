"""Working from a run directory alone: embed an h5ad, evaluate against baselines, fine-tune."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch

import stformer_data as sd
from stformer_train import TrainConfig, embed_sequences, holdout_split, knn_score, pca_of_counts
from stformer_train.downstream import (
    RunModel,
    embed_h5ad,
    evaluate_run,
    plot_embedding_2d,
)
from stformer_train.hf import pretrain_mlm

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tiny_corpus, tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("downstream") / "run"
    train = TrainConfig(
        max_steps=4, per_device_train_batch_size=16, logging_steps=2, save_steps=100, seed=0
    )
    pretrain_mlm(tiny_corpus, root, model=tiny, train=train, progress=False)
    return root


def test_run_model_opens_run_or_model_folder_and_names_a_missing_file(run, tmp_path):
    a, b = RunModel.open(run), RunModel.open(run / "model")
    assert a.model_dir == b.model_dir == run / "model"
    assert len(a.vocab) > 2 and "settings" in a.settings
    with pytest.raises(sd.InputError, match="config.json"):
        RunModel.open(tmp_path)


def test_random_init_has_the_same_shape_but_not_the_weights(run):
    rm = RunModel.open(run)
    trained, rnd = rm.load_mlm(), rm.random_init(seed=1)
    assert type(rnd) is type(trained)
    assert rnd.config.to_dict() == trained.config.to_dict()
    ours, theirs = dict(trained.named_parameters()), dict(rnd.named_parameters())
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    emb = "bert.embeddings.word_embeddings.weight"
    assert not torch.allclose(ours[emb], theirs[emb])
    # seeded: the same seed gives the same baseline
    torch.testing.assert_close(rm.random_init(seed=1).state_dict()[emb], theirs[emb])


def test_embed_h5ad_embeds_every_cell_and_marks_empty_ones(run, tiny_h5ad, tmp_path):
    adata = sd.open_h5ad(tiny_h5ad, backed=False)
    keep_rows = np.ones(adata.n_obs)
    keep_rows[2] = 0  # a cell without any counted gene: no tokens, no embedding
    X = sp.diags(keep_rows) @ sp.csr_matrix(adata.X)
    X.eliminate_zeros()
    adata.X = sp.csr_matrix(X, dtype=np.float32)
    h5ad = tmp_path / "with_empty.h5ad"
    adata.write_h5ad(h5ad)
    out = embed_h5ad(run, h5ad, tmp_path / "emb" / "out.h5ad", pooling="mean", progress=False)
    got = ad.io.read_h5ad(out)
    emb = got.obsm["X_stformer"]
    rm = RunModel.open(run)
    assert emb.shape == (adata.n_obs, rm.load_mlm().config.hidden_size)
    assert not got.obs["stformer_embedded"].iloc[2] and np.isnan(emb[2]).all()
    assert got.obs["stformer_embedded"].sum() == adata.n_obs - 1
    assert np.isfinite(np.delete(emb, 2, axis=0)).all()
    assert got.uns["X_stformer"]["params"]["pooling"] == "mean"
    assert not list(out.parent.glob(".*tmp*"))
    # the same numbers as tokenizing with the run's settings and embedding directly
    corpus = rm.tokenize(tiny_h5ad, tmp_path / "corpus", progress=False)
    direct = embed_sequences(
        rm.load_mlm(), corpus.dataset["input_ids"], pad_id=rm.vocab.pad_id, progress=False
    )
    rows = np.asarray(corpus.dataset["cell_index"])
    keep = rows != 2
    np.testing.assert_allclose(emb[rows[keep]], direct[keep], atol=1e-5)


def test_embed_h5ad_cls_pooling_differs_from_mean(run, tiny_h5ad, tmp_path):
    mean = ad.io.read_h5ad(embed_h5ad(run, tiny_h5ad, tmp_path / "m.h5ad", progress=False))
    cls = ad.io.read_h5ad(
        embed_h5ad(run, tiny_h5ad, tmp_path / "c.h5ad", pooling="cls", progress=False)
    )
    assert cls.uns["X_stformer"]["params"]["pooling"] == "cls"
    assert cls.obsm["X_stformer"].shape == mean.obsm["X_stformer"].shape
    assert not np.allclose(cls.obsm["X_stformer"], mean.obsm["X_stformer"])


def test_evaluate_run_scores_held_out_cells_against_baselines(run, tiny_h5ad, tmp_path):
    res = evaluate_run(
        run, tiny_h5ad, label_key="cell_type", out_dir=tmp_path / "ev", seed=3, progress=False
    )
    assert set(res["scores"]) == {"stformer", "random_init", "pca"}
    saved = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert saved["scores"] == res["scores"] and saved["seed"] == 3
    assert saved["pooling"] == "mean" and saved["hidden_layer"] == -1
    # The held-out split is holdout_split's, the same for every embedding.
    adata = sd.open_h5ad(tiny_h5ad, backed=False)
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    test = holdout_split(labels, test_fraction=0.2, seed=3)
    for s in res["scores"].values():
        assert (s["n_train"], s["n_test"]) == (int((~test).sum()), int(test.sum()))
    # The PCA baseline is PCA of log-normalised counts scored on that split.
    pca = knn_score(pca_of_counts(adata.X, seed=3), labels, test)
    assert res["scores"]["pca"]["accuracy"] == pytest.approx(pca.accuracy)
    assert res["scores"]["pca"]["macro_f1"] == pytest.approx(pca.macro_f1)
    plot = tmp_path / "ev" / "embedding_2d.png"
    assert res["plot"] == str(plot) and plot.read_bytes()[:8] == PNG_MAGIC


def test_evaluate_run_pools_the_same_hidden_layer_for_both_models(run, tiny_h5ad, tmp_path):
    res = evaluate_run(
        run,
        tiny_h5ad,
        label_key="cell_type",
        out_dir=tmp_path,
        hidden_layer=0,
        progress=False,
    )
    assert res["hidden_layer"] == 0
    rm = RunModel.open(run)
    corpus = rm.tokenize(tiny_h5ad, tmp_path / "corpus", obs_columns=("cell_type",), progress=False)
    labels = np.asarray(corpus.dataset["cell_type"]).astype(str)
    test = holdout_split(labels, test_fraction=0.2, seed=0)
    for name, model in (("stformer", rm.load_mlm()), ("random_init", rm.random_init(1))):
        x = embed_sequences(
            model,
            corpus.dataset["input_ids"],
            pad_id=rm.vocab.pad_id,
            hidden_layer=0,
            progress=False,
        )
        assert res["scores"][name]["accuracy"] == pytest.approx(knn_score(x, labels, test).accuracy)


def test_evaluate_run_names_a_missing_label_column(run, tiny_h5ad, tmp_path):
    with pytest.raises(sd.InputError, match="no_such_column"):
        evaluate_run(run, tiny_h5ad, label_key="no_such_column", out_dir=tmp_path, progress=False)


def _one_labelled_cell(adata):
    return adata[:1].copy()


def _single_class(adata):
    adata.obs["cell_type"] = "T cell"
    return adata


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_one_labelled_cell, r"labels 1 cell\(s\).*Fix: pass a file with more"),
        (_single_class, r"single class \('T cell'.*--label-key"),
    ],
    ids=["one-labelled-cell", "single-class"],
)
def test_evaluate_run_refuses_a_file_no_score_would_mean_anything(
    run, tiny_h5ad, tmp_path, make, message
):
    make(sd.open_h5ad(tiny_h5ad, backed=False)).write_h5ad(tmp_path / "bad.h5ad")
    with pytest.raises(sd.InputError, match=message):
        evaluate_run(
            run,
            tmp_path / "bad.h5ad",
            label_key="cell_type",
            out_dir=tmp_path / "ev",
            progress=False,
        )
    assert not (tmp_path / "ev").exists()


def test_plot_embedding_2d_writes_a_png_atomically(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 6))
    labels = np.repeat(["a", "b", "c"], 10)
    path = plot_embedding_2d(x, labels, tmp_path / "p.png", title="t")
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert [p.name for p in tmp_path.iterdir()] == ["p.png"]
