"""The Hugging Face ``Trainer`` path of stformer pretraining (stFormer's API on transformers 5.x).

* ``_trainer``: the training loop, :class:`STFormerPretrainer`, and its callbacks;
* ``_pretrain``: stformer's own entry point :func:`pretrain_mlm` (``ModelConfig`` + ``TrainConfig``
  into a run directory);
* ``_stformer``: stFormer's documented API (``setup_environment`` ... ``PretrainML``).

Model, collator, early stopping and precision come from :func:`stformer_train.assemble.assemble`,
as on the Lightning path. It does not import :mod:`stformer_train.lightning` (and vice versa).
"""

from stformer_train.hf._pretrain import (
    PretrainResult,
    precision_flags,
    pretrain_mlm,
    training_arguments,
)
from stformer_train.hf._stformer import (
    STFORMER_TRAIN_DEFAULTS,
    OutputDirs,
    PretrainML,
    get_training_arguments,
    make_output_dirs,
    setup_environment,
)
from stformer_train.hf._trainer import (
    HFEarlyStopping,
    STFormerPretrainer,
    last_checkpoint,
    load_example_lengths,
)
from stformer_train.models import build_bert_config

__all__ = [
    # the training loop and its callbacks
    "HFEarlyStopping",
    "STFormerPretrainer",
    "last_checkpoint",
    "load_example_lengths",
    # stformer's entry point: configs in, run directory out
    "PretrainResult",
    "precision_flags",
    "pretrain_mlm",
    "training_arguments",
    # stFormer's documented API
    "STFORMER_TRAIN_DEFAULTS",
    "OutputDirs",
    "PretrainML",
    "build_bert_config",
    "get_training_arguments",
    "make_output_dirs",
    "setup_environment",
]
