"""stformer-train: models, Hugging Face (and Lightning) trainers, embeddings and evaluation.

Builds on stformer-data (corpora, vocabularies) and stformer-collate (MLM batches). It imports
neither Ray, DeepSpeed nor Optuna: distributed engines live in stformer-dist, searches in stformer-tune.
"""

from stformer_train.config import ModelConfig, TrainConfig
from stformer_train.embed import embed_sequences
from stformer_train.evaluate import KnnScore, holdout_split, knn_score, pca_of_counts
from stformer_train.models import build_bert_config, build_mlm_model
from stformer_train.run_dir import RunDir

__version__ = "0.1.0"

__all__ = [
    "KnnScore",
    "ModelConfig",
    "RunDir",
    "TrainConfig",
    "build_bert_config",
    "build_mlm_model",
    "embed_sequences",
    "holdout_split",
    "knn_score",
    "pca_of_counts",
]
