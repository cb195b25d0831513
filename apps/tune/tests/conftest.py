"""A tiny corpus, a base config and a search space for the stformer-tune app tests (CPU, seconds)."""

from __future__ import annotations

import pytest
import torch

import stformer_data as sd

torch.set_num_threads(1)

BASE_CONFIG = """\
model: {num_layers: 2, hidden_size: 32, num_heads: 2, intermediate_size: 64}
train: {max_steps: 4, eval_fraction: 0.2, eval_steps: 2, logging_steps: 2, save_steps: 100,
        per_device_train_batch_size: 8, warmup_steps: 0}
"""
SPACE_YAML = """\
learning_rate: {type: loguniform, low: 1.0e-4, high: 1.0e-2}
per_device_train_batch_size: {type: categorical, values: [4, 8]}
"""


@pytest.fixture(scope="session")
def tune_inputs(tmp_path_factory):
    """(corpus folder, base.yaml, space.yaml) for a search of a 2-layer, 32-wide model, 4 steps a trial."""
    root = tmp_path_factory.mktemp("tune_app")
    adata = sd.simulate_counts(n_cells=80, n_genes=60, seed=2)
    adata.write_h5ad(root / "cells.h5ad")
    vocab = sd.GeneVocab.from_genes(sd.resolve_gene_ids(adata.var))
    medians = sd.compute_medians_exact([root / "cells.h5ad"])
    config = sd.TokenizeConfig(rank=sd.RankTokenizerConfig(model_input_size=48))
    corpus = sd.tokenize_files(
        [root / "cells.h5ad"],
        root / "corpus",
        vocab=vocab,
        medians=medians,
        config=config,
        progress=False,
    )
    (root / "base.yaml").write_text(BASE_CONFIG)
    (root / "space.yaml").write_text(SPACE_YAML)
    return corpus.path, root / "base.yaml", root / "space.yaml"
