"""Transformeromics (perturbgene), as its document specifies it, importable from one place.

Port a perturbgene script by changing its imports to::

    from stformer_train.perturbgene import (GeneTokenizer, IterableAnnDataset, collate_fn_wrapper,
        DataCollatorForPhenotypicMLM, PositionlessEmbeddings, GeneBertModel,
        GeneBertForPhenotypicMLM, GeneBertForClassification, parse_args, BaseConfig)

The tokenizer and dataset live in stformer-data (``stformer_data.GeneTokenizer``,
``stformer_data.shards.IterableAnnDataset``), the collators in stformer-collate, the models in
``stformer_train.models``; this package re-exports them with the configs and the training script
(``python -m stformer_train.perturbgene.main``, or ``stformer perturbgene``).
"""

from stformer_collate import DataCollatorForPhenotypicMLM, collate_fn_wrapper
from stformer_data import GeneTokenizer
from stformer_data.shards import IterableAnnDataset
from stformer_train.models import (
    GeneBertConfig,
    GeneBertForClassification,
    GeneBertForPhenotypicMLM,
    GeneBertModel,
    PositionlessEmbeddings,
    as_genebert_config,
)
from stformer_train.perturbgene.configs import (
    BaseConfig,
    ClassificationConfig,
    MLMConfig,
    build_parser,
    parse_args,
)

__all__ = [
    "BaseConfig",
    "ClassificationConfig",
    "DataCollatorForPhenotypicMLM",
    "GeneBertConfig",
    "GeneBertForClassification",
    "GeneBertForPhenotypicMLM",
    "GeneBertModel",
    "GeneTokenizer",
    "IterableAnnDataset",
    "MLMConfig",
    "PositionlessEmbeddings",
    "as_genebert_config",
    "build_parser",
    "collate_fn_wrapper",
    "parse_args",
]
