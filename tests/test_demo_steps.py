"""Issue 18.3 acceptance: the step-by-step commands (tokenize -> pretrain -> evaluate) with the
demo's recipe give the demo's held-out figures, on the same held-out cells (RUN/split.json)."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pytest

from stformer_cli.main import cli

MODEL = ["--layers", "1", "--hidden", "32", "--heads", "2", "--max-length", "32"]
RECIPE = [*MODEL, "--epochs", "1", "--batch-size", "32", "--learning-rate", "1e-3", "--seed", "0"]
QUIET = ["--no-progress"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("steps")
    demo = root / "demo"
    assert (
        cli(["demo", "--out", str(demo), "--cells", "120", "--genes", "60", *RECIPE, *QUIET]) == 0
    )
    data = demo / "data.h5ad"
    steps = root / "steps"
    medians = steps / "medians.json"
    assert cli(["medians", str(data), "--exact", "--out", str(medians)]) == 0
    tokenize = ["tokenize", str(data), "--out", str(steps / "corpus"), "--medians", str(medians)]
    assert cli([*tokenize, "--max-length", "32", *QUIET]) == 0
    pretrain = ["pretrain", str(steps / "corpus"), "--out", str(steps / "run"), *RECIPE]
    pretrain += ["--mlm-probability", "0.15", "--no-tie-embeddings", "--test-fraction", "0.2"]
    assert cli([*pretrain, *QUIET]) == 0
    return demo, steps / "run", data


def _test_cells(run) -> list:
    split = json.loads((run / "split.json").read_text())
    return sorted(zip(split["test"]["file_index"], split["test"]["obs_name"], strict=True))


def test_step_by_step_reproduces_the_demo_held_out_figures(runs, capsys):
    demo, run, data = runs
    # the same held-out cells, never trained on in either run
    assert _test_cells(demo) == _test_cells(run) and len(_test_cells(run)) == 24
    split = json.loads((run / "split.json").read_text())
    assert split["stratified_by"] == "cell_type" and split["counts"]["train"] == 96
    capsys.readouterr()
    assert cli(["evaluate", str(run), str(data), *QUIET]) == 0
    assert "the run's split" in capsys.readouterr().out
    steps = json.loads((run / "evaluation" / "evaluation.json").read_text())
    ours = json.loads((demo / "metrics.json").read_text())
    assert steps["split"] == ours["split"] == "run"
    names = {"stformer": "stformer (pretrained)", "random_init": "random-init model (same shape)"}
    names["pca"] = "PCA of log-normalised counts"
    for key, shown in names.items():
        for metric in ("accuracy", "macro_f1", "n_test"):
            assert steps["scores"][key][metric] == pytest.approx(
                ours["scores"][shown][metric], abs=1e-6
            )
    # the demo's embeddings say which cells were held out
    emb = ad.io.read_h5ad(demo / "embeddings.h5ad")
    held = set(emb.obs_names[emb.obs["stformer_split"] == "test"])
    assert held == {name for _, name in _test_cells(demo)}


def test_evaluate_says_when_its_cells_may_have_been_seen(runs, tmp_path, capsys):
    demo, run, data = runs
    other = ad.io.read_h5ad(data)
    other.obs["n_counts"] = np.asarray(other.X.sum(axis=1)).ravel()  # other bytes, same names
    other.write_h5ad(tmp_path / "other.h5ad")
    capsys.readouterr()
    assert (
        cli(
            [
                "evaluate",
                str(run),
                str(tmp_path / "other.h5ad"),
                "--out",
                str(tmp_path / "b"),
                *QUIET,
            ]
        )
        == 0
    )
    assert "may have been seen in pretraining" in capsys.readouterr().out
    assert json.loads((tmp_path / "b" / "evaluation.json").read_text())["split"] == "new"


def test_embed_a_symbol_named_file_with_gene_id_key(runs, tmp_path, capsys):
    """Friction 2: the error suggests --gene-id-key, and embed has it."""
    _, run, data = runs
    adata = ad.io.read_h5ad(data)
    adata.var["gene_ids"] = adata.var_names.to_numpy()
    adata.var_names = [f"SYM{i}" for i in range(adata.n_vars)]
    adata.layers["counts"] = adata.X.copy()
    adata.X = adata.X * 0.5  # normalised-looking values in X
    symbols = tmp_path / "symbols.h5ad"
    adata.write_h5ad(symbols)
    capsys.readouterr()
    assert cli(["embed", str(run), str(symbols), "--out", str(tmp_path / "x.h5ad"), *QUIET]) == 2
    assert "--gene-id-key" in capsys.readouterr().err
    args = ["embed", str(run), str(symbols), "--out", str(tmp_path / "e.h5ad"), *QUIET]
    assert cli([*args, "--gene-id-key", "gene_ids", "--layer", "counts"]) == 0
    assert cli(["embed", str(run), str(data), "--out", str(tmp_path / "ref.h5ad"), *QUIET]) == 0
    got, ref = (ad.io.read_h5ad(tmp_path / f).obsm["X_stformer"] for f in ("e.h5ad", "ref.h5ad"))
    np.testing.assert_allclose(got, ref, atol=1e-6)


def test_finetune_scores_on_the_cells_pretraining_held_out(runs, tmp_path, capsys):
    _, run, data = runs
    out = tmp_path / "ft"
    capsys.readouterr()
    args = ["finetune", str(run), str(data), "--out", str(out), "--epochs", "1", *QUIET]
    assert cli(args) == 0
    assert "the run's split" in capsys.readouterr().out
    result = json.loads((out / "finetune.json").read_text())
    assert result["split"] == "run" and result["n_test"] == len(_test_cells(run))
