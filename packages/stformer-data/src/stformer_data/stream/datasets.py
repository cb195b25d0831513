"""Map-style datasets over an in-memory AnnData and STEP's stratified ``category_random_split``.

:class:`BaseDataset` and :class:`MaskedDataset` are STEP's dataset roles (``step.utils.dataset``):
a dataset holds ``adata`` and yields one cell per index; a masked dataset is a subset of one,
selected by indices. They need no torch: ``torch.utils.data.DataLoader`` takes any object with
``__len__`` and ``__getitem__`` and turns the numpy rows into tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from stformer_data._errors import InputError

__all__ = ["BaseDataset", "MaskedDataset", "category_random_split"]


def _codes(values: Any) -> tuple[np.ndarray, list[str]]:
    labels = np.asarray(values).astype(str)
    names, codes = np.unique(labels, return_inverse=True)
    return codes.astype(np.int64), [str(n) for n in names]


class BaseDataset:
    """The cells of an in-memory AnnData, one item per cell (STEP's ``BaseDataset``).

    An item is a tuple: the cell's expression row as ``float32`` (dense, from ``layer`` or
    ``X``), then the integer code of each ``obs_keys`` column (categories in sorted order,
    listed in :attr:`categories`). Batches of the default ``DataLoader`` collate are then
    ``(x, *codes)`` tensors, the input tuple of :class:`stformer_train.step.Trainer`.

    Parameters
    ----------
    adata
        An ``anndata.AnnData`` (read into memory; a backed file is read row by row).
    layer
        Layer holding the expression values (default ``X``).
    obs_keys
        ``obs`` columns returned after the row, as integer codes (cell type, batch, ...).

    >>> import anndata, numpy as np, pandas as pd
    >>> a = anndata.AnnData(np.eye(3, dtype=np.float32), obs=pd.DataFrame({"t": list("xyx")}, index=list("abc")))
    >>> ds = BaseDataset(a, obs_keys=("t",))
    >>> len(ds), ds[2][0].tolist(), int(ds[2][1]), ds.categories["t"]
    (3, [0.0, 0.0, 1.0], 0, ['x', 'y'])
    """

    def __init__(self, adata: Any, *, layer: str | None = None, obs_keys: Sequence[str] = ()):
        self.adata = adata
        self.layer = layer
        self.obs_keys = tuple(obs_keys)
        if layer is not None and layer not in adata.layers:
            raise InputError(
                getattr(adata, "filename", None),
                f"layers[{layer!r}]",
                "does not exist",
                f"choose one of {list(adata.layers)} or layer=None for X",
            )
        missing = [k for k in self.obs_keys if k not in adata.obs]
        if missing:
            raise InputError(
                getattr(adata, "filename", None),
                f"obs columns {missing}",
                "do not exist",
                f"choose obs_keys among {list(adata.obs.columns)}",
            )
        self.categories: dict[str, list[str]] = {}
        self._codes: list[np.ndarray] = []
        for key in self.obs_keys:
            codes, names = _codes(adata.obs[key])
            self.categories[key] = names
            self._codes.append(codes)
        self.indices = np.arange(adata.n_obs, dtype=np.int64)

    @property
    def obs(self):
        """``adata.obs`` of this dataset's cells."""
        return self.adata.obs

    def __len__(self) -> int:
        return int(self.adata.n_obs)

    def _row(self, i: int) -> np.ndarray:
        matrix = self.adata.X if self.layer is None else self.adata.layers[self.layer]
        row = matrix[i]
        if sp.issparse(row):
            row = row.toarray()
        return np.asarray(row, dtype=np.float32).reshape(-1)

    def __getitem__(self, i: int) -> tuple:
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"cell {i} out of range for a dataset of {len(self)} cells")
        return (self._row(i), *(c[i] for c in self._codes))


