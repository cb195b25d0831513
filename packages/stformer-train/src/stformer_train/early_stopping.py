"""stformer's patience early stopping, shared by the Hugging Face and Lightning paths.

(STEP's documented ``EarlyStopping(patience, verbose, delta, path, trace_func)`` is
:class:`stformer_train.step.EarlyStopping`, exported as ``stformer_train.EarlyStopping``; this
class was called ``EarlyStopping`` before and differs in saving a ``save_pretrained`` folder and
in staying stopped once stopped.)

One :class:`PatienceStopping` watches one loss (``monitor``, e.g. ``"eval_loss"`` or
``"val_loss"``): an evaluation *improves* when the value is lower than the best so far by more
than ``min_delta``; after ``patience`` evaluations in a row without improvement, training stops.
On every improvement the model is saved to ``checkpoint_path`` (when given), so the best model
is on disk when the run stops. Watch several losses with several instances.

The trainers use thin adapters around this core: ``stformer_train.hf.HFEarlyStopping`` (a
``TrainerCallback``) and ``stformer_train.lightning.LightningEarlyStopping`` (a Lightning
``Callback``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any


@dataclass(kw_only=True)
class PatienceStopping:
    """Patience / min-delta early stopping on one monitored loss.

    Parameters
    ----------
    monitor
        Name of the logged loss to watch (lower is better).
    patience
        Evaluations without improvement before stopping (>= 1).
    min_delta
        An improvement must lower the best value by more than this (>= 0).
    checkpoint_path
        Folder where the best model is saved (``save_pretrained``) on every improvement.

    >>> es = PatienceStopping(monitor="eval_loss", patience=2, min_delta=0.01)
    >>> [es.update(v) for v in (1.0, 0.95, 0.949, 0.96)], es.should_stop
    ([True, True, False, False], True)
    """

    monitor: str = "eval_loss"
    patience: int = 3
    min_delta: float = 0.0
    checkpoint_path: str | PathLike[str] | None = None
    best: float = field(default=math.inf, init=False)
    wait: int = field(default=0, init=False)
    should_stop: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if self.patience < 1:
            raise ValueError(f"PatienceStopping.patience must be >= 1, got {self.patience}")
        if self.min_delta < 0:
            raise ValueError(f"PatienceStopping.min_delta must be >= 0, got {self.min_delta}")
        if not self.monitor:
            raise ValueError("PatienceStopping.monitor must name a logged loss, e.g. 'eval_loss'")

    def update(self, value: float, model: Any = None) -> bool:
        """Record one evaluation; return whether it improved (and save ``model`` if so)."""
        value = float(value)
        if value < self.best - self.min_delta:
            self.best, self.wait = value, 0
            if model is not None and self.checkpoint_path is not None:
                save_best(model, Path(self.checkpoint_path))
            return True
        self.wait += 1
        if self.wait >= self.patience:
            self.should_stop = True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait, "should_stop": self.should_stop}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.wait, self.should_stop = (
            float(state["best"]),
            int(state["wait"]),
            bool(state["should_stop"]),
        )


def save_best(model: Any, path: Path) -> None:
    """Save ``model`` to ``path`` atomically (``save_pretrained`` if it has it, else its state dict)."""
    import torch

    from stformer_data.atomic import atomic_dir

    with atomic_dir(path) as tmp:
        if hasattr(model, "save_pretrained"):
            model.save_pretrained(tmp)
        else:
            torch.save(model.state_dict(), tmp / "state_dict.pt")
