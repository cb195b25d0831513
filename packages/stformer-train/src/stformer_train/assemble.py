"""The one place where a pretraining run is put together from its configs.

Every training path - the Hugging Face ``Trainer`` (:func:`stformer_train.hf.pretrain_mlm`,
:class:`stformer_train.hf.PretrainML`), Lightning (:func:`stformer_train.lightning.pretrain_lightning`)
and the Ray runners of ``stformer_dist`` - calls :func:`assemble` and gets the same
:class:`TrainingParts` from the same :class:`~stformer_train.ModelConfig` and
:class:`~stformer_train.TrainConfig`: the seeded masked-LM model, the MLM collator, the early
stopping core and the precision. The paths then differ only in their training loop (scvi-tools'
``TrainRunner`` idea: assemble once, vary one thing); each wraps the parts in its engine's own
adapters (``HFEarlyStopping`` / ``LightningEarlyStopping``, ``Precision.hf_flags`` /
``Precision.lightning``).
"""

from __future__ import annotations

from dataclasses import dataclass
from os import PathLike
from typing import TYPE_CHECKING, Any

from stformer_train.config import ModelConfig, TrainConfig
from stformer_train.early_stopping import EarlyStopping
from stformer_train.precision import Precision, resolve_precision

if TYPE_CHECKING:
    import torch

    from stformer_collate import DataCollatorForMLM

__all__ = [
    "TrainingParts",
    "assemble",
    "build_collator",
    "build_early_stopping",
    "build_model",
]


def build_model(vocab: Any, model: ModelConfig, train: TrainConfig) -> torch.nn.Module:
    """The masked-LM BERT for ``vocab`` (its size and pad id), initialised from ``train.seed``."""
    from stformer_train.models import bert_config_from, build_mlm_model

    bert_config = bert_config_from(model, vocab_size=len(vocab), pad_token_id=vocab.pad_id)
    return build_mlm_model(
        bert_config, seed=train.seed, gradient_checkpointing=train.gradient_checkpointing
    )


def build_collator(vocab: Any, train: TrainConfig) -> DataCollatorForMLM:
    """The MLM collator: ``train.mlm_probability`` masking, seeded, in ``train.batch_form``.

    Trainers wrap it in :class:`~stformer_train.training.StepSeededCollator` so that a resumed
    run masks batch ``i`` as the uninterrupted run did.
    """
    from stformer_collate import DataCollatorForMLM

    return DataCollatorForMLM(
        spec=vocab,
        mlm_probability=train.mlm_probability,
        seed=train.seed,
        form=train.batch_form,
        return_masked_positions=train.masked_positions_only,
    )


def build_early_stopping(
    train: TrainConfig, *, monitor: str, checkpoint_path: str | PathLike[str] | None = None
) -> EarlyStopping | None:
    """The early-stopping core for ``train`` (``None`` when ``early_stopping_patience`` is 0).

    ``monitor`` is the engine's name of the validation loss (``eval_loss`` for transformers,
    ``val_loss`` for Lightning); the best model is saved to ``checkpoint_path``.
    """
    if not train.early_stopping_patience:
        return None
    return EarlyStopping(
        monitor=monitor,
        patience=train.early_stopping_patience,
        min_delta=train.early_stopping_min_delta,
        checkpoint_path=checkpoint_path,
    )


@dataclass(frozen=True)
class TrainingParts:
    """What :func:`assemble` builds: the parts every training loop needs.

    Attributes
    ----------
    model
        The masked-LM model, initialised from ``TrainConfig.seed``.
    collator
        The MLM collator (``stformer_collate.DataCollatorForMLM``), not yet step-seeded.
    early_stopping
        The early-stopping core, or ``None`` when the config turns it off.
    precision
        The resolved precision (:func:`stformer_train.precision.resolve_precision`).
    """

    model: torch.nn.Module
    collator: DataCollatorForMLM
    early_stopping: EarlyStopping | None
    precision: Precision


def assemble(
    vocab: Any,
    model: ModelConfig,
    train: TrainConfig,
    *,
    monitor: str = "eval_loss",
    best_model_dir: str | PathLike[str] | None = None,
) -> TrainingParts:
    """Build model, collator, early stopping and precision for one run from its configs.

    Parameters
    ----------
    vocab
        The gene vocabulary (``stformer_data.GeneVocab``, or any token spec with ``pad_id``,
        ``mask_id`` and a length).
    model, train
        The run's configs, used whole.
    monitor
        The logged validation loss early stopping watches (``"eval_loss"`` or ``"val_loss"``).
    best_model_dir
        Where early stopping saves the best model (the run directory's ``best_model/``).

    >>> from stformer_collate import SimpleTokenSpec
    >>> spec = SimpleTokenSpec(pad_id=0, mask_id=1, vocab_size=40)
    >>> small = ModelConfig(num_layers=1, hidden_size=32, num_heads=2, intermediate_size=64)
    >>> parts = assemble(spec, small, TrainConfig(mixed_precision="no"))
    >>> parts.precision, parts.early_stopping, parts.collator.mlm_probability
    (<Precision.FP32: 'no'>, None, 0.15)
    """
    return TrainingParts(
        model=build_model(vocab, model, train),
        collator=build_collator(vocab, train),
        early_stopping=build_early_stopping(train, monitor=monitor, checkpoint_path=best_model_dir),
        precision=resolve_precision(train.mixed_precision),
    )
