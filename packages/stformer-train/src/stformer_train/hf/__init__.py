"""The Hugging Face ``Trainer`` path of stformer pretraining, and stFormer's documented API.

Every name of stFormer's pretraining documents is importable from here (one import line for a
ported script): ``load_example_lengths``, ``setup_environment``, ``make_output_dirs``,
``choose_closest``, ``check_deepspeed_optimizer``, ``check_deepspeed_scheduler``,
``build_bert_config``, ``get_training_arguments``, ``build_deepspeed``, ``STFormerPreCollator``,
``STFormerPretrainer``, ``PretrainML`` (``run_pretraining``, ``run_hyperparameter_train``).

* ``stformer_train._names``: ``choose_closest``, the DeepSpeed name checks, the keyword checks
  (beside ``models``, whose ``build_bert_config`` uses them);
* ``_arguments``: seeds, run folders, ``TrainingArguments`` (``build_deepspeed`` reaches
  ``stformer_dist`` when it runs);
* ``_precollator``: ``STFormerPreCollator`` (``BatchEncoding`` results);
* ``_trainer``: the training loop, :class:`STFormerPretrainer`, and its callbacks;
* ``_pretrain``: stformer's own entry point :func:`pretrain_mlm` (``ModelConfig`` + ``TrainConfig``
  into a run directory);
* ``_stformer``: ``PretrainML`` (``run_hyperparameter_train`` reaches ``stformer_tune`` when it runs).

Model, collator, early stopping and precision come from :func:`stformer_train.assemble.assemble`,
as on the Lightning path. It does not import :mod:`stformer_train.lightning` (and vice versa).
"""

from stformer_train._names import (
    DEEPSPEED_OPTIMIZERS,
    DEEPSPEED_SCHEDULERS,
    UNSUPPORTED_OPTIMIZERS,
    check_deepspeed_optimizer,
    check_deepspeed_scheduler,
    choose_closest,
)
from stformer_train.hf._arguments import (
    LEGACY_TRAINING_ARGUMENTS,
    STFormerTrainingArguments,
    build_deepspeed,
    get_training_arguments,
    make_output_dirs,
    setup_environment,
)
from stformer_train.hf._precollator import STFormerPreCollator
from stformer_train.hf._pretrain import (
    PretrainResult,
    precision_flags,
    pretrain_mlm,
    training_arguments,
)
from stformer_train.hf._progress import MetricsProgressCallback
from stformer_train.hf._stformer import (
    PretrainML,
    load_token_dictionary,
    run_hyperparameter_train,
    run_pretraining,
)
from stformer_train.hf._trainer import (
    HFEarlyStopping,
    STFormerPretrainer,
    last_checkpoint,
    load_example_lengths,
)
from stformer_train.models import build_bert_config

__all__ = [
    # one progress bar and numeric metrics instead of transformers' printed dicts
    "MetricsProgressCallback",
    # stFormer's documented API (seeds 000 and 001)
    "PretrainML",
    "STFormerPreCollator",
    "STFormerPretrainer",
    "build_bert_config",
    "build_deepspeed",
    "check_deepspeed_optimizer",
    "check_deepspeed_scheduler",
    "choose_closest",
    "get_training_arguments",
    "load_example_lengths",
    "make_output_dirs",
    "run_hyperparameter_train",
    "run_pretraining",
    "setup_environment",
    # their supporting names
    "DEEPSPEED_OPTIMIZERS",
    "DEEPSPEED_SCHEDULERS",
    "LEGACY_TRAINING_ARGUMENTS",
    "STFormerTrainingArguments",
    "UNSUPPORTED_OPTIMIZERS",
    "load_token_dictionary",
    # the training loop and its callbacks
    "HFEarlyStopping",
    "last_checkpoint",
    # stformer's entry point: configs in, run directory out
    "PretrainResult",
    "precision_flags",
    "pretrain_mlm",
    "training_arguments",
]
