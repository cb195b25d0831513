"""Masked-LM pretraining on a stformer corpus with PyTorch Lightning (same models, same run directory)."""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
from collections.abc import Iterator, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, Sampler

from stformer_data import Corpus, load_corpus
from stformer_train.assemble import TokenScheme, assemble
from stformer_train.config import ModelConfig, TrainConfig
from stformer_train.early_stopping import PatienceStopping
from stformer_train.lightning._module import MLMTrainingPlan
from stformer_train.lightning._progress import StepProgressBar
from stformer_train.precision import resolve_precision
from stformer_train.run_dir import RunDir, save_model, split_corpus
from stformer_train.training import (
    EpochLengthGroupedSampler,
    StepSeededCollator,
    plot_loss_curve,
    write_csv_log,
)

log = logging.getLogger(__name__)


class LightningEarlyStopping(pl.Callback):
    """A Lightning ``Callback`` adapter of :class:`~stformer_train.early_stopping.PatienceStopping`.

    After each validation it reads ``core.monitor`` (e.g. ``val_loss``), saves the best model to
    ``core.checkpoint_path`` and stops the run after ``core.patience`` evaluations without an
    improvement larger than ``core.min_delta``. Its state is part of Lightning checkpoints.

    >>> LightningEarlyStopping(PatienceStopping(monitor="val_loss", patience=2)).core.monitor
    'val_loss'
    """

    def __init__(self, core: PatienceStopping):
        self.core = core

    @property
    def state_key(self) -> str:
        return f"LightningEarlyStopping[{self.core.monitor}]"

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.core.monitor not in trainer.callback_metrics:
            return
        model = getattr(pl_module, "model", pl_module)
        self.core.update(float(trainer.callback_metrics[self.core.monitor]), model=model)
        if self.core.should_stop:
            trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        return self.core.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.core.load_state_dict(state_dict)


class ResumableBatchSampler(Sampler[list[int]]):
    """Batches from an index sampler; after a resume the first ``skip`` batches of the epoch are skipped."""

    def __init__(self, sampler: Sampler[int], batch_size: int):
        self.sampler, self.batch_size, self.skip = sampler, batch_size, 0

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[list[int]]:
        order = list(iter(self.sampler))
        skip, self.skip = self.skip, 0
        for start in range(skip * self.batch_size, len(order), self.batch_size):
            yield order[start : start + self.batch_size]


class _History(pl.Callback):
    """Keeps an HF-style log history (``loss``/``eval_loss`` by ``step``) and restores the resume point."""

    def __init__(
        self, logging_steps: int, batches: ResumableBatchSampler, collator: StepSeededCollator
    ):
        self.logging_steps, self.batches, self.collator = logging_steps, batches, collator
        self.history: list[dict[str, Any]] = []

    def on_train_start(self, trainer, pl_module):
        n = len(self.batches)
        done = trainer.global_step - trainer.current_epoch * n
        self.batches.skip = done if 0 < done < n else 0
        self.collator.step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step % self.logging_steps == 0:
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            lr = trainer.optimizers[0].param_groups[0]["lr"]
            self.history.append(
                {
                    "loss": float(loss),
                    "learning_rate": lr,
                    "epoch": trainer.current_epoch,
                    "step": step,
                }
            )

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking and "val_loss" in trainer.callback_metrics:
            self.history.append(
                {
                    "eval_loss": float(trainer.callback_metrics["val_loss"]),
                    "step": trainer.global_step,
                }
            )

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict["history"])


def lightning_precision(cfg: TrainConfig) -> str:
    """Lightning's ``precision`` for ``cfg.mixed_precision``.

    The policy is :func:`stformer_train.precision.resolve_precision` (fp32 on CPU, with a
    warning when bf16/fp16 was asked for).
    """
    return resolve_precision(cfg.mixed_precision).lightning


