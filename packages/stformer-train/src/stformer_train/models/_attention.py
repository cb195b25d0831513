"""Document-aware attention for packed batches, registered with transformers' ``AttentionInterface``.

A packed batch is one ``(1, total)`` row holding several cells back to back (stformer-collate's
``BatchForm.PACKED``). Every cell must attend only to itself. transformers' BERT layers call the
attention function registered under ``config._attn_implementation`` with the varlen keyword
arguments the encoder was given (``cu_seq_lens_q``/``cu_seq_lens_k``/``max_length_q``/
``max_length_k``, the names flash-attention uses), so registering one function here gives
packed batches to BERT and GeneBert without forking their layers. Without those arguments (a
padded batch) the function *is* transformers' SDPA attention, with SDPA's mask
(:data:`PACKED_ATTENTION` is registered with ``AttentionMaskInterface`` as ``sdpa_mask``), so a
model built with it computes exactly what an ``"sdpa"`` model computes on padded batches.

Backends (:func:`packed_attention_backend` picks one per call; :func:`use_packed_backend`
forces one):

``"varlen"``
    ``torch.nn.attention.varlen.varlen_attn``: flash-attention over ``cu_seqlens`` (CUDA,
    fp16/bf16, no attention dropout). The GPU default.
``"nested"``
    SDPA on a jagged nested tensor (``torch.nested.nested_tensor_from_jagged``): the
    flash/memory-efficient varlen kernels *with* dropout. The GPU default while training with
    attention dropout, and for fp32 on CUDA.
``"blocks"``
    SDPA on consecutive spans of the row: a span is one cell (no mask) or several short cells
    whose combined length is at most :data:`CPU_SPAN_TOKENS` (a block-diagonal boolean mask).
    Work is ``sum(span_len**2)``, never ``total**2``. The CPU default; runs on every device.

Measured on this project's 2-core CPU host (torch 2.15, 4 heads x 64, forward + backward of
the attention alone, lengths of a length-grouped batch of real cells):

* FlexAttention (``create_block_mask`` + ``flex_attention``) has **no CPU backward** in torch
  2.15, eager or compiled ("FlexAttention does not support backward on CPU"), so it cannot
  train on CPU; on CUDA ``varlen_attn`` calls the flash kernel directly, without
  ``torch.compile`` and the recompilation that a new ``total`` would trigger.
* Nested-tensor SDPA on CPU fails (it dispatches to a CUDA kernel).
* One SDPA over the whole row with a ``(total, total)`` block-diagonal mask: 121 ms for 16
  cells of ~120 tokens against 22-33 ms cell by cell; it does ``total**2`` work.
* Cell by cell (one SDPA per cell): 330 ms for cells of 2,048 + 1,800 + 1,500 + 5 x ~200
  tokens against 1,190 ms for the same cells padded to 2,048 in one SDPA call (the ``sum
  len**2`` against ``n * max**2`` work), but 16 short cells pay ~1-2 ms of call overhead each;
  spans of up to :data:`CPU_SPAN_TOKENS` tokens keep the call count low for short cells.
* Whole training steps (6 x 256 BERT, masked-only logits, AdamW, 8 length-grouped batches of 8
  real cells, mean 180 tokens, 2 threads, taken in turn): padded 89 real tokens/s; packed with
  spans of 0 (cell by cell) / 256 / 512 / 1,024 tokens 273 / 251 / 314 / 260 tokens/s. 512 it
  is; the padded figure is low because SDPA with a padding mask on CPU pays for every padded
  key and query of the batch that holds the long cells.
"""

from __future__ import annotations

import contextlib
import contextvars
import weakref
from collections.abc import Iterator
from functools import lru_cache

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

PACKED_ATTENTION = "stformer_packed"
"""The ``attn_implementation`` name: SDPA for padded batches, document-aware for packed ones."""

BACKENDS = ("auto", "varlen", "nested", "blocks")