class MaskedDataset:
    """The cells ``indices`` of a :class:`BaseDataset` (STEP's ``MaskedDataset``).

    ``adata`` is the parent's AnnData restricted to the selected cells (a view), so a masked
    dataset can be split again by an ``obs`` column.

    >>> import anndata, numpy as np
    >>> base = BaseDataset(anndata.AnnData(np.arange(8, dtype=np.float32).reshape(4, 2)))
    >>> sub = MaskedDataset(base, [3, 1])
    >>> len(sub), sub[0][0].tolist(), sub.adata.n_obs
    (2, [6.0, 7.0], 2)
    """

    def __init__(self, dataset: BaseDataset | MaskedDataset, indices: Sequence[int] | np.ndarray):
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(dataset)):
            raise IndexError(
                f"indices must lie in [0, {len(dataset)}), got {idx.min()}..{idx.max()}"
            )
        if isinstance(dataset, MaskedDataset):  # a subset of a subset: index the base directly
            self.dataset, self.indices = dataset.dataset, dataset.indices[idx]
        else:
            self.dataset, self.indices = dataset, idx
        self.adata = self.dataset.adata[self.indices]

    @property
    def obs(self):
        return self.adata.obs

    @property
    def categories(self) -> dict[str, list[str]]:
        return self.dataset.categories

    def __len__(self) -> int:
        return int(self.indices.size)

    def __getitem__(self, i: int) -> tuple:
        return self.dataset[int(self.indices[int(i)])]


def category_random_split(
    dataset: BaseDataset | MaskedDataset,
    split_rate: float = 0.2,
    obs_key: str | None = None,
    *,
    seed: int | None = None,
) -> tuple[MaskedDataset, MaskedDataset]:
    """Split a dataset into training and validation datasets, stratified by ``adata.obs[obs_key]``.

    Within each category, ``round(split_rate x n)`` of its ``n`` cells go to validation (at
    least one when the category has two or more cells and ``split_rate > 0``), so every category
    keeps its share in both parts. Without ``obs_key`` the cells are split at random.
    ``seed`` makes the draw reproducible (stformer's addition; default: a fresh draw).

    Returns
    -------
    (train, valid)
        Two :class:`MaskedDataset` of the cells of ``dataset``.

    >>> import anndata, numpy as np, pandas as pd
    >>> obs = pd.DataFrame({"t": ["a"] * 10 + ["b"] * 5}, index=[str(i) for i in range(15)])
    >>> ds = BaseDataset(anndata.AnnData(np.zeros((15, 2), dtype=np.float32), obs=obs))
    >>> train, valid = category_random_split(ds, 0.2, "t", seed=0)
    >>> sorted(valid.adata.obs["t"].value_counts().items())
    [('a', 2), ('b', 1)]
    """
    if not 0 <= split_rate < 1:
        raise ValueError(f"split_rate must be in [0, 1), got {split_rate}")
    n = len(dataset)
    rng = np.random.default_rng(seed)
    if obs_key is None:
        groups = [np.arange(n)]
    else:
        obs = dataset.adata.obs
        if obs_key not in obs:
            raise InputError(
                getattr(dataset.adata, "filename", None),
                f"obs[{obs_key!r}]",
                "does not exist",
                f"choose obs_key among {list(obs.columns)}",
            )
        codes, _ = _codes(obs[obs_key])
        groups = [np.flatnonzero(codes == c) for c in np.unique(codes)]
    valid_parts, train_parts = [], []
    for members in groups:
        members = rng.permutation(members)
        k = int(round(split_rate * members.size))
        if split_rate > 0 and members.size >= 2:
            k = min(max(k, 1), members.size - 1)
        valid_parts.append(members[:k])
        train_parts.append(members[k:])
    train = np.sort(np.concatenate(train_parts)) if train_parts else np.array([], dtype=np.int64)
    valid = np.sort(np.concatenate(valid_parts)) if valid_parts else np.array([], dtype=np.int64)
    return MaskedDataset(dataset, train), MaskedDataset(dataset, valid)
