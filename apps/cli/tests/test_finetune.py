"""``stformer finetune`` / ``predict`` on real PBMC cells, from local Geneformer-layout folders (tiny widths)."""

from __future__ import annotations

import json
import pickle
import shutil

import anndata
import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification

import stformer_data as sd
from stformer_cli.main import cli

QUIET = ["--no-progress"]


def _config(**kw):
    base = dict(
        vocab_size=25_426,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        hidden_act="relu",
        max_position_embeddings=2048,
        pad_token_id=0,
    )
    return BertConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def pbmc(shared_data, tmp_path_factory):
    """60 real PBMC cells, 20 of each of the three largest bulk_labels, on 200 highly variable genes.

    Ensembl ids in ``var["ensembl_id"]``; the gene subset keeps sequences short (fast tests).
    """
    adata = sd.open_h5ad(shared_data / "sc" / "pbmc68k_reduced_700_counts.h5ad", backed=False)
    labels = adata.obs["bulk_labels"].astype(str)
    idx = np.sort(
        np.concatenate([np.flatnonzero(labels == t)[:20] for t in labels.value_counts().index[:3]])
    )
    genes = np.flatnonzero(adata.var["highly_variable"].to_numpy())[:200]
    sub = adata[idx][:, genes].copy()
    sub.obs["one"] = "T cell"
    path = tmp_path_factory.mktemp("pbmc") / "pbmc60.h5ad"
    sub.write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def gf_v1(shared_data, tmp_path_factory):
    """A V1-layout Geneformer masked-LM folder with Geneformer's own dictionaries."""
    folder = tmp_path_factory.mktemp("gf") / "gf-v1"
    torch.manual_seed(0)
    BertForMaskedLM(_config()).save_pretrained(folder)
    for name in ("token_dictionary.pkl", "gene_median_dictionary.pkl"):
        shutil.copy(shared_data / "geneformer_30M" / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def gf_v2_classifier(shared_data, tmp_path_factory):
    """A V2-layout Geneformer BertForSequenceClassification folder (<cls>/<eos>, 4,096 positions)."""
    folder = tmp_path_factory.mktemp("gf") / "gf-v2-cls"
    names = ["B cell", "monocyte", "dendritic"]
    config = _config(
        vocab_size=20_275,
        max_position_embeddings=4096,
        num_labels=3,
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    with open(shared_data / "geneformer_30M" / "token_dictionary.pkl", "rb") as f:
        genes = [g for g in pickle.load(f) if not g.startswith("<")][: 20_275 - 4]
    with open(shared_data / "geneformer_30M" / "gene_median_dictionary.pkl", "rb") as f:
        medians = pickle.load(f)
    tokens = {"<pad>": 0, "<mask>": 1, "<cls>": 2, "<eos>": 3}
    tokens.update({g: i + 4 for i, g in enumerate(genes)})
    with open(folder / "token_dictionary_gc104M.pkl", "wb") as f:
        pickle.dump(tokens, f)
    with open(folder / "gene_median_dictionary_gc104M.pkl", "wb") as f:
        pickle.dump({g: medians[g] for g in genes if g in medians}, f)
    return folder, names


def _check_prediction(path, classes, key="stformer_label", n=60):
    a = anndata.io.read_h5ad(path)
    proba = a.obsm["stformer_proba"]
    assert proba.shape == (n, len(classes))
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-5)
    assert list(a.uns["stformer_proba_classes"]) == list(classes)
    assert set(a.obs[key].astype(str)) <= set(classes)
    return a


def test_finetune_prints_baselines_and_its_folder_works_with_predict_and_embed(
    gf_v1, pbmc, tmp_path, capsys
):
    ft = tmp_path / "ft"
    args = ["finetune", str(gf_v1), str(pbmc), "--label-key", "bulk_labels", "--epochs", "1"]
    assert cli([*args, "--out", str(ft), "--k", "5", *QUIET]) == 0
    out = capsys.readouterr().out
    assert "majority class" in out and "kNN (k=5, frozen)" in out
    r = json.loads((ft / "finetune.json").read_text())
    assert r["pooling"] == "mean"  # a V1 corpus has no <cls>
    assert set(r["baselines"]) == {"majority", "knn", "linear_probe"}
    assert f"{r['baselines']['majority']['accuracy']:.3f}" in out
    assert (r["warning"] is None) == ("warning:" not in out)
    assert (ft / "model" / "token_dictionary.json").is_file()

    assert cli(["predict", str(ft), str(pbmc), "--out", str(tmp_path / "p.h5ad"), *QUIET]) == 0
    a = _check_prediction(tmp_path / "p.h5ad", r["classes"])
    np.testing.assert_allclose(a.obs["stformer_confidence"], a.obsm["stformer_proba"].max(1))

    assert (
        cli(["embed", str(ft / "model"), str(pbmc), "--out", str(tmp_path / "e.h5ad"), *QUIET]) == 0
    )
    emb = anndata.io.read_h5ad(tmp_path / "e.h5ad").obsm["X_stformer"]
    assert emb.shape == (60, 32) and np.isfinite(emb).all()


def test_predict_with_a_geneformer_classification_folder(gf_v2_classifier, pbmc, tmp_path):
    folder, names = gf_v2_classifier
    out = tmp_path / "p.h5ad"
    assert (
        cli(["predict", str(folder), str(pbmc), "--out", str(out), "--key-added", "pred", *QUIET])
        == 0
    )
    a = _check_prediction(out, names, key="pred")
    assert "pred_confidence" in a.obs
    assert a.uns["stformer_predict"]["pooling"] == "cls"  # BERT's pooler, as the folder was trained
    # the same probabilities as transformers' own class on the same tokens
    from stformer_train.geneformer import open_model

    rm = open_model(folder)
    corpus = rm.tokenize(pbmc, tmp_path / "corpus", progress=False)
    net = BertForSequenceClassification.from_pretrained(folder).eval()
    first = corpus.dataset["input_ids"][0]
    assert first[0] == rm.vocab.cls_id
    with torch.no_grad():
        want = torch.softmax(net(input_ids=torch.tensor([first])).logits, -1)[0].numpy()
    row = int(corpus.dataset["cell_index"][0])
    np.testing.assert_allclose(a.obsm["stformer_proba"][row], want, atol=1e-5)


def test_finetune_from_a_v2_classifier_pools_cls(gf_v2_classifier, pbmc, tmp_path):
    folder, _ = gf_v2_classifier
    ft = tmp_path / "ft"
    args = ["finetune", str(folder), str(pbmc), "--label-key", "bulk_labels", "--epochs", "1"]
    assert cli([*args, "--out", str(ft), *QUIET]) == 0
    r = json.loads((ft / "finetune.json").read_text())
    assert r["pooling"] == "cls"  # every V2 cell starts with <cls>
    config = json.loads((ft / "model" / "config.json").read_text())
    assert sorted(config["label2id"]) == sorted(r["classes"])


def test_single_class_is_refused_with_the_counts_and_nothing_saved(gf_v1, pbmc, tmp_path, capsys):
    args = ["finetune", str(gf_v1), str(pbmc), "--label-key", "one", "--out", str(tmp_path / "ft")]
    assert cli([*args, *QUIET]) == 2
    err = capsys.readouterr().err
    assert "obs['one']" in err and "single class" in err and "'T cell': 60" in err
    assert not (tmp_path / "ft").exists()
