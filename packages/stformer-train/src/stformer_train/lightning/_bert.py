"""stformer's masked-LM BERT as a self-contained LightningModule (for protoplast's ``RayTrainRunner``)."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch

from stformer_train.assemble import assemble
from stformer_train.config import ModelConfig, TrainConfig
from stformer_train.lightning._module import MLMTrainingPlan
from stformer_train.lightning._trainer import LightningEarlyStopping
from stformer_train.training import StepSeededCollator

#: gradients are clipped to this norm when the Trainer sets no ``gradient_clip_val`` (as on the
#: Hugging Face path, ``max_grad_norm=1.0``, and in ``pretrain_lightning``)
GRADIENT_CLIP_NORM = 1.0


class BertMLMModule(MLMTrainingPlan):
    """stformer's masked-LM BERT, built from its vocabulary and configs alone.

    :class:`MLMTrainingPlan` over the parts :func:`stformer_train.assemble.assemble` builds from
    ``vocab``, ``model_config`` and ``train_config`` (the seeded model, the MLM collator, early
    stopping), so a class and keyword arguments are enough to make it: protoplast's
    ``RayTrainRunner(BertMLMModule, RankValueAnnDataset, ["vocab", "model_config",
    "train_config", "model_input_size"], metadata_cb=rank_value_metadata_cb(...))`` builds it on
    every worker from the metadata. Its batches are token batches (``input_ids``, ``length``; as
    :class:`stformer_data.torch.RankValueAnnDataset` yields them); the module masks them with the
    assembled collator, seeded by ``(train_config.seed, global_step, rank)``, so a resumed run
    masks each step as the uninterrupted one did. Already collated batches (with ``labels``) are
    used as they are.

    Parameters
    ----------
    vocab
        The gene vocabulary (``stformer_data.GeneVocab``; its size and pad id shape the model).
    model_config
        The encoder (default :class:`~stformer_train.ModelConfig`).
    train_config
        Optimiser, schedule, masking and seed (default :class:`~stformer_train.TrainConfig`);
        ``early_stopping_patience`` adds early stopping on ``val_loss``.
    model_input_size
        The longest token sequence the data has; checked against the model's
        ``max_position_embeddings``.
    max_steps
        Length of the learning-rate schedule (``None``: the Trainer's estimate).

    Notes
    -----
    What belongs to the Trainer stays there: precision (fp32 unless the Trainer sets one) and the
    number of steps. Gradients are clipped to norm 1.0 unless the Trainer clips.

    >>> from stformer_data import GeneVocab
    >>> vocab = GeneVocab.from_genes([f"g{i}" for i in range(30)])
    >>> small = ModelConfig(num_layers=1, hidden_size=32, num_heads=2, intermediate_size=64)
    >>> module = BertMLMModule(vocab, small, TrainConfig(mixed_precision="no"))
    >>> module.model.config.vocab_size
    32
    """

    def __init__(
        self,
        vocab: Any,
        model_config: ModelConfig | None = None,
        train_config: TrainConfig | None = None,
        model_input_size: int | None = None,
        max_steps: int | None = None,
    ) -> None:
        model_config = model_config or ModelConfig()
        train_config = train_config or TrainConfig()
        if not isinstance(model_config, ModelConfig):
            raise TypeError(f"model_config must be a ModelConfig, got {type(model_config)!r}")
        if not isinstance(train_config, TrainConfig):
            raise TypeError(f"train_config must be a TrainConfig, got {type(train_config)!r}")
        if model_input_size is not None and model_input_size > model_config.max_position_embeddings:
            raise ValueError(
                f"BertMLMModule.model_input_size ({model_input_size}) exceeds the model's "
                f"max_position_embeddings ({model_config.max_position_embeddings})"
            )
        parts = assemble(vocab, model_config, train_config, monitor="val_loss")
        super().__init__(
            parts.model,
            learning_rate=train_config.learning_rate,
            weight_decay=train_config.weight_decay,
            warmup_steps=train_config.warmup_steps,
            max_steps=max_steps,
            lr_scheduler_type=train_config.lr_scheduler_type,
        )
        self.vocab, self.model_config, self.train_config = vocab, model_config, train_config
        self.early_stopping = parts.early_stopping
        self.train_collator = StepSeededCollator(parts.collator, seed=train_config.seed)
        self.val_collator = parts.collator

    # --- masking ---------------------------------------------------------------------------------
    def mask(self, batch: dict[str, Any], *, training: bool) -> dict[str, Any]:
        """The MLM batch of a token batch (``input_ids`` and ``length``), on this module's device."""
        if "labels" in batch:
            return batch
        if "input_ids" not in batch:
            raise KeyError(
                f"BertMLMModule needs token batches with input_ids (and length), got keys "
                f"{sorted(batch)}: use stformer_data.torch.RankValueAnnDataset"
            )
        ids = batch["input_ids"].detach().cpu().numpy()
        if "length" in batch:
            lengths = batch["length"].detach().cpu().numpy()
        else:
            lengths = (batch["input_ids"] != self.vocab.pad_id).sum(dim=1).cpu().numpy()
        examples = [{"input_ids": ids[i, : int(n)]} for i, n in enumerate(lengths)]
        if training:
            world, rank = max(1, self.trainer.world_size), self.trainer.global_rank
            self.train_collator.step = self.global_step * world + rank
            out = self.train_collator(examples)
        else:
            out = self.val_collator(examples)
        return {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in out.items()}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return super().training_step(self.mask(batch, training=True), batch_idx)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return super().validation_step(self.mask(batch, training=False), batch_idx)

    # --- what the configs ask of the loop ----------------------------------------------------------
    def configure_callbacks(self) -> list[pl.Callback]:
        """Early stopping on ``val_loss`` when ``train_config.early_stopping_patience`` > 0."""
        if self.early_stopping is None:
            return []
        return [LightningEarlyStopping(self.early_stopping)]

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        if gradient_clip_val is None:
            gradient_clip_val, gradient_clip_algorithm = GRADIENT_CLIP_NORM, "norm"
        self.clip_gradients(
            optimizer,
            gradient_clip_val=gradient_clip_val,
            gradient_clip_algorithm=gradient_clip_algorithm,
        )
