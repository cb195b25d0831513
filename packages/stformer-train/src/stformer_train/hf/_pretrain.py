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

from stformer_collate import DataCollatorForMLM
from stformer_data import Corpus, load_corpus
from stformer_train.config import ModelConfig, TrainConfig
from stformer_train.early_stopping import EarlyStopping
from stformer_train.hf._stformer import HFEarlyStopping, STFormerPretrainer
from stformer_train.models import build_bert_config, build_mlm_model
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
    """``bf16``/``fp16`` for ``cfg.mixed_precision`` (``auto``: bf16 or fp16 on GPU, none on CPU)."""
    cuda = torch.cuda.is_available()
    mode = cfg.mixed_precision
    if mode == "auto":
        mode = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "no"
    return {"bf16": mode == "bf16", "fp16": mode == "fp16"}


def training_arguments(
    cfg: TrainConfig,
    output_dir: str | PathLike[str],
    *,
    report_to: str | list[str] = "none",
    disable_tqdm: bool = False,
    **overrides: Any,
) -> TrainingArguments:
    """Translate a :class:`TrainConfig` into transformers 5.x ``TrainingArguments``.

    ``group_by_length`` maps to ``train_sampling_strategy="group_by_length"`` (transformers 5
    removed the ``group_by_length`` argument).
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
        remove_unused_columns=True,
        **precision_flags(cfg),
    )
    if cfg.gradient_checkpointing:  # transformers 5 name of gradient_checkpointing
        kwargs.update(
            activation_checkpointing=True, activation_checkpointing_kwargs={"use_reentrant": False}
        )
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def _tensorboard_callback(folder: Path):
    from transformers.integrations import TensorBoardCallback

    try:
        from tensorboardX import SummaryWriter
    except ImportError:  # pragma: no cover - tensorboardX is a declared dependency
        log.warning("tensorboardX is not installed: no TensorBoard logs (pip install tensorboardX)")
        return None
    return TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(folder)))


def pretrain_mlm(
    corpus: Corpus | str | PathLike[str],
    run_dir: str | PathLike[str],
    *,
    model: ModelConfig | None = None,
    train: TrainConfig | None = None,
    train_indices: list[int] | None = None,
    progress: bool = True,
    callbacks: list[Any] | None = None,
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
    """
    if not isinstance(corpus, Corpus):
        corpus = load_corpus(corpus)
    model_cfg = model or ModelConfig()
    train_cfg = train or TrainConfig()
    run = RunDir.create(run_dir)
    main_process = (
        int(os.environ.get("RANK", "0")) == 0
    )  # under torchrun / DeepSpeed / Ray, rank 0 writes
    if main_process:
        run.write_config(
            {
                "engine": "hf",
                "model": model_cfg.to_dict(),
                "train": train_cfg.to_dict(),
                "corpus": str(corpus.path),
            }
        )
    train_set, eval_set = split_corpus(corpus, model_cfg, train_cfg, train_indices)
    bert_config = build_bert_config(
        vocab_size=len(corpus.vocab), pad_token_id=corpus.vocab.pad_id, model=model_cfg
    )
    net = build_mlm_model(bert_config, seed=train_cfg.seed)
    collator = DataCollatorForMLM(
        spec=corpus.vocab,
        mlm_probability=train_cfg.mlm_probability,
        seed=train_cfg.seed,
        form=train_cfg.batch_form,
        return_masked_positions=train_cfg.masked_positions_only,
    )
    args = training_arguments(
        train_cfg, run.checkpoints, disable_tqdm=not progress, **argument_overrides
    )
    # one TensorBoard writer, on rank 0: every rank creating one raced on making the folder
    # (tensorboardX: exists-check then makedirs -> FileExistsError on the slower rank)
    tensorboard = _tensorboard_callback(run.logs / "tensorboard") if main_process else None
    callbacks = [cb for cb in (tensorboard, *(callbacks or ())) if cb is not None]
    if train_cfg.early_stopping_patience:
        callbacks.append(
            HFEarlyStopping(
                EarlyStopping(
                    monitor="eval_loss",
                    patience=train_cfg.early_stopping_patience,
                    min_delta=train_cfg.early_stopping_min_delta,
                    checkpoint_path=run.root / "best_model",
                )
            )
        )
    trainer = STFormerPretrainer(
        model=net,
        args=args,
        data_collator=collator,
        train_dataset=train_set,
        eval_dataset=eval_set,
        example_lengths=train_set["length"],
        callbacks=callbacks,
    )
    last = last_checkpoint(run.checkpoints)
    if last is not None:
        log.info("resuming from %s", last)
    output = trainer.train(resume_from_checkpoint=str(last) if last else None)
    # under DeepSpeed every rank takes part in gathering the weights (ZeRO-3 shards them); rank 0 saves
    state = (
        trainer.accelerator.get_state_dict(trainer.model_wrapped)
        if trainer.is_deepspeed_enabled
        else None
    )
    history = list(trainer.state.log_history)
    if trainer.is_world_process_zero():
        save_model(trainer.model, run.model, corpus, state_dict=state)
        run.write_history(history)
        write_csv_log(history, run.logs / "metrics.csv")
        plot_loss_curve(history, run.logs / "loss_curve.png")
    trainer.accelerator.wait_for_everyone()
    return PretrainResult(
        run=run,
        model_dir=run.model,
        train_loss=float(output.training_loss),
        global_step=int(trainer.state.global_step),
        log_history=history,
    )


def last_checkpoint(folder: Path) -> Path | None:
    """The newest ``checkpoint-N`` folder under ``folder`` (``None`` when there is none)."""
    from transformers.trainer_utils import get_last_checkpoint

    if not Path(folder).is_dir():
        return None
    last = get_last_checkpoint(str(folder))
    return Path(last) if last else None
