"""Cell embeddings from a pretrained encoder: mean-pooled or first-token (CLS), batched by length."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from stformer_collate import pad_examples

Pooling = Literal["mean", "cls"]


def _encoder(model: PreTrainedModel) -> torch.nn.Module:
    base = getattr(model, "base_model", None)
    return base if base is not None else model


@torch.inference_mode()
def embed_sequences(
    model: PreTrainedModel,
    sequences: Sequence[Sequence[int]],
    *,
    pad_id: int,
    pooling: Pooling = "mean",
    batch_size: int = 64,
    device: str | torch.device | None = None,
    progress: bool = True,
    desc: str = "embed",
    hidden_layer: int = -1,
    token_type_ids: Sequence[Sequence[int]] | None = None,
) -> np.ndarray:
    """One vector per token sequence, from one hidden layer of the encoder.

    ``mean`` averages the hidden states of the non-pad tokens; ``cls`` takes the first token (use it
    with corpora tokenized with ``<cls>``). ``hidden_layer`` indexes the encoder's hidden states: ``-1``
    the last layer (default), ``-2`` the second-to-last (Geneformer's choice for cell embeddings),
    ``0`` the input embeddings (gene + position). Sequences are batched in order of length so that
    little padding is computed; the result is in the input order. ``token_type_ids`` (one
    sequence per input, of the same length) are passed to the encoder: a GeneBert (binned
    tokens) needs them.
    """
    if pooling not in ("mean", "cls"):
        raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    n_states = model.config.num_hidden_layers + 1
    if not -n_states <= hidden_layer < n_states:
        raise ValueError(
            f"hidden_layer must be in [{-n_states}, {n_states - 1}] for a {n_states - 1}-layer model, got {hidden_layer}"
        )
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    encoder = _encoder(model).to(device).eval()
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    order = np.argsort(-lengths, kind="stable")
    out = np.zeros((len(sequences), model.config.hidden_size), dtype=np.float32)
    for start in tqdm(
        range(0, len(order), batch_size), desc=desc, unit="batch", disable=not progress
    ):
        idx = order[start : start + batch_size]
        examples = [{"input_ids": sequences[i]} for i in idx]
        if token_type_ids is not None:
            for e, i in zip(examples, idx, strict=True):
                e["token_type_ids"] = token_type_ids[i]
        batch = pad_examples(examples, pad_id=pad_id)
        ids = batch["input_ids"].to(device)
        mask = batch["attention_mask"].to(device)
        extra = {}
        if "token_type_ids" in batch:
            extra["token_type_ids"] = batch["token_type_ids"].to(device)
        if hidden_layer == -1:
            hidden = encoder(input_ids=ids, attention_mask=mask, **extra).last_hidden_state
        else:
            states = encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True, **extra)
            hidden = states.hidden_states[hidden_layer]
        if pooling == "cls":
            pooled = hidden[:, 0]
        else:
            m = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
        out[idx] = pooled.float().cpu().numpy()
    return out
