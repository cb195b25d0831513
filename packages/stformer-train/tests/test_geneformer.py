"""Geneformer checkpoint folders: V1 and V2 layouts open with their settings; a wrong dictionary is refused."""

import pickle
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification

import stformer_data as sd
from stformer_train.geneformer import open_model
from stformer_train.perturb import perturb_h5ad


def _v1_config(**kw):
    base = dict(
        vocab_size=25_426,
        hidden_size=32,
        num_hidden_layers=6,
        num_attention_heads=4,
        intermediate_size=64,
        hidden_act="relu",
        max_position_embeddings=2048,
        pad_token_id=0,
    )
    return BertConfig(**{**base, **kw})


def _v2_dictionaries(shared_data, folder):
    """A V2-like dictionary (20,275 tokens with <cls>/<eos>) and medians, in Geneformer's pickle layout."""
    with open(shared_data / "geneformer_30M" / "token_dictionary.pkl", "rb") as f:
        v1 = pickle.load(f)
    genes = [g for g in v1 if not g.startswith("<")][: 20_275 - 4]
    tokens = {
        "<pad>": 0,
        "<mask>": 1,
        "<cls>": 2,
        "<eos>": 3,
        **{g: i + 4 for i, g in enumerate(genes)},
    }
    with open(shared_data / "geneformer_30M" / "gene_median_dictionary.pkl", "rb") as f:
        medians = pickle.load(f)
    with open(folder / "token_dictionary_gc104M.pkl", "wb") as f:
        pickle.dump(tokens, f)
    with open(folder / "gene_median_dictionary_gc104M.pkl", "wb") as f:
        pickle.dump({g: medians[g] for g in genes if g in medians}, f)


@pytest.fixture(scope="module")
def folders(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("gf")
    torch.manual_seed(0)
    v1 = root / "v1"
    BertForMaskedLM(_v1_config()).save_pretrained(v1)
    for name in ("token_dictionary.pkl", "gene_median_dictionary.pkl"):
        shutil.copy(shared_data / "geneformer_30M" / name, v1 / name)
    v2 = root / "v2"
    BertForSequenceClassification(
        _v1_config(vocab_size=20_275, max_position_embeddings=4096, num_labels=3)
    ).save_pretrained(v2)
    _v2_dictionaries(shared_data, v2)
    wrong = root / "v2_with_v1_dict"
    BertForMaskedLM(_v1_config(vocab_size=20_275, max_position_embeddings=4096)).save_pretrained(
        wrong
    )
    for name in ("token_dictionary.pkl", "gene_median_dictionary.pkl"):
        shutil.copy(shared_data / "geneformer_30M" / name, wrong / name)
    return v1, v2, wrong


@pytest.fixture(scope="module")
def cells(shared_data, tmp_path_factory):
    adata = sd.open_h5ad(
        shared_data / "sc" / "cxg_cortex_culture_hvg2000_counts.h5ad", backed=False
    )
    path = tmp_path_factory.mktemp("cells") / "c.h5ad"
    adata[:6].copy().write_h5ad(path)
    return path


def test_v1_and_v2_layouts_get_their_settings(folders):
    v1, v2, _ = folders
    m1, m2 = open_model(v1), open_model(v2)
    assert m1.kind == m2.kind == "geneformer"
    assert m1.settings["model_version"] == "V1" and m1.settings["settings"]["rank"] == {
        "model_input_size": 2048,
        "add_cls": False,
        "add_eos": False,
    }
    assert m2.settings["model_version"] == "V2" and m2.settings["settings"]["rank"] == {
        "model_input_size": 4096,
        "add_cls": True,
        "add_eos": True,
    }
    assert len(m1.vocab) == 25_426 and len(m2.vocab) == 20_275
    assert type(m2.load_encoder()).__name__ == "BertForSequenceClassification"


def test_a_v1_dictionary_with_a_v2_model_is_refused_naming_both_sizes(folders):
    with pytest.raises(sd.InputError, match=r"25426 tokens.*V1.*vocab_size=20275.*V2"):
        open_model(folders[2])


def test_missing_dictionary_is_a_clear_error(tmp_path):
    BertForMaskedLM(_v1_config(num_hidden_layers=1)).save_pretrained(tmp_path)
    with pytest.raises(sd.InputError, match="token dictionary"):
        open_model(tmp_path)


def test_v2_checkpoint_perturbs_framed_cells(folders, cells, tmp_path):
    out = perturb_h5ad(folders[1], cells, tmp_path, max_cells=3, progress=False)
    table = pd.read_parquet(tmp_path / "perturbations.parquet")
    assert out["n_cells"] == 3 and len(table) == out["n_perturbations"] > 0
    # <cls>/<eos> frame every cell and are never perturbed
    assert not table["perturbed"].str.startswith("<").any()
    assert np.isfinite(table["cos_sim"]).all()
    m = open_model(folders[1])
    corpus = m.tokenize(cells, tmp_path / "corpus", progress=False)
    ids = corpus.dataset[0]["input_ids"]
    assert ids[0] == m.vocab.cls_id and ids[-1] == m.vocab.eos_id
