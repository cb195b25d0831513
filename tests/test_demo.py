"""``stformer demo`` end to end: h5ad -> corpus -> pretrained model -> embeddings -> evaluation."""

from __future__ import annotations

import json

import anndata as ad
import pytest
from transformers import AutoModelForMaskedLM

from stformer_cli.main import cli
from stformer_data import load_corpus

TINY = [
    "--epochs",
    "1",
    "--max-length",
    "32",
    "--layers",
    "1",
    "--hidden",
    "32",
    "--heads",
    "2",
    "--batch-size",
    "32",
]


def _check_run(run, n_cells_at_least):
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["scores"]) == {
        "stformer (pretrained)",
        "random-init model (same shape)",
        "PCA of log-normalised counts",
    }
    for score in metrics["scores"].values():
        assert 0.0 <= score["accuracy"] <= 1.0 and score["n_test"] > 0
    model = AutoModelForMaskedLM.from_pretrained(run / "model")
    corpus = load_corpus(run / "corpus")
    assert model.config.vocab_size == len(corpus.vocab)
    assert (run / "model" / "token_dictionary.json").is_file()
    emb = ad.io.read_h5ad(run / "embeddings.h5ad")
    assert emb.obsm["X_stformer"].shape == (emb.n_obs, model.config.hidden_size)
    assert emb.n_obs >= n_cells_at_least
    assert not list(run.glob(".*partial*"))
    return metrics


@pytest.mark.slow
def test_demo_on_simulated_data(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli(["demo", "--out", str(run), "--cells", "300", "--genes", "200", *TINY]) == 0
    out = capsys.readouterr().out
    assert "random-init model" in out and "PCA" in out and "stformer (pretrained)" in out
    metrics = _check_run(run, 300)
    # PCA on well-separated simulated types is near perfect: a sanity check of the evaluation itself.
    assert metrics["scores"]["PCA of log-normalised counts"]["accuracy"] > 0.8
    # A rerun over a finished demo replaces it cleanly.
    assert cli(["demo", "--out", str(run), "--cells", "200", "--genes", "200", *TINY]) == 0
    assert ad.io.read_h5ad(run / "data.h5ad").n_obs == 200


@pytest.mark.slow
@pytest.mark.shared_data
def test_demo_on_pbmc(shared_data, tmp_path):
    h5ad = shared_data / "sc" / "pbmc68k_reduced_700_counts.h5ad"
    run = tmp_path / "pbmc"
    assert (
        cli(["demo", "--h5ad", str(h5ad), "--label-key", "bulk_labels", "--out", str(run), *TINY])
        == 0
    )
    _check_run(run, 600)


@pytest.mark.slow
@pytest.mark.shared_data
def test_demo_on_cortex_with_the_documented_recipe(shared_data, tmp_path):
    """The README's cortex recipe (``--mlm-probability 0.3``) runs end to end; a fraction of an epoch."""
    h5ad = shared_data / "sc" / "cxg_cortex_culture_hvg2000_counts.h5ad"
    run = tmp_path / "cortex"
    tiny = [*TINY[2:], "--epochs", "0.1", "--mlm-probability", "0.3"]
    assert cli(["demo", "--h5ad", str(h5ad), "--out", str(run), *tiny]) == 0
    metrics = _check_run(run, 4400)
    assert metrics["label_key"] == "cell_type"
    assert json.loads((run / "config.json").read_text())["train"]["mlm_probability"] == 0.3
    # the held-out part is a fifth of the cells, the same for the three embeddings
    n_test = {s["n_test"] for s in metrics["scores"].values()}
    assert len(n_test) == 1 and abs(n_test.pop() - 0.2 * 4474) <= 2


def test_demo_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    assert cli(["demo", "--out", str(tmp_path)]) == 2
    assert (tmp_path / "precious.txt").read_text() == "keep me"
