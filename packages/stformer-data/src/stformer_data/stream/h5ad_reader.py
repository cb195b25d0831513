"""The reader of one DataLoader worker over an :class:`~stformer_data.stream.h5ad_source.H5adSource`.

A buffer's cells are sorted, grouped into runs of nearby rows per file (a few contiguous slices
per file, :func:`runs`), read (:class:`~stformer_data.h5ad.files.WorkerFiles`) and, with a
tokenizer, tokenized through the tokenizer contract
(:meth:`~stformer_data.tokenize.contract.Tokenizer.tokenize`). Tokenizers that release the GIL
read and tokenize each run on a pool of ``threads`` threads; those that write in place get slots
reserved from sparse X's ``indptr`` in the buffer's recycled token array. The result is a
:class:`~stformer_data.stream.buffers.Buffer` in planned order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from stformer_data._errors import InputError, read_error
from stformer_data._ragged import gather_rows, offsets_from_lengths
from stformer_data.h5ad.checks import check_counts
from stformer_data.h5ad.files import WorkerFiles
from stformer_data.stream.buffers import Buffer, Part, Recycler, assemble, locate
from stformer_data.tokenize.contract import Cells, TokenBlock, token_room

TOKENIZE_ROWS = 512  # rows handed at once to a tokenizer that holds the GIL


@dataclass
class _Run:
    """Rows ``a:b`` of file ``file`` read at once; ``wanted`` (relative to ``a``) are the cells
    at sorted-cell positions ``here``."""

    file: int
    a: int
    b: int
    wanted: np.ndarray
    here: np.ndarray


def runs(rows: np.ndarray, max_gap: int) -> list[tuple[int, int]]:
    """Contiguous ranges ``[a, b)`` covering sorted ``rows``, bridging gaps of up to ``max_gap`` rows."""
    if rows.size == 0:
        return []
    cut = np.flatnonzero(np.diff(rows) > max_gap + 1) + 1
    firsts = np.concatenate([[0], cut])
    lasts = np.concatenate([cut - 1, [rows.size - 1]])
    return [(int(rows[a]), int(rows[b]) + 1) for a, b in zip(firsts, lasts, strict=True)]


def _align_columns(block: sp.csr_matrix, column_map: np.ndarray, n_cols: int) -> sp.csr_matrix:
    """Map a file's columns into the common gene space; genes outside it are dropped."""
    cols = column_map[block.indices]
    keep = cols >= 0
    row_of = np.repeat(np.arange(block.shape[0]), np.diff(block.indptr))[keep]
    indptr = np.concatenate([[0], np.cumsum(np.bincount(row_of, minlength=block.shape[0]))])
    return sp.csr_matrix(
        (block.data[keep], cols[keep].astype(np.int32), indptr), shape=(block.shape[0], n_cols)
    )


