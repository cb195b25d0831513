"""stFormer's pretraining API (``setup_environment`` ... ``PretrainML``) on transformers 5.x.

The names and defaults are stFormer's. What changed, and why:

* transformers 5 removed ``TrainingArguments.group_by_length``; :func:`get_training_arguments`
  maps it to ``train_sampling_strategy="group_by_length"``.
* The reference's length-grouped sampler override was never called; here
  :meth:`STFormerPretrainer._get_train_sampler` has the 5.x signature ``(self, train_dataset=None)``
  and really samples from the example-lengths file.
* The MLM loss is computed only at the masked positions (see :func:`stformer_train.models.mlm_loss`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from stformer_train.early_stopping import EarlyStopping
from stformer_train.models._mlm import mlm_loss
from stformer_train.training import EpochLengthGroupedSampler, StepSeededCollator

log = logging.getLogger(__name__)


def setup_environment(seed: int = 42) -> None:
    """Seed Python, numpy and torch (all devices) and make tokenizers/threads behave in workers."""
    from transformers import set_seed

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ["PYTHONHASHSEED"] = str(seed)
    set_seed(seed)  # Python, numpy and torch (all devices)


class OutputDirs(NamedTuple):
    training_output_dir: Path
    logging_dir: Path
    model_output_dir: Path


def make_output_dirs(output_dir: str | PathLike[str], run_name: str) -> OutputDirs:
    """Create stFormer's run folders: ``OUTPUT/models/RUN`` (checkpoints), ``OUTPUT/runs/RUN`` (logs)
    and ``OUTPUT/models/RUN/models`` (the final model).

    A previous run's final model is refused (``FileExistsError``) so a run is never overwritten.
    """
    if not run_name or os.sep in run_name:
        raise ValueError(f"run_name must be a non-empty folder name, got {run_name!r}")
    root = Path(output_dir)
    dirs = OutputDirs(
        root / "models" / run_name, root / "runs" / run_name, root / "models" / run_name / "models"
    )
    if (dirs.model_output_dir / "config.json").exists():
        raise FileExistsError(
            f"{dirs.model_output_dir} already holds a trained model; choose another run_name"
        )
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    return dirs


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


def _has_bf16() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def get_training_arguments(
    output_dir: str | PathLike[str],
    *,
    learning_rate: float = 1e-3,
    lr_scheduler_type: str = "linear",
    warmup_steps: float = 10_000,
    weight_decay: float = 0.001,
    per_device_train_batch_size: int = 12,
    num_train_epochs: float = 3,
    group_by_length: bool = True,
    save_steps: int | None = None,
    logging_steps: int = 100,
    seed: int = 42,
    overrides: dict[str, Any] | None = None,
) -> TrainingArguments:
    """stFormer's ``TrainingArguments`` on transformers 5.x.

    Defaults (stFormer/Geneformer): lr 1e-3, linear schedule, 10,000 warmup steps, weight decay
    0.001, batch 12, 3 epochs, length-grouped sampling; bf16 autocast on a GPU that has it, fp16
    on other GPUs, fp32 on CPU. ``group_by_length`` becomes
    ``train_sampling_strategy="group_by_length"``; ``overrides`` (any ``TrainingArguments`` field,
    plus ``group_by_length``) win.
    """
    overrides = dict(overrides or {})
    group_by_length = bool(overrides.pop("group_by_length", group_by_length))
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        learning_rate=learning_rate,
        lr_scheduler_type=lr_scheduler_type,
        warmup_steps=warmup_steps,
        weight_decay=weight_decay,
        per_device_train_batch_size=per_device_train_batch_size,
        num_train_epochs=num_train_epochs,
        train_sampling_strategy="group_by_length" if group_by_length else "random",
        length_column_name="length",
        save_strategy="steps",
        save_steps=save_steps or 500,
        logging_steps=logging_steps,
        seed=seed,
        data_seed=seed,
        bf16=_has_bf16(),
        fp16=torch.cuda.is_available() and not _has_bf16(),
        report_to="none",
        dataloader_num_workers=0,
        remove_unused_columns=True,
    )
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


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
    """A ``TrainerCallback`` adapter of :class:`~stformer_train.early_stopping.EarlyStopping`.

    It watches ``core.monitor`` in the evaluation metrics (e.g. ``eval_loss``), saves the best
    model to ``core.checkpoint_path`` and stops training after ``core.patience`` evaluations
    without an improvement larger than ``core.min_delta``.

    >>> HFEarlyStopping(EarlyStopping(monitor="eval_loss", patience=2)).core.patience
    2
    """

    def __init__(self, core: EarlyStopping):
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


class PretrainML:
    """stFormer's pretraining entry point with its documented defaults.

    Parameters
    ----------
    dataset_path
        A tokenized corpus (``datasets.load_from_disk`` folder, or a stformer corpus folder).
    example_lengths_file, token_dictionary_file
        The lengths of the examples (pickle/JSON) and the token dictionary (JSON/pickle).
    output_dir, run_name
        Where :func:`make_output_dirs` creates the run folders.
    mode
        ``"spot"`` or ``"neighborhood"``; neighborhood examples hold a spot and its neighbourhood,
        so ``max_input`` is doubled.
    max_input
        Longest input (2,048); the model's ``max_position_embeddings``.
    num_layers, num_embed_dim, num_attn_heads, intermed_size, activation, initializer_range,
    layer_norm_eps, attention_probs_dropout_prob, hidden_dropout_prob
        The BERT (6 layers, 256 hidden, 4 heads, 512 intermediate, relu, 0.02, 1e-12, 0.02, 0.02).
    batch_size, learning_rate, lr_schedule, warmup_steps, epochs, weight_decay, seed
        The optimisation (12, 1e-3, linear, 10,000, 3, 0.001, 42).
    mlm_probability
        Fraction of gene tokens to predict (0.15).
    training_overrides
        Extra ``TrainingArguments`` fields (see :func:`get_training_arguments`).
    deepspeed
        A ready DeepSpeed config (dict or JSON file) for ``TrainingArguments(deepspeed=...)``.
        ``stformer_dist.PretrainML`` also takes ``True`` or a preset (``"zero2"``) and builds it
        with ``stformer_dist.build_deepspeed``; this package never imports DeepSpeed.

    >>> PretrainML(dataset_path="d", example_lengths_file="l.pkl", token_dictionary_file="t.json",
    ...            output_dir="o", mode="neighborhood").max_input
    4096
    """

    def __init__(
        self,
        *,
        dataset_path: str | PathLike[str],
        example_lengths_file: str | PathLike[str],
        token_dictionary_file: str | PathLike[str],
        output_dir: str | PathLike[str],
        run_name: str = "stformer",
        mode: Literal["spot", "neighborhood"] = "spot",
        max_input: int = 2048,
        num_layers: int = 6,
        num_embed_dim: int = 256,
        num_attn_heads: int = 4,
        intermed_size: int = 512,
        activation: str = "relu",
        initializer_range: float = 0.02,
        layer_norm_eps: float = 1e-12,
        attention_probs_dropout_prob: float = 0.02,
        hidden_dropout_prob: float = 0.02,
        batch_size: int = 12,
        learning_rate: float = 1e-3,
        lr_schedule: str = "linear",
        warmup_steps: float = 10_000,
        epochs: float = 3,
        weight_decay: float = 0.001,
        seed: int = 42,
        mlm_probability: float = 0.15,
        training_overrides: dict[str, Any] | None = None,
        deepspeed: dict[str, Any] | str | PathLike[str] | None = None,
    ):
        if isinstance(deepspeed, bool) or not isinstance(deepspeed, dict | str | PathLike | None):
            raise ValueError(
                "PretrainML.deepspeed must be a DeepSpeed config dict or JSON file; for deepspeed=True "
                "or a preset ('zero2') use stformer_dist.PretrainML (pip install stformer-dist)"
            )
        if mode not in ("spot", "neighborhood"):
            raise ValueError(f"PretrainML.mode must be 'spot' or 'neighborhood', got {mode!r}")
        if max_input <= 0:
            raise ValueError(f"PretrainML.max_input must be > 0, got {max_input}")
        self.dataset_path, self.example_lengths_file = (
            Path(dataset_path),
            Path(example_lengths_file),
        )
        self.token_dictionary_file, self.output_dir = Path(token_dictionary_file), Path(output_dir)
        self.run_name, self.mode = run_name, mode
        self.max_input = max_input * 2 if mode == "neighborhood" else max_input
        from stformer_train.config import ModelConfig

        self.model_config = ModelConfig(
            num_layers=num_layers,
            hidden_size=num_embed_dim,
            num_heads=num_attn_heads,
            intermediate_size=intermed_size,
            max_position_embeddings=self.max_input,
            hidden_act=activation,
            initializer_range=initializer_range,
            layer_norm_eps=layer_norm_eps,
            hidden_dropout_prob=hidden_dropout_prob,
            attention_probs_dropout_prob=attention_probs_dropout_prob,
        )
        self.training = dict(
            learning_rate=learning_rate,
            lr_scheduler_type=lr_schedule,
            warmup_steps=warmup_steps,
            per_device_train_batch_size=batch_size,
            num_train_epochs=epochs,
            weight_decay=weight_decay,
            seed=seed,
        )
        self.seed, self.mlm_probability = seed, mlm_probability
        self.training_overrides = dict(training_overrides or {})
        if deepspeed is not None:
            self.training_overrides["deepspeed"] = (
                deepspeed if isinstance(deepspeed, dict) else str(deepspeed)
            )

    def run_pretraining(self) -> STFormerPretrainer:
        """Build the model, collator and trainer; train (resuming from the last checkpoint); save the model."""
        import datasets

        from stformer_collate import DataCollatorForMLM
        from stformer_data import GeneVocab
        from stformer_train.hf._pretrain import last_checkpoint
        from stformer_train.models import build_bert_config, build_mlm_model

        setup_environment(self.seed)
        dirs = make_output_dirs(self.output_dir, self.run_name)
        folder = (
            self.dataset_path / "dataset"
            if (self.dataset_path / "dataset").is_dir()
            else self.dataset_path
        )
        dataset = datasets.load_from_disk(str(folder))
        vocab = GeneVocab.load(self.token_dictionary_file, allow_pickle=True)
        config = build_bert_config(
            vocab_size=len(vocab), pad_token_id=vocab.pad_id, model=self.model_config
        )
        model = build_mlm_model(config, seed=self.seed)
        collator = DataCollatorForMLM(
            spec=vocab,
            mlm_probability=self.mlm_probability,
            return_masked_positions=True,
            seed=self.seed,
        )
        args = get_training_arguments(
            dirs.training_output_dir, **self.training, overrides=self.training_overrides
        )
        trainer = STFormerPretrainer(
            model=model,
            args=args,
            data_collator=collator,
            train_dataset=dataset.select_columns(["input_ids"]),
            example_lengths_file=self.example_lengths_file,
        )
        last = last_checkpoint(dirs.training_output_dir)
        trainer.train(resume_from_checkpoint=str(last) if last else None)
        trainer.save_model(str(dirs.model_output_dir))
        if trainer.is_world_process_zero():
            vocab.save_json(dirs.model_output_dir / "token_dictionary.json")
        return trainer
