"""Masked-language-model pretraining of a BERT on a token corpus with the Hugging Face Trainer."""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import datasets
from transformers import BertForMaskedLM, Trainer, TrainingArguments

from stformer_collate import DataCollatorForMLM
from stformer_data import Corpus, load_corpus
from stformer_train.config import ModelConfig, TrainConfig
from stformer_train.models import build_bert_config, build_mlm_model
from stformer_train.run_dir import RunDir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainResult:
    """What a pretraining run produced."""

    run: RunDir
    model_dir: Path
    train_loss: float
    global_step: int
    log_history: list[dict[str, Any]]


def training_arguments(cfg: TrainConfig, output_dir: str | PathLike[str], *, report_to: str | list[str] = "none",
                       disable_tqdm: bool = False, **overrides: Any) -> TrainingArguments:
    """Translate a :class:`TrainConfig` into transformers 5.x ``TrainingArguments``.

    ``group_by_length`` maps to ``train_sampling_strategy="group_by_length"`` with the corpus's
    ``length`` column (transformers 5 removed the ``group_by_length`` argument).
    """
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
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to=report_to,
        disable_tqdm=disable_tqdm,
        dataloader_num_workers=0,
        remove_unused_columns=True,
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
) -> PretrainResult:
    """Pretrain a ``BertForMaskedLM`` on a rank-value corpus and save it in Hugging Face format.

    The final model is written to ``run_dir/model`` with ``save_pretrained`` together with the
    vocabulary (``token_dictionary.json``/``.pkl``) and the tokenizer settings, so that
    ``AutoModelForMaskedLM.from_pretrained(run_dir / "model")`` loads it and later commands need
    nothing but the run directory.
    """
    if not isinstance(corpus, Corpus):
        corpus = load_corpus(corpus)
    model_cfg = model or ModelConfig()
    train_cfg = train or TrainConfig()
    run = RunDir.create(run_dir)
    run.write_config({"model": model_cfg.to_dict(), "train": train_cfg.to_dict(), "corpus": str(corpus.path)})

    longest = max(corpus.lengths) if corpus.lengths else 0
    if longest > model_cfg.max_position_embeddings:
        raise ValueError(
            f"ModelConfig.max_position_embeddings ({model_cfg.max_position_embeddings}) is shorter than the longest "
            f"sequence in {corpus.path} ({longest}); raise it or tokenize with a smaller model_input_size")

    dataset: datasets.Dataset = corpus.dataset
    if train_indices is not None:
        dataset = dataset.select(train_indices)
    dataset = dataset.select_columns(["input_ids", "length"])
    bert_config = build_bert_config(vocab_size=len(corpus.vocab), pad_token_id=corpus.vocab.pad_id, model=model_cfg)
    net = build_mlm_model(bert_config, seed=train_cfg.seed)
    collator = DataCollatorForMLM(spec=corpus.vocab, mlm_probability=train_cfg.mlm_probability, seed=train_cfg.seed)
    args = training_arguments(train_cfg, run.checkpoints, disable_tqdm=not progress)
    trainer = Trainer(model=net, args=args, data_collator=collator, train_dataset=dataset)
    last = _last_checkpoint(run.checkpoints)
    output = trainer.train(resume_from_checkpoint=str(last) if last else None)
    save_model(trainer.model, run.model, corpus)
    run.write_history(trainer.state.log_history)
    return PretrainResult(run=run, model_dir=run.model, train_loss=float(output.training_loss),
                          global_step=int(trainer.state.global_step), log_history=list(trainer.state.log_history))


def save_model(net: BertForMaskedLM, model_dir: Path, corpus: Corpus) -> None:
    """Save model weights, vocabulary and tokenizer settings atomically into ``model_dir``."""
    tmp = model_dir.with_name(f".{model_dir.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    net.save_pretrained(tmp)
    corpus.vocab.save_json(tmp / "token_dictionary.json")
    corpus.vocab.save_pickle(tmp / "token_dictionary.pkl")
    for name in ("gene_medians.json",):
        if (corpus.path / name).exists():
            shutil.copy2(corpus.path / name, tmp / name)
    settings = {k: corpus.manifest.get(k) for k in ("scheme", "mode", "tokenizer", "read", "vocab_sha256")}
    (tmp / "stformer_tokenizer.json").write_text(json.dumps(settings, indent=1))
    if model_dir.exists():
        shutil.rmtree(model_dir)
    os.replace(tmp, model_dir)


def _last_checkpoint(folder: Path) -> Path | None:
    from transformers.trainer_utils import get_last_checkpoint

    if not folder.is_dir():
        return None
    last = get_last_checkpoint(str(folder))
    return Path(last) if last else None
