"""BERT masked-language models over rank-value gene tokens (Geneformer / stFormer)."""

from __future__ import annotations

from transformers import BertConfig, BertForMaskedLM
from transformers.modeling_outputs import MaskedLMOutput

from stformer_train._names import checked_signature
from stformer_train.config import ModelConfig
from stformer_train.models._attention import PACKED_ATTENTION


class SparseBertForMaskedLM(BertForMaskedLM):
    """transformers' ``BertForMaskedLM`` whose ``forward`` can compute logits only where needed.

    With ``masked_positions`` (flat indices into ``input_ids.reshape(-1)``, from a stformer-collate
    collator with ``return_masked_positions=True``) the hidden states of those positions are
    gathered and only they go through the MLM head; ``masked_labels`` gives the loss. Without
    them it is exactly ``BertForMaskedLM``. The weights are BERT's, so a saved model loads with
    ``AutoModelForMaskedLM`` / ``BertForMaskedLM`` too.

    >>> cfg = bert_config_from(ModelConfig(num_layers=1, hidden_size=32, num_heads=2,
    ...                                    intermediate_size=64), vocab_size=40)
    >>> m = SparseBertForMaskedLM(cfg)
    >>> import torch
    >>> m(input_ids=torch.tensor([[5, 6, 7]]), masked_positions=torch.tensor([1]), masked_labels=torch.tensor([6])).logits.shape
    torch.Size([1, 40])
    """

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        masked_positions=None,
        masked_labels=None,
        **kwargs,
    ):
        if masked_positions is None:
            return super().forward(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
                position_ids=position_ids,
                inputs_embeds=inputs_embeds,
                labels=labels,
                **kwargs,
            )
        import torch.nn.functional as F

        hidden = self.bert(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            return_dict=True,
            **kwargs,
        ).last_hidden_state
        logits = self.cls(hidden.reshape(-1, hidden.shape[-1]).index_select(0, masked_positions))
        loss = (
            F.cross_entropy(logits.float(), masked_labels.long())
            if masked_labels is not None
            else None
        )
        return MaskedLMOutput(loss=loss, logits=logits)


def _encoder_kwargs(m: ModelConfig) -> dict:
    """The transformer-encoder fields of a ``BertConfig`` (shared by BERT and GeneBert) from a ModelConfig."""
    return dict(
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
    )


def bert_config_from(
    model: ModelConfig | None = None,
    *,
    vocab_size: int,
    pad_token_id: int = 0,
    **overrides,
) -> BertConfig:
    """The ``BertConfig`` a :class:`ModelConfig` describes, for ``vocab_size`` tokens (stformer's own builder).

    ``overrides`` are passed to ``BertConfig`` and win over ``model``. stFormer's documented
    ``build_bert_config(model_type, num_layers, ...)`` is an adapter over this function.

    >>> cfg = bert_config_from(ModelConfig(num_layers=2, hidden_size=64, num_heads=2,
    ...                                    intermediate_size=128), vocab_size=100)
    >>> cfg.hidden_act, cfg.num_hidden_layers, cfg.vocab_size
    ('relu', 2, 100)
    """
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be > 0, got {vocab_size}")
    m = model or ModelConfig()
    kwargs = dict(
        vocab_size=vocab_size,
        **_encoder_kwargs(m),
        pad_token_id=pad_token_id,
        type_vocab_size=2,
        tie_word_embeddings=m.tie_word_embeddings,
    )
    kwargs.update(overrides)
    return BertConfig(**kwargs)


def stformer_model_config(
    *,
    num_layers: int,
    num_heads: int,
    embed_dim: int,
    max_input: int,
    activ_fn: str,
    initializer_range: float,
    layer_norm_eps: float,
    attention_dropout: float,
    hidden_dropout: float,
) -> ModelConfig:
    """The :class:`ModelConfig` of stFormer's model arguments (intermediate size ``2 * embed_dim``,
    as Geneformer's 256 -> 512 and stformer's default)."""
    return ModelConfig(
        num_layers=num_layers,
        hidden_size=embed_dim,
        num_heads=num_heads,
        intermediate_size=2 * embed_dim,
        max_position_embeddings=max_input,
        hidden_act=activ_fn,
        initializer_range=initializer_range,
        layer_norm_eps=layer_norm_eps,
        hidden_dropout_prob=hidden_dropout,
        attention_probs_dropout_prob=attention_dropout,
    )


