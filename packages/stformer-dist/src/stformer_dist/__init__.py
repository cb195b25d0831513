"""stformer-dist: distributed pretraining on existing engines, DeepSpeed and Ray Train.

* DeepSpeed: :class:`DeepSpeedConfig`, :func:`resolve_deepspeed`, :func:`deepspeed_overrides`,
  :func:`deepspeed_training_arguments` (transformers ``TrainingArguments`` of a ``TrainConfig`` with
  a ZeRO config). stFormer's documented names (``choose_closest``, ``check_deepspeed_optimizer``,
  ``check_deepspeed_scheduler``, ``build_deepspeed``, ``PretrainML``) are
  :mod:`stformer_train.hf`'s, re-exported here with the same meaning.
* Ray Train: :class:`RayTrainRunner` (the Lightning path over h5ad files, protoplast's API) and
  :func:`ray_pretrain_mlm` (the Hugging Face path), with checkpoints and ``FailureConfig``.

Ray is imported only when a Ray function runs.
"""

from stformer_dist._deepspeed import (
    DEEPSPEED_OPTIMIZERS,
    DEEPSPEED_SCHEDULERS,
    PRESETS,
    DeepSpeedConfig,
    check_deepspeed_optimizer,
    check_deepspeed_scheduler,
    choose_closest,
    deepspeed_overrides,
    deepspeed_training_arguments,
    ensure_distributed_env,
    resolve_deepspeed,
)
from stformer_dist._ray import RayTrainRunner, connect, ray_pretrain_mlm, run_config, scaling_config
from stformer_train.hf import PretrainML, build_deepspeed

__version__ = "0.1.0"

__all__ = [
    # DeepSpeed: configs, checks, training arguments
    "DEEPSPEED_OPTIMIZERS",
    "DEEPSPEED_SCHEDULERS",
    "PRESETS",
    "DeepSpeedConfig",
    "build_deepspeed",
    "check_deepspeed_optimizer",
    "check_deepspeed_scheduler",
    "choose_closest",
    "deepspeed_overrides",
    "deepspeed_training_arguments",
    "ensure_distributed_env",
    "resolve_deepspeed",
    # stFormer's entry point on DeepSpeed
    "PretrainML",
    # Ray Train: cluster, scaling, runners
    "RayTrainRunner",
    "connect",
    "ray_pretrain_mlm",
    "run_config",
    "scaling_config",
]
