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
* autograd bookkeeping: ``torch.inference_mode``; on a GPU the weights are cast to bf16;
* each BERT layer runs as :class:`FusedBertLayer`: one ``[h, 3h]`` query/key/value matmul
  instead of three, the biases and residuals folded into the matmuls' accumulators
  (``addmm_`` into ``residual + bias``) instead of broadcast copies and separate adds, ReLU in
  place, no dropout calls (about a fifth less time per layer than transformers' ``BertLayer``
  on 2 CPU cores; the same arithmetic, agreeing to float32 rounding);
* on the CPU, batches run side by side, one per thread, each single-threaded
  (:meth:`PooledEncoder.map`), instead of one batch at a time with every op split across the
  threads: the ops of a 6 x 256 model on ~120-token copies are too small to split well (1.26-1.33x
  on 16 cortex cells, 2 cores, the same cosines bit for bit);
* ``delete`` of every gene (:meth:`PooledEncoder.deletions`): the first layer's input rows of a
  deletion copy are the cell's own (token, position) rows, unshifted before the deleted gene and
  one position earlier after it, so both alignments are embedded and projected once per cell and
  each copy gathers its rows (a few per cent; later layers see the whole copy and must run).

The layer tree and SDPA stay transformers' for any model :func:`_fusable` does not accept.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from transformers import PreTrainedModel

T = TypeVar("T")
R = TypeVar("R")


def _bert(model: PreTrainedModel) -> torch.nn.Module:
    base = getattr(model, "base_model", None)
    bert = base if base is not None else model
    if not (hasattr(bert, "embeddings") and hasattr(bert, "encoder")):
        raise TypeError(
            f"perturbation needs a BERT encoder (embeddings + encoder.layer); got {type(model).__name__}"
        )
    return bert


def _fusable(layer: torch.nn.Module, config) -> bool:
    """Whether ``layer`` is a plain post-norm BERT encoder layer :class:`FusedBertLayer` can run."""
    try:
        a = layer.attention.self
        parts = (a.query, a.key, a.value, layer.attention.output.dense)
        parts += (layer.attention.output.LayerNorm, layer.intermediate.dense, layer.output.dense)
        parts += (layer.output.LayerNorm,)
    except AttributeError:
        return False
    return (
        all(p is not None for p in parts)
        and getattr(config, "position_embedding_type", "absolute") == "absolute"
        and not getattr(config, "is_decoder", False)
        and not getattr(layer, "add_cross_attention", False)
        and isinstance(getattr(config, "hidden_act", None), str)
    )


