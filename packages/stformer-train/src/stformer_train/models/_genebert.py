"""GeneBert: a BERT over binned expression tokens whose gene identity is the ``token_type_id``.

A cell is a set of (gene, expression bin) pairs, not a sentence, so GeneBert has **no positional
embeddings**: the input embedding of a token is ``bin_embedding[input_id] +
gene_embedding[token_type_id]`` (then LayerNorm and dropout, as in BERT). Phenotype tokens (cell
type, disease, ...) are ordinary ``input_ids`` whose ``token_type_id`` names their category. The
encoder layers, attention (SDPA / flash) and the MLM head are transformers' BERT modules.

Transformeromics' names: :class:`PositionlessEmbeddings`, :class:`GeneBertModel`,
:class:`GeneBertForPhenotypicMLM` and :class:`GeneBertForClassification` (counterparts of
DistilBERT's ``Embeddings``, ``DistilBertModel``, ``DistilBertForMaskedLM`` and
``DistilBertForSequenceClassification``). Each also takes a ``DistilBertConfig`` (perturbgene's
model configs are DistilBERT json files): :func:`as_genebert_config` translates it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    BertConfig,
    DistilBertConfig,
    PretrainedConfig,
)
from transformers.modeling_outputs import MaskedLMOutput, SequenceClassifierOutput
from transformers.models.bert.modeling_bert import BertModel, BertOnlyMLMHead, BertPreTrainedModel

from stformer_train.models._mlm import IGNORE_INDEX


class GeneBertConfig(BertConfig):
    """``BertConfig`` of a GeneBert: ``vocab_size`` bins/specials/phenotypes, ``type_vocab_size`` genes.

    ``max_position_embeddings`` is kept only for compatibility (there are no position embeddings).

    >>> cfg = GeneBertConfig(vocab_size=60, type_vocab_size=2000, hidden_size=32, num_hidden_layers=2,
    ...                      num_attention_heads=2, intermediate_size=64)
    >>> cfg.model_type, cfg.type_vocab_size
    ('stformer_genebert', 2000)
    """

    model_type = "stformer_genebert"

    def __init__(
        self,
        type_vocab_size: int = 25_000,
        hidden_act: str = "relu",
        initializer_range: float = 0.02,
        layer_norm_eps: float = 1e-12,
        hidden_dropout_prob: float = 0.02,
        attention_probs_dropout_prob: float = 0.02,
        **kwargs: Any,
    ):
        super().__init__(
            type_vocab_size=type_vocab_size,
            hidden_act=hidden_act,
            initializer_range=initializer_range,
            layer_norm_eps=layer_norm_eps,
            hidden_dropout_prob=hidden_dropout_prob,
            attention_probs_dropout_prob=attention_probs_dropout_prob,
            **kwargs,
        )


def as_genebert_config(config: PretrainedConfig) -> GeneBertConfig:
    """A :class:`GeneBertConfig` from a ``GeneBertConfig`` (returned as is) or a ``DistilBertConfig``.

    DistilBERT's ``dim``, ``n_layers``, ``n_heads``, ``hidden_dim``, ``dropout``,
    ``attention_dropout``, ``activation`` and ``seq_classif_dropout`` become the BERT fields;
    ``type_vocab_size`` (the tokenizer's, genes + phenotype categories + 1) must be set on it.

    >>> from transformers import DistilBertConfig
    >>> d = DistilBertConfig(vocab_size=40, dim=32, n_layers=1, n_heads=2, hidden_dim=64)
    >>> d.type_vocab_size = 100
    >>> c = as_genebert_config(d)
    >>> c.hidden_size, c.num_hidden_layers, c.intermediate_size, c.type_vocab_size, c.layer_norm_eps
    (32, 1, 64, 100, 1e-12)
    """
    if isinstance(config, GeneBertConfig):
        return config
    if isinstance(config, BertConfig):
        return GeneBertConfig(**config.to_dict())
    if not isinstance(config, DistilBertConfig):
        raise TypeError(
            f"GeneBert takes a GeneBertConfig or a DistilBertConfig, got {type(config).__name__}"
        )
    type_vocab_size = getattr(config, "type_vocab_size", None)
    if not type_vocab_size:
        raise ValueError(
            "the DistilBertConfig has no type_vocab_size: set config.type_vocab_size = "
            "tokenizer.type_vocab_size (genes + phenotype categories + 1)"
        )
    extra = {
        k: getattr(config, k)
        for k in ("num_labels", "id2label", "label2id", "problem_type")
        if hasattr(config, k)
    }
    if "num_labels" in extra and "id2label" in extra:
        extra.pop("num_labels")
    return GeneBertConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.dim,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        intermediate_size=config.hidden_dim,
        hidden_act=config.activation,
        hidden_dropout_prob=config.dropout,
        attention_probs_dropout_prob=config.attention_dropout,
        classifier_dropout=getattr(config, "seq_classif_dropout", None),
        max_position_embeddings=config.max_position_embeddings,
        initializer_range=config.initializer_range,
        type_vocab_size=int(type_vocab_size),
        pad_token_id=config.pad_token_id,
        layer_norm_eps=1e-12,
        **extra,
    )


class PositionlessEmbeddings(nn.Module):
    """Bin (``input_ids``) + gene (``token_type_ids``) embeddings, LayerNorm, dropout; no positions.

    >>> cfg = GeneBertConfig(vocab_size=10, type_vocab_size=20, hidden_size=8, num_attention_heads=2)
    >>> PositionlessEmbeddings(cfg)(torch.tensor([[4, 5]]), torch.tensor([[0, 7]])).shape
    torch.Size([1, 2, 8])
    """

    def __init__(self, config: GeneBertConfig | DistilBertConfig):
        super().__init__()
        config = as_genebert_config(config)
        self.word_embeddings = nn.Embedding(
            config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id
        )
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        past_key_values_length: int = 0,
    ) -> torch.Tensor:
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        if token_type_ids is None:
            raise ValueError(
                "GeneBert needs token_type_ids (the gene id of every token); the batch has none"
            )
        embeddings = inputs_embeds + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(embeddings))


#: the former name of :class:`PositionlessEmbeddings`
GeneBertEmbeddings = PositionlessEmbeddings


class GeneBertPreTrainedModel(BertPreTrainedModel):
    config_class = GeneBertConfig
    config: GeneBertConfig
    _no_split_modules = ["PositionlessEmbeddings", "BertLayer"]

    def __init__(self, config: GeneBertConfig | DistilBertConfig, *inputs: Any, **kwargs: Any):
        super().__init__(as_genebert_config(config), *inputs, **kwargs)


class GeneBertModel(GeneBertPreTrainedModel):
    """The GeneBert encoder: :class:`GeneBertEmbeddings` then transformers' BERT encoder."""

    def __init__(self, config: GeneBertConfig | DistilBertConfig, add_pooling_layer: bool = False):
        super().__init__(config)
        config = self.config
        base = BertModel(config, add_pooling_layer=add_pooling_layer)
        self.embeddings = PositionlessEmbeddings(config)
        self.encoder = base.encoder
        self.pooler = base.pooler
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        **kwargs,
    ):
        kwargs.pop("return_dict", None)
        return BertModel.forward(
            self,
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )

    _create_attention_masks = BertModel._create_attention_masks


