"""The Hugging Face ``Trainer`` of stformer pretraining and its callbacks (stFormer's names).

:class:`STFormerPretrainer` is the training loop of the HF path: length-grouped sampling from the
example lengths, step-seeded masking that survives a resume, and the MLM loss at masked positions
only. :class:`HFEarlyStopping` adapts :class:`stformer_train.early_stopping.PatienceStopping`.
Both :mod:`stformer_train.hf._pretrain` and :mod:`stformer_train.hf._stformer` build on this module.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import os
import pickle
import shutil
from collections.abc import Callable, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, TrainOutput, rotate_checkpoints

from stformer_train._names import unknown_name_error
from stformer_train.early_stopping import PatienceStopping
from stformer_train.hf._progress import use_metrics_progress
from stformer_train.models import mlm_loss
from stformer_train.training import EpochLengthGroupedSampler, StepSeededCollator

log = logging.getLogger(__name__)

LOSS_FILE = "stformer_loss.json"
"""In every checkpoint: the sum of the training losses up to its step, for a whole-run mean."""


def load_example_lengths(
    file_path: str | PathLike[str], *, allow_pickle: bool | Literal["plain"] = "plain"
) -> list[int]:
    """Read an example-lengths file: a pickle (Geneformer/stFormer), a JSON list or a NumPy
    ``.npy`` of positive ints.

    A pickle runs code stored in it when loaded. stformer's corpora hold the same lengths in
    ``example_lengths.npy`` too: for a pickle inside a stformer corpus that file is read instead,
    and nothing is unpickled. Any other pickle is loaded as this documented function always did
    (the caller named it) with an unpickler that resolves no code (``allow_pickle="plain"``,
    the default: a pickle naming any callable is refused); ``allow_pickle=True`` unpickles fully and
    ``allow_pickle=False`` refuses every pickle.
    """
    from stformer_data import InputError
    from stformer_data.corpus.format import EXAMPLE_LENGTHS_NPY, is_stformer_corpus

    path = Path(file_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: example-lengths file not found (stformer tokenize writes "
            "example_lengths.npy and example_lengths.pkl next to the dataset)"
        )
    if path.suffix not in (".json", ".npy") and is_stformer_corpus(path.parent):
        if (path.parent / EXAMPLE_LENGTHS_NPY).is_file():
            path = path.parent / EXAMPLE_LENGTHS_NPY  # the same lengths, read without unpickling
    if path.suffix == ".json":
        values = json.loads(path.read_text())
    elif path.suffix == ".npy":
        values = np.load(path, allow_pickle=False).tolist()
    elif not allow_pickle:
        raise InputError(
            path,
            "example lengths",
            "is a pickle, and loading a pickle runs code from the file",
            "save the lengths as .json or .npy, or pass allow_pickle=True (--allow-pickle) if "
            "you trust the file",
        )
    elif allow_pickle == "plain":
        from stformer_data.genes.plain_pickle import load_plain_pickle

        values = load_plain_pickle(
            path, "example lengths"
        )  # plain data only: nothing from the file runs
    else:
        with path.open("rb") as fh:
            values = pickle.load(fh)  # noqa: S301 - named by the caller, allow_pickle=True
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
    """stFormer's Hugging Face ``Trainer`` for masked pretraining on single-cell tokens.

    Parameters
    ----------
    args
        The ``TrainingArguments`` (:func:`~stformer_train.hf.get_training_arguments`).
    train_dataset
        A dataset with ``input_ids``.
    token_dictionary
        Token -> id (with ``<pad>`` and ``<mask>``): the MLM collator masks with it.
    example_lengths_file
        Pickle/JSON list with the length of every training example, for length-grouped sampling
        (``None``: no file; transformers then reads ``args.length_column_name``).
    model, model_init
        The model, or a function that builds it (hyperparameter search); one is required.
    mlm_probability
        The fraction of gene tokens to mask (80% ``<mask>``, 10% random, 10% kept).
    data_collator, example_lengths
        stformer's extensions (keyword only): a ready collator (then ``mlm_probability`` must be
        left at its default), and the lengths in memory instead of a file.
    trainer_kwargs
        Other ``Trainer`` arguments (``eval_dataset``, ``callbacks``, ...); an unknown one is a
        ``TypeError`` naming the closest.

    The collator is stformer's :class:`stformer_collate.DataCollatorForMLM` for the token
    dictionary, step-seeded (:class:`~stformer_train.training.StepSeededCollator`) so that a
    resumed run masks its batches as the uninterrupted run would, with the MLM logits computed
    only at the masked positions. With ``train_sampling_strategy="group_by_length"`` (stFormer's
    ``group_by_length=True``) :meth:`get_train_sampler` groups examples by the file's lengths.
    With ``args.logging_dir`` (:class:`~stformer_train.hf.STFormerTrainingArguments`) rank 0
    writes TensorBoard events there.

    >>> STFormerPretrainer(None, None, {"<pad>": 0, "<mask>": 1}, None)
    Traceback (most recent call last):
    ...
    ValueError: STFormerPretrainer needs a model or a model_init
    """

    def __init__(
        self,
        args: TrainingArguments,
        train_dataset: Any,
        token_dictionary: Mapping[str, int],
        example_lengths_file: str | PathLike[str] | None,
        model: torch.nn.Module | None = None,
        model_init: Callable[[], torch.nn.Module] | None = None,
        mlm_probability: float = 0.15,
        *,
        data_collator: Any = None,
        example_lengths: Sequence[int] | None = None,
        **trainer_kwargs: Any,
    ):
        if model is None and model_init is None:
            raise ValueError("STFormerPretrainer needs a model or a model_init")
        known = set(inspect.signature(Trainer.__init__).parameters) - {"self"}
        for key in trainer_kwargs:
            if key not in known or key in ("tokenizer",):
                raise unknown_name_error("STFormerPretrainer()", "keyword argument", key, known)
        if args is None:
            raise ValueError("STFormerPretrainer needs args (TrainingArguments)")
        if not 0.0 < mlm_probability < 1.0:
            raise ValueError(f"mlm_probability must be in (0, 1), got {mlm_probability}")
        seed = args.data_seed if args.data_seed is not None else args.seed
        if data_collator is None:
            data_collator = _default_collator(token_dictionary, mlm_probability, seed)
        elif mlm_probability != 0.15:
            raise ValueError(
                "STFormerPretrainer: pass mlm_probability to your data_collator, not to the trainer"
            )
        self.token_dictionary = token_dictionary
        self.mlm_probability = mlm_probability
        if dataclasses.is_dataclass(data_collator) and hasattr(data_collator, "seed"):
            data_collator = StepSeededCollator(
                data_collator, seed=data_collator.seed if data_collator.seed is not None else seed
            )
        logging_dir = getattr(args, "logging_dir", None)
        if logging_dir and int(os.environ.get("RANK", "0")) == 0:
            board = tensorboard_callback(Path(logging_dir))
            if board is not None:
                trainer_kwargs["callbacks"] = [*(trainer_kwargs.get("callbacks") or ()), board]
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            model_init=model_init,
            **trainer_kwargs,
        )
        if example_lengths is None and example_lengths_file is not None:
            example_lengths = load_example_lengths(example_lengths_file)
        self.example_lengths = (
            None if example_lengths is None else [int(x) for x in example_lengths]
        )
        if isinstance(self.data_collator, StepSeededCollator):
            self.add_callback(_ResumeMasking(self.data_collator))
        use_metrics_progress(self)  # one bar and numeric metrics instead of printed dicts

    # ---- atomic checkpoints and a whole-run training loss --------------------------------------
    _staging_dir: str | None = None
    _loss_before: tuple[float, int] = (0.0, 0)

    def _get_output_dir(self, trial):
        if self._staging_dir is not None:
            return self._staging_dir
        return super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        """Save into ``checkpoint-N.partial/`` and rename it to ``checkpoint-N`` once complete.

        A kill during the save leaves only the ``.partial`` folder, which a resume removes; a
        ``checkpoint-N`` folder is always complete. The checkpoint also records the sum of the
        training losses so far (:data:`LOSS_FILE`) so that a resumed run reports the mean over
        the whole run.
        """
        run_dir = Path(super()._get_output_dir(trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging, final = run_dir / f"{name}.partial", run_dir / name
        if self.args.should_save:
            if staging.exists():
                shutil.rmtree(staging)
            staging.mkdir(parents=True)
        self.accelerator.wait_for_everyone()
        self._staging_dir = str(staging)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_dir = None
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            before, _ = self._loss_before
            loss_sum = before + self._total_loss_scalar + float(self._tr_loss.item())
            (staging / name / LOSS_FILE).write_text(
                json.dumps({"global_step": self.state.global_step, "loss_sum": loss_sum})
            )
            if final.exists():  # saved again after a resume from an earlier checkpoint
                shutil.rmtree(final)
            os.replace(staging / name, final)
            shutil.rmtree(staging, ignore_errors=True)
            best = self.state.best_model_checkpoint
            if best and best.startswith(str(staging)):
                self.state.best_model_checkpoint = str(run_dir / Path(best).name)
            rotate_checkpoints(
                output_dir=str(run_dir),
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
            )
        self.accelerator.wait_for_everyone()

    def train(
        self,
        resume_from_checkpoint: str | bool | None = None,
        trial: Any = None,
        ignore_keys_for_eval: list[str] | None = None,
    ) -> TrainOutput:
        """``Trainer.train``; a resumed run's ``training_loss`` is the mean over the whole run
        (the steps before the checkpoint included), also in the last ``log_history`` entry."""
        if resume_from_checkpoint is True:
            last = last_checkpoint(self.args.output_dir)
            if last is None:
                raise ValueError(f"no complete checkpoint to resume from in {self.args.output_dir}")
            resume_from_checkpoint = str(last)
        self._loss_before = (
            _loss_before(Path(resume_from_checkpoint)) if resume_from_checkpoint else (0.0, 0)
        )
        output = super().train(
            resume_from_checkpoint=resume_from_checkpoint,
            trial=trial,
            ignore_keys_for_eval=ignore_keys_for_eval,
        )
        whole = self._whole_run_loss()
        if whole is None:
            return output
        return TrainOutput(output.global_step, whole, {**output.metrics, "train_loss": whole})

    def _whole_run_loss(self) -> float | None:
        """The mean training loss over the whole run, for a resumed run (else ``None``)."""
        before, steps_before = self._loss_before
        if not steps_before:
            return None
        return (before + self._total_loss_scalar) / max(self.state.global_step, 1)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "train_loss" in logs and (whole := self._whole_run_loss()) is not None:
            logs = {**logs, "train_loss": whole}  # the summary of a resumed run covers all of it
        super().log(logs, start_time)

    def get_train_sampler(self) -> torch.utils.data.Sampler | None:
        """The training sampler: length-grouped by the example lengths when
        ``args.train_sampling_strategy == "group_by_length"``, else transformers' (random);
        ``None`` when the training dataset has no length (an iterable dataset)."""
        if self.train_dataset is None or not hasattr(self.train_dataset, "__len__"):
            return None
        return self._get_train_sampler()

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


def _default_collator(token_dictionary: Mapping[str, int], mlm_probability: float, seed: int):
    """stformer's MLM collator for a token dictionary (the assembly's, with its defaults)."""
    from stformer_train.assemble import build_collator
    from stformer_train.config import TrainConfig
    from stformer_train.hf._precollator import STFormerPreCollator

    spec = (
        token_dictionary
        if hasattr(token_dictionary, "pad_id") and hasattr(token_dictionary, "mask_id")
        else STFormerPreCollator(token_dictionary)
    )
    return build_collator(spec, TrainConfig(mlm_probability=mlm_probability, seed=seed))


def tensorboard_callback(folder: Path):
    """A TensorBoard callback writing into ``folder`` (tensorboardX), or ``None`` without it."""
    from transformers.integrations import TensorBoardCallback

    try:
        from tensorboardX import SummaryWriter
    except ImportError:  # pragma: no cover - tensorboardX is a declared dependency
        log.warning("tensorboardX is not installed: no TensorBoard logs (pip install tensorboardX)")
        return None
    return TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(folder)))


def _loss_before(checkpoint: Path) -> tuple[float, int]:
    """``(sum of training losses, steps)`` up to a checkpoint: from :data:`LOSS_FILE`, or for a
    checkpoint without it, estimated from its log history (each logged mean times its steps)."""
    try:
        data = json.loads((checkpoint / LOSS_FILE).read_text())
        return float(data["loss_sum"]), int(data["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return 0.0, 0
    step, total, previous = int(state.get("global_step", 0)), 0.0, 0
    for entry in state.get("log_history", []):
        if "loss" in entry and "step" in entry and entry["step"] <= step:
            total += float(entry["loss"]) * (entry["step"] - previous)
            previous = entry["step"]
    if previous and previous < step:
        total *= step / previous
    return total, step


def last_checkpoint(folder: str | PathLike[str]) -> Path | None:
    """The newest complete ``checkpoint-N`` folder under ``folder`` (``None`` when there is none).

    Folders left half-written by a kill (``checkpoint-N.partial``, or a ``checkpoint-N`` without
    ``trainer_state.json`` or weights) are skipped, with a warning.
    """
    from stformer_train.run_dir import resume_point

    point = resume_point(Path(folder), clean=False)
    return None if point is None else point.path
