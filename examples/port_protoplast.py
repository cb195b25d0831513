"""A protoplast training script ported to stformer: only the import line changed.

It trains its own LightningModule (a linear classifier of ``obs["cell_line"]`` from log1p
expression) on two h5ad files with protoplast's ``RayTrainRunner`` on 2 CPU Ray workers, and
prints the result's checkpoint. The two files are made from the PBMC sample of
``../shared/data`` (``bulk_labels`` as the cell line).

    uv run python examples/port_protoplast.py [--data FILE] [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import anndata
import pytorch_lightning as pl
import torch
from torch import nn

# protoplast:
#   from protoplast.scrna.anndata.torch_dataloader import DistributedAnnDataset
#   from protoplast.scrna.anndata.trainer import RayTrainRunner, cell_line_metadata_cb
from stformer_dist.protoplast import DistributedAnnDataset, RayTrainRunner, cell_line_metadata_cb

DEFAULT_DATA = (
    Path(__file__).resolve().parents[1].parent / "shared/data/sc/pbmc68k_reduced_700_counts.h5ad"
)


class CellLineDataset(DistributedAnnDataset):
    """Expression and the cell line's class index of each row."""

    def transform(self, start: int, end: int):
        X = super().transform(start, end)
        labels = self.ad.obs["cell_line"].iloc[start:end].astype(str)
        y = torch.tensor([self.cell_lines.index(v) for v in labels], dtype=torch.long)
        return X, y


class LinearClassifier(pl.LightningModule):
    def __init__(self, num_genes: int, num_classes: int, lr: float = 1e-2):
        super().__init__()
        self.save_hyperparameters()
        self.linear = nn.Linear(num_genes, num_classes)

    def _loss(self, batch):
        x, y = batch
        logits = self.linear(x)
        return nn.functional.cross_entropy(logits, y), (logits.argmax(-1) == y).float().mean()

    def training_step(self, batch, batch_idx):
        loss, acc = self._loss(batch)
        self.log("train_loss", loss, sync_dist=True)
        self.log("train_acc", acc, sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        loss, acc = self._loss(batch)
        self.log("val_loss", loss, sync_dist=True)
        self.log("val_acc", acc, sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def log1p_expression(x: torch.Tensor, key):
    """after_dense_cb: log1p of the expression (position 0 of the batch), labels untouched."""
    return torch.log1p(x) if key == 0 else x


def two_files(source: Path, folder: Path) -> list[str]:
    adata = anndata.read_h5ad(source)
    adata.obs["cell_line"] = adata.obs["bulk_labels"]
    half = adata.n_obs // 2
    paths = []
    for i, part in enumerate((adata[:half], adata[half:])):
        path = folder / f"part{i}.h5ad"
        part.copy().write_h5ad(path)
        paths.append(str(path))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument(
        "--out", type=Path, default=None, help="results folder (default: a temporary one)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="port-protoplast-") as tmp:
        files = two_files(args.data, Path(tmp))
        out = args.out or Path(tmp) / "results"
        runner = RayTrainRunner(
            LinearClassifier,
            CellLineDataset,
            model_keys=["num_genes", "num_classes"],
            metadata_cb=cell_line_metadata_cb,
            after_dense_cb=log1p_expression,
        )
        result = runner.train(
            files,
            batch_size=50,
            val_size=0.2,
            max_epochs=2,
            thread_per_worker=1,
            num_workers=2,
            is_gpu=False,
            result_storage_path=str(out),
            pre_fetch_then_batch=1,
        )
        print("metrics:", {k: v for k, v in result.metrics.items() if "loss" in k or "acc" in k})
        print("checkpoint:", result.checkpoint)
        assert result.checkpoint is not None
        with result.checkpoint.as_directory() as folder:
            print("checkpoint files:", sorted(p.name for p in Path(folder).iterdir()))


if __name__ == "__main__":
    main()
