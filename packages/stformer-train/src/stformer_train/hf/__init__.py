"""The Hugging Face ``Trainer`` path of stformer pretraining."""

from stformer_train.hf._pretrain import PretrainResult, pretrain_mlm, training_arguments

__all__ = ["PretrainResult", "pretrain_mlm", "training_arguments"]
