"""stFormer's run set-up: seeds, run folders and ``TrainingArguments`` (plain or on DeepSpeed).

``get_training_arguments`` and ``build_deepspeed`` take stFormer's 17 documented parameters and
return transformers 5 ``TrainingArguments`` (a subclass, :class:`STFormerTrainingArguments`, that
keeps the ``logging_dir`` and ``group_by_length`` transformers 5 removed). The precision comes
from :func:`stformer_train.precision.resolve_precision`; the DeepSpeed config from
``stformer_dist`` (imported when ``build_deepspeed`` runs).
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

from transformers import TrainingArguments

from stformer_train._names import (
    check_deepspeed_optimizer,
    check_deepspeed_scheduler,
    check_keys,
    checked_signature,
)
from stformer_train.precision import Precision, resolve_precision

__all__ = [
    "LEGACY_TRAINING_ARGUMENTS",
    "STFormerTrainingArguments",
    "build_deepspeed",
    "get_training_arguments",
    "make_output_dirs",
    "setup_environment",
]

SAVES_PER_EPOCH = 8  # Geneformer's / stFormer's recipe: save_steps = examples / batch / 8
LOGGING_STEPS = 100


@dataclass
class STFormerTrainingArguments(TrainingArguments):
    """transformers' ``TrainingArguments`` plus stFormer's ``logging_dir``.

    transformers 5 removed ``logging_dir`` (TensorBoard now reads ``TENSORBOARD_LOGGING_DIR``)
    and ``group_by_length`` (now ``train_sampling_strategy="group_by_length"``).
    :class:`~stformer_train.hf.STFormerPretrainer` writes TensorBoard events and
    ``log_history.json`` into ``logging_dir``; ``group_by_length`` is a read-only view of the
    sampling strategy, which is what :meth:`STFormerPretrainer.get_train_sampler` documents.
    """

    logging_dir: str | None = field(
        default=None, metadata={"help": "TensorBoard events and log_history.json go here."}
    )

    @property
    def group_by_length(self) -> bool:
        return self.train_sampling_strategy == "group_by_length"


TRAINING_ARGUMENT_FIELDS = frozenset(f.name for f in dataclasses.fields(STFormerTrainingArguments))

#: Spellings transformers 5 removed -> the field that replaced them (accepted in ``overrides``
#: dicts with a ``DeprecationWarning``).
LEGACY_TRAINING_ARGUMENTS = {
    "group_by_length": "train_sampling_strategy",
    "evaluation_strategy": "eval_strategy",
    "warmup_ratio": "warmup_steps",
}


def map_legacy_arguments(where: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` with transformers 4 spellings mapped to transformers 5 ones (warned once each)."""
    out = dict(overrides)
    for old, new in LEGACY_TRAINING_ARGUMENTS.items():
        if old not in out:
            continue
        value = out.pop(old)
        warnings.warn(
            f"{where}: {old!r} was removed in transformers 5; use {new!r}"
            + (
                ' ("group_by_length" or "random")'
                if old == "group_by_length"
                else " (a float < 1 is a fraction of the steps)"
                if old == "warmup_ratio"
                else ""
            ),
            DeprecationWarning,
            stacklevel=4,
        )
        if old == "group_by_length":
            value = "group_by_length" if value else "random"
        elif old == "warmup_ratio":
            if not 0 <= float(value) < 1:
                raise ValueError(f"{where}: warmup_ratio must be in [0, 1), got {value!r}")
            value = float(value)
        out.setdefault(new, value)
    return out


