"""Lightning data modules over h5ad files.

* :class:`AnnDataModule` -- protoplast's documented module: the datasets of a ``SplitInfo``
  (``Dataset.create_distributed_ds``), every tensor of a batch densified on the device between
  ``before_dense_cb(x, key)`` and ``after_dense_cb(x, key)``.
* :class:`H5adStreamDataModule` (formerly ``AnnDataModule``) -- stformer's own, over
  ``H5adStreamDataset``:

Train, validation and test sets come from a :class:`stformer_data.CellSplit` (by fraction or
grouped by an ``obs`` key), drawn once in ``prepare_data`` and saved in the run directory so that a
resumed run reads the same split. Raw-expression batches arrive as sparse CSR tensors and are
densified on the device in ``on_after_batch_transfer``, with its ``before_dense_cb(X, batch)`` (on
the sparse tensor) and ``after_dense_cb`` (on the dense tensor) hooks.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from stformer_data import BlockShuffleStrategy, CellSplit, SequentialBlockStrategy
from stformer_data.torch import H5adStreamDataset

DenseCallback = Callable[[torch.Tensor, Mapping[str, Any]], torch.Tensor]
#: protoplast's callbacks: ``cb(tensor, key)`` with the batch key (dict) or position (list/tuple).
KeyedDenseCallback = Callable[[torch.Tensor, "str | int | None"], torch.Tensor]


class _EpochDataLoader(DataLoader):
    """A DataLoader that tells its dataset the epoch before every pass (new workers copy it)."""

    def __init__(
        self, dataset: H5adStreamDataset, epoch_fn: Callable[[], int], **kwargs: Any
    ) -> None:
        super().__init__(dataset, batch_size=None, **kwargs)
        self._epoch_fn = epoch_fn

    def __iter__(self):
        self.dataset.set_epoch(self._epoch_fn())
        return super().__iter__()


class H5adStreamDataModule(pl.LightningDataModule):
    """Stream train/val/test cells of many h5ad files into a Lightning ``Trainer``.

    Parameters
    ----------
    files
        The ``.h5ad`` files.
    run_dir
        Where ``split.json`` is saved (and reloaded when the run resumes); ``None`` keeps the split in
        memory only (it is still the same on every rank, being drawn from ``split_seed``).
    split
        A ready split; overrides ``fractions``, ``group_key`` and ``split_seed``.
    fractions, group_key, split_seed
        How the split is drawn: ``(train, val, test)`` shares, by cell or by whole ``obs[group_key]``
        groups (donors, samples, sections).
    batch_size, num_workers
        Cells per batch and DataLoader worker processes.
    strategy
        Training shuffle strategy (default block shuffle); validation and test read sequentially.
    tokenizer, genes
        Passed to :class:`~stformer_data.torch.H5adStreamDataset`: tokens on the fly, or the gene
        space raw expression is aligned to.
    densify
        Turn the sparse ``"X"`` of raw-expression batches into a dense tensor on the device.
    before_dense_cb, after_dense_cb
        ``cb(X, batch) -> X`` applied to the sparse ``X`` before and to the dense ``X`` after densifying
        (e.g. library-size normalisation, log1p).
    seed
        Seed of the training order; each epoch (``trainer.current_epoch``) gets its own order.
    dataset_kwargs
        Other arguments for every dataset (``obs_keys``, ``even_batches``, ``length_bucketing``, ...).

    >>> dm = H5adStreamDataModule(["a.h5ad", "b.h5ad"], run_dir="runs/x", group_key="donor_id")  # doctest: +SKIP
    >>> pl.Trainer(max_epochs=1).fit(model, datamodule=dm)  # doctest: +SKIP
    """

    def __init__(
        self,
        files: Sequence[str | PathLike[str]],
        *,
        run_dir: str | PathLike[str] | None = None,
        split: CellSplit | None = None,
        fractions: Sequence[float] = (0.9, 0.05, 0.05),
        group_key: str | None = None,
        split_seed: int = 0,
        batch_size: int = 256,
        num_workers: int = 0,
        strategy: BlockShuffleStrategy | None = None,
        tokenizer: Any = None,
        genes: Any = None,
        densify: bool = True,
        before_dense_cb: DenseCallback | None = None,
        after_dense_cb: DenseCallback | None = None,
        seed: int = 0,
        pin_memory: bool = False,
        dataset_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not files:
            raise ValueError("files must not be empty")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.files = [Path(f) for f in files]
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.split = split
        self.fractions, self.group_key, self.split_seed = tuple(fractions), group_key, split_seed
        self.batch_size, self.num_workers, self.pin_memory = batch_size, num_workers, pin_memory
        self.strategy = strategy or BlockShuffleStrategy()
        self.tokenizer, self.genes = tokenizer, genes
        self.densify = densify
        self.before_dense_cb, self.after_dense_cb = before_dense_cb, after_dense_cb
        self.seed = seed
        self.dataset_kwargs = dict(dataset_kwargs or {})
        self.datasets: dict[str, H5adStreamDataset] = {}

    def _draw_split(self) -> CellSplit:
        if self.run_dir is not None:
            return CellSplit.load_or_create(
                self.run_dir,
                self.files,
                fractions=self.fractions,
                group_key=self.group_key,
                seed=self.split_seed,
            )
        return CellSplit.create(
            self.files, fractions=self.fractions, group_key=self.group_key, seed=self.split_seed
        )

    def prepare_data(self) -> None:
        """Draw and save the split once (Lightning calls this on one process per node)."""
        if self.split is None and self.run_dir is not None:
            self._draw_split()

    def setup(self, stage: str | None = None) -> None:
        if self.split is None:
            self.split = self._draw_split()
        for name in ("train", "val", "test"):
            if name in self.datasets or self.split.counts()[name] == 0:
                continue
            strategy = self.strategy if name == "train" else SequentialBlockStrategy()
            self.datasets[name] = H5adStreamDataset.from_split(
                self.split,
                name,
                batch_size=self.batch_size,
                strategy=strategy,
                tokenizer=self.tokenizer,
                genes=self.genes,
                seed=self.seed,
                **self.dataset_kwargs,
            )

    def _loader(self, name: str) -> DataLoader:
        if name not in self.datasets:
            raise ValueError(f"the split has no {name} cells (fractions={self.fractions})")
        trainer = self.trainer
        return _EpochDataLoader(
            self.datasets[name],
            epoch_fn=lambda: trainer.current_epoch if trainer is not None else 0,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Densify ``batch["X"]`` on the device, between ``before_dense_cb`` and ``after_dense_cb``."""
        if not isinstance(batch, dict) or "X" not in batch:
            return batch
        X = batch["X"]
        if self.before_dense_cb is not None:
            X = self.before_dense_cb(X, batch)
        if self.densify and X.layout != torch.strided:
            X = X.to_dense()
        if self.after_dense_cb is not None:
            X = self.after_dense_cb(X, batch)
        batch["X"] = X
        return batch


