"""Issue 16: `stformer tokenize --scheme binned --phenotypes X` then pretrain, embed, evaluate, finetune."""

from __future__ import annotations

import json

import anndata
import numpy as np

from stformer_cli.main import cli

PBMC = "sc/pbmc68k_reduced_700_counts.h5ad"


def test_binned_corpus_pretrains_a_genebert_and_embeds(shared_data, tmp_path):
    h5ad = shared_data / PBMC
    corpus, run = tmp_path / "corpus", tmp_path / "run"
    assert (
        cli(
            [
                "tokenize",
                str(h5ad),
                "--out",
                str(corpus),
                "--scheme",
                "binned",
                "--phenotypes",
                "bulk_labels",
                "--no-progress",
            ]
        )
        == 0
    )
    assert (
        cli(
            [
                "pretrain",
                str(corpus),
                "--out",
                str(run),
                "--max-steps",
                "4",
                "--batch-size",
                "16",
                "--layers",
                "1",
                "--hidden",
                "32",
                "--heads",
                "2",
                "--eval-fraction",
                "0.1",
                "--no-progress",
            ]
        )
        == 0
    )
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["model_type"] == "stformer_genebert"
    assert (
        config["type_vocab_size"]
        == json.loads((corpus / "manifest.json").read_text())["type_vocab_size"]
    )
    out = tmp_path / "emb.h5ad"
    assert cli(["embed", str(run), str(h5ad), "--out", str(out), "--no-progress"]) == 0
    emb = anndata.io.read_h5ad(out).obsm["X_stformer"]
    assert emb.shape == (700, 32) and np.isfinite(emb).all()
    assert (
        cli(
            [
                "evaluate",
                str(run),
                str(h5ad),
                "--label-key",
                "louvain",
                "--out",
                str(tmp_path / "ev"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert (tmp_path / "ev" / "evaluation.json").is_file()
    assert (
        cli(
            [
                "finetune",
                str(run),
                str(h5ad),
                "--label-key",
                "bulk_labels",
                "--out",
                str(tmp_path / "ft"),
                "--epochs",
                "0.1",
                "--no-progress",
            ]
        )
        == 0
    )


def test_binned_pretrain_masks_phenotypes(shared_data, tmp_path):
    """The assembled collator of a binned corpus with phenotypes is the phenotypic one."""
    import stformer_data as sd
    from stformer_collate import DataCollatorForPhenotypicMLM
    from stformer_train import ModelConfig, TrainConfig, assemble
    from stformer_train.assemble import TokenScheme
    from stformer_train.models import GeneBertForPhenotypicMLM

    corpus_dir = tmp_path / "corpus"
    assert (
        cli(
            [
                "tokenize",
                str(shared_data / PBMC),
                "--out",
                str(corpus_dir),
                "--scheme",
                "binned",
                "--phenotypes",
                "bulk_labels",
                "--no-progress",
            ]
        )
        == 0
    )
    corpus = sd.load_corpus(corpus_dir)
    scheme = TokenScheme.from_corpus(corpus)
    small = ModelConfig(num_layers=1, hidden_size=32, num_heads=2, intermediate_size=64)
    parts = assemble(corpus.vocab, small, TrainConfig(mixed_precision="no"), scheme=scheme)
    assert isinstance(parts.model, GeneBertForPhenotypicMLM)
    assert isinstance(parts.collator, DataCollatorForPhenotypicMLM)
    rows = [corpus.dataset[i] for i in range(8)]
    batch = parts.collator(
        [{"input_ids": r["input_ids"], "token_type_ids": r["token_type_ids"]} for r in rows]
    )
    loss = parts.model(
        **{
            k: v
            for k, v in batch.items()
            if k in ("input_ids", "token_type_ids", "attention_mask", "labels")
        }
    ).loss
    assert np.isfinite(float(loss))
