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
from stformer_collate._precollator import PreCollator
from stformer_collate._spec import SimpleTokenSpec, TokenSpec

__version__ = "0.1.0"

__all__ = [
    "IGNORE_INDEX",
    "BatchForm",
    "DataCollatorForMLM",
    "DataCollatorForPhenotypicMLM",
    "FlatBatch",
    "PreCollator",
    "SimpleTokenSpec",
    "TokenSpec",
    "collate_fn_wrapper",
    "flatten_examples",
    "pad_examples",
]


def __getattr__(name: str):
    # stFormer's documented STFormerPreCollator returns transformers' BatchEncoding, which this
    # package cannot import; it lives in stformer_train.hf (a subclass of PreCollator).
    if name == "STFormerPreCollator":
        raise AttributeError(
            "stformer_collate.STFormerPreCollator is now stformer_collate.PreCollator; stFormer's "
            "documented STFormerPreCollator (BatchEncoding results) is stformer_train.hf.STFormerPreCollator"
        )
    raise AttributeError(f"module 'stformer_collate' has no attribute {name!r}")
