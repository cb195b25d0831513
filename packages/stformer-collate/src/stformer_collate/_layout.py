"""Flattening examples into one token stream, and laying that stream out as a batch.

Every collator here works on a *flat* view of the batch: the token ids of all sequences
concatenated, with their lengths and offsets. Masking is decided on that view once; the padded and
packed layouts are then pure index arithmetic (no per-token Python loop), so both layouts carry the
very same tokens and labels for the same random draws.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from itertools import chain
from typing import Any

import numpy as np
import torch

IGNORE_INDEX = -100


class BatchForm(StrEnum):
    """How a batch is laid out.

    ``PADDED``
        ``(batch, length)`` tensors right-padded to the longest sequence (rounded up to
        ``pad_to_multiple_of``), with an ``attention_mask``.
    ``PACKED``
        All sequences concatenated into one ``(1, total)`` row with no padding, plus ``cu_seqlens``
        (``int32``, ``batch + 1`` cumulative offsets), ``max_seqlen`` (a Python ``int``),
        ``position_ids`` restarting at 0 in every sequence, ``seq_idx`` (the sequence of each
        token) and ``seq_lengths``: what flash-attn's varlen kernels, PyTorch nested (jagged)
        tensors and Hugging Face's ``position_ids``-based packing need.
    """

    PADDED = "padded"
    PACKED = "packed"


@dataclass(frozen=True, slots=True)
class FlatBatch:
    """A batch as one token stream: ``ids`` of all sequences back to back.

    ``lengths[b]`` is the length of sequence ``b``, ``offsets`` its cumulative sum with a leading
    0, ``seq_idx[t]`` the sequence of token ``t``, ``fields`` the per-token fields (same length
    as ``ids``).
    """

    ids: np.ndarray
    lengths: np.ndarray
    offsets: np.ndarray
    seq_idx: np.ndarray
    fields: dict[str, np.ndarray]

    @property
    def n_seqs(self) -> int:
        return int(self.lengths.size)

    @property
    def n_tokens(self) -> int:
        return int(self.ids.size)

    def positions(self) -> np.ndarray:
        """Position of every token inside its own sequence (restarting at 0)."""
        return np.arange(self.n_tokens, dtype=np.int64) - np.repeat(self.offsets[:-1], self.lengths)


def _as_int64(values: Sequence[Any], total: int) -> np.ndarray:
    """Concatenate int sequences (lists, arrays or tensors) into one int64 array."""
    first = values[0] if values else None
    if isinstance(first, torch.Tensor):
        return torch.cat([torch.as_tensor(v).reshape(-1) for v in values]).numpy().astype(np.int64)
    if isinstance(first, np.ndarray):
        return (
            np.concatenate(values).astype(np.int64, copy=False) if total else np.zeros(0, np.int64)
        )
    return np.fromiter(chain.from_iterable(values), dtype=np.int64, count=total)


def flatten_examples(
    examples: Sequence[Mapping[str, Any]],
    *,
    fields: Sequence[str] = ("token_type_ids",),
) -> FlatBatch:
    """Concatenate the ``input_ids`` (and the per-token ``fields``) of ``examples``.

    A field is taken when the first example has it; then every example must have it, with as many
    values as ``input_ids``. Keys that are neither ``input_ids`` nor in ``fields`` are ignored.
    """
    if len(examples) == 0:
        raise ValueError("cannot collate an empty list of examples")
    seqs = []
    for i, ex in enumerate(examples):
        if not isinstance(ex, Mapping) or "input_ids" not in ex:
            raise ValueError(
                f"example {i} has no 'input_ids': each example must be a mapping with an "
                "'input_ids' sequence of token ids (as written by stformer tokenize)"
            )
        seqs.append(ex["input_ids"])
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    offsets = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    ids = _as_int64(seqs, total)
    flat_fields: dict[str, np.ndarray] = {}
    for name in fields:
        if name not in examples[0]:
            continue
        values = []
        for i, ex in enumerate(examples):
            if name not in ex:
                raise ValueError(
                    f"example {i} has no {name!r} but example 0 has: give every example the "
                    f"field, or none"
                )
            v = ex[name]
            if len(v) != lengths[i]:
                raise ValueError(
                    f"example {i}: {name!r} has {len(v)} values but 'input_ids' has {lengths[i]}; "
                    "per-token fields must align with the tokens"
                )
            values.append(v)
        flat_fields[name] = _as_int64(values, total)
    seq_idx = np.repeat(np.arange(lengths.size, dtype=np.int64), lengths)
    return FlatBatch(ids=ids, lengths=lengths, offsets=offsets, seq_idx=seq_idx, fields=flat_fields)


def padded_length(
    lengths: np.ndarray, *, pad_to_multiple_of: int | None = None, max_length: int | None = None
) -> int:
    """The padded row length: the longest sequence (at least ``max_length``), rounded up."""
    length = int(lengths.max()) if lengths.size else 0
    if max_length is not None:
        length = max(length, max_length)
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    return length


def layout_padded(
    flat: FlatBatch,
    arrays: Mapping[str, tuple[np.ndarray, int]],
    *,
    length: int,
) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """Scatter flat arrays into right-padded ``(batch, length)`` tensors.

    ``arrays`` maps an output name to ``(flat values, pad value)``. Also returns the flat index
    (into a row-major ``(batch, length)`` array) of every token, and adds ``attention_mask``.
    """
    n = flat.n_seqs
    where = flat.seq_idx * length + flat.positions()
    out: dict[str, torch.Tensor] = {}
    for name, (values, pad) in arrays.items():
        grid = np.full(n * length, pad, dtype=np.int64)
        grid[where] = values
        out[name] = torch.from_numpy(grid.reshape(n, length))
    attn = np.zeros(n * length, dtype=np.int64)
    attn[where] = 1
    out["attention_mask"] = torch.from_numpy(attn.reshape(n, length))
    return out, where


def layout_packed(flat: FlatBatch, arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Lay flat arrays out as one ``(1, total)`` packed row with the varlen metadata."""
    out: dict[str, Any] = {
        name: torch.from_numpy(np.ascontiguousarray(values)).unsqueeze(0)
        for name, values in arrays.items()
    }
    out["position_ids"] = torch.from_numpy(flat.positions()).unsqueeze(0)
    out["cu_seqlens"] = torch.from_numpy(flat.offsets.astype(np.int32))
    out["max_seqlen"] = int(flat.lengths.max()) if flat.lengths.size else 0
    out["seq_idx"] = torch.from_numpy(flat.seq_idx.astype(np.int32)).unsqueeze(0)
    out["seq_lengths"] = torch.from_numpy(flat.lengths.copy())
    return out


def pad_examples(
    examples: Sequence[Mapping[str, Any]],
    *,
    pad_id: int,
    pad_to_multiple_of: int | None = None,
    max_length: int | None = None,
) -> dict[str, torch.Tensor]:
    """Right-pad ``input_ids`` (and ``token_type_ids`` when present) to the longest example.

    Returns ``input_ids``, ``attention_mask`` and, when the examples have them, ``token_type_ids``
    (padded with 0). Other keys of the examples are ignored.

    >>> batch = pad_examples([{"input_ids": [5, 6, 7]}, {"input_ids": [8]}], pad_id=0)
    >>> batch["input_ids"].tolist(), batch["attention_mask"].tolist()
    ([[5, 6, 7], [8, 0, 0]], [[1, 1, 1], [1, 0, 0]])
    """
    flat = flatten_examples(examples)
    length = padded_length(
        flat.lengths, pad_to_multiple_of=pad_to_multiple_of, max_length=max_length
    )
    arrays = {"input_ids": (flat.ids, pad_id)}
    arrays.update({name: (values, 0) for name, values in flat.fields.items()})
    batch, _ = layout_padded(flat, arrays, length=length)
    return batch