def _loggers(run: RunDir, report_to: str = "auto") -> list[Any]:
    """Lightning's loggers for ``TrainConfig.report_to`` (always a CSV log in ``logs/``)."""
    from pytorch_lightning.loggers import CSVLogger

    from stformer_train.progress import resolve_report_to

    loggers: list[Any] = [CSVLogger(str(run.logs), name="lightning_csv", version=0)]
    for tracker in resolve_report_to(report_to):
        if tracker == "tensorboard":
            from pytorch_lightning.loggers import TensorBoardLogger

            loggers.append(
                TensorBoardLogger(
                    str(run.logs), name="tensorboard", version=0, default_hp_metric=False
                )
            )
        elif tracker == "mlflow":
            from pytorch_lightning.loggers import MLFlowLogger

            loggers.append(
                MLFlowLogger(experiment_name="stformer", save_dir=str(run.logs / "mlruns"))
            )
        elif tracker == "wandb":
            from pytorch_lightning.loggers import WandbLogger

            loggers.append(WandbLogger(project="stformer", save_dir=str(run.logs)))
    return loggers


def pretrain_lightning(
    corpus: Corpus | str | PathLike[str],
    run_dir: str | PathLike[str],
    *,
    model: ModelConfig | None = None,
    train: TrainConfig | None = None,
    train_indices: list[int] | None = None,
    progress: bool = True,
    callbacks: Sequence[pl.Callback] = (),
    accelerator: str = "auto",
    overwrite: bool = False,
    resume: bool | None = None,
) -> dict[str, Any]:
    """Pretrain the same masked-LM BERT as :func:`stformer_train.hf.pretrain_mlm`, with Lightning.

    The run directory has the same layout (``config.json``, ``logs/`` with TensorBoard, CSV and
    ``loss_curve.png``, ``checkpoints/`` with ``last.ckpt``, ``model/`` in Hugging Face format).
    Starting it again resumes from ``checkpoints/last.ckpt`` at the same batch and mask seed
    (a truncated ``.ckpt`` left by a kill is skipped for the newest readable one). A run directory
    holding a different config is refused before anything is written unless ``overwrite``
    (:meth:`RunDir.open`); the directory is locked while the run trains. Returns ``{"run", "model_dir", "global_step", "log_history"}``.
    """
    if not isinstance(corpus, Corpus):
        corpus = load_corpus(corpus)
    model_cfg, train_cfg = model or ModelConfig(), train or TrainConfig()
    config = {
        "engine": "lightning",
        "model": model_cfg.to_dict(),
        "train": train_cfg.to_dict(),
        "corpus": str(Path(corpus.path).resolve()),
    }
    with RunDir.open(run_dir, config, overwrite=overwrite, resume=resume) as run:
        return _fit(
            corpus, run, model_cfg, train_cfg, train_indices, progress, callbacks, accelerator
        )


