"""A tiny corpus and a few-step training setup shared by the stformer-tune tests (CPU, seconds)."""

from __future__ import annotations

import pytest
import torch

from stformer_train import ModelConfig, TrainConfig

torch.set_num_threads(1)

TINY = ModelConfig(
    num_layers=2,
    hidden_size=32,
    num_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)
#: 6 steps, an evaluation every 2 steps on 20% held-out cells; no checkpoint before the end.
FEW_STEPS = TrainConfig(
    max_steps=6,
    eval_fraction=0.2,
    eval_steps=2,
    logging_steps=2,
    save_steps=100,
    per_device_train_batch_size=8,
    warmup_steps=0,
)
SPACE = {
    "learning_rate": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
    "per_device_train_batch_size": {"type": "categorical", "values": [4, 8]},
}


@pytest.fixture(scope="session")
def tiny_corpus(make_tiny_corpus):
    return make_tiny_corpus(n_cells=100, n_genes=60, seed=0)


@pytest.fixture(scope="session")
def tiny():
    """A 2-layer, 32-wide BERT shape without dropout."""
    return TINY


@pytest.fixture(scope="session")
def few_steps():
    return FEW_STEPS


@pytest.fixture(scope="session")
def space():
    return dict(SPACE)
