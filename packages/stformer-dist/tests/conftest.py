"""Tiny data and one local Ray instance shared by the stformer-dist tests."""

from __future__ import annotations

import os
import sys

import pytest
import torch

import stformer_data as sd
from stformer_train import ModelConfig

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


def _reset_process_state() -> None:
    """Forget every process-wide singleton that an in-process DeepSpeed run sets up.

    Accelerate keeps its distributed state in class-level singletons, transformers a global
    reference to the active DeepSpeed config, DeepSpeed its communication backend: left behind,
    a later ``Trainer`` in the same pytest process would start on DeepSpeed (and ask for mpi4py).
    """
    from accelerate.state import AcceleratorState, GradientState
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    unset_hf_deepspeed_config()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    ds_comm = sys.modules.get("deepspeed.comm.comm")
    if ds_comm is not None:
        ds_comm.cdb = None


@pytest.fixture(autouse=True)
def _isolated_process_state():
    """Each test starts and ends with a clean environment and no distributed state."""
    saved = dict(os.environ)
    _reset_process_state()
    yield
    _reset_process_state()
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def tiny():
    return TINY


@pytest.fixture(scope="session")
def tiny_h5ad(tmp_path_factory):
    path = tmp_path_factory.mktemp("h5ad") / "cells.h5ad"
    sd.simulate_counts(n_cells=240, n_genes=80, seed=0).write_h5ad(path)
    return path


@pytest.fixture(scope="session")
def tiny_corpus(tiny_h5ad, tmp_path_factory):
    vocab = sd.GeneVocab.from_genes(sd.resolve_gene_ids(sd.open_h5ad(tiny_h5ad, backed=False).var))
    medians = sd.compute_medians_exact([tiny_h5ad])
    config = sd.TokenizeConfig(rank=sd.RankTokenizerConfig(model_input_size=48))
    return sd.tokenize_files(
        [tiny_h5ad],
        tmp_path_factory.mktemp("corpus") / "corpus",
        vocab=vocab,
        medians=medians,
        config=config,
        progress=False,
    )


@pytest.fixture(scope="module")
def local_ray():
    """A 2-CPU local Ray, started once per module and shut down after it (no process left behind)."""
    import ray

    import stformer_dist  # noqa: F401  (sets the environment Ray needs, as for a user)

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()
