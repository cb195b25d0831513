"""stformer-dist: distributed pretraining on existing engines, DeepSpeed and Ray Train.

* DeepSpeed: :class:`DeepSpeedConfig`, :func:`resolve_deepspeed`, :func:`deepspeed_overrides`,
  :func:`deepspeed_training_arguments` (transformers ``TrainingArguments`` of a ``TrainConfig`` with
  a ZeRO config). stFormer's documented names (``choose_closest``, ``check_deepspeed_optimizer``,
  ``check_deepspeed_scheduler``, ``build_deepspeed``, ``PretrainML``) are
  :mod:`stformer_train.hf`'s, re-exported here with the same meaning.
* Ray Train: :class:`RayTrainRunner` (protoplast's documented runner: a user's LightningModule and
  dataset class; all of protoplast's API is in :mod:`stformer_dist.protoplast`),
  :class:`RayPretrainRunner` (stformer's BERT on h5ad files, tokens on the fly; formerly named
  ``RayTrainRunner``) and :func:`ray_pretrain_mlm` (the Hugging Face path), with checkpoints and
  ``FailureConfig``.

Ray is imported only when a Ray function runs; importing this package first sets the environment
Ray needs under ``uv run`` (:mod:`stformer_dist._ray_env`).
"""

from stformer_dist._ray_env import prepare_ray_environment  # noqa: I001  (before anything imports ray)

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
from stformer_dist._ray import (
    RayPretrainRunner,
    connect,
    ray_pretrain_mlm,
    run_config,
    scaling_config,
)
from stformer_dist._ray_train import RayTrainRunner
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
    "RayPretrainRunner",
    "RayTrainRunner",
    "prepare_ray_environment",
    "connect",
    "ray_pretrain_mlm",
    "run_config",
    "scaling_config",
]
