"""One trial: the base configs plus the drawn hyperparameters, trained with ``pretrain_mlm``.

The objective is ``eval_loss``, the masked-LM loss on the held-out split, at the trial's **last**
evaluation; every evaluation on the way is reported (for pruning). Both back-ends minimise that
same number and pick the best trial by it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from stformer_train import ModelConfig, TrainConfig, merge_config
from stformer_tune._space import MODEL_FIELDS, TRAIN_FIELDS

METRIC = "eval_loss"
MODE = "min"


def require_eval_split(train: TrainConfig) -> None:
    """Raise ``ValueError`` unless ``train`` holds out a validation split (the objective needs it)."""
    if not train.eval_fraction:
        raise ValueError(
            "TrainConfig.eval_fraction is 0: the search objective is the evaluation loss on a held-out "
            "split; set train.eval_fraction > 0 (e.g. 0.1) and train.eval_steps"
        )


def apply_params(
    model: ModelConfig, train: TrainConfig, params: Mapping[str, Any]
) -> tuple[ModelConfig, TrainConfig]:
    """The base configs with ``params`` set (each a ModelConfig or TrainConfig field); validated."""
    model_d, train_d = {}, {}
    for name, value in params.items():
        if name in TRAIN_FIELDS:
            train_d[name] = value
        elif name in MODEL_FIELDS:
            model_d[name] = value
        else:
            raise ValueError(f"hyperparameter {name!r} is not a TrainConfig or ModelConfig field")
    if "hidden_size" in params and "intermediate_size" not in params:
        model_d["intermediate_size"] = max(model.intermediate_size, 2 * int(params["hidden_size"]))
    return merge_config(model, **model_d), merge_config(train, **train_d)


class EvalLossReporter(TrainerCallback):
    """Hand every evaluation's ``eval_loss`` to ``report(step, loss, final)``; evaluate once more at the end.

    ``final`` is true for the evaluation at the last training step (the objective).

    ``report`` may raise (Optuna's ``TrialPruned``) to stop the trial; the trainer lets it through.
    """

    def __init__(self, report: Callable[[int, float, bool], None]):
        self.report = report
        self.losses: list[tuple[int, float]] = []

    def on_step_end(self, args, state, control, **kwargs):
        if state.max_steps and state.global_step >= state.max_steps:
            control.should_evaluate = True  # the objective is the loss at the end of the trial
        return control

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if metrics and METRIC in metrics:
            if self.losses and self.losses[-1][0] == state.global_step:
                return control  # already reported at this step
            loss = float(metrics[METRIC])
            self.losses.append((int(state.global_step), loss))
            final = bool(state.max_steps) and state.global_step >= state.max_steps
            self.report(int(state.global_step), loss, final)
        return control


@dataclass(frozen=True)
class TrialOutcome:
    """What one finished trial gives back: the objective and the evaluations on the way."""

    eval_loss: float
    steps: int
    losses: list[tuple[int, float]]


def run_trial(
    corpus: Any,
    trial_dir: str | PathLike[str],
    model: ModelConfig,
    train: TrainConfig,
    report: Callable[[int, float, bool], None],
    *,
    threads: int | None = None,
    arguments: Mapping[str, Any] | None = None,
) -> TrialOutcome:
    """Pretrain one trial into ``trial_dir`` and return its last evaluation loss.

    ``corpus`` is a stformer corpus (or its folder). ``threads`` sets torch's intra-op threads;
    ``arguments`` are extra ``TrainingArguments`` fields.
    """
    import torch

    from stformer_train.hf import pretrain_mlm

    require_eval_split(train)
    if threads:
        torch.set_num_threads(max(1, int(threads)))
    reporter = EvalLossReporter(report)
    result = pretrain_mlm(
        corpus,
        Path(trial_dir),
        model=model,
        train=train,
        progress=False,
        callbacks=[reporter],
        **dict(arguments or {}),
    )
    if not reporter.losses:
        raise RuntimeError(
            f"trial in {trial_dir} finished without an evaluation; check TrainConfig.eval_steps"
        )
    loss = reporter.losses[-1][1]
    if not math.isfinite(loss):
        raise FloatingPointError(f"trial in {trial_dir}: eval_loss is {loss}")
    return TrialOutcome(eval_loss=loss, steps=result.global_step, losses=list(reporter.losses))