CPU_SPAN_TOKENS = 512
"""Short consecutive cells are attended together (block-diagonal mask) up to this many tokens."""

_forced: contextvars.ContextVar[str] = contextvars.ContextVar(
    "stformer_packed_backend", default="auto"
)


@contextlib.contextmanager
def use_packed_backend(name: str) -> Iterator[None]:
    """Force the packed-attention backend inside a ``with`` block (``"auto"`` restores the choice).

    >>> with use_packed_backend("blocks"):
    ...     packed_attention_backend(torch.device("cpu"), torch.float32, 0.0)
    'blocks'
    """
    if name not in BACKENDS:
        raise ValueError(f"packed attention backend must be one of {list(BACKENDS)}, got {name!r}")
    token = _forced.set(name)
    try:
        yield
    finally:
        _forced.reset(token)


def _has_varlen() -> bool:
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401  (torch >= 2.9)
    except ImportError:
        return False
    return True


def packed_attention_backend(device: torch.device, dtype: torch.dtype, dropout: float) -> str:
    """The backend a packed batch on ``device`` in ``dtype`` with attention ``dropout`` gets."""
    forced = _forced.get()
    if forced != "auto":
        return forced
    if device.type != "cuda":
        return "blocks"
    if dropout == 0.0 and dtype in (torch.float16, torch.bfloat16) and _has_varlen():
        return "varlen"
    return "nested"


_last_bounds: list = [None, None, None]  # [weakref to the cu tensor, its _version, its values]


def _bounds(cu: torch.Tensor) -> tuple[int, ...]:
    """``cu`` as a tuple of ints, read once per forward pass.

    Every layer gets the same ``cu_seq_lens_q`` tensor; remembering the last one read makes the
    host copy (a device synchronisation on GPU) happen once per step instead of once per layer.
    """
    ref, version, values = _last_bounds
    current = None if cu.is_inference() else cu._version  # inference tensors keep no version
    if ref is not None and ref() is cu and current is not None and version == current:
        return values
    values = tuple(int(x) for x in cu.tolist())
    _last_bounds[:] = [weakref.ref(cu), current, values]
    return values


@lru_cache(maxsize=16)
def _spans(bounds: tuple[int, ...], budget: int) -> tuple[tuple[int, int, tuple[int, ...]], ...]:
    """Group consecutive cells into spans of at most ``budget`` tokens (a longer cell stands alone).

    Returns ``(start, end, cell_bounds_inside)`` per span.
    """
    spans = []
    start = bounds[0]
    inner = [start]
    for end in bounds[1:]:
        if end - start > budget and len(inner) > 1:
            spans.append((start, inner[-1], tuple(inner)))
            start = inner[-1]
            inner = [start]
        inner.append(end)
    if len(inner) > 1:
        spans.append((start, inner[-1], tuple(inner)))
    return tuple(spans)


def _span_mask(inner: tuple[int, ...], device: torch.device) -> torch.Tensor | None:
    if len(inner) == 2:
        return None
    lengths = torch.tensor(
        [b - a for a, b in zip(inner[:-1], inner[1:], strict=True)], device=device
    )
    cell = torch.repeat_interleave(torch.arange(lengths.numel(), device=device), lengths)
    return (cell[:, None] == cell[None, :])[None, None]


def _blocks(query, key, value, bounds: tuple[int, ...], dropout: float, scaling: float | None):
    outs = []
    masks: dict[tuple[int, ...], torch.Tensor | None] = {}
    for start, end, inner in _spans(bounds, CPU_SPAN_TOKENS):
        local = tuple(b - start for b in inner)
        if local not in masks:
            masks[local] = _span_mask(local, query.device)
        outs.append(
            F.scaled_dot_product_attention(
                query[:, :, start:end],
                key[:, :, start:end],
                value[:, :, start:end],
                attn_mask=masks[local],
                dropout_p=dropout,
                is_causal=False,
                scale=scaling,
            )
        )
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
    return out.transpose(1, 2)  # (1, total, heads, head_dim)


