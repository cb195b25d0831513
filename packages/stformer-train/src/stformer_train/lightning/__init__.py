"""The PyTorch Lightning path of stformer pretraining, over the same models as the HF path.

Model, collator, early stopping and precision come from :func:`stformer_train.assemble.assemble`,
as on the HF path; only the training loop (``pl.Trainer`` over :class:`MLMTrainingPlan`) differs.
It does not import :mod:`stformer_train.hf` (and vice versa).
"""

from stformer_train.lightning._bert import BertMLMModule
from stformer_train.lightning._datamodule import AnnDataModule, H5adStreamDataModule
from stformer_train.lightning._module import MLMTrainingPlan
from stformer_train.lightning._progress import StepProgressBar
from stformer_train.lightning._trainer import (
    LightningEarlyStopping,
    ResumableBatchSampler,
    lightning_precision,
    pretrain_lightning,
)

__all__ = [
    # data: h5ad files into batches (AnnDataModule: protoplast's documented module)
    "AnnDataModule",
    "H5adStreamDataModule",
    "ResumableBatchSampler",
    # the training plan and its callbacks; stformer's BERT as a self-contained module
    "BertMLMModule",
    "LightningEarlyStopping",
    "MLMTrainingPlan",
    "StepProgressBar",
    "lightning_precision",
    # stformer's entry point: configs in, run directory out
    "pretrain_lightning",
]
