"""finetune_classifier (Trainer, baselines, refusals, pooling) and predict_h5ad on tiny models."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

import stformer_data as sd
from stformer_train import TrainConfig, embed_sequences, holdout_split, knn_score
from stformer_train.downstream import embed_h5ad
from stformer_train.downstream import finetune_classifier as reexported
from stformer_train.finetune import (
    NoBetterThanMajorityWarning,
    StformerBertForSequenceClassification,
    corpus_pooling,
    finetune_classifier,
    load_classifier,
    predict_h5ad,
)
from stformer_train.geneformer import open_model
from stformer_train.hf import pretrain_mlm


@pytest.fixture(scope="module")
def run(tiny_corpus, tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune") / "run"
    train = TrainConfig(
        max_steps=4, per_device_train_batch_size=16, logging_steps=2, save_steps=100, seed=0
    )
    pretrain_mlm(tiny_corpus, root, model=tiny, train=train, progress=False)
    return root


@pytest.fixture(scope="module")
def ft(run, tiny_h5ad, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft") / "ft"
    res = finetune_classifier(
        run,
        tiny_h5ad,
        label_key="cell_type",
        out_dir=out,
        epochs=3,
        batch_size=16,
        k=5,
        progress=False,
    )
    return out, res


def test_finetune_moved_but_still_importable_from_downstream():
    assert reexported is finetune_classifier


def test_finetune_learns_and_reports_baselines_on_the_same_held_out_cells(run, tiny_h5ad, ft):
    out, res = ft
    labels = sd.open_h5ad(tiny_h5ad, backed=False).obs["cell_type"].astype(str).to_numpy()
    test = holdout_split(labels, test_fraction=0.2, seed=0)
    assert (res["n_train"], res["n_test"]) == (int((~test).sum()), int(test.sum()))
    assert res["classes"] == sorted(set(labels))
    assert res["pooling"] == "mean"  # a rank corpus without <cls>
    # majority: the largest class of the training cells, scored on the held-out cells
    values, counts = np.unique(labels[~test], return_counts=True)
    largest = values[np.argmax(counts)]
    majority = res["baselines"]["majority"]
    assert majority["class"] == largest
    assert majority["accuracy"] == pytest.approx(np.mean(labels[test] == largest))
    # kNN on the frozen embeddings of the starting model, same pooling, same cells
    rm = open_model(run)
    emb = embed_sequences(
        rm.load_mlm(),
        _tokens(rm, tiny_h5ad, out.parent / "tok"),
        pad_id=rm.vocab.pad_id,
        pooling="mean",
        progress=False,
    )
    knn = knn_score(emb, labels, test, k=5)
    assert res["baselines"]["knn"] == {"k": 5, "accuracy": knn.accuracy, "macro_f1": knn.macro_f1}
    probe = res["baselines"]["linear_probe"]  # the head's start (LP-FT)
    assert probe["accuracy"] > majority["accuracy"] and res["head_init"] == "linear_probe"
    assert res["accuracy"] > majority["accuracy"] + 0.2  # it learned, not just the largest class
    assert res["warning"] is None
    assert json.loads((out / "finetune.json").read_text()) == res


def _tokens(rm, h5ad, where):
    corpus = rm.tokenize(h5ad, where, progress=False)
    return corpus.dataset["input_ids"]


def test_finetune_folder_has_the_vocabulary_labels_and_works_with_embed(
    ft, run, tiny_h5ad, tmp_path
):
    out, res = ft
    model_dir = out / "model"
    for name in ("token_dictionary.json", "gene_medians.json", "stformer_tokenizer.json"):
        assert (model_dir / name).is_file()
    assert (model_dir / "token_dictionary.json").read_bytes() == (
        run / "model" / "token_dictionary.json"
    ).read_bytes()
    config = json.loads((model_dir / "config.json").read_text())
    assert config["id2label"] == {str(i): c for i, c in enumerate(res["classes"])}
    assert config["stformer_pooling"] == "mean"
    settings = json.loads((model_dir / "stformer_tokenizer.json").read_text())["settings"]
    assert settings["obs_columns"] == []
    path = embed_h5ad(model_dir, tiny_h5ad, tmp_path / "e.h5ad", progress=False)
    emb = ad.io.read_h5ad(path).obsm["X_stformer"]
    assert emb.shape == (120, 32) and np.isfinite(emb).all()


def test_predict_writes_labels_confidence_and_probabilities(ft, tiny_h5ad, tmp_path):
    out, res = ft
    path = predict_h5ad(out, tiny_h5ad, tmp_path / "p.h5ad", progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["p.h5ad"]
    a = ad.io.read_h5ad(path)
    proba = a.obsm["stformer_proba"]
    assert list(a.uns["stformer_proba_classes"]) == res["classes"]
    assert proba.shape == (120, len(res["classes"]))
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-5)
    assert set(a.obs["stformer_label"].astype(str)) <= set(res["classes"])
    np.testing.assert_array_equal(
        a.obs["stformer_label"].astype(str), np.asarray(res["classes"])[proba.argmax(1)]
    )
    np.testing.assert_allclose(a.obs["stformer_confidence"], proba.max(1))
    # it learned: most cells get their own type
    truth = a.obs["cell_type"].astype(str).to_numpy()
    assert np.mean(a.obs["stformer_label"].astype(str).to_numpy() == truth) > 0.5
    a2 = ad.io.read_h5ad(
        predict_h5ad(
            out / "model", tiny_h5ad, tmp_path / "q.h5ad", key_added="pred", progress=False
        )
    )
    assert "pred" in a2.obs and "pred_confidence" in a2.obs


def test_predict_refuses_a_masked_lm_folder(run, tiny_h5ad, tmp_path):
    with pytest.raises(sd.InputError, match="sequence-classification"):
        predict_h5ad(run / "model", tiny_h5ad, tmp_path / "p.h5ad", progress=False)
    assert not (tmp_path / "p.h5ad").exists()


@pytest.fixture(scope="module")
def labelled(tiny_h5ad, tmp_path_factory):
    """The tiny cells with a one-class column, a one-cell-per-class column and an imbalanced random one."""
    a = sd.open_h5ad(tiny_h5ad, backed=False)
    a.obs["one"] = "T cell"
    a.obs["unique"] = [f"c{i}" for i in range(a.n_obs)]
    rng = np.random.default_rng(0)
    a.obs["random"] = np.where(rng.random(a.n_obs) < 0.95, "big", "small")
    path = tmp_path_factory.mktemp("labelled") / "cells.h5ad"
    a.write_h5ad(path)
    return path


def test_single_class_is_refused_before_training_naming_the_column_and_counts(
    run, labelled, tmp_path
):
    with pytest.raises(sd.InputError) as err:
        finetune_classifier(
            run, labelled, label_key="one", out_dir=tmp_path / "ft", epochs=1, progress=False
        )
    assert "obs['one']" in str(err.value) and "'T cell': 120" in str(err.value)
    assert "single class" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_too_few_cells_for_the_split_is_refused(run, labelled, tmp_path):
    with pytest.raises(sd.InputError, match=r"obs\['unique'\].*no training cell"):
        finetune_classifier(
            run, labelled, label_key="unique", out_dir=tmp_path / "ft", epochs=1, progress=False
        )
    assert list(tmp_path.iterdir()) == []


def test_missing_column_and_foreign_out_folder_are_refused(run, labelled, tmp_path):
    with pytest.raises(sd.InputError, match="cell_typ"):
        finetune_classifier(run, labelled, label_key="cell_typ", out_dir=tmp_path / "ft")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(sd.InputError, match="not a finetune folder"):
        finetune_classifier(run, labelled, label_key="cell_type", out_dir=tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_no_better_than_majority_is_a_warning_in_the_result(run, labelled, tmp_path):
    with pytest.warns(NoBetterThanMajorityWarning, match="majority class 'big'"):
        res = finetune_classifier(
            run,
            labelled,
            label_key="random",
            out_dir=tmp_path / "ft",
            epochs=1,
            learning_rate=1e-9,
            batch_size=64,
            progress=False,
        )
    assert res["accuracy"] <= res["baselines"]["majority"]["accuracy"]
    assert "no better than" in res["warning"]
    assert json.loads((tmp_path / "ft" / "finetune.json").read_text())["warning"] == res["warning"]


def test_pooling_auto_is_cls_only_when_every_cell_starts_with_cls():
    v2 = sd.GeneVocab.from_genes(["A", "B", "C"], cls_token=True, eos_token=True)
    v1 = sd.GeneVocab.from_genes(["A", "B", "C"])
    a, b = v2["A"], v2["B"]
    assert corpus_pooling([[v2.cls_id, a, b], [v2.cls_id, b]], v2) == "cls"
    assert corpus_pooling([[v2.cls_id, a, b], [a, b]], v2) == "mean"
    assert corpus_pooling([[v1["A"], v1["B"]]], v1) == "mean"


def test_mean_pooling_classifier_is_what_is_trained_and_cls_is_transformers_own(tmp_path):
    cfg = BertConfig(
        vocab_size=20,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    BertForSequenceClassification(cfg).save_pretrained(tmp_path / "gf")
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])
    mask = (ids != 0).long()
    plain = BertForSequenceClassification.from_pretrained(tmp_path / "gf").eval()
    ours = load_classifier(tmp_path / "gf", attn_implementation="eager").eval()
    assert isinstance(ours, StformerBertForSequenceClassification)
    with torch.no_grad():
        torch.testing.assert_close(
            ours(input_ids=ids, attention_mask=mask).logits,
            plain(input_ids=ids, attention_mask=mask).logits,
        )
        ours.config.stformer_pooling = "mean"
        hidden = ours.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).float()
        expected = ours.classifier((hidden * m).sum(1) / m.sum(1))
        out = ours(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 2]))
    torch.testing.assert_close(out.logits, expected)
    assert out.loss is not None and torch.isfinite(out.loss)
