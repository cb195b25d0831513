"""stformer-collate: turn tokenized cells into masked-language-model training batches.

Depends on torch and numpy only; it imports no stformer package and none of transformers,
lightning, ray, deepspeed or optuna. Vocabularies are described by the :class:`TokenSpec` protocol.
"""

from stformer_collate._layout import (
    IGNORE_INDEX,
    BatchForm,
    FlatBatch,
    flatten_examples,
    pad_examples,
)
from stformer_collate._mlm import DataCollatorForMLM
from stformer_collate._phenotype import DataCollatorForPhenotypicMLM, collate_fn_wrapper
from stformer_collate._precollator import STFormerPreCollator
from stformer_collate._spec import SimpleTokenSpec, TokenSpec

__version__ = "0.1.0"

__all__ = [
    "IGNORE_INDEX",
    "BatchForm",
    "DataCollatorForMLM",
    "DataCollatorForPhenotypicMLM",
    "FlatBatch",
    "STFormerPreCollator",
    "SimpleTokenSpec",
    "TokenSpec",
    "collate_fn_wrapper",
    "flatten_examples",
    "pad_examples",
]