class FusedBertLayer(torch.nn.Module):
    """transformers' ``BertLayer`` in inference, with fewer passes over memory.

    The same arithmetic: ``LN(x + attn(x) W_o + b_o)``, then ``LN(a + act(a W_1 + b_1) W_2 + b_2)``,
    attention through SDPA; the weights are the layer's own (transposed once, the query, key and
    value projections concatenated).
    """

    @torch.no_grad()
    def __init__(self, layer: torch.nn.Module, config) -> None:
        from transformers.activations import ACT2FN

        super().__init__()
        a = layer.attention.self
        self.heads = int(config.num_attention_heads)
        self.w_qkv = torch.cat([a.query.weight, a.key.weight, a.value.weight]).t().contiguous()
        self.b_qkv = torch.cat([a.query.bias, a.key.bias, a.value.bias])
        out = layer.attention.output
        self.w_o, self.b_o = out.dense.weight.t().contiguous(), out.dense.bias
        self.ln1 = out.LayerNorm
        self.w_1 = layer.intermediate.dense.weight.t().contiguous()
        self.b_1 = layer.intermediate.dense.bias
        self.w_2 = layer.output.dense.weight.t().contiguous()
        self.b_2 = layer.output.dense.bias
        self.ln2 = layer.output.LayerNorm
        self.relu = config.hidden_act == "relu"
        self.act = ACT2FN[config.hidden_act]

    def qkv(self, x: torch.Tensor) -> torch.Tensor:
        """The concatenated query, key and value projections of rows ``x`` ``[tokens, hidden]``."""
        return torch.addmm(self.b_qkv, x, self.w_qkv)

    def forward(
        self, h: torch.Tensor, bias: torch.Tensor | None = None, qkv: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``h`` ``[batch, length, hidden]``; ``bias`` an additive attention mask ``[batch, 1, 1, length]``.

        ``qkv``: :meth:`qkv` of ``h``'s rows when already known (``[batch * length, 3 * hidden]``).
        """
        b, n, d = h.shape
        x = h.reshape(b * n, d)
        qkv = self.qkv(x) if qkv is None else qkv
        qkv = qkv.view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        ctx = torch.nn.functional.scaled_dot_product_attention(
            qkv[0], qkv[1], qkv[2], attn_mask=bias
        )
        ctx = ctx.transpose(1, 2).reshape(b * n, d)
        a = x + self.b_o
        a.addmm_(ctx, self.w_o)
        a = torch.nn.functional.layer_norm(a, (d,), self.ln1.weight, self.ln1.bias, self.ln1.eps)
        f = torch.addmm(self.b_1, a, self.w_1)
        f = f.relu_() if self.relu else self.act(f)
        o = a + self.b_2
        o.addmm_(f, self.w_2)
        o = torch.nn.functional.layer_norm(o, (d,), self.ln2.weight, self.ln2.bias, self.ln2.eps)
        return o.view(b, n, d)


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
    workers
        Batches :meth:`map` runs at once. Default: on the CPU torch's intra-op thread count
        (``torch.get_num_threads()``), each batch then running single-threaded; on a GPU 1.

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
        workers: int | None = None,
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
        cfg = model.config
        self.layers = [
            FusedBertLayer(layer, cfg) if _fusable(layer, cfg) else layer
            for layer in bert.encoder.layer[: self.n_run]
        ]
        self.hidden_size = int(model.config.hidden_size)
        self.special_ids = torch.as_tensor(
            sorted(set(special_ids)), dtype=torch.long, device=self.device
        )
        self.n_tokens = 0  # tokens run (not counting padding), for throughput figures
        self._count = threading.Lock()
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers or (torch.get_num_threads() if self.device.type == "cpu" else 1)

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """``[fn(x) for x in items]``, with :attr:`workers` items at a time, each single-threaded.

        Items are taken in the order given (put the largest first for an even split). torch's
        intra-op thread count is 1 while they run and is restored afterwards.
        """
        if self.workers <= 1 or len(items) <= 1:
            return [fn(x) for x in items]
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(
                min(self.workers, len(items)),
                thread_name_prefix="stformer-perturb",
                initializer=torch.set_num_threads,
                initargs=(1,),
            ) as pool:
                return list(pool.map(fn, items))
        finally:
            torch.set_num_threads(before)

    def cost(self, rows: int, width: int) -> int:
        """Relative work of a batch of ``rows`` sequences of ``width`` tokens (to order batches)."""
        return rows * width * (width + 4 * self.hidden_size)

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
            if isinstance(h, tuple):  # transformers' BertLayer in versions that return a tuple
                h = h[0]
        keep = (
            ~torch.isin(ids_t, self.special_ids)
            if self.special_ids.numel()
            else torch.ones_like(ids_t, dtype=torch.bool)
        )
        if valid is not None:
            keep &= valid
        with self._count:
            self.n_tokens += int(sum(lengths))
        return h, keep

    @torch.inference_mode()
    def deletions(
        self, seq: np.ndarray, positions: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`hidden` of the copies of ``seq`` that each lack one of ``positions``.

        The first layer's input rows of such a copy are the cell's own (token, position) rows before
        the deleted position and the same tokens one position earlier after it; both alignments are
        embedded and projected to queries, keys and values once per cell, and each copy gathers its
        rows instead of recomputing them (``n`` rows instead of ``n - 1`` per copy).
        """
        seq = np.asarray(seq, dtype=np.int64)
        positions = np.asarray(positions, dtype=np.int64)
        n = len(seq)
        first = self.layers[0] if self.layers else None
        if not isinstance(first, FusedBertLayer) or n < 2:
            return self.hidden([np.delete(seq, p) for p in positions])
        j = np.arange(n - 1)
        after = j[None, :] >= positions[:, None]
        src = np.where(after, n + j[None, :], j[None, :])  # row n + k: token k + 1 at position k
        ids = torch.from_numpy(seq).to(self.device)[None, :]
        pos = torch.arange(n, device=self.device)[None, :]
        table = torch.cat(
            [
                self.embeddings(input_ids=ids, position_ids=pos)[0],
                self.embeddings(input_ids=ids[:, 1:], position_ids=pos[:, :-1])[0],
            ]
        )
        src_t = torch.from_numpy(src.reshape(-1)).to(self.device)
        h = table.index_select(0, src_t).view(len(positions), n - 1, -1)
        h = first(h, None, qkv=first.qkv(table).index_select(0, src_t))
        for layer in self.layers[1:]:
            h = layer(h, None)
            if isinstance(h, tuple):
                h = h[0]
        copy_ids = torch.from_numpy(np.where(after, seq[j + 1][None, :], seq[j][None, :]))
        copy_ids = copy_ids.to(self.device)
        keep = (
            ~torch.isin(copy_ids, self.special_ids)
            if self.special_ids.numel()
            else torch.ones_like(copy_ids, dtype=torch.bool)
        )
        with self._count:
            self.n_tokens += len(positions) * (n - 1)
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