class H5adSourceReader(Recycler):
    """The files of an :class:`~stformer_data.stream.h5ad_source.H5adSource` opened in one worker
    (lazily; closed by :meth:`close`). Made by ``H5adSource.open``."""

    def __init__(self, source: Any, *, threads: int = 1) -> None:
        super().__init__()
        self.source = source
        self.threads = threads
        self.files = WorkerFiles(source.stamps, source.layer)
        self._pool: ThreadPoolExecutor | None = None  # reads and tokenizes runs

    def __enter__(self) -> H5adSourceReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self.files.close()

    def read(self, cells: np.ndarray) -> Buffer:
        """Read the cells (global ids) of one buffer; the result is in the order of ``cells``."""
        src = self.source
        sorted_ids = np.unique(cells)
        file_of, local = locate(sorted_ids, src.offsets)
        rows_all = np.empty(sorted_ids.size, dtype=np.int64)
        planned = list(self._plan_runs(file_of, local, rows_all))
        order = np.searchsorted(sorted_ids, cells)
        buf = self._buffer(sorted_ids, file_of, rows_all, order)
        if src.tokenizer is not None and src.tokenizer.releases_gil:
            buf.fields, buf.start, buf.lengths, buf.storage = self._pipelined(
                planned, sorted_ids.size, order
            )
            return buf
        parts: list[Part] = []
        for run in planned:
            info = src.files[run.file]
            block = self._read_checked(run)
            if src.tokenizer is not None:
                parts.append(self._tokenize(info, block, run))
                continue
            if info.column_map is not None:
                block = _align_columns(block, info.column_map, src.n_columns)
            first = block.indptr[run.wanted]
            parts.append(
                Part(
                    run.here,
                    {"data": block.data, "indices": block.indices},
                    first,
                    block.indptr[run.wanted + 1] - first,
                )
            )
        if buf.raw:
            self._fill_raw(buf, parts, sorted_ids.size, order)
        else:
            buf.fields, buf.start, buf.lengths, buf.storage = assemble(
                parts, sorted_ids.size, order, dict.fromkeys(src.fields, np.int32), self
            )
        return buf

    def _read_checked(self, run: _Run) -> sp.csr_matrix:
        block = self.files.read_range(run.file, run.a, run.b)
        if self.source.check_values:
            check_counts(block, path=self.source.files[run.file].path, rows=(run.a, run.b))
        return block

    def _plan_runs(
        self, file_of: np.ndarray, local: np.ndarray, rows_all: np.ndarray
    ) -> Iterator[_Run]:
        """The runs of rows covering the cells, file by file (checking that each open file is
        unchanged); fills ``rows_all`` with each cell's file row."""
        src = self.source
        for f in np.unique(file_of).tolist():
            info = src.files[f]
            sel = np.flatnonzero(file_of == f)
            rows = local[sel] if info.rows is None else info.rows[local[sel]]
            rows_all[sel] = rows
            if self.files.is_open(f):
                self.files.check_unchanged(f)
            done = 0
            for a, b in runs(rows, src.max_gap):
                wanted = rows[done : done + np.searchsorted(rows[done:], b)] - a
                yield _Run(f, a, b, wanted, sel[done : done + wanted.size])
                done += wanted.size

    def _pipelined(
        self, planned: list[_Run], n: int, order: np.ndarray
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Tokens of the runs as a buffer's ``(fields, start, lengths, storage)``: each run is
        read and tokenized by one thread of a pool of ``threads`` (the runs in flight are
        bounded). For a tokenizer that writes in place and sparse X, every cell's tokens are
        written straight into one buffer array, in slots reserved from the file's ``indptr``;
        otherwise each run's tokens are copied into it afterwards (:func:`assemble`)."""
        tok = self.source.tokenizer
        # files are opened here, in this thread: the pool threads only read them
        encodings = {self.files.handle(f)["encoding"] for f in {run.file for run in planned}}
        direct = tok.writes_in_place and encodings <= {"csr_matrix"}
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="stformer-tokenize")
        if direct:
            reserved = np.zeros(n, dtype=np.int64)
            for run in planned:
                indptr = self.files.handle(run.file)["indptr"]
                rows = run.a + run.wanted
                reserved[run.here] = token_room(tok, indptr[rows + 1] - indptr[rows])
            start = offsets_from_lengths(reserved)
            fields, storage = self._arrays({"input_ids": (int(start[-1]), np.dtype(np.int32))})
            lengths = np.zeros(n, dtype=np.int64)
        parts: list[Part] = []
        pending: deque[tuple[_Run, Future]] = deque()

        def collect(run: _Run, fut: Future) -> None:
            if direct:
                lengths[run.here] = fut.result().lengths
            else:
                parts.append(fut.result())

        try:
            for run in planned:
                if direct:
                    args = (fields["input_ids"], start[run.here])
                    fut = self._pool.submit(self._tokenize_run, run, *args)
                else:
                    fut = self._pool.submit(self._tokenize_run, run)
                pending.append((run, fut))
                while len(pending) > 2 * self.threads:  # bounded memory: wait for the oldest
                    collect(*pending.popleft())
            while pending:
                collect(*pending.popleft())
        finally:
            for _, fut in pending:  # failed: drop what was not started, wait for the rest
                fut.cancel()
            for _, fut in pending:
                if not fut.cancelled():
                    fut.exception()
        if direct:  # cells keep the slots reserved for them
            return fields, start[:-1][order], lengths[order], storage
        return assemble(parts, n, order, dict.fromkeys(tok.fields, np.int32), self)

    def _tokenize_run(
        self, run: _Run, out: np.ndarray | None = None, start: np.ndarray | None = None
    ) -> Any:
        """Read a run and tokenize it (on a pool thread): into ``out`` at ``start`` (a
        :class:`TokenBlock` of the lengths), or as a :class:`Part` when ``out`` is None."""
        info = self.source.files[run.file]
        block = self._read_checked(run)
        select = None if run.wanted.size == block.shape[0] else run.wanted
        cells = Cells(
            counts=block, file=info.cells, first_row=run.a, select=select, out=out, out_start=start
        )
        try:
            tokens = self.source.tokenizer.tokenize(cells)
        except InputError:
            raise
        except ValueError as exc:  # the kernel refused the file's column indices
            where = f"rows {run.a}:{run.b} of {self.source.layer or 'X'}"
            raise read_error(info.path, where, exc) from exc
        if out is not None:
            return tokens
        return Part(run.here, tokens.fields, tokens.starts, tokens.lengths)

    def _tokenize(self, info: Any, block: sp.csr_matrix, run: _Run) -> Part:
        """The run's cells tokenized in this thread, :data:`TOKENIZE_ROWS` at a time (bounded
        memory and sort sizes), as one :class:`Part`."""
        tok = self.source.tokenizer
        flats: dict[str, list[np.ndarray]] = {name: [] for name in tok.fields}
        lengths = []
        every = run.wanted.size == block.shape[0]
        for c in range(0, run.wanted.size, TOKENIZE_ROWS):
            if every:  # a slice of the rows read, no copy
                cells = Cells(
                    counts=block[c : c + TOKENIZE_ROWS], file=info.cells, first_row=run.a + c
                )
            else:
                select = run.wanted[c : c + TOKENIZE_ROWS]
                cells = Cells(counts=block, file=info.cells, first_row=run.a, select=select)
            tokens = _compact(tok.tokenize(cells))
            for name in tok.fields:
                flats[name].append(tokens.fields[name])
            lengths.append(tokens.lengths)
        fields = {
            name: np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
            for name, parts in flats.items()
        }
        lengths_all = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
        offsets = offsets_from_lengths(lengths_all)
        return Part(run.here, fields, offsets[:-1], lengths_all)

    def _buffer(
        self,
        sorted_ids: np.ndarray,
        file_of: np.ndarray,
        rows_all: np.ndarray,
        order: np.ndarray,
    ) -> Buffer:
        """The buffer of the cells (in the order ``order`` of the sorted ids), values not yet filled."""
        src = self.source
        obs = {
            k: np.concatenate(
                [src.files[f].obs[k][rows_all[file_of == f]] for f in np.unique(file_of)]
            )[order]
            for k in src.obs_keys
        }
        return Buffer(
            lengths=np.zeros(0, dtype=np.int64),
            file_index=file_of[order],
            cell_index=rows_all[order],
            start=np.zeros(0, dtype=np.int64),
            fields={},
            raw=src.tokenizer is None,
            n_columns=int(src.n_columns or 0),
            obs=obs,
        )

    @staticmethod
    def _fill_raw(buf: Buffer, parts: list[Part], n: int, order: np.ndarray) -> None:
        """Raw expression: the buffer keeps the parts read and each cell's place in them."""
        piece_of = np.zeros(n, dtype=np.int64)
        start = np.zeros(n, dtype=np.int64)
        lengths = np.zeros(n, dtype=np.int64)
        for k, part in enumerate(parts):
            piece_of[part.positions], start[part.positions] = k, part.starts
            lengths[part.positions] = part.lengths
        buf.pieces = [part.flats for part in parts]
        buf.piece_of, buf.start, buf.lengths = piece_of[order], start[order], lengths[order]


def _compact(tokens: TokenBlock) -> TokenBlock:
    """``tokens`` with its cells back to back from 0 (a tokenizer's own output usually is)."""
    lengths = tokens.lengths
    if tokens.n_rows == 0 or (
        tokens.starts[0] == 0 and np.array_equal(tokens.starts[1:], np.cumsum(lengths)[:-1])
    ):
        return tokens
    offsets = offsets_from_lengths(lengths)
    fields = {}
    for name, values in tokens.fields.items():
        out = np.empty(int(offsets[-1]), dtype=values.dtype)
        gather_rows(values, tokens.starts, lengths, out, offsets[:-1])
        fields[name] = out
    return TokenBlock.from_offsets(fields, offsets, tokens.has_neighbours)