def check_overrides(where: str, overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Validated ``overrides``: ``TrainingArguments`` fields (``TypeError`` naming the closest)."""
    allowed = TRAINING_ARGUMENT_FIELDS | set(LEGACY_TRAINING_ARGUMENTS)
    return map_legacy_arguments(where, check_keys(where, overrides, allowed))


@checked_signature
def setup_environment(seed: int) -> None:
    """Seed Python, numpy and torch (all devices) and set the environment for reproducible runs.

    ``PYTHONHASHSEED`` is set to ``seed`` (for subprocesses and DataLoader workers) and
    ``TOKENIZERS_PARALLELISM`` to ``false`` unless set.
    """
    from transformers import set_seed

    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"setup_environment: seed must be an int, got {seed!r}")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ["PYTHONHASHSEED"] = str(seed)
    set_seed(seed)  # Python, numpy and torch (all devices)


@checked_signature
def make_output_dirs(output_dir: str | PathLike[str], run_name: str) -> dict[str, Path]:
    """Create a run's folders; return ``{"training": ..., "logging": ..., "model": ...}``.

    ``training`` is ``OUTPUT/models/RUN`` (checkpoints), ``logging`` ``OUTPUT/runs/RUN`` and
    ``model`` ``OUTPUT/models/RUN/models`` (the final model). As in Geneformer's recipe, a run
    whose final model exists is refused (``FileExistsError``), so it is never overwritten; an
    interrupted run (checkpoints, no final model) is reused and resumes.
    """
    if (
        not isinstance(run_name, str)
        or not run_name
        or os.sep in run_name
        or run_name in (".", "..")
    ):
        raise ValueError(f"make_output_dirs: run_name must be a folder name, got {run_name!r}")
    root = Path(output_dir)
    dirs = {
        "training": root / "models" / run_name,
        "logging": root / "runs" / run_name,
        "model": root / "models" / run_name / "models",
    }
    if (dirs["model"] / "config.json").exists():
        raise FileExistsError(
            f"{dirs['model']} already holds a trained model; choose another run_name or output_dir"
        )
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    return dirs


def _positive(where: str, **values: Any) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ValueError(f"{where}: {name} must be > 0, got {value!r}")


def training_arguments_kwargs(
    where: str,
    *,
    output_dir: str | PathLike[str],
    logging_dir: str | PathLike[str] | None,
    train_dataset_length: int,
    batch_size: int,
    learning_rate: float,
    epochs: float,
    weight_decay: float,
    warmup_steps: float,
    lr_scheduler_type: str,
    optimizer_type: str,
    do_train: bool,
    do_eval: bool,
    length_column_name: str,
    disable_tqdm: bool,
    precision: Precision,
    group_by_length: bool,
) -> dict[str, Any]:
    """The ``TrainingArguments`` keywords of stFormer's documented parameters (before overrides)."""
    _positive(where, train_dataset_length=train_dataset_length, batch_size=batch_size)
    _positive(where, learning_rate=learning_rate, epochs=epochs)
    if weight_decay < 0 or warmup_steps < 0:
        raise ValueError(f"{where}: weight_decay and warmup_steps must be >= 0")
    save_steps = max(1, math.floor(train_dataset_length / batch_size / SAVES_PER_EPOCH))
    return dict(
        output_dir=str(output_dir),
        logging_dir=None if logging_dir is None else str(logging_dir),
        per_device_train_batch_size=int(batch_size),
        learning_rate=float(learning_rate),
        num_train_epochs=float(epochs),
        weight_decay=float(weight_decay),
        warmup_steps=warmup_steps,
        lr_scheduler_type=lr_scheduler_type,
        optim=optimizer_type,
        do_train=bool(do_train),
        do_eval=bool(do_eval),
        eval_strategy="steps" if do_eval else "no",
        eval_steps=save_steps if do_eval else None,
        length_column_name=length_column_name,
        disable_tqdm=bool(disable_tqdm),
        train_sampling_strategy="group_by_length" if group_by_length else "random",
        save_strategy="steps",
        save_steps=save_steps,
        logging_steps=min(LOGGING_STEPS, save_steps),
        report_to="none",  # STFormerPretrainer writes TensorBoard events into logging_dir
        dataloader_num_workers=0,
        **precision.hf_flags,
    )


def fp16_precision(fp16: bool) -> Precision:
    """stFormer's ``fp16`` flag through the one precision policy (fp32 without a GPU, one warning)."""
    if not fp16:
        return Precision.FP32
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        precision = resolve_precision("fp16")
    if caught:  # the policy's fallback, in the words of this API
        warnings.warn(
            "fp16=True but no CUDA GPU is available: training in fp32 (pass fp16=False to silence this)",
            RuntimeWarning,
            stacklevel=3,
        )
    return precision


def _hf_optimizer_names() -> frozenset[str]:
    from transformers.training_args import OptimizerNames

    return frozenset(o.value for o in OptimizerNames)


def _hf_scheduler_names() -> frozenset[str]:
    from transformers.trainer_utils import SchedulerType

    return frozenset(o.value for o in SchedulerType)


_DS_TO_HF_SCHEDULER = {
    "WarmupDecayLR": "linear",
    "WarmupLR": "constant_with_warmup",
    "WarmupCosineLR": "cosine",
}


def _import_dist():
    try:
        import stformer_dist
    except ImportError as exc:  # pragma: no cover - the workspace installs it
        raise ImportError(
            "build_deepspeed and PretrainML(deepspeed=True) need stformer-dist: "
            'pip install "stformer-dist"'
        ) from exc
    return stformer_dist


def build_training_arguments(
    where: str,
    params: dict[str, Any],
    *,
    deepspeed: bool,
    precision: Precision | None = None,
    overrides: dict[str, Any] | None = None,
) -> STFormerTrainingArguments:
    """The one builder behind :func:`get_training_arguments`, :func:`build_deepspeed` and ``PretrainML``.

    ``params`` are the 16 documented parameters (``fp16`` included); ``precision``, when given,
    is the already resolved precision (``PretrainML`` resolves it once, so the CPU fallback
    warns once).
    """
    params = dict(params)
    fp16 = params.pop("fp16")
    overrides = check_overrides(f"{where}: overrides", overrides)
    if deepspeed:
        dist = _import_dist()
        spec = overrides.pop("deepspeed", True)
        optimizer = check_deepspeed_optimizer(params["optimizer_type"])
        scheduler = check_deepspeed_scheduler(params["lr_scheduler_type"])
        if spec is True:
            config = dist.DeepSpeedConfig(optimizer=optimizer, scheduler=scheduler).to_dict()
        else:
            config = dist.resolve_deepspeed(spec)
        overrides.update(dist.deepspeed_overrides(config))
        # DeepSpeed's names (AdamW, WarmupDecayLR): DeepSpeed's optimizer and scheduler run; the
        # TrainingArguments get the transformers names of the same thing (they validate them)
        if params["optimizer_type"] not in _hf_optimizer_names():
            params["optimizer_type"] = "adamw_torch"
        if params["lr_scheduler_type"] not in _hf_scheduler_names():
            params["lr_scheduler_type"] = _DS_TO_HF_SCHEDULER.get(scheduler, "linear")
    kwargs = training_arguments_kwargs(where, precision=precision or fp16_precision(fp16), **params)
    kwargs.setdefault("dataloader_pin_memory", _cuda())  # pinning without CUDA only warns
    kwargs.update(overrides)
    args = STFormerTrainingArguments(**kwargs)
    mismatches = getattr(getattr(args, "hf_deepspeed_config", None), "mismatches", [])
    if mismatches:
        raise ValueError(
            f"{where}: the DeepSpeed config contradicts the training arguments:\n"
            + "\n".join(mismatches)
            + "\nset these DeepSpeed values to 'auto'"
        )
    return args


_DOC_PARAMS = (
    "output_dir",
    "logging_dir",
    "train_dataset_length",
    "batch_size",
    "learning_rate",
    "epochs",
    "weight_decay",
    "warmup_steps",
    "lr_scheduler_type",
    "optimizer_type",
    "do_train",
    "do_eval",
    "length_column_name",
    "disable_tqdm",
    "fp16",
    "group_by_length",
)


@checked_signature
def get_training_arguments(
    output_dir: str | PathLike[str],
    logging_dir: str | PathLike[str],
    train_dataset_length: int,
    batch_size: int,
    learning_rate: float,
    epochs: int,
    weight_decay: float,
    warmup_steps: int,
    lr_scheduler_type: str,
    optimizer_type: str,
    do_train: bool,
    do_eval: bool,
    length_column_name: str,
    disable_tqdm: bool,
    fp16: bool,
    group_by_length: bool,
    overrides: dict[str, Any] | None = None,
) -> TrainingArguments:
    """stFormer's ``TrainingArguments`` for pretraining (transformers 5).

    Parameters
    ----------
    output_dir, logging_dir
        Checkpoints; TensorBoard events and ``log_history.json`` (written by
        :class:`~stformer_train.hf.STFormerPretrainer`).
    train_dataset_length
        Examples in the training set: checkpoints are saved 8 times per epoch
        (``save_steps = length / batch_size / 8``, Geneformer's recipe), and evaluated at the same
        steps with ``do_eval``.
    batch_size, learning_rate, epochs, weight_decay, warmup_steps, lr_scheduler_type
        The optimisation (``per_device_train_batch_size``, ...).
    optimizer_type
        transformers' ``optim`` (``"adamw_torch"``, ...).
    do_train, do_eval
        ``do_eval`` also turns on ``eval_strategy="steps"``.
    length_column_name, disable_tqdm
        As in transformers.
    fp16
        fp16 autocast on a GPU; without a CUDA GPU the run is fp32, with one ``RuntimeWarning``.
    group_by_length
        ``train_sampling_strategy="group_by_length"`` (transformers 5's name).
    overrides
        ``TrainingArguments`` fields that win over the above. An unknown field is a
        ``TypeError`` naming the closest; transformers 4 spellings (``group_by_length``,
        ``evaluation_strategy``, ``warmup_ratio``) are mapped with a ``DeprecationWarning``.

    Returns
    -------
    STFormerTrainingArguments
        A ``TrainingArguments`` that also carries ``logging_dir``.
    """
    params = {k: v for k, v in locals().items() if k in _DOC_PARAMS}
    return build_training_arguments(
        "get_training_arguments", params, deepspeed=False, overrides=overrides
    )


@checked_signature
def build_deepspeed(
    output_dir: str | PathLike[str],
    logging_dir: str | PathLike[str],
    train_dataset_length: int,
    batch_size: int,
    learning_rate: float,
    epochs: int,
    weight_decay: float,
    warmup_steps: int,
    lr_scheduler_type: str,
    optimizer_type: str,
    do_train: bool,
    do_eval: bool,
    length_column_name: str,
    disable_tqdm: bool,
    fp16: bool,
    group_by_length: bool,
    overrides: dict[str, Any] | None = None,
) -> TrainingArguments:
    """:func:`get_training_arguments` on DeepSpeed (ZeRO-2 by default).

    The DeepSpeed config has the optimizer ``check_deepspeed_optimizer(optimizer_type)`` and the
    scheduler ``check_deepspeed_scheduler(lr_scheduler_type)`` (``"adamw_torch"`` -> AdamW,
    ``"linear"`` -> WarmupDecayLR); every number the ``Trainer`` also knows (batch, learning
    rate, warm-up, clipping, fp16/bf16) is ``"auto"`` and filled from these arguments.
    ``overrides={"deepspeed": ...}`` replaces the config (a preset such as ``"zero3"``, a JSON
    file or a dict, see ``stformer_dist.resolve_deepspeed``).

    Call it in every process before anything else sets up Accelerate: on CPU it starts
    Accelerate's DeepSpeed state over gloo (``stformer_dist.deepspeed_overrides``). Needs
    ``stformer-dist`` (imported here). Contradicting fixed numbers raise ``ValueError``.
    """
    params = {k: v for k, v in locals().items() if k in _DOC_PARAMS}
    return build_training_arguments("build_deepspeed", params, deepspeed=True, overrides=overrides)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
