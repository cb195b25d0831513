"""A STEP-style training script, written from STEP's trainer document (seed 002).

The only line changed from a STEP script is the import of the trainer module:

    from step.functionality.comps.trainer import EarlyStopping, Trainer, category_random_split
becomes
    from stformer_train.step import EarlyStopping, Trainer, category_random_split

Run: uv run python examples/port_step.py [path/to/pbmc68k_reduced_700_counts.h5ad]
"""

import sys

import anndata
import numpy as np
import torch

from stformer_train.step import BaseDataset, EarlyStopping, Trainer, category_random_split

path = sys.argv[1] if len(sys.argv) > 1 else "../shared/data/sc/pbmc68k_reduced_700_counts.h5ad"
adata = anndata.io.read_h5ad(path)
adata.X = np.log1p(adata.X.toarray()).astype(np.float32)


class TinyTranscriptFormer(torch.nn.Module):
    """Encoder + decoder + cell-type head; ``loss`` returns a dict of named losses."""

    def __init__(self, n_genes, n_types, hidden=32):
        super().__init__()
        self.enc = torch.nn.Sequential(torch.nn.Linear(n_genes, hidden), torch.nn.ReLU())
        self.dec = torch.nn.Linear(hidden, n_genes)
        self.cls = torch.nn.Linear(hidden, n_types)

    def loss(self, x, cell_type):
        z = self.enc(x)
        return {
            "recon": torch.nn.functional.mse_loss(self.dec(z), x),
            "cls": torch.nn.functional.cross_entropy(self.cls(z), cell_type),
        }


torch.manual_seed(0)
dataset = BaseDataset(adata, obs_keys=("bulk_labels",))
train_set, valid_set = category_random_split(dataset, split_rate=0.2, obs_key="bulk_labels")
share = valid_set.adata.obs["bulk_labels"].value_counts() / adata.obs["bulk_labels"].value_counts()
print(
    f"split: {len(train_set)} train / {len(valid_set)} valid cells; "
    f"validation share per category {share.min():.2f}..{share.max():.2f}"
)

model = TinyTranscriptFormer(adata.n_vars, len(dataset.categories["bulk_labels"]))
trainer = Trainer(model)
trainer.lossconfig = {
    "recon": {"patience": 3, "delta": 1e-4},
    "cls": {"patience": 3, "delta": 1e-4},
}
trainer.init_optimizer(lr=3e-3)
trainer.set_lr_scheduler(None, 0.5, 40)
train_loader, valid_loader = Trainer.make_loaders(
    dataset, 64, split_rate=0.2, obs_key="bulk_labels"
)
trainer.early_stopping = {
    "recon": EarlyStopping(patience=3, delta=1e-4, path="/tmp/port_step_recon.pt"),
    "cls": EarlyStopping(patience=3, delta=1e-4, path="/tmp/port_step_cls.pt"),
}
state = {"n_epochs": 200, "log_every": 5}
stopped = trainer.train_batch(state, (train_loader, valid_loader))
print(
    f"stopped early: {stopped} after {len(state['history'])} epochs; "
    + ", ".join(
        f"{k}: early_stop={es.early_stop} best={es.val_loss_min:.4f}"
        for k, es in trainer.early_stopping.items()
    )
)
assert all(es.early_stop for es in trainer.early_stopping.values()) == stopped