@checked_signature
def build_bert_config(
    model_type: str,
    num_layers: int,
    num_heads: int,
    embed_dim: int,
    max_input: int,
    pad_id: int,
    vocab_size: int,
    activ_fn: str = "relu",
    initializer_range: float = 0.02,
    layer_norm_eps: float = 1e-12,
    attention_dropout: float = 0.02,
    hidden_dropout: float = 0.02,
) -> BertConfig:
    """stFormer's ``BertConfig`` builder: every argument is used.

    Parameters
    ----------
    model_type
        ``"bert"`` (any case): the one model type this builder makes (a ``BertConfig``).
    num_layers, num_heads, embed_dim
        Hidden layers, attention heads, hidden (= embedding) size; the intermediate (feed-forward)
        size is ``2 * embed_dim``.
    max_input
        ``max_position_embeddings``: the longest input.
    pad_id, vocab_size
        The pad token's id and the number of tokens.
    activ_fn
        The hidden activation (``relu``, ``gelu``, ``gelu_new`` or ``silu``).
    initializer_range, layer_norm_eps
        The weight initializer's standard deviation and the layer-norm epsilon.
    attention_dropout, hidden_dropout
        ``attention_probs_dropout_prob`` and ``hidden_dropout_prob``.

    Invalid values raise ``ValueError`` naming the argument (the shape is validated by
    :class:`ModelConfig`). This is an adapter over :func:`bert_config_from`.

    >>> cfg = build_bert_config("bert", 2, 2, 32, 64, 0, 100)
    >>> cfg.num_hidden_layers, cfg.hidden_size, cfg.max_position_embeddings, cfg.hidden_act
    (2, 32, 64, 'relu')
    """
    if str(model_type).strip().lower() != "bert":
        raise ValueError(
            f"build_bert_config: model_type must be 'bert' (it builds a BertConfig), got {model_type!r}"
        )
    if vocab_size <= 0:
        raise ValueError(f"build_bert_config: vocab_size must be > 0, got {vocab_size}")
    if not 0 <= pad_id < vocab_size:
        raise ValueError(
            f"build_bert_config: pad_id must be a token id in [0, {vocab_size}), got {pad_id}"
        )
    model = stformer_model_config(
        num_layers=num_layers,
        num_heads=num_heads,
        embed_dim=embed_dim,
        max_input=max_input,
        activ_fn=activ_fn,
        initializer_range=initializer_range,
        layer_norm_eps=layer_norm_eps,
        attention_dropout=attention_dropout,
        hidden_dropout=hidden_dropout,
    )
    return bert_config_from(model, vocab_size=vocab_size, pad_token_id=pad_id)


def build_mlm_model(
    config: BertConfig,
    *,
    seed: int | None = None,
    attn_implementation: str = PACKED_ATTENTION,
    gradient_checkpointing: bool = False,
) -> SparseBertForMaskedLM:
    """A freshly initialised masked-LM model for ``config``.

    A ``BertConfig`` gives :class:`SparseBertForMaskedLM` (rank-value tokens); a
    :class:`~stformer_train.models.GeneBertConfig` gives :class:`GeneBertForPhenotypicMLM` (binned
    tokens). The default attention, :data:`~stformer_train.models.PACKED_ATTENTION`, is PyTorch's
    SDPA on padded batches and document-aware attention on packed (unpadded) batches, on CPU and
    GPU; ``"sdpa"``, ``"eager"`` or ``"flash_attention_2"`` select transformers' own.
    """
    import torch

    from stformer_train.models._genebert import GeneBertConfig, GeneBertForPhenotypicMLM

    if seed is not None:
        torch.manual_seed(seed)
    config._attn_implementation = attn_implementation
    net = (
        GeneBertForPhenotypicMLM(config)
        if isinstance(config, GeneBertConfig)
        else SparseBertForMaskedLM(config)
    )
    if gradient_checkpointing:
        enable = getattr(net, "activation_checkpointing_enable", None)  # transformers >= 5.17
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            net.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
    return net


def build_genebert_config(
    *,
    vocab_size: int,
    n_genes: int,
    pad_token_id: int = 0,
    model: ModelConfig | None = None,
    **overrides,
):
    """A :class:`GeneBertConfig` with stFormer's defaults; ``n_genes`` is the gene (token type) vocabulary.

    >>> build_genebert_config(vocab_size=60, n_genes=500).type_vocab_size
    500
    """
    from stformer_train.models._genebert import GeneBertConfig

    if vocab_size <= 0 or n_genes <= 0:
        raise ValueError(f"vocab_size and n_genes must be > 0, got {vocab_size} and {n_genes}")
    m = model or ModelConfig()
    kwargs = dict(
        vocab_size=vocab_size,
        type_vocab_size=n_genes,
        **_encoder_kwargs(m),
        pad_token_id=pad_token_id,
    )
    kwargs.update(overrides)
    return GeneBertConfig(**kwargs)
