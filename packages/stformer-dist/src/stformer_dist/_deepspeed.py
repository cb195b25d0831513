"""DeepSpeed for stformer: ZeRO configs, the CPU process state, DeepSpeed ``TrainingArguments``.

The config is handed to transformers' ``TrainingArguments(deepspeed=...)``; every value the
``Trainer`` also knows (batch size, gradient accumulation, clipping, learning rate, betas, epsilon,
weight decay, warm-up, fp16/bf16) is ``"auto"``, so transformers fills it from the training
arguments and the two can never disagree.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

from stformer_train._names import (
    DEEPSPEED_OPTIMIZERS,
    DEEPSPEED_SCHEDULERS,
    UNSUPPORTED_OPTIMIZERS,
    check_deepspeed_optimizer,
    check_deepspeed_scheduler,
    choose_closest,
)

log = logging.getLogger(__name__)

# The name tables and checks (choose_closest, check_deepspeed_*) are pure Python and live with
# stFormer's API in stformer_train.hf (re-exported here); a test checks the tables against the
# installed DeepSpeed.

__all__ = [
    "DEEPSPEED_OPTIMIZERS",
    "DEEPSPEED_SCHEDULERS",
    "PRESETS",
    "UNSUPPORTED_OPTIMIZERS",
    "DeepSpeedConfig",
    "check_deepspeed_optimizer",
    "check_deepspeed_scheduler",
    "choose_closest",
    "deepspeed_overrides",
    "deepspeed_training_arguments",
    "ensure_distributed_env",
    "resolve_deepspeed",
]

# Schedulers whose parameters transformers fills from the training arguments ("auto").
_AUTO_SCHEDULER_PARAMS: dict[str, dict[str, str]] = {
    "WarmupLR": {"warmup_min_lr": "auto", "warmup_max_lr": "auto", "warmup_num_steps": "auto"},
    "WarmupDecayLR": {
        "warmup_min_lr": "auto",
        "warmup_max_lr": "auto",
        "warmup_num_steps": "auto",
        "total_num_steps": "auto",
    },
    "WarmupCosineLR": {"warmup_num_steps": "auto", "total_num_steps": "auto"},
}
PRESETS: tuple[str, ...] = ("zero0", "zero1", "zero2", "zero3", "zero2-offload", "zero3-offload")


@dataclass(frozen=True, kw_only=True)
class DeepSpeedConfig:
    """A DeepSpeed ZeRO configuration consistent with the ``Trainer``'s arguments.

    Parameters
    ----------
    stage
        ZeRO stage: 0 (plain data parallel), 1 (optimizer state sharded), 2 (+ gradients),
        3 (+ parameters).
    offload_optimizer
        Keep optimizer state (and its step) in CPU memory (stages 1–3).
    offload_param
        Keep parameters in CPU memory (stage 3 only).
    precision
        ``"auto"`` (the training arguments' ``bf16``/``fp16``), ``"bf16"``, ``"fp16"`` or ``"fp32"``.
    optimizer
        A DeepSpeed optimizer name (checked with :func:`check_deepspeed_optimizer`), or ``None`` to
        let the ``Trainer`` create its own AdamW.
    torch_adam
        Run Adam/AdamW as ``torch.optim`` instead of DeepSpeed's fused kernel (no JIT build; the
        only choice on CPU unless the ``cpu_adam`` op is prebuilt).
    scheduler
        A DeepSpeed scheduler name (:func:`check_deepspeed_scheduler`), or ``None`` for the
        ``Trainer``'s own (stFormer's linear warm-up/decay).
    scheduler_params
        Parameters of ``scheduler``; ``WarmupLR``, ``WarmupDecayLR`` and ``WarmupCosineLR`` default
        to ``"auto"`` values the ``Trainer`` fills.
    gradient_accumulation_steps, gradient_clipping
        ``"auto"`` (from ``TrainingArguments``) or a number, which must then equal the training
        arguments' (transformers checks).
    extra
        Other top-level DeepSpeed keys, merged last (e.g. ``{"wall_clock_breakdown": True}``).

    >>> DeepSpeedConfig(stage=2).to_dict()["zero_optimization"]["stage"]
    2
    """

    stage: int = 2
    offload_optimizer: bool = False
    offload_param: bool = False
    precision: str = "auto"
    optimizer: str | None = "AdamW"
    torch_adam: bool = True
    scheduler: str | None = None
    scheduler_params: Mapping[str, Any] = field(default_factory=dict)
    gradient_accumulation_steps: int | str = "auto"
    gradient_clipping: float | str = "auto"
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.stage not in (0, 1, 2, 3):
            raise ValueError(f"DeepSpeedConfig.stage must be 0, 1, 2 or 3, got {self.stage!r}")
        if self.offload_param and self.stage != 3:
            raise ValueError(
                f"DeepSpeedConfig.offload_param needs stage 3 (ZeRO shards parameters only there), "
                f"got stage {self.stage}"
            )
        if self.offload_optimizer and self.stage == 0:
            raise ValueError("DeepSpeedConfig.offload_optimizer needs stage 1, 2 or 3")
        if self.precision not in ("auto", "bf16", "fp16", "fp32"):
            raise ValueError(
                f"DeepSpeedConfig.precision must be auto, bf16, fp16 or fp32; got {self.precision!r}"
            )
        if self.optimizer is not None:
            object.__setattr__(self, "optimizer", check_deepspeed_optimizer(self.optimizer))
        if self.scheduler is not None:
            object.__setattr__(self, "scheduler", check_deepspeed_scheduler(self.scheduler))
            if not self.scheduler_params and self.scheduler not in _AUTO_SCHEDULER_PARAMS:
                raise ValueError(
                    f"DeepSpeedConfig.scheduler_params must be given for {self.scheduler} "
                    f"(only {sorted(_AUTO_SCHEDULER_PARAMS)} are filled from the training arguments)"
                )
        ga = self.gradient_accumulation_steps
        if ga != "auto" and not (isinstance(ga, int) and ga >= 1):
            raise ValueError(
                f"DeepSpeedConfig.gradient_accumulation_steps must be 'auto' or an int >= 1, got {ga!r}"
            )
        gc = self.gradient_clipping
        if gc != "auto" and not (isinstance(gc, int | float) and gc >= 0):
            raise ValueError(
                f"DeepSpeedConfig.gradient_clipping must be 'auto' or a number >= 0, got {gc!r}"
            )

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> DeepSpeedConfig:
        """``zero0`` … ``zero3``, ``zero2-offload`` (optimizer on CPU) or ``zero3-offload`` (both on CPU).

        >>> DeepSpeedConfig.preset("zero3-offload").offload_param
        True
        """
        preset = choose_closest(name, PRESETS, cutoff=0.8)
        stage = int(preset[4])
        offload = preset.endswith("-offload")
        kwargs: dict[str, Any] = dict(
            stage=stage, offload_optimizer=offload, offload_param=offload and stage == 3
        )
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The DeepSpeed JSON config (a new dict; safe to modify)."""
        zero: dict[str, Any] = {"stage": self.stage}
        if self.stage >= 1:
            zero.update(overlap_comm=False, contiguous_gradients=True, reduce_bucket_size="auto")
        if self.stage == 3:
            zero.update(
                stage3_prefetch_bucket_size="auto",
                stage3_param_persistence_threshold="auto",
                stage3_gather_16bit_weights_on_model_save=True,
            )
        if self.offload_optimizer:
            zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
        if self.offload_param:
            zero["offload_param"] = {"device": "cpu", "pin_memory": False}
        config: dict[str, Any] = {
            "train_micro_batch_size_per_gpu": "auto",
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "gradient_clipping": self.gradient_clipping,
            "zero_optimization": zero,
            "bf16": {"enabled": "auto" if self.precision == "auto" else self.precision == "bf16"},
            "fp16": {"enabled": "auto" if self.precision == "auto" else self.precision == "fp16"},
        }
        if self.offload_optimizer and self.torch_adam:
            config["zero_force_ds_cpu_optimizer"] = (
                False  # torch's Adam on offloaded state (no cpu_adam build)
            )
        if self.optimizer is not None:
            params: dict[str, Any] = {
                "lr": "auto",
                "betas": "auto",
                "eps": "auto",
                "weight_decay": "auto",
            }
            if self.optimizer in ("Adam", "AdamW"):
                params["torch_adam"] = self.torch_adam
                params["adam_w_mode"] = self.optimizer == "AdamW"
            config["optimizer"] = {"type": self.optimizer, "params": params}
        if self.scheduler is not None:
            config["scheduler"] = {
                "type": self.scheduler,
                "params": dict(self.scheduler_params or _AUTO_SCHEDULER_PARAMS[self.scheduler]),
            }
        config.update(copy.deepcopy(dict(self.extra)))
        return config


