"""Name checks of stFormer's API: ``choose_closest``, the DeepSpeed name checks, keyword checks.

Pure Python (no DeepSpeed import): the tables are DeepSpeed 0.19's names, checked against the
installed DeepSpeed by ``stformer-dist``'s tests. :func:`checked_signature` makes every documented
function raise a ``TypeError`` that names the closest documented parameter for an unknown keyword,
and :func:`check_keys` does the same for dicts of ``TrainingArguments`` fields.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

log = logging.getLogger(__name__)

_F = TypeVar("_F", bound=Callable[..., Any])

# DeepSpeed's optimizers (deepspeed.runtime.config.DEEPSPEED_OPTIMIZERS, 0.19) by their config names.
DEEPSPEED_OPTIMIZERS: tuple[str, ...] = (
    "Adam",
    "AdamW",
    "Adagrad",
    "Lamb",
    "Lion",
    "MuAdam",
    "MuAdamW",
    "MuSGD",
    "Muon",
)
# Names users know that DeepSpeed cannot run here: 1-bit optimizers (removed / need NCCL) and
# optimizers DeepSpeed has no config name for (a fuzzy match would pick a wrong one: sgd -> MuSGD).
UNSUPPORTED_OPTIMIZERS: tuple[str, ...] = (
    "OneBitAdam",
    "ZeroOneAdam",
    "OneBitLamb",
    "SGD",
    "Adafactor",
    "RMSprop",
)
# deepspeed.runtime.lr_schedules.VALID_LR_SCHEDULES
DEEPSPEED_SCHEDULERS: tuple[str, ...] = (
    "LRRangeTest",
    "OneCycle",
    "WarmupLR",
    "WarmupDecayLR",
    "WarmupCosineLR",
)
# transformers' names (TrainingArguments.optim / lr_scheduler_type, stFormer's defaults
# 'adamw_torch' and 'linear') for the DeepSpeed optimizer / scheduler that does the same.
HF_TO_DEEPSPEED_OPTIMIZER: dict[str, str] = {
    "adamw_torch": "AdamW",
    "adamw_torch_fused": "AdamW",
    "adamw_hf": "AdamW",
    "adamw_apex_fused": "AdamW",
    "adamw": "AdamW",
    "adam": "Adam",
    "adagrad": "Adagrad",
    "lion_32bit": "Lion",
    "lamb": "Lamb",
}
HF_TO_DEEPSPEED_SCHEDULER: dict[str, str] = {
    "linear": "WarmupDecayLR",  # linear warm-up, then linear decay to 0
    "constant_with_warmup": "WarmupLR",
    "constant": "WarmupLR",  # with warmup_steps=0 the warm-up is empty
    "cosine": "WarmupCosineLR",
}
UNSUPPORTED_SCHEDULERS: tuple[str, ...] = (
    "polynomial",
    "cosine_with_restarts",
    "cosine_with_min_lr",
    "inverse_sqrt",
    "reduce_lr_on_plateau",
    "warmup_stable_decay",
)


def _closest(
    name: str, supported: Sequence[str], unsupported: Sequence[str], cutoff: float
) -> tuple[str, bool]:
    """(the supported name ``name`` means, whether it matched exactly); ``ValueError`` otherwise."""
    if not supported:
        raise ValueError("choose_closest needs at least one supported name")
    if not 0.0 <= cutoff <= 1.0:
        raise ValueError(f"cutoff must be in [0, 1], got {cutoff}")
    key = str(name).strip().lower()
    by_lower = {s.lower(): s for s in supported}
    if key in by_lower:
        return by_lower[key], True
    refused = {u.lower(): u for u in unsupported}
    if key in refused:
        raise ValueError(f"{refused[key]!r} is not supported here; choose one of {list(supported)}")
    candidates = difflib.get_close_matches(key, list(by_lower) + list(refused), n=3, cutoff=cutoff)
    if not candidates:
        raise ValueError(
            f"{name!r} matches none of {list(supported)} (no name closer than {cutoff})"
        )
    if candidates[0] in refused:
        raise ValueError(
            f"{name!r} is closest to {refused[candidates[0]]!r}, which is not supported here; "
            f"choose one of {list(supported)}"
        )
    return by_lower[candidates[0]], False


def choose_closest(
    name: str,
    supported: Sequence[str],
    unsupported: Sequence[str] | None = None,
    cutoff: float = 0.4,
) -> str:
    """The supported name ``name`` means: an exact (case-insensitive) match, else the closest one.

    Parameters
    ----------
    name
        What the user wrote (``"adamw"``, ``"Adam_W"``, ...).
    supported
        The canonical names.
    unsupported
        Known names that are refused: ``name`` equal to one of them (case-insensitive), or
        closest to one, is a ``ValueError``.
    cutoff
        ``difflib`` similarity below which a name has no match (``ValueError``).

    Returns
    -------
    str
        The canonical spelling from ``supported``. An inexact match is logged as a warning.

    >>> choose_closest("adam_w", ["Adam", "AdamW", "Lamb"])
    'AdamW'
    """
    supported = list(supported)
    match, exact = _closest(name, supported, list(unsupported or ()), cutoff)
    if not exact:
        log.warning("%r is not a known name; using the closest, %r", name, match)
    return match


def check_deepspeed_optimizer(optimizer_type: str) -> str:
    """DeepSpeed's canonical optimizer name for ``optimizer_type``.

    DeepSpeed's own names in any case (``"adamw"`` -> ``"AdamW"``), transformers' names
    (``"adamw_torch"``, stFormer's default, -> ``"AdamW"``) and close misspellings are accepted;
    1-bit optimizers and optimizers DeepSpeed has no name for (``"sgd"``) are a ``ValueError``.

    >>> check_deepspeed_optimizer("adamw_torch")
    'AdamW'
    """
    key = str(optimizer_type).strip().lower()
    if key in HF_TO_DEEPSPEED_OPTIMIZER:
        return HF_TO_DEEPSPEED_OPTIMIZER[key]
    return choose_closest(optimizer_type, DEEPSPEED_OPTIMIZERS, UNSUPPORTED_OPTIMIZERS)


def check_deepspeed_scheduler(lr_scheduler_type: str) -> str:
    """DeepSpeed's canonical scheduler name for ``lr_scheduler_type``.

    DeepSpeed's names (``"warmupdecaylr"`` -> ``"WarmupDecayLR"``) and transformers' names with a
    DeepSpeed equivalent (``"linear"``, stFormer's default, -> ``"WarmupDecayLR"``; ``"cosine"`` ->
    ``"WarmupCosineLR"``; ``"constant_with_warmup"`` -> ``"WarmupLR"``) are accepted.

    >>> check_deepspeed_scheduler("linear")
    'WarmupDecayLR'
    """
    key = str(lr_scheduler_type).strip().lower()
    if key in HF_TO_DEEPSPEED_SCHEDULER:
        return HF_TO_DEEPSPEED_SCHEDULER[key]
    return choose_closest(lr_scheduler_type, DEEPSPEED_SCHEDULERS, UNSUPPORTED_SCHEDULERS)


def unknown_name_error(where: str, what: str, name: str, allowed: Iterable[str]) -> TypeError:
    """``TypeError``: ``where`` has no ``what`` ``name``, naming the closest allowed one."""
    allowed = sorted(allowed)
    try:
        close, _ = _closest(name, allowed, (), 0.4)
        hint = f"; did you mean {close!r}?"
    except ValueError:
        hint = f"; allowed: {allowed}"
    return TypeError(f"{where} got an unexpected {what} {name!r}{hint}")


def checked_signature(func: _F) -> _F:
    """Make ``func`` (a function or ``__init__``) name the closest parameter for an unknown keyword.

    Python's own error says only "unexpected keyword argument"; the ported scripts this API
    serves were written against other spellings, so the error says which one is meant.
    """
    sig = inspect.signature(func)
    params = [p for p in sig.parameters if p != "self"]
    where = func.__qualname__.replace(".__init__", "") + "()"

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            sig.bind(*args, **kwargs)
        except TypeError as exc:
            for key in kwargs:
                if key not in sig.parameters:
                    raise unknown_name_error(where, "keyword argument", key, params) from None
            raise TypeError(f"{where}: {exc}") from None
        return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def check_keys(where: str, mapping: Mapping[str, Any] | None, allowed: Iterable[str]) -> dict:
    """A copy of ``mapping`` (``{}`` for ``None``); an unknown key is a ``TypeError`` naming the closest."""
    if mapping is None:
        return {}
    if not isinstance(mapping, Mapping):
        raise TypeError(f"{where} must be a dict, got {type(mapping).__name__}")
    allowed = set(allowed)
    for key in mapping:
        if key not in allowed:
            raise unknown_name_error(where, "key", key, allowed)
    return dict(mapping)
