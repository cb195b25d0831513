"""`stformer perturb` and `stformer perturb-stats` on real cells, with a run pretrained here and a Geneformer folder.

A pretraining that fits in test time cannot learn the biology that would rank a cell type's marker
gene among its largest shifts, so these tests check the mechanics: the table, the summary, the
ranking with confidence intervals, the goal-state metric, and the error for a wrong dictionary.
"""

import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import BertConfig, BertForMaskedLM

import stformer_data as sd
from stformer_cli.main import cli


@pytest.fixture(scope="module")
def cortex(shared_data, tmp_path_factory):
    adata = sd.open_h5ad(
        shared_data / "sc" / "cxg_cortex_culture_hvg2000_counts.h5ad", backed=False
    )
    types = adata.obs["cell_type"].astype(str)
    top = list(types.value_counts().index[:2])
    idx = np.sort(np.concatenate([np.flatnonzero(types == t)[:40] for t in top]))
    path = tmp_path_factory.mktemp("cortex") / "cortex80.h5ad"
    adata[idx].copy().write_h5ad(path)
    return path, top


def test_pretrained_run_perturb_and_stats(cortex, tmp_path):
    h5ad, types = cortex
    run = tmp_path / "run"
    (tmp_path / "cfg.yaml").write_text(
        "train:\n  max_steps: 4\n  save_steps: 4\n  logging_steps: 2\n"
    )
    tiny = [
        "--layers",
        "2",
        "--hidden",
        "32",
        "--heads",
        "2",
        "--max-length",
        "512",
        "--batch-size",
        "8",
    ]
    assert (
        cli(
            [
                "pretrain",
                str(h5ad),
                "--out",
                str(run),
                "--config",
                str(tmp_path / "cfg.yaml"),
                *tiny,
                "--no-progress",
            ]
        )
        == 0
    )
    out = tmp_path / "perturb"
    args = [
        "perturb",
        str(run),
        str(h5ad),
        "--out",
        str(out),
        "--filter-key",
        "cell_type",
        "--filter-values",
        ",".join(types),
        "--obs-columns",
        "cell_type",
        "--max-cells",
        "6",
        "--cells-per-batch",
        "3",
        "--no-progress",
    ]
    assert cli(args) == 0
    table = pd.read_parquet(out / "perturbations.parquet")
    assert len(table) > 6 and (out / "summary.h5ad").is_file() and (out / "perturb.json").is_file()
    assert cli(["perturb-stats", str(out), "--groupby", "cell_type", "--min-cells", "1"]) == 0
    stats = pd.read_csv(out / "perturbation_stats.csv")
    assert {"cell_type", "perturbed", "n_cells", "mean", "ci_low", "ci_high", "rank"} <= set(
        stats.columns
    )
    assert stats.groupby("cell_type")["rank"].min().eq(1).all()

    goal = tmp_path / "goal"
    assert (
        cli(
            [
                "perturb",
                str(run),
                str(h5ad),
                "--out",
                str(goal),
                "--filter-key",
                "cell_type",
                "--filter-values",
                types[0],
                "--goal-key",
                "cell_type",
                "--goal-value",
                types[1],
                "--max-cells",
                "3",
                "--no-progress",
            ]
        )
        == 0
    )
    assert cli(["perturb-stats", str(goal / "perturbations.parquet")]) == 0
    assert pd.read_csv(goal / "perturbation_stats.csv")["metric"].eq("shift_to_goal").all()


def test_geneformer_folder_and_wrong_dictionary(shared_data, cortex, tmp_path, capsys):
    h5ad, _ = cortex
    torch.manual_seed(0)
    cfg = dict(
        vocab_size=25_426,
        hidden_size=32,
        num_hidden_layers=6,
        num_attention_heads=4,
        intermediate_size=64,
        hidden_act="relu",
        max_position_embeddings=2048,
    )
    gf = tmp_path / "gf"
    BertForMaskedLM(BertConfig(**cfg)).save_pretrained(gf)
    assert (
        cli(
            [
                "perturb",
                str(gf),
                str(h5ad),
                "--out",
                str(tmp_path / "o"),
                "--dictionaries",
                str(shared_data / "geneformer_30M"),
                "--max-cells",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    assert (
        pd.read_parquet(tmp_path / "o" / "perturbations.parquet")["perturbed"]
        .str.startswith("ENSG")
        .all()
    )
    wrong = tmp_path / "v2"
    BertForMaskedLM(
        BertConfig(**{**cfg, "vocab_size": 20_275, "max_position_embeddings": 4096})
    ).save_pretrained(wrong)
    for name in ("token_dictionary.pkl", "gene_median_dictionary.pkl"):
        shutil.copy(shared_data / "geneformer_30M" / name, wrong / name)
    assert (
        cli(["perturb", str(wrong), str(h5ad), "--out", str(tmp_path / "w"), "--no-progress"]) == 2
    )
    err = capsys.readouterr()
    assert "25426" in err.err + err.out and "20275" in err.err + err.out