DeepSpeedSpec = bool | str | PathLike | Mapping[str, Any] | DeepSpeedConfig


def _drop_auto_train_batch_size(config: dict[str, Any]) -> dict[str, Any]:
    # transformers fills an "auto" train_batch_size while building TrainingArguments, before the
    # process group exists (world size 1 on CPU), so 2 processes fail DeepSpeed's batch check.
    # DeepSpeed derives it from the micro batch, accumulation and world size anyway.
    if config.get("train_batch_size") == "auto":
        del config["train_batch_size"]
    return config


def resolve_deepspeed(spec: DeepSpeedSpec) -> dict[str, Any]:
    """A DeepSpeed config dict from ``True`` (ZeRO-2), a preset (``"zero2"``, ``"zero3-offload"``, ...),
    a JSON file, a dict or a :class:`DeepSpeedConfig`.

    >>> resolve_deepspeed("zero3")["zero_optimization"]["stage"]
    3
    """
    from stformer_data import InputError

    if spec is True:
        return DeepSpeedConfig().to_dict()
    if spec is False or spec is None:
        raise ValueError(
            "deepspeed is off (False/None); pass True, a preset, a JSON file or a config"
        )
    if isinstance(spec, DeepSpeedConfig):
        return spec.to_dict()
    if isinstance(spec, Mapping):
        if "zero_optimization" not in spec and "optimizer" not in spec:
            log.warning(
                "the DeepSpeed config has neither zero_optimization nor optimizer: plain data parallel"
            )
        return _drop_auto_train_batch_size(copy.deepcopy(dict(spec)))
    text = os.fspath(spec)
    if text.lower() in PRESETS:
        return DeepSpeedConfig.preset(text).to_dict()
    path = Path(text)
    if path.suffix.lower() != ".json":
        raise ValueError(f"deepspeed must be one of {list(PRESETS)} or a .json file, got {text!r}")
    if not path.is_file():
        raise InputError(
            path,
            "deepspeed",
            "does not exist",
            f"pass an existing DeepSpeed JSON or one of {list(PRESETS)}",
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(
            path, "deepspeed", f"is not valid JSON ({exc})", "fix the JSON syntax"
        ) from exc
    if not isinstance(data, dict):
        raise InputError(
            path, "deepspeed", "is not a JSON object", "write the DeepSpeed config as {...}"
        )
    return _drop_auto_train_batch_size(data)


def ensure_distributed_env(*, master_addr: str = "127.0.0.1") -> dict[str, str]:
    """Set ``RANK``/``LOCAL_RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT`` for one process when unset.

    A launcher (torchrun, the deepspeed launcher, Ray Train) sets them; without them DeepSpeed falls
    back to MPI discovery and asks for ``mpi4py``. Returns the values now in ``os.environ``.
    """
    if "WORLD_SIZE" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    os.environ.setdefault("LOCAL_RANK", os.environ.get("RANK", "0"))
    os.environ.setdefault("MASTER_ADDR", master_addr)
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as s:
            s.bind((master_addr, 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    return {
        k: os.environ[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    }


def deepspeed_overrides(spec: DeepSpeedSpec) -> dict[str, Any]:
    """``TrainingArguments`` fields that run the ``Trainer`` on DeepSpeed: ``deepspeed`` and, on CPU,
    ``accelerator_config``.

    Without a GPU, Accelerate finds no communication backend for DeepSpeed and silently trains
    every process alone (world size 1). On CPU this therefore completes the distributed environment
    (:func:`ensure_distributed_env`), starts Accelerate's process state on DeepSpeed with gloo, and
    tells the ``Trainer`` to use that state (``use_configured_state``). Call it in every process,
    before the ``TrainingArguments`` are built.
    """
    config = resolve_deepspeed(spec)
    overrides: dict[str, Any] = {"deepspeed": config}
    import torch

    if not torch.cuda.is_available():
        ensure_distributed_env()
        from accelerate import PartialState

        previous = os.environ.get("ACCELERATE_USE_DEEPSPEED")
        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        try:
            state = PartialState(backend="gloo")
        finally:
            if previous is None:
                del os.environ["ACCELERATE_USE_DEEPSPEED"]
            else:
                os.environ["ACCELERATE_USE_DEEPSPEED"] = previous
        if state.distributed_type.value != "DEEPSPEED":
            raise RuntimeError(
                f"Accelerate is already set up for {state.distributed_type.value}, not DeepSpeed; "
                "build the DeepSpeed arguments before any other Accelerator in this process"
            )
        overrides["accelerator_config"] = {"use_configured_state": True}
    return overrides


def deepspeed_training_arguments(
    output_dir: str | PathLike[str],
    *,
    deepspeed: DeepSpeedSpec = True,
    train: Any = None,
    **argument_overrides: Any,
):
    """``TrainingArguments`` of a :class:`stformer_train.TrainConfig` with a DeepSpeed config.

    stformer's own builder (stFormer's documented ``build_deepspeed`` with its 17 parameters is
    :func:`stformer_train.hf.build_deepspeed`).

    Parameters
    ----------
    output_dir
        The ``Trainer``'s output (checkpoint) folder.
    deepspeed
        ``True`` (ZeRO-2), a preset name, a JSON file, a dict or a :class:`DeepSpeedConfig`.
    train
        A :class:`stformer_train.TrainConfig` (default ``TrainConfig()``); its values fill the
        config's ``"auto"`` entries through transformers.
    argument_overrides
        Other ``TrainingArguments`` fields (``gradient_accumulation_steps``, ``max_grad_norm``, ...).

    Fixed numbers in the DeepSpeed config that contradict the training arguments raise
    ``ValueError`` (transformers' check), so the two stay consistent. On CPU the process state is
    prepared as in :func:`deepspeed_overrides`.
    """
    from stformer_train import TrainConfig
    from stformer_train.hf import training_arguments

    overrides = deepspeed_overrides(deepspeed)
    overrides.update(argument_overrides)
    args = training_arguments(train or TrainConfig(), output_dir, **overrides)
    mismatches = getattr(getattr(args, "hf_deepspeed_config", None), "mismatches", [])
    if mismatches:
        raise ValueError(
            "the DeepSpeed config contradicts the training arguments:\n"
            + "\n".join(mismatches)
            + "\nset these DeepSpeed values to 'auto' (DeepSpeedConfig does by default)"
        )
    return args
