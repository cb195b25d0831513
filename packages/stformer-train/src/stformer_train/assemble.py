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

from collections.abc import Mapping
from dataclasses import dataclass, field
from os import PathLike
from typing import TYPE_CHECKING, Any

from stformer_train.config import ModelConfig, TrainConfig
from stformer_train.early_stopping import PatienceStopping
from stformer_train.precision import Precision, resolve_precision

if TYPE_CHECKING:
    import torch

    from stformer_collate import DataCollatorForMLM

__all__ = [
    "TokenScheme",
    "TrainingParts",
    "assemble",
    "build_collator",
    "build_early_stopping",
    "build_model",
]


@dataclass(frozen=True)
class TokenScheme:
    """What the model and collator must know of a corpus's tokens beyond its vocabulary.

    ``"rank"`` (rank-value gene tokens) needs nothing more; ``"binned"`` (expression bins with the
    gene in ``token_type_ids``, optional phenotype tokens) needs the number of token types and
    which types / ids are phenotypes. Read it from a corpus with :meth:`from_corpus`.

    >>> TokenScheme.from_manifest({"scheme": "binned", "type_vocab_size": 12, "gene_vocab_size": 10,
    ...                            "settings": {"binned": {"phenotypes": ["sex", "tissue"]}}}).phenotype_type_ids
    frozenset({10, 11})
    """

    name: str = "rank"
    type_vocab_size: int | None = None
    phenotype_type_ids: frozenset[int] = field(default_factory=frozenset)

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> TokenScheme:
        scheme = str(manifest.get("scheme", "rank"))
        if scheme != "binned":
            return cls(name=scheme)
        phenotypes = (manifest.get("settings") or {}).get("binned", {}).get("phenotypes", ())
        n_genes = int(manifest["gene_vocab_size"])
        return cls(
            name="binned",
            type_vocab_size=int(manifest["type_vocab_size"]),
            phenotype_type_ids=frozenset(n_genes + k for k in range(len(phenotypes))),
        )

    @classmethod
    def from_corpus(cls, corpus: Any) -> TokenScheme:
        """The scheme of a ``stformer_data.Corpus`` (from its manifest)."""
        return cls.from_manifest(corpus.manifest)


RANK = TokenScheme()


def build_model(
    vocab: Any, model: ModelConfig, train: TrainConfig, scheme: TokenScheme = RANK
) -> torch.nn.Module:
    """The masked-LM model for ``vocab`` (its size and pad id), initialised from ``train.seed``.

    Rank-value tokens give a BERT; binned tokens (``scheme.name == "binned"``) a GeneBert with
    ``scheme.type_vocab_size`` gene/phenotype token types and no positional embeddings.
    """
    from stformer_train.models import bert_config_from, build_genebert_config, build_mlm_model

    if model.init_from is not None:
        from stformer_train.geneformer import load_init_model

        return load_init_model(model, vocab, gradient_checkpointing=train.gradient_checkpointing)
    if scheme.name == "binned":
        config = build_genebert_config(
            vocab_size=len(vocab),
            n_genes=int(scheme.type_vocab_size),
            pad_token_id=vocab.pad_id,
            model=model,
        )
    else:
        config = bert_config_from(model, vocab_size=len(vocab), pad_token_id=vocab.pad_id)
    return build_mlm_model(
        config, seed=train.seed, gradient_checkpointing=train.gradient_checkpointing
    )


def build_collator(
    vocab: Any, train: TrainConfig, scheme: TokenScheme = RANK
) -> DataCollatorForMLM:
    """The MLM collator: ``train.mlm_probability`` masking, seeded, in ``train.batch_form``.

    A binned corpus with phenotype tokens gets the phenotypic MLM collator (phenotypes, found by
    their token type, drawn at the same ``mlm_probability`` and always masked).
    Trainers wrap it in :class:`~stformer_train.training.StepSeededCollator` so that a resumed
    run masks batch ``i`` as the uninterrupted run did.
    """
    from stformer_collate import DataCollatorForMLM, DataCollatorForPhenotypicMLM

    common = dict(
        spec=vocab,
        mlm_probability=train.mlm_probability,
        seed=train.seed,
        form=train.batch_form,
        return_masked_positions=train.masked_positions_only,
    )
    if scheme.name == "binned" and scheme.phenotype_type_ids:
        return DataCollatorForPhenotypicMLM(
            **common,
            phenotype_type_ids=scheme.phenotype_type_ids,
            phenotype_mlm_probability=train.mlm_probability,
        )
    return DataCollatorForMLM(**common)


def build_early_stopping(
    train: TrainConfig, *, monitor: str, checkpoint_path: str | PathLike[str] | None = None
) -> PatienceStopping | None:
    """The early-stopping core for ``train`` (``None`` when ``early_stopping_patience`` is 0).

    ``monitor`` is the engine's name of the validation loss (``eval_loss`` for transformers,
    ``val_loss`` for Lightning); the best model is saved to ``checkpoint_path``.
    """
    if not train.early_stopping_patience:
        return None
    return PatienceStopping(
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
    early_stopping: PatienceStopping | None
    precision: Precision


def assemble(
    vocab: Any,
    model: ModelConfig,
    train: TrainConfig,
    *,
    monitor: str = "eval_loss",
    best_model_dir: str | PathLike[str] | None = None,
    scheme: TokenScheme = RANK,
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
    scheme
        The corpus's token scheme (:meth:`TokenScheme.from_corpus`): a binned corpus gets a
        GeneBert and, with phenotypes, the phenotypic MLM collator.

    >>> from stformer_collate import SimpleTokenSpec
    >>> spec = SimpleTokenSpec(pad_id=0, mask_id=1, vocab_size=40)
    >>> small = ModelConfig(num_layers=1, hidden_size=32, num_heads=2, intermediate_size=64)
    >>> parts = assemble(spec, small, TrainConfig(mixed_precision="no"))
    >>> parts.precision, parts.early_stopping, parts.collator.mlm_probability
    (<Precision.FP32: 'no'>, None, 0.15)
    """
    return TrainingParts(
        model=build_model(vocab, model, train, scheme),
        collator=build_collator(vocab, train, scheme),
        early_stopping=build_early_stopping(train, monitor=monitor, checkpoint_path=best_model_dir),
        precision=resolve_precision(train.mixed_precision),
    )
