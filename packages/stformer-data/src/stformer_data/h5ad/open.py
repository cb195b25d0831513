"""Opening ``.h5ad`` files read-only: anndata's backed mode, or :class:`H5adReader` (lazy layers)."""

from __future__ import annotations

from collections.abc import Mapping
from os import PathLike
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd

from stformer_data._errors import InputError


def open_h5ad(
    path: str | PathLike[str], *, backed: bool = True, lazy: bool = False
) -> ad.AnnData | H5adReader:
    """Open an ``.h5ad`` file read-only, with a clear error when it is unreadable.

    ``backed=True`` (default) gives anndata's backed ``AnnData`` (``X`` on disk; layers, obsm and
    obsp in memory); ``backed=False`` loads everything; ``lazy=True`` gives an :class:`H5adReader`
    that also leaves layers on disk (what the tokenizers use).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file", "does not exist", "check the path")
    if path.is_dir():
        _refuse_folder(path)
    try:
        if lazy:
            return H5adReader(path)
        with h5py.File(path, "r") as f:
            for name in ("X", *(f"layers/{k}" for k in f.get("layers", {}))):
                if name in f:
                    check_sparse_structure(f[name], path, name)
        return ad.io.read_h5ad(path, backed="r" if backed else None)
    except InputError:
        raise
    except Exception as exc:  # h5py/anndata raise many types for truncated or corrupt files
        raise InputError(
            path,
            "file",
            f"cannot be read as h5ad ({type(exc).__name__}: {exc})",
            "re-export or re-download the file; it may be truncated or corrupt",
        ) from exc


def _refuse_folder(path: Path) -> None:
    """A folder passed as an h5ad file: say what it is (a zarr store, most often) and what to do."""
    if any((path / marker).exists() for marker in (".zgroup", "zarr.json", ".zattrs")):
        raise InputError(
            path,
            "file",
            "is a zarr store (a folder), not an h5ad file, although it is named like one",
            f"read it with anndata.read_zarr({str(path)!r}) and write it with "
            ".write_h5ad('cells.h5ad'), then pass that file; rename the store to .zarr so it is "
            "not taken for h5ad",
        )
    raise InputError(path, "file", "is a folder, not an h5ad file", "pass the .h5ad file itself")


def check_sparse_structure(elem, path: str | PathLike[str] | None, name: str) -> None:
    """Refuse a CSR/CSC group whose ``indptr`` does not start at 0, decreases, or points past
    ``indices`` (reading it would crash or return garbage). Reads only ``indptr``."""
    if not isinstance(elem, h5py.Group) or "indptr" not in elem or "indices" not in elem:
        return
    indptr = np.asarray(elem["indptr"][:], dtype=np.int64)
    axis = "row" if elem.attrs.get("encoding-type", "csr_matrix") == "csr_matrix" else "column"
    fix = (
        "re-export the matrix from its source (a CSR/CSC indptr starts at 0 and never decreases); "
        "the file is corrupt"
    )
    field = f"{name}/indptr"
    if indptr.size and indptr[0] != 0:
        raise InputError(path, field, f"starts at {indptr[0]}, not 0", fix)
    step = np.diff(indptr)
    if (step < 0).any():
        i = int(np.flatnonzero(step < 0)[0])
        raise InputError(
            path,
            field,
            f"decreases at {axis} {i} ({indptr[i]} -> {indptr[i + 1]}); the sparse structure is "
            "corrupt",
            fix,
        )
    n = elem["indices"].shape[0]
    if indptr.size and indptr[-1] > n:
        raise InputError(
            path, field, f"ends at {indptr[-1]}, past the {n} stored entries (truncated?)", fix
        )


def _on_disk(elem):
    """A sparse group as anndata's backed sparse dataset; a dense dataset as the h5py dataset."""
    if isinstance(elem, h5py.Group):
        return ad.io.sparse_dataset(elem)
    return elem


class _LazyGroup(Mapping):
    """``obsm`` / ``obsp`` / ``layers`` of an h5ad file: keys known, values read on access."""

    def __init__(self, file: h5py.File, name: str, *, on_disk: bool = False):
        self._group = file[name] if name in file else None
        self._on_disk = on_disk

    def __getitem__(self, key: str):
        if self._group is None or key not in self._group:
            raise KeyError(key)
        elem = self._group[key]
        check_sparse_structure(elem, self._group.file.filename, f"{self._group.name[1:]}/{key}")
        return _on_disk(elem) if self._on_disk else ad.io.read_elem(elem)

    def __contains__(self, key: object) -> bool:
        return self._group is not None and isinstance(key, str) and key in self._group

    def __iter__(self):
        return iter(self._group.keys() if self._group is not None else ())

    def __len__(self) -> int:
        return len(self._group) if self._group is not None else 0


class H5adReader:
    """A read-only, lazy view of an ``.h5ad`` file: ``obs`` and ``var`` in memory, nothing else.

    anndata's backed mode keeps ``X`` on disk but reads every layer (and obsm/obsp) into memory;
    here layers stay on disk as well, so raw counts in a layer are read one row chunk at a time.
    It offers the attributes the tokenizers use: ``obs``, ``var``, ``n_obs``, ``n_vars``, ``X``,
    ``layers``, ``obsm``, ``obsp`` (values read when accessed) and ``file.close()``.

    >>> import os, tempfile
    >>> from stformer_data import simulate_counts
    >>> path = os.path.join(tempfile.mkdtemp(), "x.h5ad")
    >>> simulate_counts(n_cells=5, n_genes=20, program_size=2).write_h5ad(path)
    >>> r = H5adReader(path)
    >>> r.shape, "spatial" in r.obsm, list(r.layers)
    ((5, 20), True, [])
    >>> r.file.close()
    """

    isbacked = True

    def __init__(self, path: str | PathLike[str]):
        self.filename = Path(path)
        self.file = h5py.File(self.filename, "r")
        try:
            self.obs: pd.DataFrame = ad.io.read_elem(self.file["obs"])
            self.var: pd.DataFrame = ad.io.read_elem(self.file["var"])
            if "X" in self.file:
                check_sparse_structure(self.file["X"], path, "X")
            self.X = _on_disk(self.file["X"]) if "X" in self.file else None
        except Exception:
            self.file.close()
            raise
        self.layers = _LazyGroup(self.file, "layers", on_disk=True)
        self.obsm = _LazyGroup(self.file, "obsm")
        self.obsp = _LazyGroup(self.file, "obsp")

    @property
    def n_obs(self) -> int:
        return len(self.obs)

    @property
    def n_vars(self) -> int:
        return len(self.var)

    @property
    def shape(self) -> tuple[int, int]:
        return self.n_obs, self.n_vars

    @property
    def var_names(self) -> pd.Index:
        return self.var.index

    @property
    def obs_names(self) -> pd.Index:
        return self.obs.index
