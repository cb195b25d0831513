"""The masked-language-model loss shared by both trainers: logits only where a token is predicted.

A collator built with ``return_masked_positions=True`` adds ``masked_positions`` (flat indices into
``input_ids.reshape(-1)``) and ``masked_labels``. The encoder runs on the whole batch, then the
hidden states of the masked positions are gathered and only those go through the vocabulary
projection: with 15% masking that is ~7x fewer rows of the largest matmul and no ``(batch, length,
vocab)`` logits tensor. Without those keys the dense ``labels`` are used (the reference behaviour).

Packed batches (``cu_seqlens``/``position_ids``, no ``attention_mask``) are passed to the encoder
as they are, with the varlen keyword arguments (``cu_seq_lens_q``, ``max_length_q``, ...), when the
model runs :data:`~stformer_train.models.PACKED_ATTENTION` (the default of
:func:`~stformer_train.models.build_mlm_model`; document-aware attention on CPU and GPU, see
:mod:`._attention`) or a ``flash_attention_*`` implementation. A model with plain ``"sdpa"`` or
``"eager"`` attention has no way to keep the cells apart in one row, so for it the batch is
unpacked to a padded one first.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch

from stformer_train.models._attention import PACKED_ATTENTION

IGNORE_INDEX = -100
ENCODER_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


def unpack_to_padded(batch: Mapping[str, Any], pad_id: int) -> dict[str, Any]:
    """Turn a packed batch (``(1, total)`` tensors with ``cu_seqlens``) into a padded one.

    ``masked_positions`` are re-indexed into the padded layout.
    """
    cu = batch["cu_seqlens"].long()
    lengths = cu[1:] - cu[:-1]
    n, longest = lengths.numel(), int(lengths.max())
    seq = torch.repeat_interleave(torch.arange(n), lengths)
    pos = torch.arange(int(cu[-1])) - cu[:-1].repeat_interleave(lengths)
    flat_target = seq * longest + pos
    out: dict[str, Any] = {}
    for key, fill in (("input_ids", pad_id), ("labels", IGNORE_INDEX), ("token_type_ids", 0)):
        if key in batch:
            values = batch[key].reshape(-1)
            padded = torch.full((n * longest,), fill, dtype=values.dtype)
            padded[flat_target] = values
            out[key] = padded.view(n, longest)
    mask = torch.zeros(n * longest, dtype=torch.long)
    mask[flat_target] = 1
    out["attention_mask"] = mask.view(n, longest)
    if "masked_positions" in batch:
        out["masked_positions"] = flat_target[batch["masked_positions"].long()]
        out["masked_labels"] = batch["masked_labels"]
    return out


def _varlen_kwargs(batch: Mapping[str, Any]) -> dict[str, Any]:
    cu = batch["cu_seqlens"].to(torch.int32)
    longest = int(batch["max_seqlen"]) if "max_seqlen" in batch else int(cu.diff().max())
    return {
        "cu_seq_lens_q": cu,
        "cu_seq_lens_k": cu,
        "max_length_q": longest,
        "max_length_k": longest,
    }


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    while hasattr(model, "module") and not hasattr(model, "config"):
        model = model.module
    return model


def runs_packed(model: torch.nn.Module) -> bool:
    """Whether ``model`` takes packed batches as they are (its attention keeps the cells apart)."""
    impl = str(getattr(_unwrap(model).config, "_attn_implementation", None))
    return impl == PACKED_ATTENTION or "flash" in impl


def encoder_inputs(
    model: torch.nn.Module, batch: Mapping[str, Any]
) -> tuple[dict[str, Any], Mapping[str, Any]]:
    """The keyword arguments of the encoder for ``batch`` (and the batch, unpacked if needed)."""
    config = _unwrap(model).config
    if "cu_seqlens" in batch:
        if runs_packed(model):
            kwargs = {k: batch[k] for k in ENCODER_KEYS if k in batch and k != "attention_mask"}
            kwargs.update(_varlen_kwargs(batch))
            return kwargs, batch
        unpacked = unpack_to_padded(batch, config.pad_token_id or 0)
        batch = {
            **{k: v for k, v in batch.items() if k not in ("cu_seqlens", "position_ids")},
            **unpacked,
        }
    kwargs = {k: batch[k] for k in ENCODER_KEYS if k in batch and batch[k] is not None}
    return kwargs, batch


def accepts_masked_positions(model: torch.nn.Module) -> bool:
    return "masked_positions" in inspect.signature(_unwrap(model).forward).parameters


def mlm_loss(model: torch.nn.Module, batch: Mapping[str, Any]) -> tuple[torch.Tensor, int]:
    """Masked-LM cross-entropy of ``model`` on ``batch``; returns the loss and the number of targets.

    The model is called through its ``forward`` (so DDP/DeepSpeed wrappers see the call). When the
    batch has ``masked_positions`` and the model accepts them (:class:`SparseBertForMaskedLM`,
    :class:`GeneBertForPhenotypicMLM`), logits are computed only there; otherwise dense ``labels``.
    """
    device = next(model.parameters()).device
    kwargs, batch = encoder_inputs(model, batch)
    if "masked_positions" in batch and accepts_masked_positions(model):
        kwargs["masked_positions"] = batch["masked_positions"]
        kwargs["masked_labels"] = batch["masked_labels"]
        n = int(batch["masked_labels"].numel())
    else:
        kwargs["labels"] = batch["labels"]
        n = int((batch["labels"] != IGNORE_INDEX).sum())
    kwargs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in kwargs.items()}
    return model(**kwargs).loss, n


def dense_mlm_loss(model: torch.nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
    """The reference computation: logits at every position, loss over the labelled ones."""
    device = next(model.parameters()).device
    kwargs = {k: batch[k].to(device) for k in ENCODER_KEYS if k in batch}
    return model(**kwargs, labels=batch["labels"].to(device)).loss
