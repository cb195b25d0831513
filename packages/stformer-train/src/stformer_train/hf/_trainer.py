"""The Hugging Face ``Trainer`` of stformer pretraining and its callbacks (stFormer's names).

:class:`STFormerPretrainer` is the training loop of the HF path: length-grouped sampling from the
example lengths, step-seeded masking that survives a resume, and the MLM loss at masked positions
only. :class:`HFEarlyStopping` adapts :class:`stformer_train.early_stopping.PatienceStopping`.
Both :mod:`stformer_train.hf._pretrain` and :mod:`stformer_train.hf._stformer` build on this module.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pickle
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import Trainer, TrainerCallback

from stformer_train.early_stopping import PatienceStopping
from stformer_train.models import mlm_loss
from stformer_train.training import EpochLengthGroupedSampler, StepSeededCollator

log = logging.getLogger(__name__)


def load_example_lengths(path: str | PathLike[str]) -> list[int]:
    """Read an example-lengths file: a pickle (Geneformer/stFormer) or JSON list of ints."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: example-lengths file not found (stformer tokenize writes "
            "example_lengths.pkl next to the dataset)"
        )
    if path.suffix == ".json":
        values = json.loads(path.read_text())
    else:
        with path.open("rb") as fh:
            values = pickle.load(fh)  # noqa: S301 - Geneformer's own format; only load files you trust
    if not isinstance(values, Sequence) or not all(
        isinstance(v, int | np.integer) and v > 0 for v in values
    ):
        raise ValueError(f"{path}: example lengths must be a list of positive ints")
    return [int(v) for v in values]


class _ResumeMasking(TrainerCallback):
    """On (re)start, continue the collator's per-batch mask seeds where the checkpoint stopped."""

    def __init__(self, collator: StepSeededCollator):
        self.collator = collator

    def on_train_begin(self, args, state, control, **kwargs):
        self.collator.step = state.global_step * args.gradient_accumulation_steps


class STFormerPretrainer(Trainer):
    """The Hugging Face ``Trainer`` of stFormer pretraining.

    Parameters
    ----------
    example_lengths_file
        Pickle/JSON list with the length of every training example (``example_lengths.pkl``).
    example_lengths
        The same, in memory (wins over the file).
    *args, **kwargs
        ``Trainer``'s; ``model`` or ``model_init`` is required.

    With ``train_sampling_strategy="group_by_length"`` the train sampler groups examples by these
    lengths (transformers' ``LengthGroupedSampler``, re-seeded per epoch). A stformer-collate
    collator is wrapped in :class:`~stformer_train.training.StepSeededCollator` so that a resumed
    run masks its batches as the uninterrupted run would. Batches with ``masked_positions`` get
    logits only there.

    >>> STFormerPretrainer(model=None)
    Traceback (most recent call last):
    ...
    ValueError: STFormerPretrainer needs a model or a model_init
    """

    def __init__(
        self,
        *args: Any,
        example_lengths_file: str | PathLike[str] | None = None,
        example_lengths: Sequence[int] | None = None,
        **kwargs: Any,
    ):
        if (args[0] if args else kwargs.get("model")) is None and kwargs.get("model_init") is None:
            raise ValueError("STFormerPretrainer needs a model or a model_init")
        collator = kwargs.get("data_collator")
        if (
            collator is not None
            and dataclasses.is_dataclass(collator)
            and hasattr(collator, "seed")
        ):
            train_args = kwargs.get("args") or (args[1] if len(args) > 1 else None)
            seed = getattr(train_args, "data_seed", None) or getattr(train_args, "seed", 42)
            kwargs["data_collator"] = StepSeededCollator(
                collator, seed=collator.seed if collator.seed is not None else seed
            )
        super().__init__(*args, **kwargs)
        if example_lengths is None and example_lengths_file is not None:
            example_lengths = load_example_lengths(example_lengths_file)
        self.example_lengths = (
            None if example_lengths is None else [int(x) for x in example_lengths]
        )
        if isinstance(self.data_collator, StepSeededCollator):
            self.add_callback(_ResumeMasking(self.data_collator))

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if (
            self.args.train_sampling_strategy == "group_by_length"
            and self.example_lengths is not None
        ):
            if len(self.example_lengths) != len(dataset):
                raise ValueError(
                    f"the example lengths list {len(self.example_lengths)} examples but the training "
                    f"dataset has {len(dataset)}; pass the lengths of exactly these examples"
                )
            batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            return EpochLengthGroupedSampler(batch, self.example_lengths, seed=seed)
        return super()._get_train_sampler(train_dataset)

    def get_eval_dataloader(self, eval_dataset=None):
        saved = self.data_collator
        if isinstance(saved, StepSeededCollator):  # fixed masks for every evaluation
            self.data_collator = dataclasses.replace(saved.collator, seed=saved.seed)
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = saved

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "masked_positions" not in inputs and "cu_seqlens" not in inputs:
            return super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
        loss, _ = mlm_loss(model, inputs)
        return (loss, None) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        if "masked_positions" not in inputs and "cu_seqlens" not in inputs:
            return super().prediction_step(
                model, inputs, prediction_loss_only, ignore_keys=ignore_keys
            )
        with torch.no_grad():
            loss, _ = mlm_loss(model, inputs)
        return loss.detach(), None, None


class HFEarlyStopping(TrainerCallback):
    """A ``TrainerCallback`` adapter of :class:`~stformer_train.early_stopping.PatienceStopping`.

    It watches ``core.monitor`` in the evaluation metrics (e.g. ``eval_loss``), saves the best
    model to ``core.checkpoint_path`` and stops training after ``core.patience`` evaluations
    without an improvement larger than ``core.min_delta``.

    >>> HFEarlyStopping(PatienceStopping(monitor="eval_loss", patience=2)).core.patience
    2
    """

    def __init__(self, core: PatienceStopping):
        self.core = core

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        if metrics is None or self.core.monitor not in metrics:
            return control
        self.core.update(metrics[self.core.monitor], model=model)
        if self.core.should_stop:
            log.info(
                "early stopping: %s did not improve for %d evaluations",
                self.core.monitor,
                self.core.patience,
            )
            control.should_training_stop = True
        return control


def last_checkpoint(folder: str | PathLike[str]) -> Path | None:
    """The newest ``checkpoint-N`` folder under ``folder`` (``None`` when there is none)."""
    from transformers.trainer_utils import get_last_checkpoint

    if not Path(folder).is_dir():
        return None
    last = get_last_checkpoint(str(folder))
    return Path(last) if last else None
