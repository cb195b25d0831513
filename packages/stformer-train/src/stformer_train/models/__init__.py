"""Models shared by the Hugging Face and Lightning paths.

* rank-value tokens (Geneformer / stFormer): ``SparseBertForMaskedLM`` (transformers' ``BertForMaskedLM`` + logits at masked positions only) built by
  :func:`build_mlm_model` from :func:`bert_config_from` (a :class:`ModelConfig`) or stFormer's
  :func:`build_bert_config` (its documented arguments);
* binned tokens with gene ``token_type_ids``: :class:`GeneBertForPhenotypicMLM` and
  :class:`GeneBertForClassification` (registered with ``AutoConfig``, ``AutoModel``,
  ``AutoModelForMaskedLM`` and ``AutoModelForSequenceClassification`` on import);
* :func:`mlm_loss`: the loss both trainers use, with logits only at the masked positions;
* :data:`PACKED_ATTENTION`: the attention implementation (registered with transformers'
  ``AttentionInterface``) that runs packed batches of several cells per row, each cell attending
  only to itself, on CPU and GPU; :func:`use_packed_backend` forces one of its kernels.
"""

from stformer_train.models._attention import (
    PACKED_ATTENTION,
    packed_attention_backend,
    use_packed_backend,
)
from stformer_train.models._bert import (
    SparseBertForMaskedLM,
    bert_config_from,
    build_bert_config,
    build_genebert_config,
    build_mlm_model,
)
from stformer_train.models._genebert import (
    GeneBertConfig,
    GeneBertEmbeddings,
    GeneBertForClassification,
    GeneBertForPhenotypicMLM,
    GeneBertModel,
    PositionlessEmbeddings,
    as_genebert_config,
)
from stformer_train.models._mlm import dense_mlm_loss, mlm_loss, unpack_to_padded

__all__ = [
    # rank-value tokens: BERT masked-LM
    "SparseBertForMaskedLM",
    "bert_config_from",
    "build_bert_config",
    "build_mlm_model",
    # attention over packed batches (several cells per row)
    "PACKED_ATTENTION",
    "packed_attention_backend",
    "use_packed_backend",
    # binned tokens with gene token types: GeneBert
    "GeneBertConfig",
    "GeneBertEmbeddings",
    "GeneBertForClassification",
    "GeneBertForPhenotypicMLM",
    "GeneBertModel",
    "PositionlessEmbeddings",
    "as_genebert_config",
    "build_genebert_config",
    # the loss both trainers use
    "dense_mlm_loss",
    "mlm_loss",
    "unpack_to_padded",
]
