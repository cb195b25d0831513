"""stformer-dist: distributed pretraining on existing engines, DeepSpeed and Ray Train.

* DeepSpeed: :func:`choose_closest`, :func:`check_deepspeed_optimizer`,
  :func:`check_deepspeed_scheduler`, :class:`DeepSpeedConfig`, :func:`build_deepspeed` (transformers
  ``TrainingArguments`` with a ZeRO config) and :class:`PretrainML` (``deepspeed=True``).
* Ray Train: :class:`RayPretrainRunner` (the Lightning path over h5ad files, protoplast's API) and
  :func:`ray_pretrain_mlm` (the Hugging Face path), with checkpoints and ``FailureConfig``.

Ray is imported only when a Ray function runs.
"""

from stformer_dist._deepspeed import (
    DEEPSPEED_OPTIMIZERS,
    DEEPSPEED_SCHEDULERS,
    PRESETS,
    DeepSpeedConfig,
    build_deepspeed,
    check_deepspeed_optimizer,
    check_deepspeed_scheduler,
    choose_closest,
    deepspeed_overrides,
    ensure_distributed_env,
    resolve_deepspeed,
)
from stformer_dist._pretrain import PretrainML
from stformer_dist._ray import RayPretrainRunner, connect, ray_pretrain_mlm, run_config, scaling_config

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
    "ensure_distributed_env",
    "resolve_deepspeed",
    # stFormer's entry point on DeepSpeed
    "PretrainML",
    # Ray Train: cluster, scaling, runners
    "RayPretrainRunner",
    "connect",
    "ray_pretrain_mlm",
    "run_config",
    "scaling_config",
]