def _varlen(query, key, value, cu: torch.Tensor, longest: int):
    from torch.nn.attention.varlen import varlen_attn

    q, k, v = (x[0].transpose(0, 1).contiguous() for x in (query, key, value))  # (total, H, D)
    cu = cu.to(device=q.device, dtype=torch.int32)
    # Positional arguments only: the keyword set changed between torch 2.9 and 2.12 (is_causal ->
    # window_size, scale added); the defaults are full attention and 1/sqrt(head_dim), BERT's.
    out = varlen_attn(q, k, v, cu, cu, longest, longest)
    return out.unsqueeze(0)


def _nested(query, key, value, cu: torch.Tensor, bounds, dropout: float, scaling):
    offsets = cu.to(device=query.device, dtype=torch.int64)
    lengths = [b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    shortest, longest = min(lengths), max(lengths)

    def jagged(x):
        return torch.nested.nested_tensor_from_jagged(
            x[0].transpose(0, 1), offsets=offsets, min_seqlen=shortest, max_seqlen=longest
        ).transpose(1, 2)  # (cells, heads, j, head_dim)

    out = F.scaled_dot_product_attention(
        jagged(query), jagged(key), jagged(value), dropout_p=dropout, scale=scaling
    )
    return out.transpose(1, 2).values().unsqueeze(0)


def packed_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    cu_seq_lens_q: torch.Tensor | None = None,
    cu_seq_lens_k: torch.Tensor | None = None,
    max_length_q: int | None = None,
    max_length_k: int | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """The attention function behind :data:`PACKED_ATTENTION` (transformers' calling convention).

    ``query``/``key``/``value`` are ``(batch, heads, length, head_dim)``; the result is
    ``(batch, length, heads, head_dim)``. With ``cu_seq_lens_q`` the batch must be one packed row
    and each cell attends only to its own tokens; without it this is ``sdpa_attention_forward``.
    """
    if cu_seq_lens_q is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if cu_seq_lens_k is not None and cu_seq_lens_k is not cu_seq_lens_q:
        if not torch.equal(cu_seq_lens_k.to(cu_seq_lens_q.device), cu_seq_lens_q):
            raise ValueError("packed self-attention needs cu_seq_lens_k equal to cu_seq_lens_q")
    if query.shape[0] != 1:
        raise ValueError(
            f"a packed batch is one row of concatenated cells, got {query.shape[0]} rows: "
            "collate with form='packed'"
        )
    if attention_mask is not None:
        raise ValueError("a packed batch has no attention_mask (cu_seq_lens_q marks the cells)")
    bounds = _bounds(cu_seq_lens_q)
    if bounds[0] != 0 or bounds[-1] != query.shape[2] or len(bounds) < 2:
        raise ValueError(
            f"cu_seq_lens_q must run from 0 to the row's {query.shape[2]} tokens, got "
            f"{bounds[0]}..{bounds[-1]}"
        )
    if any(b <= a for a, b in zip(bounds[:-1], bounds[1:], strict=True)):
        raise ValueError("cu_seq_lens_q must be strictly increasing: a packed cell has no tokens")
    backend = packed_attention_backend(query.device, query.dtype, dropout)
    if backend == "varlen":
        if dropout:
            raise ValueError(
                f"the varlen backend has no attention dropout (got {dropout}): use 'nested' "
                "or 'blocks', or attention_probs_dropout_prob=0"
            )
        longest = (
            int(max_length_q)
            if max_length_q is not None
            else max(b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True))
        )
        out = _varlen(query, key, value, cu_seq_lens_q, longest)
    elif backend == "nested":
        out = _nested(query, key, value, cu_seq_lens_q, bounds, dropout, scaling)
    else:
        out = _blocks(query, key, value, bounds, dropout, scaling)
    return out.contiguous(), None


AttentionInterface.register(PACKED_ATTENTION, packed_attention_forward)
AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)
