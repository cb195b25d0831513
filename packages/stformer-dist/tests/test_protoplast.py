"""protoplast's RayTrainRunner and import location, tested against its document (seed 004):
a user's own LightningModule (not stformer's) trained by 2 CPU Ray workers on real PBMC files."""

from __future__ import annotations

import inspect
import sys

import anndata
import pytest
import pytorch_lightning as pl
import torch
from torch import nn

import stformer_data
import stformer_dist
from stformer_dist import protoplast
from stformer_dist.protoplast import (
    AnnDataModule,
    DistributedAnnDataset,
    RayTrainRunner,
    SequentialShuffleStrategy,
    ShuffleStrategy,
    cell_line_metadata_cb,
)

pytestmark = [pytest.mark.distributed, pytest.mark.shared_data]


@pytest.fixture(scope="module")
def pbmc_files(shared_data, tmp_path_factory):
    adata = anndata.read_h5ad(shared_data / "sc" / "pbmc68k_reduced_700_counts.h5ad")
    adata.obs["cell_line"] = adata.obs["bulk_labels"]
    folder = tmp_path_factory.mktemp("pbmc_two_ray")
    paths = []
    for i, part in enumerate((adata[:350], adata[350:])):
        path = folder / f"part{i}.h5ad"
        part.copy().write_h5ad(path)
        paths.append(str(path))
    return paths


class CellLines(DistributedAnnDataset):
    def transform(self, start, end):
        X = super().transform(start, end)
        labels = self.ad.obs["cell_line"].iloc[start:end].astype(str)
        return X, torch.tensor([self.cell_lines.index(v) for v in labels])


class LinearCellLine(pl.LightningModule):
    """A user's model, not stformer's: a linear classifier of the cell line from expression."""

    def __init__(self, num_genes: int, num_classes: int):
        super().__init__()
        self.linear = nn.Linear(num_genes, num_classes)

    def _loss(self, batch):
        x, y = batch
        return nn.functional.cross_entropy(self.linear(x), y)

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch)
        self.log("train_loss", loss, sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self._loss(batch), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def log1p_x(x, key):
    return torch.log1p(x) if key == 0 else x


def _by_value():
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests


def test_one_import_location():
    assert protoplast.RayTrainRunner is stformer_dist.RayTrainRunner
    assert protoplast.ShuffleStrategy is stformer_data.ShuffleStrategy
    assert protoplast.SequentialShuffleStrategy is stformer_data.SequentialShuffleStrategy
    assert protoplast.SplitInfo is stformer_data.SplitInfo
    assert inspect.isabstract(ShuffleStrategy)
    assert issubclass(SequentialShuffleStrategy, ShuffleStrategy)
    assert issubclass(AnnDataModule, pl.LightningDataModule)
    for name in protoplast.__all__:
        assert getattr(protoplast, name) is not None


def _params(fn):
    return [
        (p.name, p.default)
        for p in inspect.signature(fn).parameters.values()
        if p.name != "self" and p.kind is not p.VAR_KEYWORD
    ]


def test_documented_signatures():
    empty = inspect.Parameter.empty
    assert _params(RayTrainRunner.__init__) == [
        ("Model", empty),
        ("Ds", empty),
        ("model_keys", empty),
        ("metadata_cb", cell_line_metadata_cb),
        ("before_dense_cb", None),
        ("after_dense_cb", None),
        ("shuffle_strategy", SequentialShuffleStrategy),
        ("runtime_env_config", None),
        ("address", None),
        ("ray_trainer_strategy", None),
        ("sparse_key", "X"),
    ]
    documented = [
        ("file_paths", empty),
        ("batch_size", 2000),
        ("test_size", 0.0),
        ("val_size", 0.2),
        ("prefetch_factor", 4),
        ("max_epochs", 1),
        ("thread_per_worker", None),
        ("num_workers", None),
        ("result_storage_path", "~/protoplast_results"),
        ("ckpt_path", None),
        ("is_gpu", True),
        ("random_seed", 42),
        ("resource_per_worker", None),
        ("is_shuffled", False),
    ]
    train = _params(RayTrainRunner.train)
    assert train[: len(documented)] == documented
    assert train[len(documented) :] == [("max_failures", 0)]  # stformer's FailureConfig
    assert "kwargs" in inspect.signature(RayTrainRunner.train).parameters
    assert _params(DistributedAnnDataset.__init__) == [
        ("file_paths", empty),
        ("indices", empty),
        ("metadata", empty),
        ("sparse_key", empty),
        ("mini_batch_size", None),
    ]
    assert _params(AnnDataModule.__init__) == [
        ("indices", empty),
        ("dataset", empty),
        ("prefetch_factor", empty),
        ("sparse_key", empty),
        ("shuffle_strategy", empty),
        ("before_dense_cb", None),
        ("after_dense_cb", None),
    ]


def test_runner_checks_its_inputs(local_ray, pbmc_files, tmp_path):
    with pytest.raises(TypeError, match="LightningModule"):
        RayTrainRunner(nn.Linear, CellLines, ["num_genes"])
    with pytest.raises(TypeError, match="DistributedAnnDataset"):
        RayTrainRunner(LinearCellLine, torch.utils.data.Dataset, ["num_genes"])
    runner = RayTrainRunner(LinearCellLine, CellLines, ["num_genes", "num_classes"])
    assert runner.resources["CPU"] == 2  # joined the running cluster (ignore_reinit_error)
    with pytest.raises(TypeError, match="pre_fetch_then_batch"):
        runner.train(pbmc_files, 50, is_gpu=False, pre_fetch_the_batch=1)
    with pytest.raises(KeyError, match="n_classes"):
        RayTrainRunner(LinearCellLine, CellLines, ["num_genes", "n_classes"]).train(
            pbmc_files, 50, is_gpu=False, num_workers=1, pre_fetch_then_batch=1
        )


@pytest.mark.slow
def test_two_cpu_workers_train_a_user_model(local_ray, pbmc_files, tmp_path):
    _by_value()
    runner = RayTrainRunner(
        LinearCellLine, CellLines, model_keys=["num_genes", "num_classes"], after_dense_cb=log1p_x
    )
    with pytest.warns(UserWarning, match="no GPU"):
        result = runner.train(
            pbmc_files,
            batch_size=50,
            max_epochs=2,
            thread_per_worker=1,
            num_workers=2,
            result_storage_path=str(tmp_path / "results"),
            pre_fetch_then_batch=1,
        )  # is_gpu=True by default: falls back to CPU
    assert result.error is None
    assert result.metrics["epoch"] == 1 and "val_loss" in result.metrics
    assert result.checkpoint is not None
    with result.checkpoint.as_directory() as folder:
        state = torch.load(f"{folder}/checkpoint.ckpt", map_location="cpu", weights_only=False)
    assert state["state_dict"]["linear.weight"].shape == (10, 765)  # 10 cell lines, 765 genes
    assert str(tmp_path / "results") in result.path
