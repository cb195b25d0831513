"""A shuffle buffer's cells in memory (:class:`Buffer`), and how readers fill and recycle it.

Readers collect the rows they read as parts (views into a file, or a tokenizer's output) and copy
them into one flat array per field, in buffer order (:func:`assemble`), reusing the arrays of
buffers already consumed (:class:`Recycler`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from stformer_data._ragged import gather_rows, offsets_from_lengths, pad_rows


@dataclass
class Buffer:
    """The cells of one shuffle buffer, in planned order, copied out of the files.

    Raw expression is kept as the runs read (``pieces`` of ``{"data", "indices"}``, private
    copies), with each cell's piece, ``start`` in it and length, so a batch is gathered with one
    copy (:meth:`csr_rows`). Tokens are flat arrays (``fields``: ``input_ids`` and, for binned
    tokens, ``token_type_ids``) in which cell ``i`` starts at ``start[i]``, cells in buffer order;
    a batch is padded from them in one compiled pass (:meth:`padded`). ``lengths`` is the number
    of stored values (raw) or tokens of each cell. Nothing points into a file, so a file changed
    meanwhile cannot corrupt a batch. Batches are copies: once a buffer is done its reader may
    refill its token arrays (``storage``) with a later buffer (:meth:`Recycler.release`), which
    spares the page faults of a fresh allocation of this size on every buffer.
    """

    lengths: np.ndarray
    file_index: np.ndarray
    cell_index: np.ndarray
    start: np.ndarray
    fields: dict[str, np.ndarray]
    raw: bool = False
    n_columns: int = 0
    obs: dict[str, np.ndarray] = field(default_factory=dict)
    storage: dict[str, np.ndarray] = field(default_factory=dict)
    pieces: list[dict[str, np.ndarray]] = field(default_factory=list)
    piece_of: np.ndarray | None = None

    def csr_rows(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(indptr, indices, data)`` of the cells at ``positions`` (raw expression; one copy)."""
        positions = np.asarray(positions, dtype=np.int64)
        lengths = self.lengths[positions]
        indptr = offsets_from_lengths(lengths)
        if not positions.size:
            return indptr, np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float32)
        rows = list(
            zip(
                self.piece_of[positions].tolist(),
                self.start[positions].tolist(),
                (self.start[positions] + lengths).tolist(),
                strict=True,
            )
        )
        # one concatenate per array (the loop over cells only makes views)
        data = np.concatenate([self.pieces[p]["data"][a:b] for p, a, b in rows])
        indices = np.concatenate([self.pieces[p]["indices"][a:b] for p, a, b in rows])
        return indptr, indices, data

    def matrix(self, positions: np.ndarray | None = None) -> sp.csr_matrix:
        """The cells at ``positions`` (default: all, in planned order) as a scipy CSR matrix."""
        positions = np.arange(self.lengths.size) if positions is None else positions
        indptr, indices, data = self.csr_rows(positions)
        return sp.csr_matrix((data, indices, indptr), shape=(positions.size, self.n_columns))

    def token_row(self, i: int, name: str = "input_ids") -> np.ndarray:
        """The values (a view) of cell ``i`` in field ``name``."""
        a = int(self.start[i])
        return self.fields[name][a : a + int(self.lengths[i])]

    def padded(
        self, positions: np.ndarray, pads: Mapping[str, int], empty: Any = None
    ) -> dict[str, np.ndarray]:
        """Each token field of the cells at ``positions`` right-padded to the longest of them (int64
        ``(rows, width)``; field ``name`` padded with ``pads.get(name, 0)``), and ``attention_mask``;
        ``empty`` allocates them (see :func:`stformer_data._ragged.pad_rows`)."""
        out: dict[str, np.ndarray] = {}
        width = None
        for name, values in self.fields.items():
            first = not out
            ids, mask = pad_rows(
                values,
                self.start,
                self.lengths,
                positions,
                pads.get(name, 0),
                width=width,
                mask=first,
                empty=empty,
            )
            out[name] = ids
            if first:
                out["attention_mask"], width = mask, ids.shape[1]
        return out


@dataclass
class Part:
    """Rows read from one place: sorted-cell ``positions``, their ``starts``/``lengths`` in the
    ``flats`` arrays (views into a file, or a tokenizer's output)."""

    positions: np.ndarray
    flats: dict[str, np.ndarray]
    starts: np.ndarray
    lengths: np.ndarray


class Recycler:
    """Field arrays of released buffers, refilled by later reads of the same reader."""

    def __init__(self) -> None:
        self._spare: list[dict[str, np.ndarray]] = []

    def release(self, buf: Buffer) -> None:
        """``buf`` and every view of its fields are no longer used: its arrays may be refilled."""
        if buf.storage:
            self._spare.append(buf.storage)
            buf.fields, buf.storage = {}, {}

    def _arrays(self, sizes: Mapping[str, tuple[int, Any]]) -> tuple[dict, dict]:
        """``(fields, storage)``: a ``size`` array of ``dtype`` per name, from a spare set when big enough."""
        storage = self._spare.pop() if self._spare else {}
        fields = {}
        for name, (size, dtype) in sizes.items():
            arr = storage.get(name)
            if arr is None or arr.dtype != dtype or arr.size < size:
                arr = storage[name] = np.empty(size + size // 8, dtype=dtype)  # room to grow
            fields[name] = arr[:size]
        return fields, storage


def assemble(
    parts: list[Part],
    n: int,
    order: np.ndarray,
    dtypes: Mapping[str, Any],
    recycler: Recycler,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Copy the rows of ``parts`` (``n`` sorted cells) into one flat array per field, in buffer order
    (buffer position ``p`` holds sorted cell ``order[p]``); returns the fields, starts, lengths
    and the storage behind the fields."""
    part_of = np.zeros(n, dtype=np.int64)
    src = np.zeros(n, dtype=np.int64)
    lengths = np.zeros(n, dtype=np.int64)
    for k, part in enumerate(parts):
        part_of[part.positions], src[part.positions] = k, part.starts
        lengths[part.positions] = part.lengths
    part_of, src, lengths = part_of[order], src[order], lengths[order]
    start = offsets_from_lengths(lengths)
    by_part = np.argsort(part_of, kind="stable")
    groups = np.split(by_part, np.flatnonzero(np.diff(part_of[by_part])) + 1) if order.size else []
    fields, storage = recycler._arrays(
        {k: (int(start[-1]), np.dtype(t)) for k, t in dtypes.items()}
    )
    for name, out in fields.items():
        for sel in groups:  # one compiled copy per part and field
            flat = parts[int(part_of[sel[0]])].flats[name]
            gather_rows(flat, src[sel], lengths[sel], out, start[sel])
    return fields, start[:-1], lengths, storage


def locate(cells: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(source, local)``: which source (file or record batch) holds each global cell id, and where."""
    source = np.searchsorted(offsets, cells, side="right") - 1
    return source, cells - offsets[source]
