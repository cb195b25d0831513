import anndata as ad
import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import scipy.sparse as sp
import torch

from stformer_data import CellSplit
from stformer_train.lightning._datamodule import H5adStreamDataModule

pytestmark = pytest.mark.filterwarnings(
    "ignore:Sparse (invariant checks|CSR tensor support)",
    "ignore:.*does not have many workers",
    "ignore:.*GPU available",
)

N_GENES = 12


def _write(path, n, donors, seed):
    X = sp.random(n, N_GENES, density=0.5, format="csr", dtype=np.float32, random_state=seed)
    X.data = np.ceil(X.data * 5)
    obs = pd.DataFrame(
        {"donor": [donors[i % len(donors)] for i in range(n)]}, index=[f"c{i}" for i in range(n)]
    )
    ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=[f"g{k}" for k in range(N_GENES)])).write_h5ad(
        path
    )
    return path


class _Recorder(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(N_GENES, 1)
        self.seen = {"train": [], "val": [], "test": []}
        self.epochs: dict[int, list] = {}

    def _step(self, batch, name):
        X = batch["X"]
        assert X.layout == torch.strided and X.shape[1] == N_GENES
        cells = list(zip(batch["file_index"].tolist(), batch["cell_index"].tolist(), strict=True))
        self.seen[name] += cells
        if name == "train":
            self.epochs.setdefault(self.current_epoch, []).extend(cells)
        return self.layer(X).mean()

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _trainer(epochs):
    return pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )


def test_datamodule_trains_on_grouped_split_with_new_order_each_epoch(tmp_path):
    files = [
        _write(tmp_path / "a.h5ad", 60, ["d1", "d2", "d3"], 0),
        _write(tmp_path / "b.h5ad", 40, ["d4", "d5"], 1),
    ]
    calls = {"before": 0, "after": 0}

    def before(X, batch):
        calls["before"] += 1
        assert X.layout == torch.sparse_csr
        return X

    def after(X, batch):
        calls["after"] += 1
        return torch.log1p(X)

    dm = H5adStreamDataModule(
        files,
        run_dir=tmp_path / "run",
        group_key="donor",
        fractions=(0.6, 0.2, 0.2),
        batch_size=8,
        before_dense_cb=before,
        after_dense_cb=after,
        dataset_kwargs={"obs_keys": ("donor",)},
    )
    model = _Recorder()
    trainer = _trainer(2)
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm)
    split = CellSplit.load(tmp_path / "run")
    counts = split.counts()
    assert len(model.epochs[0]) == len(model.epochs[1]) == counts["train"]
    assert sorted(model.epochs[0]) == sorted(model.epochs[1]) and model.epochs[0] != model.epochs[1]
    assert (
        len(set(model.seen["val"])) == counts["val"]
        and len(set(model.seen["test"])) == counts["test"]
    )
    assert not set(model.seen["train"]) & (set(model.seen["val"]) | set(model.seen["test"]))
    assert calls["before"] == calls["after"] > 0
    # a resumed run with other split settings reuses the saved split
    again = H5adStreamDataModule(
        files, run_dir=tmp_path / "run", fractions=(0.8, 0.1, 0.1), batch_size=8
    )
    again.prepare_data()
    again.setup("fit")
    assert again.split.groups == split.groups


def test_empty_split_has_no_loader(tmp_path):
    f = _write(tmp_path / "a.h5ad", 20, ["d1"], 0)
    dm = H5adStreamDataModule([f], fractions=(1.0, 0.0, 0.0), batch_size=4)
    dm.setup("fit")
    assert len(list(dm.train_dataloader())) == 5
    with pytest.raises(ValueError, match="no val cells"):
        dm.val_dataloader()
