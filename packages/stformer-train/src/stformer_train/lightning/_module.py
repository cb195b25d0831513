"""The Lightning training plan: masked-LM pretraining of the shared models."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import pytorch_lightning as pl
import torch
from transformers import get_scheduler

from stformer_train.config import TRAIN_DEFAULTS
from stformer_train.models import mlm_loss

if TYPE_CHECKING:
    from stformer_train.config import TrainConfig


class MLMTrainingPlan(pl.LightningModule):
    """A ``LightningModule`` wrapping any stformer masked-LM model (``SparseBertForMaskedLM``,
    ``GeneBertForPhenotypicMLM``, or any ``BertForMaskedLM``).

    It takes batches from any ``DataLoader`` of stformer-collate batches (padded or packed, with or
    without ``masked_positions``) and logs ``train_loss`` and, on validation batches, ``val_loss``.
    The optimiser is AdamW with transformers' warm-up schedule, as on the Hugging Face path; the
    defaults are stformer's (:data:`stformer_train.config.TRAIN_DEFAULTS`), and
    :meth:`from_config` takes them from a run's ``TrainConfig``. ``max_steps`` is the length of
    the schedule; ``None`` takes the ``Trainer``'s ``estimated_stepping_batches`` (its
    ``max_epochs`` times the batches per epoch, or its ``max_steps``).

    >>> from stformer_train import ModelConfig
    >>> from stformer_train.models import bert_config_from, build_mlm_model
    >>> cfg = bert_config_from(ModelConfig(num_layers=1, hidden_size=32, num_heads=2,
    ...                                    intermediate_size=64), vocab_size=40)
    >>> MLMTrainingPlan(build_mlm_model(cfg), max_steps=10).hparams.learning_rate
    0.001
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        learning_rate: float = TRAIN_DEFAULTS.learning_rate,
        weight_decay: float = TRAIN_DEFAULTS.weight_decay,
        warmup_steps: float = TRAIN_DEFAULTS.warmup_steps,
        max_steps: int | None,
        lr_scheduler_type: str = TRAIN_DEFAULTS.lr_scheduler_type,
        adam_betas: tuple[float, float] = (0.9, 0.999),
        adam_epsilon: float = 1e-8,
    ):
        super().__init__()
        if max_steps is not None and max_steps <= 0:
            raise ValueError(f"MLMTrainingPlan.max_steps must be > 0 or None, got {max_steps}")
        self.model = model
        self.save_hyperparameters(ignore=["model"])

    @classmethod
    def from_config(
        cls, model: torch.nn.Module, train: TrainConfig, *, max_steps: int | None
    ) -> MLMTrainingPlan:
        """The plan of a :class:`~stformer_train.TrainConfig` (its optimiser and schedule fields)."""
        return cls(
            model,
            learning_rate=train.learning_rate,
            weight_decay=train.weight_decay,
            warmup_steps=train.warmup_steps,
            max_steps=max_steps,
            lr_scheduler_type=train.lr_scheduler_type,
        )

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        return mlm_loss(self.model, batch)[0]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, n = mlm_loss(self.model, batch)
        self.log("train_loss", loss, on_step=True, prog_bar=True, batch_size=n)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, n = mlm_loss(self.model, batch)
        self.log("val_loss", loss, on_epoch=True, prog_bar=True, batch_size=n)
        return loss

    def configure_optimizers(self):
        hp = self.hparams
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim < 2 or "LayerNorm" in name else decay).append(p)
        opt = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": hp.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=hp.learning_rate,
            betas=hp.adam_betas,
            eps=hp.adam_epsilon,
        )
        total = hp.max_steps
        if total is None:
            estimate = self.trainer.estimated_stepping_batches
            if not math.isfinite(estimate):
                raise ValueError(
                    "MLMTrainingPlan.max_steps is None and the Trainer cannot tell the number of "
                    "steps (a DataLoader without a length and no max_steps): pass max_steps"
                )
            total = max(1, int(estimate))
        warmup = int(hp.warmup_steps * total) if hp.warmup_steps < 1 else int(hp.warmup_steps)
        sched = get_scheduler(
            hp.lr_scheduler_type, opt, num_warmup_steps=warmup, num_training_steps=total
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
