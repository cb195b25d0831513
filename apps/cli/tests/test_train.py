import json

import anndata
import numpy as np
import pytest

import stformer_data as sd
from stformer_cli.main import cli


@pytest.fixture(scope="module")
def h5ad(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "cells.h5ad"
    sd.simulate_counts(n_cells=150, n_genes=80, seed=1).write_h5ad(path)
    return path


TINY = [
    "--layers",
    "2",
    "--hidden",
    "32",
    "--heads",
    "2",
    "--max-length",
    "48",
    "--batch-size",
    "16",
    "--no-progress",
]


@pytest.mark.parametrize("engine", ["hf", "lightning"])
def test_pretrain_embed_evaluate_finetune(h5ad, tmp_path, engine):
    run = tmp_path / "run"
    (tmp_path / "cfg.yaml").write_text(
        "train:\n  max_steps: 6\n  save_steps: 3\n  logging_steps: 2\n"
    )
    assert (
        cli(
            [
                "pretrain",
                str(h5ad),
                "--out",
                str(run),
                "--config",
                str(tmp_path / "cfg.yaml"),
                "--engine",
                engine,
                *TINY,
            ]
        )
        == 0
    )
    cfg = json.loads((run / "config.json").read_text())
    assert (
        cfg["engine"] == engine
        and cfg["train"]["max_steps"] == 6
        and cfg["model"]["hidden_size"] == 32
    )
    assert (run / "model" / "stformer_tokenizer.json").is_file() and (
        run / "logs" / "loss_curve.png"
    ).is_file()
    if engine == "lightning":
        return
    assert (
        cli(["embed", str(run), str(h5ad), "--out", str(tmp_path / "e.h5ad"), "--no-progress"]) == 0
    )
    emb = anndata.io.read_h5ad(tmp_path / "e.h5ad").obsm["X_stformer"]
    assert emb.shape == (150, 32) and np.isfinite(emb).all()
    assert cli(["evaluate", str(run), str(h5ad), "--label-key", "cell_type", "--no-progress"]) == 0
    ev = json.loads((run / "evaluation" / "evaluation.json").read_text())
    assert set(ev["scores"]) == {"stformer", "random_init", "pca"}
    assert (run / "evaluation" / "embedding_2d.png").stat().st_size > 0
    assert (
        cli(
            [
                "finetune",
                str(run),
                str(h5ad),
                "--label-key",
                "cell_type",
                "--epochs",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    ft = json.loads((run / "finetune" / "finetune.json").read_text())
    # scored on the 10% of cells pretraining held out (pretrain --test-fraction 0.1, RUN/split.json)
    assert 0.0 <= ft["accuracy"] <= 1.0 and ft["split"] == "run" and ft["n_test"] == 15


def test_bad_inputs_are_clear_errors(h5ad, tmp_path, capsys):
    assert cli(["pretrain", str(h5ad), "--out", str(tmp_path / "r"), "--engine", "jax"]) == 2
    (tmp_path / "bad.json").write_text('{"optim": {}}')
    assert (
        cli(
            [
                "pretrain",
                str(h5ad),
                "--out",
                str(tmp_path / "r"),
                "--config",
                str(tmp_path / "bad.json"),
            ]
        )
        == 2
    )
    assert "model, train, tokenize" in capsys.readouterr().err
    assert cli(["embed", str(tmp_path), str(h5ad), "--out", str(tmp_path / "x.h5ad")]) == 2
    for spec, engine, message in (
        ("zero9", "hf", "zero2"),
        ("zero2", "lightning", "--engine hf"),
        (str(tmp_path / "missing.json"), "hf", "does not exist"),
    ):
        assert (
            cli(
                [
                    "pretrain",
                    str(h5ad),
                    "--out",
                    str(tmp_path / "r"),
                    "--deepspeed",
                    spec,
                    "--engine",
                    engine,
                ]
            )
            == 2
        )
        assert message in capsys.readouterr().err
    assert cli(["evaluate", str(tmp_path), str(h5ad)]) == 2
