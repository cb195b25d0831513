"""Masked-language-model pretraining on a stformer corpus with the Hugging Face ``Trainer``."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from transformers import TrainingArguments

from stformer_data import Corpus, load_corpus
from stformer_train.assemble import TokenScheme, assemble
from stformer_train.config import ModelConfig, TrainConfig
from stformer_train.hf._trainer import (
    HFEarlyStopping,
    STFormerPretrainer,
    last_checkpoint,
    tensorboard_callback,
)
from stformer_train.precision import Precision, resolve_precision
from stformer_train.progress import resolve_report_to
from stformer_train.run_dir import RunDir, save_model, split_corpus
from stformer_train.training import plot_loss_curve, write_csv_log

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainResult:
    """What a pretraining run produced."""

    run: RunDir
    model_dir: Path
    train_loss: float
    global_step: int
    log_history: list[dict[str, Any]]


def precision_flags(cfg: TrainConfig) -> dict[str, bool]:
    """``bf16``/``fp16`` of ``TrainingArguments`` for ``cfg.mixed_precision``.

    The policy is :func:`stformer_train.precision.resolve_precision` (fp32 on CPU, with a
    warning when bf16/fp16 was asked for).
    """
    return resolve_precision(cfg.mixed_precision).hf_flags


def training_arguments(
    cfg: TrainConfig,
    output_dir: str | PathLike[str],
    *,
    report_to: str | list[str] = "none",
    disable_tqdm: bool = False,
    precision: Precision | None = None,
    **overrides: Any,
) -> TrainingArguments:
    """Translate a :class:`TrainConfig` into transformers 5.x ``TrainingArguments``.

    ``group_by_length`` maps to ``train_sampling_strategy="group_by_length"`` (transformers 5
    removed the ``group_by_length`` argument). ``precision`` is the already resolved precision
    (default: resolved from ``cfg.mixed_precision``); ``overrides`` (any ``TrainingArguments``
    field) win.
    """
    evaluating = cfg.eval_fraction > 0
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_steps,
        lr_scheduler_type=cfg.lr_scheduler_type,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_eval_batch_size,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        length_column_name="length",
        logging_steps=cfg.logging_steps,
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        eval_strategy="steps" if evaluating else "no",
        eval_steps=(cfg.eval_steps or cfg.save_steps) if evaluating else None,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to=report_to,
        disable_tqdm=disable_tqdm,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),  # pinning without CUDA only warns
        remove_unused_columns=True,
        **(precision or resolve_precision(cfg.mixed_precision)).hf_flags,
    )
    if cfg.gradient_checkpointing:  # transformers 5 name of gradient_checkpointing
        kwargs.update(
            activation_checkpointing=True, activation_checkpointing_kwargs={"use_reentrant": False}
        )
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def pretrain_mlm(
    corpus: Corpus | str | PathLike[str],
    run_dir: str | PathLike[str],
    *,
    model: ModelConfig | None = None,
    train: TrainConfig | None = None,
    train_indices: list[int] | None = None,
    progress: bool = True,
    callbacks: list[Any] | None = None,
    overwrite: bool = False,
    resume: bool | None = None,
    **argument_overrides: Any,
) -> PretrainResult:
    """Pretrain a masked-LM BERT on a rank-value corpus with :class:`STFormerPretrainer`.

    The run directory gets ``config.json`` (the resolved configs), ``logs/`` (TensorBoard events,
    ``metrics.csv``, ``log_history.json``, ``loss_curve.png``), ``checkpoints/`` (the run resumes
    from the last one when started again) and ``model/``: ``save_pretrained`` weights with the
    vocabulary, gene medians and tokenizer settings, so ``AutoModelForMaskedLM.from_pretrained(RUN /
    "model")`` loads it and later commands need nothing but the run directory.
    ``callbacks`` are extra ``TrainerCallback`` objects; ``argument_overrides`` are passed to
    ``TrainingArguments``.

    A run directory that holds a run with a different config is refused before anything is
    written (:meth:`RunDir.open`): ``overwrite=True`` starts again, otherwise a matching run
    resumes from its last complete checkpoint. Checkpoints are written atomically; the
    directory is locked while the run trains.
    """
    kwargs = dict(
        train_indices=train_indices,
        progress=progress,
        callbacks=callbacks,
        argument_overrides=argument_overrides,
    )
    if not isinstance(corpus, Corpus):
        corpus = load_corpus(corpus)
    model_cfg = model or ModelConfig()
    train_cfg = train or TrainConfig()
    config = {
        "engine": "hf",
        "model": model_cfg.to_dict(),
        "train": train_cfg.to_dict(),
        "corpus": str(Path(corpus.path).resolve()),
    }
    # under torchrun / DeepSpeed / Ray, rank 0 checks, locks and writes the run directory
    if int(os.environ.get("RANK", "0")) != 0:
        return _pretrain(corpus, RunDir(Path(run_dir)), model_cfg, train_cfg, False, **kwargs)
    with RunDir.open(run_dir, config, overwrite=overwrite, resume=resume) as run:
        return _pretrain(corpus, run, model_cfg, train_cfg, True, **kwargs)


def _pretrain(
    corpus: Corpus,
    run: RunDir,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    main_process: bool,
    *,
    train_indices: list[int] | None,
    progress: bool,
    callbacks: list[Any] | None,
    argument_overrides: dict[str, Any],
) -> PretrainResult:
    point = run.resume_point() if main_process else None
    if point is not None:
        log.info("resuming from %s", point.describe(run.root))
    train_set, eval_set = split_corpus(corpus, model_cfg, train_cfg, train_indices)
    parts = assemble(
        corpus.vocab,
        model_cfg,
        train_cfg,
        monitor="eval_loss",
        best_model_dir=run.root / "best_model",
        scheme=TokenScheme.from_corpus(corpus),
    )
    # TensorBoard events go to the run directory through our own callback (transformers 5 has
    # no logging_dir); the other trackers through TrainingArguments.report_to
    trackers = resolve_report_to(train_cfg.report_to)
    args = training_arguments(
        train_cfg,
        run.checkpoints,
        report_to=[t for t in trackers if t != "tensorboard"] or "none",
        disable_tqdm=not progress,
        precision=parts.precision,
        **argument_overrides,
    )
    # one TensorBoard writer, on rank 0: every rank creating one raced on making the folder
    # (tensorboardX: exists-check then makedirs -> FileExistsError on the slower rank)
    tensorboard = (
        tensorboard_callback(run.logs / "tensorboard")
        if main_process and "tensorboard" in trackers
        else None
    )
    callbacks = [cb for cb in (tensorboard, *(callbacks or ())) if cb is not None]
    if parts.early_stopping is not None:
        callbacks.append(HFEarlyStopping(parts.early_stopping))
    trainer = STFormerPretrainer(
        args,
        train_set,
        corpus.vocab,
        None,  # the lengths are the corpus's own, in memory
        model=parts.model,
        data_collator=parts.collator,
        example_lengths=train_set["length"],
        eval_dataset=eval_set,
        callbacks=callbacks,
    )
    last = last_checkpoint(run.checkpoints)
    output = trainer.train(resume_from_checkpoint=str(last) if last else None)
    # under DeepSpeed every rank takes part in gathering the weights (ZeRO-3 shards them); rank 0 saves
    state = (
        trainer.accelerator.get_state_dict(trainer.model_wrapped)
        if trainer.is_deepspeed_enabled
        else None
    )
    history = list(trainer.state.log_history)
    if trainer.is_world_process_zero():
        save_model(trainer.model, run.model, corpus, state_dict=state, log_history=history)
        run.write_history(history)
        write_csv_log(history, run.logs / "metrics.csv")
        plot_loss_curve(history, run.logs / "loss_curve.png", vocab_size=len(corpus.vocab))
    trainer.accelerator.wait_for_everyone()
    return PretrainResult(
        run=run,
        model_dir=run.model,
        train_loss=float(output.training_loss),
        global_step=int(trainer.state.global_step),
        log_history=history,
    )
