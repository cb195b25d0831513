"""The PyTorch Lightning path of stformer pretraining, over the same models as the HF path.

It does not import :mod:`stformer_train.hf` (and vice versa); both use :mod:`stformer_train.models`
and :mod:`stformer_train.early_stopping`.
"""

from stformer_train.lightning._datamodule import AnnDataModule
from stformer_train.lightning._module import MLMTrainingPlan
from stformer_train.lightning._trainer import (
    LightningEarlyStopping,
    ResumableBatchSampler,
    lightning_precision,
    pretrain_lightning,
)

__all__ = [
    "AnnDataModule",
    "LightningEarlyStopping",
    "MLMTrainingPlan",
    "ResumableBatchSampler",
    "lightning_precision",
    "pretrain_lightning",
]
