"""GeneBert: a BERT over binned expression tokens whose gene identity is the ``token_type_id``.

A cell is a set of (gene, expression bin) pairs, not a sentence, so GeneBert has **no positional
embeddings**: the input embedding of a token is ``bin_embedding[input_id] +
gene_embedding[token_type_id]`` (then LayerNorm and dropout, as in BERT). Phenotype tokens (cell
type, disease, ...) are ordinary ``input_ids`` whose ``token_type_id`` names their category. The
encoder layers, attention (SDPA / flash) and the MLM head are transformers' BERT modules.
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


class GeneBertEmbeddings(nn.Module):
    """Bin (``input_ids``) + gene (``token_type_ids``) embeddings, LayerNorm, dropout; no positions."""

    def __init__(self, config: GeneBertConfig):
        super().__init__()
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


class GeneBertPreTrainedModel(BertPreTrainedModel):
    config_class = GeneBertConfig
    config: GeneBertConfig
    _no_split_modules = ["GeneBertEmbeddings", "BertLayer"]


class GeneBertModel(GeneBertPreTrainedModel):
    """The GeneBert encoder: :class:`GeneBertEmbeddings` then transformers' BERT encoder."""

    def __init__(self, config: GeneBertConfig, add_pooling_layer: bool = False):
        super().__init__(config)
        base = BertModel(config, add_pooling_layer=add_pooling_layer)
        self.embeddings = GeneBertEmbeddings(config)
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

    def __init__(self, config: GeneBertConfig):
        super().__init__(config)
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
                loss = F.cross_entropy(logits.float(), masked_labels.long())
        else:
            logits = self.cls(hidden)
            if labels is not None:
                loss = F.cross_entropy(
                    logits.float().reshape(-1, logits.shape[-1]),
                    labels.reshape(-1),
                    ignore_index=IGNORE_INDEX,
                )
        return MaskedLMOutput(loss=loss, logits=logits)


class GeneBertForClassification(GeneBertPreTrainedModel):
    """GeneBert with a cell-level classifier on the mean of the non-pad hidden states.

    >>> cfg = GeneBertConfig(vocab_size=60, type_vocab_size=100, hidden_size=32, num_hidden_layers=1,
    ...                      num_attention_heads=2, intermediate_size=64, num_labels=3)
    >>> out = GeneBertForClassification(cfg)(input_ids=torch.tensor([[5, 6]]), token_type_ids=torch.tensor([[1, 2]]),
    ...                                      labels=torch.tensor([2]))
    >>> out.logits.shape
    torch.Size([1, 3])
    """

    def __init__(self, config: GeneBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = GeneBertModel(config, add_pooling_layer=False)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
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
        if attention_mask is None:
            pooled = hidden.mean(1)
        else:
            m = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
        logits = self.classifier(self.dropout(pooled))
        loss = F.cross_entropy(logits.float(), labels.long()) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


def _register() -> None:
    AutoConfig.register(GeneBertConfig.model_type, GeneBertConfig, exist_ok=True)
    AutoModel.register(GeneBertConfig, GeneBertModel, exist_ok=True)
    AutoModelForMaskedLM.register(GeneBertConfig, GeneBertForPhenotypicMLM, exist_ok=True)
    AutoModelForSequenceClassification.register(
        GeneBertConfig, GeneBertForClassification, exist_ok=True
    )


_register()
