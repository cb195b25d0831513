"""The one precision policy of every training path (HF ``Trainer``, Lightning, Ray, DeepSpeed).

:func:`resolve_precision` turns a requested mode (``TrainConfig.mixed_precision``: ``"auto"``,
``"bf16"``, ``"fp16"`` or ``"no"``) into a :class:`Precision` for the hardware at hand, and each
engine reads its own spelling from it (:attr:`Precision.hf_flags` for ``TrainingArguments``,
:attr:`Precision.lightning` for ``pl.Trainer(precision=...)``):

* ``"auto"``: bf16 on a GPU that has it, fp16 on other GPUs, fp32 on CPU;
* ``"bf16"`` / ``"fp16"``: that autocast on a GPU; on a machine without a CUDA GPU (or bf16 on a
  GPU without bf16) fp32, with one ``RuntimeWarning`` that says so, instead of an engine error
  deep inside the trainer;
* ``"no"``: fp32 everywhere.

>>> resolve_precision("no")
<Precision.FP32: 'no'>
>>> Precision.BF16.lightning, Precision.FP32.hf_flags
('bf16-mixed', {'bf16': False, 'fp16': False})
"""

from __future__ import annotations

import enum
import warnings

__all__ = ["PRECISION_MODES", "Precision", "resolve_precision"]

PRECISION_MODES = ("auto", "no", "bf16", "fp16")


class Precision(enum.Enum):
    """A resolved training precision (what the engine really runs), by its config spelling."""

    FP32 = "no"
    BF16 = "bf16"
    FP16 = "fp16"

    @property
    def hf_flags(self) -> dict[str, bool]:
        """``bf16``/``fp16`` for transformers' ``TrainingArguments``."""
        return {"bf16": self is Precision.BF16, "fp16": self is Precision.FP16}

    @property
    def lightning(self) -> str:
        """Lightning's ``precision`` argument."""
        return {Precision.BF16: "bf16-mixed", Precision.FP16: "16-mixed"}.get(self, "32-true")


def _hardware() -> tuple[bool, bool]:
    """(a CUDA GPU is present, it supports bf16)."""
    import torch

    cuda = torch.cuda.is_available()
    return cuda, bool(cuda and torch.cuda.is_bf16_supported())


def resolve_precision(mode: str = "auto") -> Precision:
    """The precision to train with for the requested ``mode`` on this machine (see the module docs).

    Raises ``ValueError`` for a mode outside :data:`PRECISION_MODES`.
    """
    if mode not in PRECISION_MODES:
        raise ValueError(
            f"mixed_precision must be one of {', '.join(PRECISION_MODES)}; got {mode!r}"
        )
    if mode == "no":
        return Precision.FP32
    cuda, bf16 = _hardware()
    if mode == "auto":
        return (Precision.BF16 if bf16 else Precision.FP16) if cuda else Precision.FP32
    if cuda and (mode == "fp16" or bf16):
        return Precision(mode)
    where = "this GPU has no bf16" if cuda else "no CUDA GPU is available"
    warnings.warn(
        f"mixed_precision={mode!r} was asked for but {where}: training in fp32 "
        "(set mixed_precision='auto' to choose per machine)",
        RuntimeWarning,
        stacklevel=2,
    )
    return Precision.FP32
