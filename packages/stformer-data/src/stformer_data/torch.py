"""Torch ``IterableDataset``s streaming cells from h5ad files or a tokenized corpus.

Import this module explicitly (``from stformer_data.torch import H5adStreamDataset``); the rest
of ``stformer_data`` does not need torch. Install it with ``pip install "stformer-data[torch]"``.

Every dataset plans its epoch with :func:`stformer_data.plan_epoch`: each cell is read exactly once
per epoch across all ranks and DataLoader workers (``even_batches="even"``), every rank gets the same
number of batches, and the order depends only on ``seed`` and the epoch (:meth:`set_epoch`).
The rank and world size are, in this order: the explicit arguments, ``torch.distributed`` when it
is initialised, the ``RANK`` / ``WORLD_SIZE`` environment variables (torchrun and Ray Train set
them), else a single process. The DataLoader worker comes from ``torch.utils.data.get_worker_info``.

:class:`DistributedAnnDataset` is protoplast's documented dataset (the row ranges of a
:class:`stformer_data.SplitInfo`, items made by an overridable ``transform``); stformer's own
streaming datasets, with the exactly-once epoch plan, block shuffle and tokens on the fly, are
:class:`H5adStreamDataset` (formerly named ``DistributedAnnDataset``), :class:`H5adCellDataset`
and :class:`CorpusStreamDataset`.
"""

from __future__ import annotations

import os
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from os import PathLike
from typing import Any

try:
    import torch
    from torch.utils.data import IterableDataset, get_worker_info
except ImportError as exc:  # pragma: no cover - exercised only without torch
    raise ImportError(
        'stformer_data.torch needs PyTorch: pip install "stformer-data[torch]"'
    ) from exc

import numpy as np

from stformer_data.stream.buffers import Buffer
from stformer_data.stream.corpus_source import CorpusSource
from stformer_data.stream.epoch import (
    EVEN_BATCHES,
    EvenBatches,
    batches_per_rank,
    bucket_batches,
    epoch_rng,
    plan_epoch,
)
from stformer_data.stream.h5ad_source import H5adSource
from stformer_data.stream.shuffle import BlockShuffleStrategy
from stformer_data.stream.split import CellSplit
from stformer_data.tokenize.contract import Tokenizer
from stformer_data.torch_ranges import DistributedAnnDataset, RankValueAnnDataset

__all__ = [
    "CorpusStreamDataset",
    "DistributedAnnDataset",
    "H5adStreamDataset",
    "H5adCellDataset",
    "RankValueAnnDataset",
    "resolve_world",
]


