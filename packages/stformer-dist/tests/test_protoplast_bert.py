"""stformer's own BERT is one of the models protoplast's RayTrainRunner trains: BertMLMModule,
RankValueAnnDataset and rank_value_metadata_cb, on 2 CPU Ray workers over two real PBMC files."""

from __future__ import annotations

import math

import anndata
import pytest
import torch

from stformer_dist.protoplast import (
    BertMLMModule,
    RankValueAnnDataset,
    RayTrainRunner,
    rank_value_metadata_cb,
)
from stformer_train import TrainConfig

pytestmark = [pytest.mark.distributed, pytest.mark.shared_data]

MODEL_KEYS = ["vocab", "model_config", "train_config", "model_input_size"]


@pytest.fixture(scope="module")
def pbmc_halves(shared_data, tmp_path_factory):
    adata = anndata.read_h5ad(shared_data / "sc" / "pbmc68k_reduced_700_counts.h5ad")
    folder = tmp_path_factory.mktemp("pbmc_bert_ray")
    paths = []
    for i, part in enumerate((adata[:350], adata[350:])):
        path = folder / f"part{i}.h5ad"
        part.copy().write_h5ad(path)
        paths.append(str(path))
    return paths


def test_model_keys_missing_from_the_metadata_fail_before_ray_starts_workers(
    local_ray, pbmc_halves, tiny
):
    runner = RayTrainRunner(
        BertMLMModule,
        RankValueAnnDataset,
        [*MODEL_KEYS, "max_steps"],
        metadata_cb=rank_value_metadata_cb(model_input_size=48, extra={"model_config": tiny}),
    )
    with pytest.raises(KeyError, match="max_steps"):
        runner.train(pbmc_halves, 16, is_gpu=False, num_workers=2, pre_fetch_then_batch=2)


@pytest.mark.slow
def test_two_cpu_workers_pretrain_stformers_bert(local_ray, pbmc_halves, tiny, tmp_path):
    train = TrainConfig(learning_rate=5e-3, warmup_steps=0, mixed_precision="no", seed=3)
    metadata_cb = rank_value_metadata_cb(  # vocabulary and medians computed from the files
        model_input_size=48, extra={"model_config": tiny, "train_config": train}
    )
    runner = RayTrainRunner(BertMLMModule, RankValueAnnDataset, MODEL_KEYS, metadata_cb)
    result = runner.train(
        pbmc_halves,
        batch_size=16,
        val_size=0.1,
        max_epochs=3,
        thread_per_worker=1,
        num_workers=2,
        is_gpu=False,
        result_storage_path=str(tmp_path / "results"),
        pre_fetch_then_batch=2,
    )
    assert result.error is None
    assert result.checkpoint is not None and result.metrics["epoch"] == 2
    n_tokens = 765 + 2  # the files' genes and <pad>, <mask>
    # the loss is logged, finite, and below chance (log of the vocabulary) after 3 epochs
    assert math.isfinite(result.metrics["train_loss"])
    assert result.metrics["val_loss"] < math.log(n_tokens)
    kept = [metrics["val_loss"] for _, metrics in result.best_checkpoints]
    assert len(kept) == 2 and kept[-1] < kept[0]  # epochs 1 and 2: it still falls
    with result.checkpoint.as_directory() as folder:
        module = BertMLMModule.load_from_checkpoint(
            f"{folder}/checkpoint.ckpt", map_location="cpu", weights_only=False
        )  # the hyperparameters hold the vocabulary and the configs
    assert module.model.config.vocab_size == n_tokens
    assert module.train_config == train and module.model_config == tiny
    state = torch.load(f"{folder}/checkpoint.ckpt", map_location="cpu", weights_only=False)
    assert state["global_step"] > 0
