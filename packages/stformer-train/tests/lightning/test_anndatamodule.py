"""protoplast's AnnDataModule, tested against its document (seed 004) on real PBMC files."""

from __future__ import annotations

import anndata
import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from stformer_data import SequentialShuffleStrategy, ShuffleStrategy, cell_line_metadata_cb
from stformer_data.torch import DistributedAnnDataset
from stformer_train.lightning import AnnDataModule


@pytest.fixture(scope="module")
def pbmc_files(shared_data, tmp_path_factory):
    adata = anndata.read_h5ad(shared_data / "sc" / "pbmc68k_reduced_700_counts.h5ad")
    adata.obs["cell_line"] = adata.obs["bulk_labels"]
    folder = tmp_path_factory.mktemp("pbmc_two_dm")
    paths = []
    for i, part in enumerate((adata[:350], adata[350:])):
        path = folder / f"part{i}.h5ad"
        part.copy().write_h5ad(path)
        paths.append(str(path))
    return paths


class Labelled(DistributedAnnDataset):
    def transform(self, start, end):
        X = super().transform(start, end)
        labels = self.ad.obs["cell_line"].iloc[start:end].astype(str)
        return X, torch.tensor([self.cell_lines.index(v) for v in labels])


@pytest.fixture
def strategy(pbmc_files):
    return SequentialShuffleStrategy(
        pbmc_files,
        25,
        1,
        test_size=0.1,
        validation_size=0.2,
        metadata_cb=cell_line_metadata_cb,
        pre_fetch_then_batch=2,
    )


@pytest.fixture(autouse=True)
def _no_loader_workers(monkeypatch):
    # AnnDataModule takes its DataLoader workers from OMP_NUM_THREADS (Ray sets it per worker)
    monkeypatch.setenv("OMP_NUM_THREADS", "0")


def test_loader_config_from_omp_threads(strategy, monkeypatch):
    info = strategy.split()
    dm = AnnDataModule(info, Labelled, 4, "X", strategy)
    assert dm.loader_config == {"num_workers": 0, "batch_size": None}
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    dm = AnnDataModule(info, Labelled, 3, "X", strategy)
    assert dm.loader_config == {
        "num_workers": 2,
        "prefetch_factor": 3,
        "persistent_workers": True,
        "batch_size": None,
    }


def test_setup_stages_and_dataloaders(strategy):
    info = strategy.split()
    dm = AnnDataModule(info, Labelled, 4, "X", strategy)
    dm.setup("fit")
    assert dm.train_ds.batches == info.train_indices and dm.val_ds.batches == info.val_indices
    dm.setup("test")
    assert dm.test_ds.batches == info.test_indices
    dm.setup("predict")
    assert dm.predict_ds.batches == info.train_indices
    for loader in (
        dm.train_dataloader(),
        dm.val_dataloader(),
        dm.test_dataloader(),
        dm.predict_dataloader(),
    ):
        X, y = next(iter(loader))
        assert X.layout == torch.sparse_csr and X.shape[0] == y.shape[0] == 25


def test_densify_calls_callbacks_with_keys(strategy):
    calls = []

    def before(x, key):
        calls.append(("before", key, x.layout))
        return x

    def after(x, key):
        calls.append(("after", key, x.layout))
        return x * 2 if key in (0, "X", None) else x

    dm = AnnDataModule(strategy.split(), Labelled, 4, "X", strategy, before, after)
    sparse = torch.eye(3).to_sparse_csr()
    labels = torch.tensor([0, 1, 2])
    out = dm.on_after_batch_transfer([sparse, labels], 0)
    assert isinstance(out, list) and out[0].layout == torch.strided
    torch.testing.assert_close(out[0], 2 * torch.eye(3))
    torch.testing.assert_close(out[1], labels)
    assert calls[:2] == [("before", 0, torch.sparse_csr), ("after", 0, torch.strided)]
    assert calls[2:] == [("before", 1, torch.strided), ("after", 1, torch.strided)]
    calls.clear()
    out = dm.on_after_batch_transfer({"X": sparse, "extra": sparse, "name": "not a tensor"}, 0)
    assert out["X"].layout == out["extra"].layout == torch.strided and out["name"] == "not a tensor"
    assert [c[1] for c in calls] == ["X", "X", "extra", "extra"]  # every sparse tensor, by key
    calls.clear()
    torch.testing.assert_close(dm.on_after_batch_transfer(sparse, 0), 2 * torch.eye(3))
    assert [c[1] for c in calls] == [None, None]
    assert dm.densify("text") == "text"


def test_mixer_strategy_batches_single_items(pbmc_files):
    class OneCell(DistributedAnnDataset):
        def transform(self, start, end):
            return super().transform(start, end).to_dense()[0]

    class Mixer(ShuffleStrategy):
        """A custom strategy, as the document shows: single rows batched by the mixer."""

        mini_batch_size = 8

        @property
        def is_mixer(self):
            return True

        def split(self):
            base = SequentialShuffleStrategy(
                self.file_paths,
                1,
                self.total_workers,
                validation_size=0.1,
                pre_fetch_then_batch=None,
            ).split()
            return base

        def mixer(self, batch):
            return torch.stack(batch)

    strategy = Mixer(pbmc_files, 1, 1)
    dm = AnnDataModule(strategy.split(), OneCell, 2, "X", strategy)
    assert dm.loader_config["batch_size"] == 8 and dm.loader_config["drop_last"] is True
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch.shape == (8, 765)


class Classifier(pl.LightningModule):
    def __init__(self, num_genes, num_classes):
        super().__init__()
        self.linear = nn.Linear(num_genes, num_classes)

    def training_step(self, batch, batch_idx):
        x, y = batch
        assert x.layout == torch.strided  # densified by the module
        return nn.functional.cross_entropy(self.linear(torch.log1p(x)), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self.linear(torch.log1p(x)), y))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def test_fit_a_user_model(strategy, tmp_path):
    info = strategy.split()
    model = Classifier(info.metadata["num_genes"], info.metadata["num_classes"])
    dm = AnnDataModule(info, Labelled, 2, "X", strategy)
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 2 * sum(len(r) for r in info.train_indices) * 2
    assert torch.isfinite(trainer.callback_metrics["val_loss"])