def resolve_world(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """``(rank, world_size)``: explicit arguments, else torch.distributed, else ``RANK``/``WORLD_SIZE``, else (0, 1)."""
    if rank is not None and world_size is not None:
        pass
    elif torch.distributed.is_available() and torch.distributed.is_initialized():
        rank = torch.distributed.get_rank() if rank is None else rank
        world_size = torch.distributed.get_world_size() if world_size is None else world_size
    else:
        rank = int(os.environ.get("RANK", 0)) if rank is None else rank
        world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(
            f"rank must be in [0, world_size) with world_size >= 1, got rank={rank}, "
            f"world_size={world_size}"
        )
    return rank, world_size


def _torch_empty(shape: tuple[int, int]) -> np.ndarray:
    """int64 batch memory from torch's allocator (numpy's huge-page advice on fresh allocations
    of 4 MB and more costs milliseconds of page faults per batch)."""
    return torch.empty(shape, dtype=torch.int64).numpy()


def _auto_threads(num_workers: int) -> int:
    """Threads for on-the-fly tokenization: the CPUs of this process shared among the local ranks
    (``LOCAL_WORLD_SIZE``, set by torchrun and Ray Train) and their DataLoader workers."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    local_ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    return max(1, cpus // (local_ranks * max(1, num_workers)))


class _StreamDataset(IterableDataset):
    """Shared machinery: plan, read buffers, cut batches, convert to tensors."""

    def __init__(
        self,
        source: H5adSource | CorpusSource,
        *,
        batch_size: int,
        strategy: BlockShuffleStrategy | None,
        even_batches: EvenBatches,
        seed: int,
        length_bucketing: bool,
        rank: int | None,
        world_size: int | None,
        yield_batches: bool,
        collate_fn: Callable[[list[dict]], Any] | None,
        prefetch: int = 1,
        tokenize_threads: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if prefetch < 0:
            raise ValueError(f"prefetch must be >= 0, got {prefetch}")
        if tokenize_threads is not None and tokenize_threads < 1:
            raise ValueError(f"tokenize_threads must be >= 1 or None, got {tokenize_threads}")
        if even_batches not in EVEN_BATCHES:
            raise ValueError(f"even_batches must be one of {EVEN_BATCHES}, got {even_batches!r}")
        self.source = source
        self.batch_size = batch_size
        self.strategy = strategy or BlockShuffleStrategy()
        self.even_batches = even_batches
        self.seed = seed
        self.length_bucketing = length_bucketing
        self.rank, self.world_size = rank, world_size
        self.yield_batches = yield_batches
        self.collate_fn = collate_fn
        self.prefetch = prefetch
        self.tokenize_threads = tokenize_threads
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` (call before each epoch; new DataLoader workers copy it)."""
        self.epoch = int(epoch)

    @property
    def n_cells(self) -> int:
        return self.source.n_cells

    def __len__(self) -> int:
        """Batches (or, with ``yield_batches=False``, cells) this rank yields per epoch."""
        _, world = resolve_world(self.rank, self.world_size)
        n_batches = batches_per_rank(
            self.source.n_cells,
            batch_size=self.batch_size,
            world_size=world,
            even_batches=self.even_batches,
        )
        if self.yield_batches:
            return n_batches
        if self.even_batches == "even":
            base, extra = divmod(self.source.n_cells, world)
            rank, _ = resolve_world(self.rank, self.world_size)
            return base + (1 if rank < extra else 0)
        return n_batches * self.batch_size

    def __iter__(self) -> Iterator[Any]:
        rank, world = resolve_world(self.rank, self.world_size)
        info = get_worker_info()
        worker_id, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        plans = plan_epoch(
            self.source.counts,
            self.strategy,
            batch_size=self.batch_size,
            seed=self.seed,
            epoch=self.epoch,
            world_size=world,
            rank=rank,
            num_workers=num_workers,
            worker_id=worker_id,
            even_batches=self.even_batches,
        )
        threads = self.tokenize_threads or _auto_threads(num_workers)
        # the buffer thread is stopped (closing) before the reader's files are closed
        with (
            self.source.open(threads=threads) as reader,
            closing(self._buffers(reader, plans)) as buffers,
        ):
            for plan, buf in zip(plans, buffers, strict=True):
                if self.length_bucketing:
                    rng = epoch_rng(self.seed, self.epoch, 2, rank, plan.index)
                    batches = bucket_batches(buf.lengths, plan.batch_sizes, rng)
                else:
                    batches = plan.batches()
                for positions in batches:
                    if self.yield_batches:
                        yield self._batch(buf, positions)
                    else:
                        yield from (self._example(buf, int(i)) for i in positions)
                reader.release(buf)  # batches and examples are copies: refill its arrays

    def _buffers(self, reader: Any, plans: list) -> Iterator[Buffer]:
        """The buffers of ``plans`` in order, read ``prefetch`` ahead on a background thread (the
        reading and the compiled tokenizer release the GIL, so this overlaps with training)."""
        if self.prefetch == 0:
            yield from (reader.read(plan.cells) for plan in plans)
            return
        with ThreadPoolExecutor(1, thread_name_prefix="stformer-read") as pool:
            pending = deque(pool.submit(reader.read, p.cells) for p in plans[: self.prefetch])
            following = iter(plans[self.prefetch :])
            try:
                while pending:
                    buf = pending.popleft().result()  # re-raises the reader's error here
                    nxt = next(following, None)
                    if nxt is not None:
                        pending.append(pool.submit(reader.read, nxt.cells))
                    yield buf
            finally:  # stopped early (or failed): drop what was not started
                for fut in pending:
                    fut.cancel()

    # --- conversion -----------------------------------------------------------------------------
    @staticmethod
    def _csr(buf: Buffer, positions: np.ndarray) -> torch.Tensor:
        indptr, indices, data = buf.csr_rows(positions)
        index_dtype = np.int32 if indptr[-1] < np.iinfo(np.int32).max else np.int64
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            return torch.sparse_csr_tensor(
                torch.from_numpy(indptr.astype(index_dtype)),
                torch.from_numpy(indices.astype(index_dtype, copy=False)),
                torch.from_numpy(data),
                size=(positions.size, buf.n_columns),
                check_invariants=False,
            )

    def _meta(self, buf: Buffer, positions: np.ndarray) -> dict[str, Any]:
        out: dict[str, Any] = {
            "length": torch.from_numpy(buf.lengths[positions]),
            "file_index": torch.from_numpy(buf.file_index[positions]),
            "cell_index": torch.from_numpy(buf.cell_index[positions]),
        }
        for k, v in buf.obs.items():
            out[k] = v[positions].astype(
                str
            )  # a numpy string array passes DataLoader conversion untouched
        return out

    def _batch(self, buf: Buffer, positions: np.ndarray) -> Any:
        if buf.raw:
            out = {"X": self._csr(buf, positions)}
            out.update(self._meta(buf, positions))
            return out
        if self.collate_fn is not None:
            return self.collate_fn([self._example(buf, int(i)) for i in positions])
        padded = buf.padded(positions, self.source.pads, empty=_torch_empty)
        out = {k: torch.from_numpy(v) for k, v in padded.items()}
        out.update(self._meta(buf, positions))
        return out

    def _example(self, buf: Buffer, i: int) -> dict[str, Any]:
        out: dict[str, Any] = {
            "length": int(buf.lengths[i]),
            "file_index": int(buf.file_index[i]),
            "cell_index": int(buf.cell_index[i]),
        }
        if buf.raw:
            out["X"] = self._csr(buf, np.array([i]))
        else:
            for name in buf.fields:
                out[name] = buf.token_row(i, name).astype(np.int64)
        for k, v in buf.obs.items():
            out[k] = v[i]
        return out


class H5adStreamDataset(_StreamDataset):
    """Stream cells from many backed h5ad files, sharded across ranks and DataLoader workers.

    Yields one batch per item (use ``DataLoader(dataset, batch_size=None)``): raw expression as a
    ``torch.sparse_csr_tensor`` ``"X"`` of shape ``(batch, genes)``, or, with a ``tokenizer``,
    token ids tokenized on the fly (``"input_ids"`` right-padded with the vocabulary's pad id and
    ``"attention_mask"``, or whatever ``collate_fn`` makes of the per-cell examples). Every batch
    also has ``"length"`` (tokens, or non-zeros for raw expression), ``"file_index"``,
    ``"cell_index"`` (row in its file) and the requested ``obs_keys`` (lists of strings).

    Parameters
    ----------
    files
        The ``.h5ad`` files; files without cells are skipped with a warning.
    batch_size
        Cells per batch (the largest batch with ``even_batches="even"``).
    strategy
        Block order and shuffle buffer (default :class:`~stformer_data.BlockShuffleStrategy`).
    tokenizer
        Tokenize on the fly: :class:`~stformer_data.RankValueTokenizer` (its compiled kernel
        reads the file's CSR arrays directly), :class:`~stformer_data.BinnedTokenizer` (bins in
        ``input_ids``, genes in ``token_type_ids``, its phenotype columns read from ``obs``), or
        any :class:`~stformer_data.Tokenizer` (the contract: one ``tokenize(cells)`` method
        returning a :class:`~stformer_data.TokenBlock`). Genes are mapped to its
        ``gene_vocab`` per file. Neighbourhood (spatial) tokens need each spot's
        neighbours: tokenize them to a corpus and use :class:`CorpusStreamDataset`.
    genes
        Raw expression: the gene space (a vocabulary or a gene list) the files are aligned to;
        ``None`` requires every file to have the same genes.
    rows
        Per file, the sorted rows to stream (``None``: all); see :meth:`from_split`.
    even_batches
        ``"even"`` (every cell exactly once, equal batch counts, batches as equal as possible),
        ``"drop"`` (full batches; the epoch's last ``N mod (world*batch)`` cells are left out) or
        ``"pad"`` (full batches; as many cells are repeated).
    seed
        The order of an epoch depends only on ``seed`` and the epoch (:meth:`set_epoch`).
    length_bucketing
        Group cells of similar length into batches inside each shuffle buffer (less padding).
    rank, world_size
        Override the detected distributed rank and world size.
    yield_batches
        ``False`` yields one example dict per cell (``input_ids`` as an int64 array, or a 1-row
        ``X``) for a DataLoader with a ``batch_size`` and a collator (the Hugging Face Trainer form).
    gene_id_key, name_to_id, layer, obs_keys, n_counts_key, check_values
        How files are read; see :class:`stformer_data.H5adSource`.
    prefetch
        Shuffle buffers read (and tokenized) ahead on a background thread while batches of the
        current one are yielded (0: read in the iterating thread). Each costs a buffer's memory.
    tokenize_threads
        Threads reading and tokenizing the runs of rows of a buffer (tokenizers that release
        the GIL, e.g. the rank-value kernel);
        ``None``: the CPUs of this process divided among the local ranks (``LOCAL_WORLD_SIZE``)
        and DataLoader workers.

    >>> from torch.utils.data import DataLoader
    >>> ds = H5adStreamDataset(["a.h5ad", "b.h5ad"], batch_size=256)  # doctest: +SKIP
    >>> for batch in DataLoader(ds, batch_size=None, num_workers=2):  # doctest: +SKIP
    ...     dense = batch["X"].to_dense()
    """

    def __init__(
        self,
        files: Sequence[str | PathLike[str]],
        *,
        batch_size: int = 256,
        strategy: BlockShuffleStrategy | None = None,
        tokenizer: Tokenizer | None = None,
        genes: Mapping[str, int] | Sequence[str] | None = None,
        rows: Sequence[np.ndarray | None] | None = None,
        even_batches: EvenBatches = "even",
        seed: int = 0,
        length_bucketing: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        yield_batches: bool = True,
        collate_fn: Callable[[list[dict]], Any] | None = None,
        gene_id_key: str | None = None,
        name_to_id: Mapping[str, str] | None = None,
        layer: str | None = None,
        obs_keys: Sequence[str] = (),
        n_counts_key: str | None = "n_counts",
        check_values: bool = False,
        prefetch: int = 1,
        tokenize_threads: int | None = None,
    ) -> None:
        if isinstance(tokenizer, Tokenizer):
            n_counts_key = tokenizer.n_counts_key
        source = H5adSource(
            files,
            rows=rows,
            tokenizer=tokenizer,
            genes=genes,
            gene_id_key=gene_id_key,
            name_to_id=name_to_id,
            layer=layer,
            obs_keys=obs_keys,
            n_counts_key=n_counts_key,
            check_values=check_values,
        )
        super().__init__(
            source,
            batch_size=batch_size,
            strategy=strategy,
            even_batches=even_batches,
            seed=seed,
            length_bucketing=length_bucketing,
            rank=rank,
            world_size=world_size,
            yield_batches=yield_batches,
            collate_fn=collate_fn,
            prefetch=prefetch,
            tokenize_threads=tokenize_threads,
        )

    @classmethod
    def from_split(cls, split: CellSplit, name: str, **kwargs: Any) -> H5adStreamDataset:
        """The cells of split ``name`` (``"train"``, ``"val"``, ``"test"``) of a :class:`~stformer_data.CellSplit`."""
        return cls(list(split.files), rows=split.indices(name), **kwargs)


class H5adCellDataset(H5adStreamDataset):
    """:class:`H5adStreamDataset` yielding one example per cell (perturbgene's ``IterableAnnDataset`` is :mod:`stformer_data.shards`).

    With a tokenizer each item is ``{"input_ids": int64 array, "length": int, ...}``, the form the
    Hugging Face ``Trainer`` and ``DataCollatorForLanguageModeling``-style collators take (set
    ``max_steps``; ``len()`` gives the cells per epoch). Under the Trainer, Accelerate already
    splits an iterable dataset across processes (the main process reads and dispatches batches),
    so build it with ``rank=0, world_size=1`` there; every cell is then still seen once per epoch.
    With Lightning or plain DDP the dataset shards by rank itself.

    >>> ds = H5adCellDataset(["a.h5ad"], tokenizer=tokenizer)  # doctest: +SKIP
    >>> next(iter(ds))["input_ids"][:5]  # doctest: +SKIP
    """

    def __init__(
        self, files: Sequence[str | PathLike[str]], *, yield_batches: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(files, yield_batches=yield_batches, **kwargs)


class CorpusStreamDataset(_StreamDataset):
    """Stream a tokenized corpus on disk (:func:`stformer_data.tokenize_files`) with the same sharding.

    The Arrow files are memory-mapped and sequences gathered straight from their buffers (no
    per-row ``datasets`` decoding). Items are as for :class:`H5adStreamDataset` with tokens;
    a binned or neighbourhood corpus also yields its ``token_type_ids`` (padded with 0).
    ``prefetch`` buffers are gathered ahead on a background thread. Token ids stored as
    ``uint16`` (format 3) or ``int32`` (format 2) come out as int64 tensors. ``verify`` checks
    every shard's checksum on open (sizes and token-id ranges are always checked).

    >>> ds = CorpusStreamDataset("corpus/", batch_size=64, length_bucketing=True)  # doctest: +SKIP
    >>> batch = next(iter(ds)); batch["input_ids"].shape  # doctest: +SKIP
    """

    def __init__(
        self,
        corpus: str | PathLike[str],
        *,
        batch_size: int = 256,
        strategy: BlockShuffleStrategy | None = None,
        even_batches: EvenBatches = "even",
        seed: int = 0,
        length_bucketing: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        yield_batches: bool = True,
        collate_fn: Callable[[list[dict]], Any] | None = None,
        obs_keys: Sequence[str] = (),
        prefetch: int = 1,
        verify: bool = True,
    ) -> None:
        source = CorpusSource(corpus, obs_keys=obs_keys, verify=verify)
        super().__init__(
            source,
            batch_size=batch_size,
            strategy=strategy,
            even_batches=even_batches,
            seed=seed,
            length_bucketing=length_bucketing,
            rank=rank,
            world_size=world_size,
            yield_batches=yield_batches,
            collate_fn=collate_fn,
            prefetch=prefetch,
        )
