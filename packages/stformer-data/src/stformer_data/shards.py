"""Transformeromics' ``IterableAnnDataset``: tokenized cells of h5ad shards, split by file across workers.

Each file is a shard. A ``DataLoader`` worker gets an integral number of shards (worker ``w`` of
``W`` reads files ``w, w + W, ...``), reads each into memory and yields its cells in order, so
more workers than files leave the extra workers idle. Items are dicts of tensors:
``input_ids``, ``token_type_ids``, ``attention_mask`` and, for classification, ``labels``
(integer class ids, or floats for regression). Pad them into batches with
``stformer_collate.collate_fn_wrapper`` or mask them with ``DataCollatorForPhenotypicMLM``.

(stformer's own streaming dataset, with shuffle buffers across files and ranks, is
:class:`stformer_data.torch.DistributedAnnDataset`.)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch.utils.data import IterableDataset, get_worker_info

from stformer_data._errors import InputError
from stformer_data.h5ad.open import open_h5ad
from stformer_data.tokenize.gene_tokenizer import GeneTokenizer

__all__ = ["IterableAnnDataset"]


class IterableAnnDataset(IterableDataset):
    """Tokenized cells of h5ad shards as dicts of tensors.

    Parameters
    ----------
    filenames
        The shards (``.h5ad`` files).
    tokenizer
        A :class:`~stformer_data.GeneTokenizer`.
    label_key
        ``obs`` column whose value is each cell's ``labels`` (classification); ``None``: no labels.
    label_names
        The classes, in id order (default: the sorted values of ``label_key`` over all shards).
    regression
        ``labels`` are the column's float values (``num_labels=1``) instead of class ids.
    shard_size
        Cells per shard, when all shards have this many: ``len()`` then needs no file read.

    >>> ds = IterableAnnDataset(["a.h5ad", "b.h5ad"], tok, label_key="cell_type")  # doctest: +SKIP
    >>> next(iter(ds))["labels"]  # doctest: +SKIP
    tensor(3)
    """

    def __init__(
        self,
        filenames: Sequence[str | PathLike[str]],
        tokenizer: GeneTokenizer,
        label_key: str | None = None,
        *,
        label_names: Sequence[str] | None = None,
        regression: bool = False,
        shard_size: int | None = None,
    ):
        super().__init__()
        if isinstance(filenames, (str, PathLike)):
            filenames = [filenames]
        self.filenames = [Path(f) for f in filenames]
        if not self.filenames:
            raise ValueError("IterableAnnDataset needs at least one file")
        for f in self.filenames:
            if not f.is_file():
                raise InputError(f, "filenames", "does not exist", "pass existing .h5ad shards")
        self.tokenizer = tokenizer
        self.label_key = label_key
        self.regression = bool(regression)
        self.shard_size = shard_size
        self._n_obs: list[int] | None = None
        if label_key is not None and not regression:
            if label_names is None:
                values: set[str] = set()
                for f in self.filenames:
                    values.update(str(v) for v in np.unique(self._obs_column(f, label_key)))
                label_names = sorted(values)
            self.label_names: list[str] | None = [str(v) for v in label_names]
            self.label2id = {v: i for i, v in enumerate(self.label_names)}
        else:
            self.label_names, self.label2id = None, {}

    @staticmethod
    def _obs_column(path: Path, key: str) -> np.ndarray:
        adata = open_h5ad(path)
        try:
            if key not in adata.obs:
                raise InputError(
                    path,
                    f"obs[{key!r}]",
                    "does not exist",
                    f"choose one of {list(adata.obs.columns)}",
                )
            return np.asarray(adata.obs[key]).astype(str)
        finally:
            adata.file.close()

    @property
    def num_labels(self) -> int:
        return 1 if self.regression else len(self.label_names or ())

    def __len__(self) -> int:
        if self.shard_size is not None:
            return int(self.shard_size) * len(self.filenames)
        if self._n_obs is None:
            counts = []
            for f in self.filenames:
                adata = open_h5ad(f)
                counts.append(int(adata.n_obs))
                adata.file.close()
            self._n_obs = counts
        return sum(self._n_obs)

    def worker_files(self, worker_id: int = 0, num_workers: int = 1) -> list[Path]:
        """The shards worker ``worker_id`` of ``num_workers`` reads (every ``num_workers``-th file)."""
        return self.filenames[worker_id::num_workers]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        files = self.worker_files(info.id, info.num_workers) if info else self.filenames
        for path in files:
            yield from self._shard(path)

    def _shard(self, path: Path) -> Iterator[dict[str, torch.Tensor]]:
        import anndata

        adata = anndata.io.read_h5ad(path)
        X = adata.X
        X = sp.csr_matrix(X) if sp.issparse(X) else np.asarray(X)
        tok = self.tokenizer
        obs = {
            p: np.asarray(adata.obs[p]).astype(str)
            for p in tok.included_phenotypes
            if p in adata.obs
        }
        labels = None
        if self.label_key is not None:
            if self.label_key not in adata.obs:
                raise InputError(
                    path,
                    f"obs[{self.label_key!r}]",
                    "does not exist",
                    f"choose one of {list(adata.obs.columns)}",
                )
            labels = np.asarray(adata.obs[self.label_key])
        var_names = adata.var_names
        for i in range(adata.n_obs):
            if sp.issparse(X):
                start, end = X.indptr[i], X.indptr[i + 1]
                values, columns = X.data[start:end], X.indices[start:end]
            else:
                columns = np.flatnonzero(X[i])
                values = X[i][columns]
            pheno = tok.phenotype_ids({p: v[i] for p, v in obs.items()}, path)
            enc = tok.encode_row(values, columns, var_names, pheno)
            item = {
                "input_ids": torch.from_numpy(enc["input_ids"]),
                "token_type_ids": torch.from_numpy(enc["token_type_ids"]),
                "attention_mask": torch.ones(enc["input_ids"].size, dtype=torch.long),
            }
            if labels is not None:
                item["labels"] = self._label(labels[i], path)
            yield item

    def _label(self, value: Any, path: Path) -> torch.Tensor:
        if self.regression:
            try:
                return torch.tensor(float(value), dtype=torch.float32)
            except ValueError:
                raise InputError(
                    path,
                    f"obs[{self.label_key!r}]",
                    f"has the non-numeric value {value!r}",
                    "regress on a numeric column",
                ) from None
        key = str(value)
        if key not in self.label2id:
            raise InputError(
                path,
                f"obs[{self.label_key!r}]",
                f"has the value {key!r}, not among label_names",
                "add it to label_names",
            )
        return torch.tensor(self.label2id[key], dtype=torch.long)

    @property
    def id2label(self) -> Mapping[int, str]:
        return dict(enumerate(self.label_names or ()))