def _fit(corpus, run, model_cfg, train_cfg, train_indices, progress, callbacks, accelerator):
    train_set, eval_set = split_corpus(corpus, model_cfg, train_cfg, train_indices)
    pl.seed_everything(train_cfg.seed, workers=True, verbose=False)
    parts = assemble(
        corpus.vocab,
        model_cfg,
        train_cfg,
        monitor="val_loss",
        best_model_dir=run.root / "best_model",
        scheme=TokenScheme.from_corpus(corpus),
    )
    base = parts.collator
    collator = StepSeededCollator(base, seed=train_cfg.seed)
    bs = train_cfg.per_device_train_batch_size
    index_sampler: Sampler[int]
    if train_cfg.group_by_length:
        index_sampler = EpochLengthGroupedSampler(bs, train_set["length"], seed=train_cfg.seed)
    else:
        index_sampler = _SeededPermutation(len(train_set), seed=train_cfg.seed)
    batches = ResumableBatchSampler(index_sampler, bs)
    train_loader = DataLoader(train_set, batch_sampler=batches, collate_fn=collator, num_workers=0)
    val_loader = None
    if eval_set is not None:
        val_loader = DataLoader(
            eval_set,
            batch_size=train_cfg.per_device_eval_batch_size,
            collate_fn=dataclasses.replace(base, seed=train_cfg.seed),
            num_workers=0,
        )
    max_steps = (
        train_cfg.max_steps
        if train_cfg.max_steps > 0
        else math.ceil(len(batches) * train_cfg.num_train_epochs)
    )
    plan = MLMTrainingPlan.from_config(parts.model, train_cfg, max_steps=max_steps)
    history = _History(train_cfg.logging_steps, batches, collator)
    cbs: list[pl.Callback] = [
        history,
        *callbacks,
        ModelCheckpoint(
            dirpath=str(run.checkpoints),
            every_n_train_steps=train_cfg.save_steps,
            save_last=True,
            save_top_k=-1,
            filename="step-{step}",
        ),
    ]
    if parts.early_stopping is not None:
        cbs.insert(1, LightningEarlyStopping(parts.early_stopping))
    cbs.append(StepProgressBar(logging_steps=train_cfg.logging_steps, progress=progress))
    trainer = pl.Trainer(
        max_steps=max_steps,
        max_epochs=math.ceil(max_steps / max(len(batches), 1)),  # the epochs max_steps spans
        accelerator=accelerator,
        devices=1,
        precision=parts.precision.lightning,
        logger=_loggers(run, train_cfg.report_to),
        callbacks=cbs,
        log_every_n_steps=train_cfg.logging_steps,
        gradient_clip_val=1.0,
        val_check_interval=(train_cfg.eval_steps or train_cfg.save_steps)
        if val_loader is not None
        else None,
        check_val_every_n_epoch=None if val_loader is not None else 1,
        num_sanity_val_steps=0,
        enable_progress_bar=True,  # StepProgressBar; it prints one line per interval without a bar
        enable_model_summary=False,
        default_root_dir=str(run.root),
    )
    last = lightning_resume_point(run.checkpoints)
    if last is not None:
        log.info("resuming from %s", last)
    try:
        trainer.fit(
            plan,
            train_dataloaders=train_loader,
            val_dataloaders=val_loader,
            ckpt_path=str(last) if last else None,
        )
    except SystemExit:
        if not trainer.interrupted:
            raise
        # Lightning turns Ctrl-C into sys.exit(1) with SIGINT ignored: give the caller its
        # KeyboardInterrupt back (the checkpoints written so far are kept for a resume)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        raise KeyboardInterrupt from None
    save_model(plan.model, run.model, corpus, log_history=history.history)
    run.write_history(history.history)
    write_csv_log(history.history, run.logs / "metrics.csv")
    plot_loss_curve(
        history.history,
        run.logs / "loss_curve.png",
        title="stformer pretraining (Lightning)",
        vocab_size=len(corpus.vocab),
    )
    return {
        "run": run,
        "model_dir": run.model,
        "global_step": int(trainer.global_step),
        "log_history": history.history,
    }


def _readable_checkpoint(path: Path) -> bool:
    """A complete ``torch.save`` file: a zip archive whose central directory (written last) is there."""
    import zipfile

    return path.is_file() and zipfile.is_zipfile(path)


def lightning_resume_point(checkpoints: Path) -> Path | None:
    """``last.ckpt``, or else the newest ``step-*.ckpt``, skipping truncated files (with a warning).

    Lightning writes each ``.ckpt`` through an fsspec transaction (a temporary file renamed when
    complete); a file truncated by a kill in an older version is not picked.
    """
    if not checkpoints.is_dir():
        return None
    steps = sorted(checkpoints.glob("step*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in [checkpoints / "last.ckpt", *steps]:
        if not path.exists():
            continue
        if _readable_checkpoint(path):
            return path
        log.warning("skipping incomplete checkpoint %s (not a complete torch.save archive)", path)
    return None


def lightning_checkpoint_step(path: Path) -> int | None:
    """The ``global_step`` a Lightning checkpoint was saved at (memory-mapped, not read whole)."""
    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception:  # noqa: BLE001 - any unreadable file is "unknown", the trainer reports it
        return None
    step = state.get("global_step") if isinstance(state, dict) else None
    return int(step) if step is not None else None


class _SeededPermutation(Sampler[int]):
    """A random order per epoch, reproducible from ``(seed, epoch)``."""

    def __init__(self, n: int, *, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())
