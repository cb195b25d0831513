"""The fast path of in-silico perturbation: perturbed copies through the encoder up to the pooled layer.

Where Geneformer's procedure spends its time, and what this module does instead (measured by
``benchmarks/perturb.py``, V1 shape 6 x 256 on 2 CPU cores):

* it runs the whole ``BertForMaskedLM``, MLM head included (a 256 x 25,426 projection per token,
  more multiply-adds than the six encoder layers together), and keeps every layer's hidden states;
  here the head is never called and the encoder stops at the layer that is pooled
  (``hidden_layer=-2``, Geneformer's default, skips the last layer too);
* it pads each cell's batch of copies and masks the padding; here copies of every cell of a cell
  batch are sorted by length and cut into batches of at most ``tokens_per_batch`` tokens, so that
  a batch of equal lengths (all ``delete`` copies of one cell) carries no padding and no mask at
  all, and SDPA takes its fused kernel;
* autograd bookkeeping: ``torch.inference_mode``; on a GPU the weights are cast to bf16.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedModel


def _bert(model: PreTrainedModel) -> torch.nn.Module:
    base = getattr(model, "base_model", None)
    bert = base if base is not None else model
    if not (hasattr(bert, "embeddings") and hasattr(bert, "encoder")):
        raise TypeError(
            f"perturbation needs a BERT encoder (embeddings + encoder.layer); got {type(model).__name__}"
        )
    return bert


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on a GPU that supports it, float32 otherwise."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


class PooledEncoder:
    """A BERT encoder cut at the layer whose hidden states are pooled into cell embeddings.

    Parameters
    ----------
    model
        A BERT model (``BertForMaskedLM``, ``BertForSequenceClassification``, ``BertModel``,
        stformer's ``SparseBertForMaskedLM``); only its embeddings and the first layers are run.
    hidden_layer
        Index into the encoder's hidden states (``0`` the embeddings, ``-1`` the last layer,
        ``-2`` the second-to-last: Geneformer's default ``emb_layer=-1``).
    special_ids
        Token ids left out of every mean (``<cls>``, ``<eos>``, ``<pad>``).
    device, dtype
        Where and in which precision to run; by default the GPU in bf16 when there is one,
        otherwise the CPU in float32.

    >>> from transformers import BertConfig, BertForMaskedLM
    >>> m = BertForMaskedLM(BertConfig(vocab_size=20, hidden_size=16, num_hidden_layers=2,
    ...                                num_attention_heads=2, intermediate_size=32))
    >>> enc = PooledEncoder(m, hidden_layer=-2, special_ids=[0], device="cpu")
    >>> h, keep = enc.hidden([np.array([3, 4, 5]), np.array([6, 7])])
    >>> tuple(h.shape), enc.pool(h, keep).shape
    ((2, 3, 16), torch.Size([2, 16]))
    """

    def __init__(
        self,
        model: PreTrainedModel,
        *,
        hidden_layer: int = -2,
        special_ids: Iterable[int] = (),
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        bert = _bert(model)
        n_layers = len(bert.encoder.layer)
        if not -(n_layers + 1) <= hidden_layer <= n_layers:
            raise ValueError(
                f"hidden_layer must be in [{-(n_layers + 1)}, {n_layers}] for a {n_layers}-layer model, got {hidden_layer}"
            )
        self.n_run = hidden_layer % (n_layers + 1)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = dtype or default_dtype(self.device)
        model.to(device=self.device, dtype=self.dtype).eval()
        self.embeddings = bert.embeddings
        self.layers = list(bert.encoder.layer[: self.n_run])
        self.hidden_size = int(model.config.hidden_size)
        self.special_ids = torch.as_tensor(
            sorted(set(special_ids)), dtype=torch.long, device=self.device
        )
        self.n_tokens = 0  # tokens run (not counting padding), for throughput figures

    @torch.inference_mode()
    def hidden(self, seqs: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states of ``seqs`` at the pooled layer, and which positions are genes (not special/pad)."""
        lengths = [len(s) for s in seqs]
        width = max(lengths)
        uniform = min(lengths) == width
        ids = np.zeros((len(seqs), width), dtype=np.int64)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = s
        ids_t = torch.from_numpy(ids).to(self.device, non_blocking=True)
        valid = None
        if not uniform:
            valid = torch.from_numpy(np.arange(width)[None, :] < np.asarray(lengths)[:, None]).to(
                self.device
            )
        h = self.embeddings(input_ids=ids_t)
        bias = None
        if valid is not None:  # additive mask, understood by SDPA and eager attention alike
            bias = torch.zeros(valid.shape, dtype=h.dtype, device=self.device)
            bias.masked_fill_(~valid, torch.finfo(h.dtype).min)
            bias = bias[:, None, None, :]
        for layer in self.layers:
            h = layer(h, bias)
        keep = (
            ~torch.isin(ids_t, self.special_ids)
            if self.special_ids.numel()
            else torch.ones_like(ids_t, dtype=torch.bool)
        )
        if valid is not None:
            keep &= valid
        self.n_tokens += int(sum(lengths))
        return h, keep

    @staticmethod
    def pool(hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Mean of the kept positions, in float32."""
        w = keep.to(hidden.dtype).unsqueeze(-1)
        return (hidden * w).sum(1).float() / w.sum(1).float().clamp(min=1.0)


@dataclass
class Copy:
    """One perturbed copy: which cell, which perturbation (index into the perturbation list), its tokens."""

    cell: int
    label: int
    tokens: np.ndarray


def plan_batches(lengths: np.ndarray, tokens_per_batch: int) -> list[np.ndarray]:
    """Indices of ``lengths`` sorted longest first, cut into batches of at most ``tokens_per_batch``.

    Batches are padded to their first (longest) row, so a batch's padding is the spread of its
    lengths; a batch of equal lengths has none. A sequence longer than the budget runs alone.
    """
    order = np.argsort(-np.asarray(lengths), kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    n = len(order)
    while start < n:
        width = int(lengths[order[start]])
        rows = max(1, tokens_per_batch // max(width, 1))
        stop = min(n, start + rows)
        batches.append(order[start:stop])
        start = stop
    return batches


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity in float32."""
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)
