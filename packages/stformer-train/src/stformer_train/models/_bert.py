"""BERT masked-language models over rank-value gene tokens (Geneformer / stFormer)."""

from __future__ import annotations

from transformers import BertConfig, BertForMaskedLM

from stformer_train.config import ModelConfig


def build_bert_config(
    *,
    vocab_size: int,
    pad_token_id: int = 0,
    model: ModelConfig | None = None,
    **overrides,
) -> BertConfig:
    """A ``BertConfig`` with stFormer's defaults (relu, initializer 0.02, layer-norm eps 1e-12, dropouts 0.02).

    ``overrides`` are passed to ``BertConfig`` and win over ``model``.

    >>> cfg = build_bert_config(vocab_size=100, model=ModelConfig(num_layers=2, hidden_size=64, num_heads=2,
    ...                                                           intermediate_size=128))
    >>> cfg.hidden_act, cfg.num_hidden_layers, cfg.vocab_size
    ('relu', 2, 100)
    """
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be > 0, got {vocab_size}")
    m = model or ModelConfig()
    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=m.hidden_size,
        num_hidden_layers=m.num_layers,
        num_attention_heads=m.num_heads,
        intermediate_size=m.intermediate_size,
        hidden_act=m.hidden_act,
        hidden_dropout_prob=m.hidden_dropout_prob,
        attention_probs_dropout_prob=m.attention_probs_dropout_prob,
        max_position_embeddings=m.max_position_embeddings,
        initializer_range=m.initializer_range,
        layer_norm_eps=m.layer_norm_eps,
        pad_token_id=pad_token_id,
        type_vocab_size=2,
    )
    kwargs.update(overrides)
    return BertConfig(**kwargs)


def build_mlm_model(config: BertConfig, *, seed: int | None = None) -> BertForMaskedLM:
    """A freshly initialised ``BertForMaskedLM`` using PyTorch's SDPA attention."""
    import torch

    if seed is not None:
        torch.manual_seed(seed)
    config._attn_implementation = "sdpa"
    return BertForMaskedLM(config)
