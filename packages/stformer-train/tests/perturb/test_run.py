"""`perturb_h5ad` on real cells with a Geneformer-layout checkpoint: table, summary, resume, stats."""

import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import BertConfig, BertForMaskedLM

import stformer_data as sd
from stformer_train.perturb import _run, perturb_h5ad, perturbation_stats


@pytest.fixture(scope="module")
def cortex(shared_data, tmp_path_factory):
    """60 cells of the cortex culture file (Ensembl var_names), 2 cell types."""
    adata = sd.open_h5ad(
        shared_data / "sc" / "cxg_cortex_culture_hvg2000_counts.h5ad", backed=False
    )
    types = adata.obs["cell_type"].astype(str)
    top = types.value_counts().index[:2]
    idx = np.concatenate([np.flatnonzero(types == t)[:30] for t in top])
    path = tmp_path_factory.mktemp("cortex") / "cortex60.h5ad"
    adata[np.sort(idx)].copy().write_h5ad(path)
    return path, list(top)


@pytest.fixture(scope="module")
def gf_v1(shared_data, tmp_path_factory):
    """A Geneformer V1-layout folder: BertForMaskedLM (V1 configuration at a small width) + dictionaries."""
    folder = tmp_path_factory.mktemp("gf") / "gf-v1"
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=25_426,
        hidden_size=32,
        num_hidden_layers=6,
        num_attention_heads=4,
        intermediate_size=64,
        hidden_act="relu",
        max_position_embeddings=2048,
        pad_token_id=0,
    )
    BertForMaskedLM(cfg).save_pretrained(folder)
    for name in ("token_dictionary.pkl", "gene_median_dictionary.pkl"):
        shutil.copy(shared_data / "geneformer_30M" / name, folder / name)
    return folder


def test_table_summary_and_identical_resume(cortex, gf_v1, tmp_path, monkeypatch):
    h5ad, types = cortex
    kwargs = dict(
        filter_key="cell_type",
        filter_values=types,
        obs_columns=("cell_type",),
        max_cells=12,
        cells_per_batch=4,
        progress=False,
    )
    full = perturb_h5ad(gf_v1, h5ad, tmp_path / "a", **kwargs)
    table = pd.read_parquet(tmp_path / "a" / "perturbations.parquet")
    assert full["n_perturbations"] == len(table) > 12
    assert set(table.columns) >= {
        "cell_index",
        "cell_type",
        "perturbed",
        "cos_sim",
        "shift",
        "n_genes",
    }
    assert table["perturbed"].str.startswith("ENSG").all()
    assert ((table["cos_sim"] > -1.0001) & (table["cos_sim"] < 1.0001)).all()
    # per cell, `delete all` perturbs every one of its genes once
    per_cell = table.groupby("cell_index").agg(n=("perturbed", "size"), g=("n_genes", "first"))
    assert (per_cell["n"] == per_cell["g"]).all()
    summary = sd.open_h5ad(tmp_path / "a" / "summary.h5ad", backed=False)
    assert summary.n_obs == 12 and summary.X.nnz == len(table)
    assert not (tmp_path / "a" / ".parts").exists()

    # killed after two cell batches, then rerun: it continues and writes the same table
    calls = {"n": 0}
    real = _run.perturb_batch

    def dying(*a, **k):
        if calls["n"] == 2:
            raise KeyboardInterrupt
        calls["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(_run, "perturb_batch", dying)
    with pytest.raises(KeyboardInterrupt):
        perturb_h5ad(gf_v1, h5ad, tmp_path / "b", **kwargs)
    assert len(list((tmp_path / "b" / ".parts").glob("batch-*.parquet"))) == 2
    monkeypatch.setattr(_run, "perturb_batch", real)
    perturb_h5ad(gf_v1, h5ad, tmp_path / "b", **kwargs)
    again = pd.read_parquet(tmp_path / "b" / "perturbations.parquet")
    pd.testing.assert_frame_equal(table, again)

    # a rerun into an unfinished folder with other settings is refused
    (tmp_path / "c" / ".parts").mkdir(parents=True)
    (tmp_path / "c" / ".parts" / "state.json").write_text('{"fingerprint": "other"}')
    with pytest.raises(sd.InputError, match="other inputs or settings"):
        perturb_h5ad(gf_v1, h5ad, tmp_path / "c", **kwargs)

    stats = perturbation_stats(tmp_path / "a", groupby="cell_type")
    assert set(stats["cell_type"]) <= set(types)
    first = stats[stats["cell_type"] == stats["cell_type"].iloc[0]]
    assert first["mean"].is_monotonic_decreasing and first["rank"].tolist() == list(
        range(1, len(first) + 1)
    )
    multi = first[first["n_cells"] > 1].iloc[0]
    assert multi["ci_low"] <= multi["mean"] <= multi["ci_high"]


def test_gene_list_combination_goal_and_gene_shifts(cortex, gf_v1, tmp_path):
    h5ad, types = cortex
    adata = sd.open_h5ad(h5ad, backed=False)
    vocab = sd.GeneVocab.load(gf_v1 / "token_dictionary.pkl", allow_pickle=True)
    x = np.asarray(adata.X.sum(0)).ravel()
    genes = [g for g in adata.var_names[np.argsort(-x)] if vocab.get(g) is not None][:2]
    out = perturb_h5ad(
        gf_v1,
        h5ad,
        tmp_path,
        perturbation="overexpress",
        genes=genes,
        combine=True,
        filter_key="cell_type",
        filter_values=[types[0]],
        goal_key="cell_type",
        goal_value=types[1],
        gene_shifts=True,
        progress=False,
    )
    table = pd.read_parquet(tmp_path / "perturbations.parquet")
    assert out["n_cells"] == 30 and len(table) == 30  # overexpress applies to every cell
    assert (table["perturbed"] == "+".join(genes)).all()
    np.testing.assert_allclose(
        table["shift_to_goal"], table["goal_cos_after"] - table["goal_cos_before"], atol=1e-6
    )
    shifts = pd.read_parquet(tmp_path / "gene_shifts.parquet")
    assert len(shifts) > 0 and not shifts["gene"].isin(genes).any()
    stats = perturbation_stats(table)
    assert stats["metric"].iloc[0] == "shift_to_goal" and len(stats) == 1

    with pytest.raises(sd.InputError, match="has no gene"):
        perturb_h5ad(gf_v1, h5ad, tmp_path / "x", genes=["ENSG_NOT_A_GENE"], progress=False)
    with pytest.raises(sd.InputError, match="has no cell"):
        perturb_h5ad(
            gf_v1,
            h5ad,
            tmp_path / "y",
            filter_key="cell_type",
            filter_values=["nope"],
            progress=False,
        )
