"""Serving 1-D HDF5 datasets straight from the page cache: memory-mapped or ``pread`` segments.

:func:`direct_view` maps an uncompressed dataset (contiguous, or anndata's back-to-back unfiltered
chunks) as :class:`MappedSegments`; with ``private=True`` every slice is read into a new array
(:class:`PreadSegments`), so data that outlive the read never point into a file. Anything else
stays an h5py dataset.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import h5py
import numpy as np


class MappedSegments:
    """Slices of a 1-D HDF5 dataset served from a memory map of its file, segment by segment."""

    def __init__(
        self, path: Path, dtype: np.dtype, size: int, segments: list[tuple[int, int, int]]
    ) -> None:
        self.path = path
        self.dtype, self.size = dtype, size
        self._starts = np.array([s[0] for s in segments], dtype=np.int64)
        self._segments = segments  # (first element, stop element, byte offset)
        self._open()

    def _open(self) -> None:
        mapped = np.memmap(self.path, dtype=np.uint8, mode="r")
        self._mmap = mapped._mmap  # for madvise in release()
        # a plain ndarray over the map: slicing a np.memmap builds memmap objects (slow per row)
        self._file = mapped.view(np.ndarray)

    @property
    def breaks(self) -> np.ndarray:
        """Element positions where a new segment starts: a slice across one is copied."""
        return self._starts[1:]

    def release(self, a: int, b: int) -> None:
        """Unmap the pages of elements ``a:b`` from this process (they stay in the page cache and
        come back if read again), so that resident memory follows the chunk being read."""
        if b <= a:
            return
        k = int(np.searchsorted(self._starts, a, side="right")) - 1
        while a < b and k < len(self._segments):
            first, stop, byte = self._segments[k]
            end = min(b, stop)
            lo = byte + (a - first) * self.dtype.itemsize
            hi = byte + (end - first) * self.dtype.itemsize
            lo, hi = -(-lo // mmap.PAGESIZE) * mmap.PAGESIZE, hi // mmap.PAGESIZE * mmap.PAGESIZE
            if hi > lo:
                self._mmap.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
            a, k = end, k + 1

    def _view(self, k: int, a: int, b: int) -> np.ndarray:
        first, _, byte = self._segments[k]
        lo = byte + (a - first) * self.dtype.itemsize
        return self._file[lo : lo + (b - a) * self.dtype.itemsize].view(self.dtype)

    def __getitem__(self, item: slice) -> np.ndarray:
        a, b, _ = item.indices(self.size)
        if b <= a:
            return np.zeros(0, dtype=self.dtype)
        k = int(np.searchsorted(self._starts, a, side="right")) - 1
        parts = []
        while a < b:
            stop = min(b, self._segments[k][1])
            parts.append(self._view(k, a, stop))
            a, k = stop, k + 1
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


class PreadSegments(MappedSegments):
    """Like :class:`MappedSegments`, but every slice is read (``pread``) into a new array: a file
    truncated while it is being read gives a short read, which is an error naming it, where a
    memory map would kill the process with SIGBUS. Used where the data outlive the read."""

    def _open(self) -> None:
        self._fd = os.open(self.path, os.O_RDONLY)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def release(self, a: int, b: int) -> None:
        """Nothing is mapped."""

    def _view(self, k: int, a: int, b: int) -> np.ndarray:
        first, _, byte = self._segments[k]
        out = np.empty(b - a, dtype=self.dtype)
        offset = byte + (a - first) * self.dtype.itemsize
        got = os.preadv(self._fd, [memoryview(out).cast("B")], offset)
        if got != out.nbytes:
            raise OSError(
                f"read {got} of {out.nbytes} bytes at offset {offset}: the file is shorter"
            )
        return out


def direct_view(
    path: Path, dataset: h5py.Dataset, *, private: bool = False
) -> MappedSegments | h5py.Dataset:
    """Serve an uncompressed 1-D dataset straight from the page cache (memory map; with
    ``private``, ``pread`` into new arrays: :class:`PreadSegments`), else use HDF5.

    Contiguous datasets map in one piece; chunked ones (anndata writes them chunked) are mapped as
    runs of back-to-back unfiltered chunks. Anything else (compression, filters) stays with h5py.
    """
    if (
        dataset.ndim != 1
        or dataset.size == 0
        or dataset.compression is not None
        or dataset.dtype.hasobject
    ):
        return dataset
    kind = PreadSegments if private else MappedSegments
    try:
        offset = dataset.id.get_offset()
        if offset is not None:
            return kind(path, dataset.dtype, dataset.size, [(0, dataset.size, offset)])
        if dataset.chunks is None:
            return dataset
        infos: list[tuple[int, int, int, int]] = []
        dataset.id.chunk_iter(
            lambda c: infos.append((c.chunk_offset[0], c.filter_mask, c.byte_offset, c.size))
        )
        infos.sort()
        chunk = dataset.chunks[0]
        itemsize, size = dataset.dtype.itemsize, dataset.size  # h5py computes both per access
        chunk_bytes = chunk * itemsize
        if len(infos) != -(-size // chunk) or any(
            m != 0 or n != chunk_bytes for _, m, _, n in infos
        ):
            return dataset
        segments: list[list[int]] = []
        for first, _, byte, _ in infos:
            prev = segments[-1] if segments else None
            if prev is not None and byte == prev[2] + (first - prev[0]) * itemsize:
                prev[1] = min(first + chunk, size)
            else:
                segments.append([first, min(first + chunk, size), byte])
        return kind(path, dataset.dtype, size, [tuple(s) for s in segments])
    except (AttributeError, OSError, ValueError):  # h5py/HDF5 without chunk queries, odd layouts
        return dataset
