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


def _plain_v2(x, n_counts, genes, vocab, medians, size):
    """Geneformer's V2 rank-value encoding of one cell, written plainly (float64)."""
    keep = [j for j, g in enumerate(genes) if g in vocab and g in medians and x[j] > 0]
    norm = np.array([x[j] / n_counts * 10_000 / medians[genes[j]] for j in keep])
    order = np.argsort(-norm, kind="stable")[: size - 2]
    return [vocab["<cls>"], *[vocab[genes[keep[i]]] for i in order], vocab["<eos>"]], norm, keep


def test_v2_tokenize_preset_matches_the_published_algorithm(shared_data, cortex, tmp_path):
    d = tmp_path / "dicts"
    d.mkdir()
    _v2(shared_data, d)
    assert (
        cli(
            [
                "tokenize",
                str(cortex),
                "--out",
                str(tmp_path / "corpus"),
                "--model-version",
                "V2",
                "--vocab",
                str(d / "token_dictionary_gc104M.pkl"),
                "--medians",
                str(d / "gene_median_dictionary_gc104M.pkl"),
                "--allow-pickle",
                "--no-progress",
            ]
        )
        == 0
    )
    corpus = sd.load_corpus(tmp_path / "corpus")
    assert corpus.manifest["settings"]["rank"]["model_input_size"] == 4096
    with open(d / "token_dictionary_gc104M.pkl", "rb") as f:
        vocab = pickle.load(f)
    with open(d / "gene_median_dictionary_gc104M.pkl", "rb") as f:
        medians = pickle.load(f)
    adata = sd.open_h5ad(cortex, backed=False)
    x = adata.X.toarray().astype(np.float64)
    genes = list(adata.var_names.astype(str))
    identical = 0
    for ids, row in zip(corpus.dataset["input_ids"], corpus.dataset["cell_index"], strict=True):
        want, norm, keep = _plain_v2(
            x[row], float(adata.obs["n_counts"].iloc[row]), genes, vocab, medians, 4096
        )
        assert (
            ids[0] == vocab["<cls>"] and ids[-1] == vocab["<eos>"] and sorted(ids) == sorted(want)
        )
        if list(ids) == want:
            identical += 1
            continue
        # only near-ties (float32 vs float64) may be ordered differently
        by_token = {vocab[genes[j]]: v for j, v in zip(keep, norm, strict=True)}
        vals = np.array([by_token[t] for t in ids[1:-1]])
        assert (np.diff(vals) <= 1e-6 * vals[:-1]).all()
    assert identical >= 0.9 * len(corpus.dataset)