class GeneBertForPhenotypicMLM(GeneBertPreTrainedModel):
    """GeneBert with BERT's MLM head, for gene-bin and phenotype token prediction.

    ``forward`` accepts the collator's ``masked_positions``/``masked_labels`` and then computes
    logits only at those positions; otherwise dense ``labels`` (``-100`` = ignore).

    >>> cfg = GeneBertConfig(vocab_size=60, type_vocab_size=100, hidden_size=32, num_hidden_layers=1,
    ...                      num_attention_heads=2, intermediate_size=64)
    >>> m = GeneBertForPhenotypicMLM(cfg)
    >>> ids = torch.tensor([[5, 6, 7]]); genes = torch.tensor([[10, 11, 12]])
    >>> m(input_ids=ids, token_type_ids=genes).logits.shape
    torch.Size([1, 3, 60])
    """

    _tied_weights_keys = {
        "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
        "cls.predictions.decoder.bias": "cls.predictions.bias",
    }

    def __init__(self, config: GeneBertConfig | DistilBertConfig):
        super().__init__(config)
        config = self.config
        self.bert = GeneBertModel(config, add_pooling_layer=False)
        self.cls = BertOnlyMLMHead(config)
        self.post_init()

    def get_output_embeddings(self) -> nn.Module:
        return self.cls.predictions.decoder

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self.cls.predictions.decoder = new_embeddings
        self.cls.predictions.bias = new_embeddings.bias

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        labels=None,
        masked_positions=None,
        masked_labels=None,
        **kwargs,
    ) -> MaskedLMOutput:
        hidden = self.bert(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            **kwargs,
        ).last_hidden_state
        loss = None
        if masked_positions is not None:
            logits = self.cls(
                hidden.reshape(-1, hidden.shape[-1]).index_select(0, masked_positions)
            )
            if masked_labels is not None:
                loss = (
                    F.cross_entropy(logits.float(), masked_labels.long())
                    if masked_labels.numel()
                    else hidden.sum() * 0.0  # no token drawn in this batch: no signal, no NaN
                )
        else:
            logits = self.cls(hidden)
            if labels is not None:
                if bool((labels != IGNORE_INDEX).any()):
                    loss = F.cross_entropy(
                        logits.float().reshape(-1, logits.shape[-1]),
                        labels.reshape(-1),
                        ignore_index=IGNORE_INDEX,
                    )
                else:  # no token drawn in this batch: no signal, no NaN
                    loss = logits.sum() * 0.0
        return MaskedLMOutput(loss=loss, logits=logits)


