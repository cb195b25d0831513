"""protoplast's datasets over row ranges of h5ad files (:class:`DistributedAnnDataset`), and
:class:`RankValueAnnDataset`, its subclass yielding rank-value tokens for stformer's BERT.

Both read the ``[start, end]`` ranges of a :class:`stformer_data.SplitInfo`; stformer's own
streaming datasets with the exactly-once epoch plan are in :mod:`stformer_data.torch`, which
re-exports these two.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from stformer_data._errors import InputError
from stformer_data.h5ad.open import open_h5ad
from stformer_data.stream.ranges import SplitInfo

__all__ = ["DistributedAnnDataset", "RankValueAnnDataset"]


class DistributedAnnDataset(IterableDataset):
    """protoplast's dataset: the row ranges of a :class:`~stformer_data.SplitInfo`, shared out by worker.

    The ranges of all files are numbered in file order; range ``g`` is read by the worker whose
    global id (``rank * dataloader_workers + worker_id``) is ``g % (world_size *
    dataloader_workers)``, so each range is read once per epoch. A range is read with one slice of
    the backed file and yielded whole, or in items of ``mini_batch_size`` rows. Each item is what
    :meth:`transform` returns: by default the rows' expression as a float32
    ``torch.sparse_csr_tensor`` (or a dense tensor when the file stores ``X`` dense). Subclass it
    and override :meth:`transform` to yield more (labels from ``self.ad.obs``, ...).

    Parameters
    ----------
    file_paths
        The ``.h5ad`` files (``SplitInfo.files``).
    indices
        Per file, the ``[start, end]`` ranges to read (``SplitInfo.train_indices`` and so on).
    metadata
        ``SplitInfo.metadata``; every key is also set as an attribute (``self.num_genes``).
    sparse_key
        Which matrix: ``"X"``, or ``"layers.<name>"`` for ``adata.layers[<name>]``.
    mini_batch_size
        Rows per item (at most the range length); ``None`` yields each range as one item.

    >>> ds = DistributedAnnDataset.create_distributed_ds(split_info, "X", "val")  # doctest: +SKIP
    >>> X = next(iter(ds))  # doctest: +SKIP
    """

    def __init__(
        self,
        file_paths: list[str],
        indices: list[list[list[int]]],
        metadata: dict,
        sparse_key: str,
        mini_batch_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs:
            raise TypeError(
                f"{type(self).__name__} got unexpected keyword argument(s) {sorted(kwargs)}; a "
                "subclass taking them must consume them before calling super().__init__"
            )
        if len(indices) != len(file_paths):
            raise ValueError(
                f"indices must hold one list of ranges per file ({len(file_paths)}), got {len(indices)}"
            )
        if mini_batch_size is not None and mini_batch_size < 1:
            raise ValueError(f"mini_batch_size must be >= 1 or None, got {mini_batch_size}")
        if sparse_key != "X" and not (sparse_key.startswith("layers.") and len(sparse_key) > 7):
            raise ValueError(
                f'sparse_key must be "X" or "layers.<name>" (e.g. "layers.counts"), got {sparse_key!r}'
            )
        self.files = list(file_paths)
        self.sparse_key = sparse_key
        self.X: Any = None
        self.ad: Any = None
        for k, v in metadata.items():
            setattr(self, k, v)
        self.metadata = metadata
        self.batches = indices
        self.mini_batch_size = mini_batch_size

    @classmethod
    def create_distributed_ds(
        cls, indices: Any, sparse_key: str, mode: str = "train", **kwargs: Any
    ) -> DistributedAnnDataset:
        """The dataset of split ``mode`` (``"train"``, ``"val"`` or ``"test"``) of a ``SplitInfo`` (or its dict)."""
        if mode not in ("train", "val", "test"):
            raise ValueError(f'mode must be "train", "val" or "test", got {mode!r}')
        info = indices.to_dict() if isinstance(indices, SplitInfo) else indices
        return cls(
            info["files"],
            info[f"{mode}_indices"],
            info["metadata"],
            sparse_key,
            mini_batch_size=info.get("mini_batch_size"),
            **kwargs,
        )

    def _init_rank(self) -> None:
        info = get_worker_info()
        self.wid, self.nworkers = (info.id, info.num_workers) if info is not None else (0, 1)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            self.ray_rank = torch.distributed.get_rank()
            self.ray_size = torch.distributed.get_world_size()
        else:
            self.ray_rank, self.ray_size = 0, 1
        self.global_rank = self.ray_rank * self.nworkers + self.wid
        self.total_workers = self.ray_size * self.nworkers

    def _process_sparse(self, mat: Any) -> torch.Tensor:
        """A scipy sparse matrix as a float32 CSR tensor; a dense array as a float32 tensor."""
        import scipy.sparse as sp

        if sp.issparse(mat):
            mat = sp.csr_matrix(mat)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
                return torch.sparse_csr_tensor(
                    torch.from_numpy(mat.indptr.astype(np.int64)),
                    torch.from_numpy(mat.indices.astype(np.int64)),
                    torch.from_numpy(mat.data.astype(np.float32)),
                    size=mat.shape,
                    check_invariants=False,  # scipy's CSR is valid by construction
                )
        return torch.from_numpy(np.asarray(mat, dtype=np.float32))

    def _get_mat_by_range(self, ad: Any, start: int, end: int) -> Any:
        """Rows ``start`` to ``end - 1`` of the ``sparse_key`` matrix of ``ad``."""
        if self.sparse_key == "X":
            return ad.X[start:end]
        name = self.sparse_key.split(".", 1)[1]
        if name not in ad.layers:
            raise InputError(
                getattr(ad, "filename", None),
                f"layers[{name!r}]",
                "does not exist",
                f"use sparse_key 'X' or one of {[f'layers.{k}' for k in ad.layers]}",
            )
        return ad.layers[name][start:end]

    def transform(self, start: int, end: int) -> Any:
        """The item for rows ``start`` to ``end - 1`` of the current file (``self.ad``).

        By default the rows' matrix as a tensor (:meth:`_process_sparse` of ``self.X``, read if it
        is not set). Override it to add data of the same rows, e.g.
        ``self.ad.obs["cell_line"].iloc[start:end]``; return a tensor, a list or a dict of them.
        """
        if self.X is None:
            self.X = self._get_mat_by_range(self.ad, start, end)
        return self._process_sparse(self.X)

    def __len__(self) -> int:
        """Items per rank per epoch (rounded up)."""
        world = (
            torch.distributed.get_world_size()
            if torch.distributed.is_available() and torch.distributed.is_initialized()
            else 1
        )
        if self.mini_batch_size:
            # each range yields ceil(len / mini_batch_size) items
            items = sum(
                -(-(end - start) // self.mini_batch_size)
                for ranges in self.batches
                for start, end in ranges
            )
        else:
            items = sum(len(ranges) for ranges in self.batches)
        return -(-items // world)

    def __iter__(self) -> Iterator[Any]:
        self._init_rank()
        gidx = 0
        for fidx, path in enumerate(self.files):
            mine = []
            for start, end in self.batches[fidx]:
                if gidx % self.total_workers == self.global_rank:
                    mine.append((int(start), int(end)))
                gidx += 1
            if not mine:
                continue
            self.ad = open_h5ad(path)
            try:
                for start, end in mine:
                    X = self._get_mat_by_range(self.ad, start, end)
                    if self.mini_batch_size is None:
                        self.X = X
                        yield self.transform(start, end)
                        continue
                    for i in range(0, end - start, self.mini_batch_size):
                        j = min(i + self.mini_batch_size, end - start)
                        self.X = X[i:j]
                        yield self.transform(start + i, start + j)
            finally:
                self.X = None
                self.ad.file.close()
                self.ad = None


class RankValueAnnDataset(DistributedAnnDataset):
    """:class:`DistributedAnnDataset` whose items are rank-value tokens of the rows (stformer's BERT).

    ``transform(start, end)`` tokenizes the rows with a
    :class:`~stformer_data.RankValueTokenizer` through the tokenizer contract
    (:meth:`~stformer_data.Tokenizer.tokenize` of :class:`~stformer_data.tokenize.contract.Cells`),
    the same tokenizer the corpus writer and :class:`H5adStreamDataset` use, and returns the
    batch ``{"input_ids": (n, L) int64 right-padded with the vocabulary's pad id,
    "attention_mask": (n, L) int64, "length": (n,) int64}``, ``L`` the longest sequence of the
    item. Cells with no gene of the vocabulary (no tokens) are left out of their item. The
    masked-LM collator is applied by the model (:class:`stformer_train.lightning.BertMLMModule`),
    so a resumed run masks each step as the uninterrupted run did.

    What it needs comes from the metadata (:func:`stformer_data.rank_value_metadata_cb` writes
    it): ``vocab``, ``medians``, ``model_input_size``, and optionally ``gene_id_key`` and
    ``n_counts_key``. The other arguments are those of :class:`DistributedAnnDataset`.

    >>> ds = RankValueAnnDataset.create_distributed_ds(split_info, "X", "train")  # doctest: +SKIP
    >>> next(iter(ds))["input_ids"].shape  # doctest: +SKIP
    torch.Size([64, 2048])
    """

    #: metadata the dataset reads (written by ``rank_value_metadata_cb``)
    required_metadata: tuple[str, ...] = ("vocab", "medians", "model_input_size")

    def __init__(
        self,
        file_paths: list[str],
        indices: list[list[list[int]]],
        metadata: dict,
        sparse_key: str,
        mini_batch_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        missing = [k for k in self.required_metadata if k not in metadata]
        if missing:
            raise KeyError(
                f"{type(self).__name__} needs metadata {missing} (it has {sorted(metadata)}); "
                "split the files with metadata_cb=stformer_data.rank_value_metadata_cb(...)"
            )
        super().__init__(file_paths, indices, metadata, sparse_key, mini_batch_size, **kwargs)
        self._tokenizer: Any = None
        self._file_cells: dict[str, Any] = {}

    @property
    def tokenizer(self) -> Any:
        """The :class:`~stformer_data.RankValueTokenizer` of the metadata (built on first use)."""
        if self._tokenizer is None:
            from stformer_data.tokenize.rank import RankTokenizerConfig, RankValueTokenizer

            config = RankTokenizerConfig(
                model_input_size=int(self.metadata["model_input_size"]),
                n_counts_key=self.metadata.get("n_counts_key", "n_counts"),
            )
            self._tokenizer = RankValueTokenizer(
                self.metadata["vocab"], self.metadata["medians"], config
            )
        return self._tokenizer

    def _file(self) -> Any:
        """The current file (``self.ad``) as the tokenizer sees it, built once per file."""
        from stformer_data.genes.mapping import map_genes, resolve_gene_ids
        from stformer_data.tokenize.contract import FileCells

        path = str(getattr(self.ad, "filename", id(self.ad)))
        file = self._file_cells.get(path)
        if file is None:
            tok = self.tokenizer
            ids = resolve_gene_ids(
                self.ad.var, gene_id_key=self.metadata.get("gene_id_key"), path=path
            )
            mapping = map_genes(ids, tok.gene_vocab, tok.gene_vocab.special_ids, path=path)
            key = tok.n_counts_key
            n_counts = None
            if key is not None and key in self.ad.obs.columns:
                n_counts = np.asarray(self.ad.obs[key], dtype=np.float64)
            layer = self.sparse_key.split(".", 1)[1] if self.sparse_key != "X" else None
            file = FileCells(
                mapping=mapping,
                path=path,
                obs_names=tuple(self.ad.obs.columns),
                n_counts=n_counts,
                layer=layer,
            )
            self._file_cells[path] = file
        return file

    def transform(self, start: int, end: int) -> dict[str, torch.Tensor]:
        """The rank-value tokens of rows ``start`` to ``end - 1`` of the current file, padded."""
        import scipy.sparse as sp

        from stformer_data.tokenize.contract import Cells

        if self.X is None:
            self.X = self._get_mat_by_range(self.ad, start, end)
        counts = sp.csr_matrix(self.X, dtype=np.float32)
        block = self.tokenizer.tokenize(Cells(counts=counts, file=self._file(), first_row=start))
        keep = np.flatnonzero(block.lengths > 0)
        lengths = block.lengths[keep].astype(np.int64)
        width = int(lengths.max()) if lengths.size else 1
        ids = np.full((keep.size, width), int(self.tokenizer.vocab.pad_id), dtype=np.int64)
        mask = np.arange(width)[None, :] < lengths[:, None]
        if keep.size:
            starts = block.starts[keep].astype(np.int64)
            flat = np.repeat(starts, lengths) + (
                np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
            )
            ids[mask] = block.fields["input_ids"][flat]
        return {
            "input_ids": torch.from_numpy(ids),
            "attention_mask": torch.from_numpy(mask.astype(np.int64)),
            "length": torch.from_numpy(lengths),
        }
