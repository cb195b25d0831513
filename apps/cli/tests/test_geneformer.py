"""Local Geneformer checkpoints (V1 and V2 layouts, small widths) through embed, finetune, pretrain --init-from, perturb."""

import pickle
import shutil

import anndata
import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForMaskedLM

import stformer_data as sd
from stformer_cli.main import cli


def _config(**kw):
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


@pytest.fixture(scope="module")
def cortex(shared_data, tmp_path_factory):
    adata = sd.open_h5ad(
        shared_data / "sc" / "cxg_cortex_culture_hvg2000_counts.h5ad", backed=False
    )
    types = adata.obs["cell_type"].astype(str)
    idx = np.sort(
        np.concatenate([np.flatnonzero(types == t)[:30] for t in types.value_counts().index[:2]])
    )
    path = tmp_path_factory.mktemp("cortex") / "cortex60.h5ad"
    adata[idx].copy().write_h5ad(path)
    return path


def _v1(shared_data, folder):
    torch.manual_seed(0)
    BertForMaskedLM(_config()).save_pretrained(folder)
    for name in ("token_dictionary.pkl", "gene_median_dictionary.pkl"):
        shutil.copy(shared_data / "geneformer_30M" / name, folder / name)


def _v2(shared_data, folder):
    torch.manual_seed(0)
    BertForMaskedLM(_config(vocab_size=20_275, max_position_embeddings=4096)).save_pretrained(
        folder
    )
    with open(shared_data / "geneformer_30M" / "token_dictionary.pkl", "rb") as f:
        genes = [g for g in pickle.load(f) if not g.startswith("<")][: 20_275 - 4]
    with open(shared_data / "geneformer_30M" / "gene_median_dictionary.pkl", "rb") as f:
        medians = pickle.load(f)
    tokens = {
        "<pad>": 0,
        "<mask>": 1,
        "<cls>": 2,
        "<eos>": 3,
        **{g: i + 4 for i, g in enumerate(genes)},
    }
    with open(folder / "token_dictionary_gc104M.pkl", "wb") as f:
        pickle.dump(tokens, f)
    with open(folder / "gene_median_dictionary_gc104M.pkl", "wb") as f:
        pickle.dump({g: medians[g] for g in genes if g in medians}, f)


@pytest.mark.parametrize("layout", ["V1", "V2"])
def test_checkpoint_through_every_command(shared_data, cortex, tmp_path, layout):
    gf = tmp_path / f"gf-{layout}"
    gf.mkdir()
    (_v1 if layout == "V1" else _v2)(shared_data, gf)
    quiet = ["--no-progress"]
    assert cli(["embed", str(gf), str(cortex), "--out", str(tmp_path / "e.h5ad"), *quiet]) == 0
    emb = anndata.io.read_h5ad(tmp_path / "e.h5ad").obsm["X_stformer"]
    assert emb.shape == (60, 32) and np.isfinite(emb).all()
    assert (
        cli(
            [
                "finetune",
                str(gf),
                str(cortex),
                "--label-key",
                "cell_type",
                "--epochs",
                "1",
                "--out",
                str(tmp_path / "ft"),
                *quiet,
            ]
        )
        == 0
    )
    assert (tmp_path / "ft" / "finetune.json").is_file()
    # continued pretraining from the checkpoint: its vocabulary, shape and weights
    (tmp_path / "cfg.yaml").write_text(
        "train:\n  max_steps: 2\n  save_steps: 2\n  logging_steps: 1\n  learning_rate: 1.0e-12\n"
    )
    run = tmp_path / "run"
    assert (
        cli(
            [
                "pretrain",
                str(cortex),
                "--out",
                str(run),
                "--init-from",
                str(gf),
                "--config",
                str(tmp_path / "cfg.yaml"),
                "--batch-size",
                "4",
                *quiet,
            ]
        )
        == 0
    )
    a = BertForMaskedLM.from_pretrained(gf).bert.encoder.layer[0].attention.self.query.weight
    b = (
        BertForMaskedLM.from_pretrained(run / "model")
        .bert.encoder.layer[0]
        .attention.self.query.weight
    )
    torch.testing.assert_close(
        a, b, atol=1e-6, rtol=0
    )  # learning rate ~0: the run starts from (and keeps) the checkpoint's weights
    vocab = sd.GeneVocab.load(run / "model" / "token_dictionary.json")
    assert len(vocab) == (25_426 if layout == "V1" else 20_275)
    assert (
        cli(
            [
                "perturb",
                str(run),
                str(cortex),
                "--out",
                str(tmp_path / "p"),
                "--max-cells",
                "2",
                *quiet,
            ]
        )
        == 0
    )
    assert (
        cli(
            [
                "perturb",
                str(gf),
                str(cortex),
                "--out",
                str(tmp_path / "q"),
                "--max-cells",
                "2",
                *quiet,
            ]
        )
        == 0
    )
