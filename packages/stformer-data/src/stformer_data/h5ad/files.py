"""The h5ad files of one DataLoader worker, opened lazily: row ranges read as CSR blocks.

A :class:`WorkerFiles` knows only files (paths, their size and mtime when they were described, the
layer to read); it knows nothing of cells, tokens or buffers. Sparse ``X`` is read straight from
the HDF5 datasets (``indptr`` cached, ``data``/``indices`` read with ``pread`` into private arrays:
:mod:`stformer_data.h5ad.direct`), other encodings through anndata's backed access. A file that
vanished, was truncated or rewritten since it was described is an error naming it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import scipy.sparse as sp

from stformer_data._errors import InputError, read_error
from stformer_data.h5ad.direct import PreadSegments, direct_view
from stformer_data.h5ad.open import open_h5ad


@dataclass(frozen=True)
class FileStamp:
    """A file as it was when it was described: reads check that it is still the same."""

    path: Path
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileStamp:
        st = path.stat()
        return cls(path=path, size=st.st_size, mtime_ns=st.st_mtime_ns)


class WorkerFiles:
    """Files of one worker (opened on first use, closed by :meth:`close`), read by row ranges.

    ``layer`` is the layer with the counts (``None``: ``X``).
    """

    def __init__(self, stamps: Sequence[FileStamp], layer: str | None) -> None:
        self.stamps = list(stamps)
        self.layer = layer
        self._open: dict[int, dict[str, Any]] = {}

    @property
    def where(self) -> str:
        """The matrix read, as error messages name it."""
        return self.layer or "X"

    def is_open(self, f: int) -> bool:
        return f in self._open

    def close(self) -> None:
        for handle in self._open.values():
            handle["file"].close()
            for key in ("data", "indices"):
                if isinstance(handle.get(key), PreadSegments):
                    handle[key].close()
        self._open.clear()

    def handle(self, f: int) -> dict[str, Any]:
        """File ``f`` opened: ``encoding`` (``"csr_matrix"``, ``"array"`` or anndata's), and for
        sparse X its cached ``indptr``, ``data``/``indices`` views and ``n_vars``."""
        if f in self._open:
            return self._open[f]
        stamp = self.stamps[f]
        self.check_unchanged(f)
        try:
            h5 = h5py.File(stamp.path, "r")
            key = "X" if self.layer is None else f"layers/{self.layer}"
            node = h5[key]
            encoding = (
                node.attrs.get("encoding-type", "array")
                if isinstance(node, h5py.Group)
                else "array"
            )
            handle: dict[str, Any] = {"file": h5, "encoding": encoding, "node": node}
            if encoding == "csr_matrix":
                handle["indptr"] = node["indptr"][:].astype(np.int64)
                # read into private arrays: batches outlive the read (a map would die on truncation)
                handle["data"] = direct_view(stamp.path, node["data"], private=True)
                handle["indices"] = direct_view(stamp.path, node["indices"], private=True)
                handle["n_vars"] = int(node.attrs["shape"][1])
            elif encoding != "array":
                handle["adata"] = open_h5ad(stamp.path)
                handle["file"].close()
                handle["file"] = handle["adata"].file
        except InputError:
            raise
        except Exception as exc:
            raise read_error(stamp.path, "file", exc) from exc
        self._open[f] = handle
        return handle

    def check_unchanged(self, f: int) -> None:
        """A vanished, truncated or rewritten file is an error naming it (checked before every buffer)."""
        stamp = self.stamps[f]
        try:
            st = stamp.path.stat()
        except FileNotFoundError:
            raise InputError(
                stamp.path,
                "file",
                "vanished after the dataset was created",
                "restore the file, or rebuild the dataset without it",
            ) from None
        if st.st_size != stamp.size or st.st_mtime_ns != stamp.mtime_ns:
            raise InputError(
                stamp.path,
                "file",
                f"changed after the dataset was created (size {stamp.size} -> "
                f"{st.st_size} bytes): truncated or rewritten",
                "restore the file, or rebuild the dataset",
            )

    def read_range(self, f: int, a: int, b: int) -> sp.csr_matrix:
        """Rows ``a:b`` of file ``f`` as a float32 CSR matrix (sparse X: no copy beyond the read)."""
        handle = self.handle(f)
        try:
            if handle["encoding"] == "csr_matrix":
                indptr = handle["indptr"]
                p0, p1 = int(indptr[a]), int(indptr[b])
                data = handle["data"][p0:p1]
                indices = handle["indices"][p0:p1]
                if data.size != p1 - p0 or indices.size != p1 - p0:
                    raise OSError(f"read {data.size} of {p1 - p0} stored values")
                m = sp.csr_matrix((b - a, handle["n_vars"]), dtype=np.float32)  # no index checks
                m.data, m.indices, m.indptr = (
                    data.astype(np.float32, copy=False),
                    indices,
                    indptr[a : b + 1] - p0,
                )
                return m
            if handle["encoding"] == "array":
                return sp.csr_matrix(np.asarray(handle["node"][a:b], dtype=np.float32))
            block = (
                handle["adata"].X[a:b]
                if self.layer is None
                else handle["adata"].layers[self.layer][a:b]
            )
            return sp.csr_matrix(block, dtype=np.float32)
        except Exception as exc:
            raise read_error(self.stamps[f].path, f"rows {a}:{b} of {self.where}", exc) from exc
