"""The Hugging Face ``Trainer`` path of stformer pretraining (stFormer's API on transformers 5.x).

It does not import :mod:`stformer_train.lightning` (and vice versa); both use :mod:`stformer_train.models`.
"""

from stformer_train.hf._pretrain import (
    PretrainResult,
    last_checkpoint,
    precision_flags,
    pretrain_mlm,
    training_arguments,
)
from stformer_train.hf._stformer import (
    HFEarlyStopping,
    OutputDirs,
    PretrainML,
    STFormerPretrainer,
    get_training_arguments,
    load_example_lengths,
    make_output_dirs,
    setup_environment,
)
from stformer_train.models import build_bert_config

__all__ = [
    "HFEarlyStopping",
    "OutputDirs",
    "PretrainML",
    "PretrainResult",
    "STFormerPretrainer",
    "build_bert_config",
    "get_training_arguments",
    "last_checkpoint",
    "load_example_lengths",
    "make_output_dirs",
    "precision_flags",
    "pretrain_mlm",
    "setup_environment",
    "training_arguments",
]
