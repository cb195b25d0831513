"""One progress bar over the optimiser steps for Lightning, with numeric metrics (not epochs of -2)."""

from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ProgressBar

from stformer_train.progress import format_metrics, format_value


class StepProgressBar(ProgressBar):
    """Lightning's progress bar replaced by one tqdm bar over ``max_steps``.

    Lightning's own bars count batches per epoch, which reads ``Epoch 0/-2`` when a run is set
    by steps; this bar counts optimiser steps, shows the last training loss and learning rate
    as its postfix (once per ``logging_steps``), prints one compact line per validation
    (``step 20  val_loss 4.616``) and one summary line at the end. With ``progress=False`` the
    bar is left out and each logging step prints one line.

    >>> StepProgressBar(logging_steps=10, progress=False).logging_steps
    10
    """

    def __init__(self, *, logging_steps: int, progress: bool = True):
        super().__init__()
        self.logging_steps, self.progress = int(logging_steps), progress
        self.bar: Any = None
        self._start = 0.0
        self._losses: list[float] = []
        self._enabled = True

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _write(self, line: str) -> None:
        if not self._enabled:
            return
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()
        if self.progress and self._enabled and trainer.is_global_zero:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=trainer.max_steps,
                initial=trainer.global_step,
                desc="pretrain",
                unit="step",
                dynamic_ncols=True,
            )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None:
            self._losses.append(float(loss))
        step = trainer.global_step
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
        if step % self.logging_steps or not self._losses:
            return
        values = {
            "loss": self._losses[-1],
            "learning_rate": trainer.optimizers[0].param_groups[0]["lr"],
        }
        if self.bar is not None:
            self.bar.set_postfix({k: format_value(v) for k, v in values.items()}, refresh=False)
        elif trainer.is_global_zero:
            self._write(format_metrics(values, step=step))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        shown = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val_")}
        if shown:
            self._write(format_metrics(shown, step=trainer.global_step))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if trainer.is_global_zero:
            mean = sum(self._losses) / len(self._losses) if self._losses else None
            self._write(
                f"trained {trainer.global_step} steps in {time.perf_counter() - self._start:.1f} s"
                + ("" if mean is None else f", mean training loss {format_value(mean)}")
            )