class GeneBertForClassification(GeneBertPreTrainedModel):
    """GeneBert with a cell-level head on the first token (``[CLS]``), as DistilBERT's classifier.

    The first token's hidden state goes through ``pre_classifier`` (hidden -> hidden), ReLU,
    dropout (``classifier_dropout``, else ``hidden_dropout_prob``) and ``classifier``. The loss
    follows transformers' ``problem_type``: ``num_labels == 1`` is regression (MSE on float
    labels), integer labels are single-label classification (cross-entropy), float labels with
    ``num_labels > 1`` are multi-label (BCE with logits).

    >>> cfg = GeneBertConfig(vocab_size=60, type_vocab_size=100, hidden_size=32, num_hidden_layers=1,
    ...                      num_attention_heads=2, intermediate_size=64, num_labels=3)
    >>> out = GeneBertForClassification(cfg)(input_ids=torch.tensor([[5, 6]]), token_type_ids=torch.tensor([[1, 2]]),
    ...                                      labels=torch.tensor([2]))
    >>> out.logits.shape
    torch.Size([1, 3])
    """

    def __init__(self, config: GeneBertConfig | DistilBertConfig):
        super().__init__(config)
        config = self.config
        self.num_labels = config.num_labels
        self.bert = GeneBertModel(config, add_pooling_layer=False)
        self.pre_classifier = nn.Linear(config.hidden_size, config.hidden_size)
        dropout = config.classifier_dropout
        self.dropout = nn.Dropout(config.hidden_dropout_prob if dropout is None else dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs
    ) -> SequenceClassifierOutput:
        hidden = self.bert(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            **kwargs,
        ).last_hidden_state
        pooled = F.relu(self.pre_classifier(hidden[:, 0]))
        logits = self.classifier(self.dropout(pooled))
        loss = None if labels is None else self._loss(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        problem = self.config.problem_type
        if problem is None:
            if self.num_labels == 1:
                problem = "regression"
            elif labels.dtype in (torch.long, torch.int, torch.int16, torch.int8, torch.uint8):
                problem = "single_label_classification"
            else:
                problem = "multi_label_classification"
        if problem == "regression":
            if labels.is_floating_point() is False and self.num_labels > 1:
                raise ValueError("regression needs float labels")
            target = labels.float()
            if self.num_labels == 1:
                return F.mse_loss(logits.float().squeeze(-1), target.reshape(-1))
            return F.mse_loss(logits.float(), target)
        if problem == "single_label_classification":
            return F.cross_entropy(logits.float().view(-1, self.num_labels), labels.long().view(-1))
        if problem == "multi_label_classification":
            return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
        raise ValueError(f"unknown problem_type {problem!r}")


def _register() -> None:
    AutoConfig.register(GeneBertConfig.model_type, GeneBertConfig, exist_ok=True)
    AutoModel.register(GeneBertConfig, GeneBertModel, exist_ok=True)
    AutoModelForMaskedLM.register(GeneBertConfig, GeneBertForPhenotypicMLM, exist_ok=True)
    AutoModelForSequenceClassification.register(
        GeneBertConfig, GeneBertForClassification, exist_ok=True
    )


_register()
