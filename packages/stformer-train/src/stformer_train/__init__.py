"""stformer-train: models, Hugging Face (and Lightning) trainers, embeddings and evaluation.

Builds on stformer-data (corpora, vocabularies) and stformer-collate (MLM batches). It imports
neither Ray, DeepSpeed nor Optuna: distributed engines live in stformer-dist, searches in stformer-tune.

The stages of a run, in order: configs (:mod:`~stformer_train.config`), the one assembly of model,
collator, early stopping and precision (:mod:`~stformer_train.assemble`,
:mod:`~stformer_train.precision`), a training loop (:mod:`stformer_train.hf` or
:mod:`stformer_train.lightning`) writing a :class:`RunDir`, then embeddings and evaluation.
"""

from stformer_train.api import embed, open_for_input
from stformer_train.assemble import TrainingParts, assemble
from stformer_train.config import (
    TRAIN_DEFAULTS,
    ModelConfig,
    TrainConfig,
    load_config_file,
    merge_config,
)
from stformer_train.early_stopping import PatienceStopping
from stformer_train.embedding import embed_sequences
from stformer_train.evaluate import KnnScore, holdout_split, knn_score, pca_of_counts
from stformer_train.models import bert_config_from, build_bert_config, build_mlm_model
from stformer_train.precision import Precision, resolve_precision
from stformer_train.progress import quiet_third_party
from stformer_train.run_dir import CorpusSplit, RunDir, plan_split, read_split, write_split
from stformer_train.step import EarlyStopping

# before a Trainer makes transformers import DeepSpeed: drop its "Setting accelerator to CPU"
quiet_third_party()

__version__ = "0.1.0"

__all__ = [
    # configs
    "TRAIN_DEFAULTS",
    "ModelConfig",
    "TrainConfig",
    "load_config_file",
    "merge_config",
    # assembly: model, collator, early stopping, precision
    "PatienceStopping",
    "Precision",
    "TrainingParts",
    "assemble",
    "bert_config_from",
    "build_bert_config",
    "build_mlm_model",
    "resolve_precision",
    # STEP's per-loss early stopping (stformer_train.step)
    "EarlyStopping",
    # the run's outputs and its held-out split
    "CorpusSplit",
    "RunDir",
    "plan_split",
    "read_split",
    "write_split",
    # embeddings and evaluation (embed: scverse-style, into an AnnData)
    "KnnScore",
    "embed",
    "open_for_input",
    "embed_sequences",
    "holdout_split",
    "knn_score",
    "pca_of_counts",
]