class AnnDataModule(pl.LightningDataModule):
    """protoplast's data module: the train/val/test datasets of a ``SplitInfo``, densified on the device.

    Parameters
    ----------
    indices
        The ``SplitInfo`` (or its ``to_dict()``).
    dataset
        The dataset class (``DistributedAnnDataset`` or a subclass); its ``create_distributed_ds``
        builds each split's dataset.
    prefetch_factor
        Items each DataLoader worker reads ahead.
    sparse_key
        ``"X"`` or ``"layers.<name>"``.
    shuffle_strategy
        The strategy that made ``indices``: when its ``is_mixer`` is true the DataLoader batches
        ``shuffle_strategy.mini_batch_size`` items with ``shuffle_strategy.mixer``; otherwise the
        dataset's items are the batches.
    before_dense_cb, after_dense_cb
        ``cb(tensor, key) -> tensor`` for every tensor of a batch, before and after a sparse one is
        densified (``key``: its dict key or list position; ``None`` for a bare tensor).
    **kwargs
        Passed to ``dataset.create_distributed_ds`` (the dataset's own arguments).

    Notes
    -----
    The DataLoaders use ``OMP_NUM_THREADS`` worker processes (Ray Train sets it to the CPUs of each
    worker; without it, every CPU), with ``persistent_workers``.

    >>> dm = AnnDataModule(split_info, DistributedAnnDataset, 4, "X",
    ...                    SequentialShuffleStrategy(files, 64, 1))  # doctest: +SKIP
    >>> pl.Trainer(max_epochs=1).fit(model, datamodule=dm)  # doctest: +SKIP
    """

    def __init__(
        self,
        indices: Any,
        dataset: type,
        prefetch_factor: int,
        sparse_key: str,
        shuffle_strategy: Any,
        before_dense_cb: KeyedDenseCallback | None = None,
        after_dense_cb: KeyedDenseCallback | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if prefetch_factor < 1:
            raise ValueError(f"prefetch_factor must be >= 1, got {prefetch_factor}")
        if not hasattr(dataset, "create_distributed_ds"):
            raise TypeError(
                f"dataset must be a DistributedAnnDataset class (with create_distributed_ds), got {dataset!r}"
            )
        self.indices = indices
        self.dataset = dataset
        num_threads = int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 0))
        self.loader_config: dict[str, Any] = {"num_workers": num_threads}
        if num_threads > 0:
            self.loader_config["prefetch_factor"] = prefetch_factor
            self.loader_config["persistent_workers"] = True
        if shuffle_strategy.is_mixer:
            mini = getattr(shuffle_strategy, "mini_batch_size", None)
            if not mini:
                raise ValueError(
                    f"{type(shuffle_strategy).__name__}.is_mixer is True but it has no "
                    "mini_batch_size; set the items per batch on the strategy"
                )
            self.loader_config.update(
                batch_size=mini, collate_fn=shuffle_strategy.mixer, drop_last=True
            )
        else:
            self.loader_config["batch_size"] = None
        self.sparse_key = sparse_key
        self.shuffle_strategy = shuffle_strategy
        self.before_dense_cb = before_dense_cb
        self.after_dense_cb = after_dense_cb
        self.kwargs = kwargs

    def _create(self, mode: str) -> Any:
        return self.dataset.create_distributed_ds(
            self.indices, self.sparse_key, mode, **self.kwargs
        )

    def setup(self, stage: str | None = None) -> None:
        """``fit``: train and val datasets; ``validate``: val; ``test``: test; ``predict``: the train split."""
        if stage in ("fit", None):
            self.train_ds = self._create("train")
            self.val_ds = self._create("val")
        if stage == "validate":
            self.val_ds = self._create("val")
        if stage in ("test", None):
            self.test_ds = self._create("test")
        if stage in ("predict", None):
            self.predict_ds = self._create("train")

    def _loader(self, attr: str, stage: str) -> DataLoader:
        if not hasattr(self, attr):
            raise RuntimeError(f"call setup({stage!r}) before asking for its DataLoader")
        return DataLoader(getattr(self, attr), **self.loader_config)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train_ds", "fit")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val_ds", "fit")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test_ds", "test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict_ds", "predict")

    def densify(self, x: Any, idx: str | int | None = None) -> Any:
        """``after_dense_cb(dense(before_dense_cb(x, idx)), idx)`` for a tensor; anything else unchanged."""
        if not isinstance(x, torch.Tensor):
            return x
        if self.before_dense_cb is not None:
            x = self.before_dense_cb(x, idx)
        if x.layout != torch.strided:
            x = x.to_dense()
        if self.after_dense_cb is not None:
            x = self.after_dense_cb(x, idx)
        return x

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Densify every tensor of the batch (a list or tuple, a dict, or one tensor) on the device."""
        if isinstance(batch, (list, tuple)):
            return [self.densify(d, i) for i, d in enumerate(batch)]
        if isinstance(batch, dict):
            return {k: self.densify(v, k) for k, v in batch.items()}
        if isinstance(batch, torch.Tensor):
            return self.densify(batch)
        return batch
