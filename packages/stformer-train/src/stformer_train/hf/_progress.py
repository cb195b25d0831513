"""One progress bar and numeric metrics for the Hugging Face ``Trainer`` (instead of printed dicts)."""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from stformer_train.progress import format_metrics, format_value

_TRAIN_KEYS = ("loss", "learning_rate", "grad_norm")


class MetricsProgressCallback(TrainerCallback):
    """A ``TrainerCallback`` that replaces transformers' ``ProgressCallback``/``PrinterCallback``.

    With ``progress=True``: one tqdm bar over the optimiser steps whose postfix holds the last
    training loss and learning rate (numbers, updated once per ``logging_steps``), one compact
    line per evaluation (``step 20  eval_loss 4.616  epoch 1.2``) and one summary line at the
    end. With ``progress=False`` the bar is left out and each logging step prints one compact
    line instead. Only the main process prints.

    >>> MetricsProgressCallback(progress=False).progress
    False
    """

    def __init__(self, *, progress: bool = True):
        self.progress = progress
        self.bar: Any = None
        self._last = 0

    def _write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def on_train_begin(self, args, state, control, **kwargs):
        if self.progress and state.is_world_process_zero:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=state.max_steps,
                initial=state.global_step,
                desc="pretrain",
                unit="step",
                dynamic_ncols=True,
            )
        self._last = state.global_step

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self._last)
        self._last = state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        logs = {k: v for k, v in logs.items() if k != "total_flos"}
        if "train_runtime" in logs:  # the end-of-training summary
            loss = logs.get("train_loss")
            self._write(
                f"trained {state.global_step} steps in {logs['train_runtime']:.1f} s"
                + ("" if loss is None else f", mean training loss {format_value(loss)}")
            )
        elif any(k.startswith("eval_") for k in logs):
            shown = {k: v for k, v in logs.items() if k.endswith("loss") or k == "epoch"}
            self._write(format_metrics(shown, step=state.global_step))
        elif self.bar is not None:
            self.bar.set_postfix(
                {k: format_value(logs[k]) for k in _TRAIN_KEYS[:2] if k in logs}, refresh=False
            )
        else:
            shown = {k: v for k, v in logs.items() if k in (*_TRAIN_KEYS, "epoch")}
            self._write(format_metrics(shown, step=state.global_step))

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def use_metrics_progress(trainer: Any) -> None:
    """Swap a ``Trainer``'s default printing callbacks for one :class:`MetricsProgressCallback`."""
    for default in (ProgressCallback, PrinterCallback):
        trainer.remove_callback(default)
    trainer.add_callback(MetricsProgressCallback(progress=not trainer.args.disable_tqdm))
