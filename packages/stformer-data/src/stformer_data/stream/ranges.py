"""protoplast's split of many h5ad files into row ranges, and its shuffle strategies.

A :class:`ShuffleStrategy` decides, once on the driver, which contiguous row ranges ("batches" of
``batch_size`` rows, ``[start, end)`` in file coordinates) of which file go to training, validation
and testing; the result is a :class:`SplitInfo`, which every dataset worker receives whole and
reads its share of (``stformer_data.torch.DistributedAnnDataset``). A ``metadata_cb`` writes
what the model and the dataset need to know of the files (gene count, class labels) into
``SplitInfo.metadata``.

These are the documented protoplast names. stformer's own streaming order (blocks shuffled across
files, shuffle buffers, exactly-once planning over ranks x workers) is
:class:`stformer_data.BlockShuffleStrategy` with :func:`stformer_data.plan_epoch`.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

from stformer_data._errors import InputError
from stformer_data.h5ad.open import open_h5ad

MetadataCallback = Callable[[Any, dict], None]

__all__ = [
    "SequentialShuffleStrategy",
    "ShuffleStrategy",
    "SplitInfo",
    "ann_split_data",
    "cell_line_metadata_cb",
    "rank_value_metadata_cb",
]


@dataclass
class SplitInfo:
    """Which row ranges of which file each dataset reads, and the metadata for dataset and model.

    Parameters
    ----------
    files
        The files, in the order the datasets read them.
    train_indices, val_indices, test_indices
        Per file (``train_indices[file_idx]``, same order as ``files``), the ranges
        ``[start, end]`` (rows ``start`` to ``end - 1``) of that split.
    metadata
        What :func:`cell_line_metadata_cb` (or another ``metadata_cb``) wrote: passed to every
        dataset (set as its attributes) and, through ``model_keys``, to the model.
    mini_batch_size
        Rows per item the dataset yields (``None``: one item per range).

    >>> info = SplitInfo(["a.h5ad"], [[[0, 8]]], [[[8, 10]]], [[]], {"num_genes": 5}, 4)
    >>> info.to_dict()["val_indices"]
    [[[8, 10]]]
    """

    files: list[str]
    train_indices: list[list[list[int]]]
    val_indices: list[list[list[int]]]
    test_indices: list[list[list[int]]]
    metadata: dict[str, Any]
    mini_batch_size: int | None = None

    def __post_init__(self) -> None:
        for name in ("train_indices", "val_indices", "test_indices"):
            value = getattr(self, name)
            if len(value) != len(self.files):
                raise ValueError(
                    f"SplitInfo.{name} must hold one list of ranges per file ({len(self.files)}), "
                    f"got {len(value)}"
                )
        if self.mini_batch_size is not None and self.mini_batch_size < 1:
            raise ValueError(
                f"SplitInfo.mini_batch_size must be >= 1 or None, got {self.mini_batch_size}"
            )

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (what ``DistributedAnnDataset.create_distributed_ds`` reads)."""
        return {
            "files": self.files,
            "train_indices": self.train_indices,
            "val_indices": self.val_indices,
            "test_indices": self.test_indices,
            "metadata": self.metadata,
            "mini_batch_size": self.mini_batch_size,
        }


def cell_line_metadata_cb(ad: Any, metadata: dict) -> None:
    """The default ``metadata_cb``: gene count and the cell lines of ``obs["cell_line"]``.

    Writes ``metadata["num_genes"]`` (``ad.n_vars``), ``metadata["cell_lines"]`` (the labels, a
    list; the position of a label is its class index) and ``metadata["num_classes"]``. It is
    called once per file, in file order, on the same dict: labels of later files that are new are
    appended, so the class indices are the same for every file.

    >>> import anndata, numpy as np, pandas as pd
    >>> ad = anndata.AnnData(np.zeros((3, 2)), obs=pd.DataFrame({"cell_line": ["b", "a", "b"]}))
    >>> meta = {}
    >>> cell_line_metadata_cb(ad, meta)
    >>> meta["num_genes"], meta["cell_lines"], meta["num_classes"]
    (2, ['a', 'b'], 2)
    """
    if "cell_line" not in ad.obs.columns:
        raise InputError(
            getattr(ad, "filename", None),
            'obs["cell_line"]',
            "does not exist",
            f"add the column, or pass a metadata_cb reading one of {list(ad.obs.columns)}",
        )
    column = ad.obs["cell_line"]
    if hasattr(column, "cat"):
        labels = [str(c) for c in column.cat.categories]
    else:
        labels = sorted({str(v) for v in column.to_numpy()})
    known = list(metadata.get("cell_lines", []))
    known += [c for c in labels if c not in set(known)]
    metadata["cell_lines"] = known
    metadata["num_classes"] = len(known)
    if metadata.get("num_genes", ad.n_vars) != ad.n_vars:
        raise InputError(
            getattr(ad, "filename", None),
            "n_vars",
            f"is {ad.n_vars} but an earlier file has {metadata['num_genes']} genes",
            "align all files to the same genes (same var_names, same order)",
        )
    metadata["num_genes"] = ad.n_vars


def rank_value_metadata_cb(
    vocab: Any = None,
    medians: Mapping[str, float] | None = None,
    *,
    model_input_size: int = 2048,
    gene_id_key: str | None = None,
    n_counts_key: str | None = "n_counts",
    exact: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> MetadataCallback:
    """A ``metadata_cb`` for rank-value token models (stformer's BERT): vocabulary and medians.

    The callback writes, for :class:`stformer_data.torch.RankValueAnnDataset` and the model:
    ``metadata["vocab"]`` (a :class:`~stformer_data.GeneVocab`; the given one, else one built from
    the files' genes), ``"vocab_size"``, ``"pad_token_id"``, ``"medians"`` (the given gene
    medians, else the non-zero medians of ``counts / n_counts * 10,000`` over every file seen so
    far, as :func:`~stformer_data.compute_medians` computes them), ``"model_input_size"``, ``"gene_id_key"``, ``"n_counts_key"``, and every item of
    ``extra`` (e.g. the model's configs: ``{"model_config": ModelConfig(...)}``).

    Parameters
    ----------
    vocab
        The gene vocabulary; ``None`` builds one from the genes of the files, in file order.
    medians
        Gene id -> non-zero median; ``None`` computes them while the files are split.
    model_input_size
        Longest token sequence (special tokens included).
    gene_id_key
        ``var`` column with gene ids (``None``: ``var_names``).
    n_counts_key
        ``obs`` column with library sizes (``None`` or absent: row sums).
    exact
        Computed medians: ``False`` merges one :class:`~stformer_data.MedianSketch` per file
        (deterministic log-bucket sketch; memory independent of the cells); ``True``
        recomputes :func:`~stformer_data.compute_medians_exact` over the files seen so far at
        every file (holds every non-zero value: small data).
    extra
        More metadata, written as given (the names ``model_keys`` pick up).

    >>> cb = rank_value_metadata_cb(model_input_size=64)  # doctest: +SKIP
    >>> RayTrainRunner(BertMLMModule, RankValueAnnDataset, ["vocab"], metadata_cb=cb)  # doctest: +SKIP
    """
    from stformer_data.genes.mapping import resolve_gene_ids
    from stformer_data.genes.medians import MedianSketch, _sketch_unit, compute_medians_exact
    from stformer_data.genes.vocab import GeneVocab

    if model_input_size < 2:
        raise ValueError(f"model_input_size must be >= 2, got {model_input_size}")
    given_medians = None if medians is None else dict(medians)
    extra = dict(extra or {})
    # the genes and the merged median sketch of the files of the current split
    state: dict[str, Any] = {}

    def metadata_cb(ad: Any, metadata: dict) -> None:
        path = getattr(ad, "filename", None)
        if "medians" not in metadata:  # the first file of a new split
            state.update(genes={}, sketch=MedianSketch(), paths=[])
        genes, sketch = state["genes"], state["sketch"]
        ids = resolve_gene_ids(ad.var, gene_id_key=gene_id_key, path=path)
        genes.update(dict.fromkeys(str(g) for g in ids))
        out_vocab = vocab if vocab is not None else GeneVocab.from_genes(genes)
        if given_medians is None:
            if path is None:
                raise InputError(
                    None,
                    "medians",
                    "cannot be computed from an AnnData without a file",
                    "open the files backed (as ann_split_data does) or pass medians",
                )
            opts = {
                "relative_accuracy": sketch.relative_accuracy,
                "gene_id_key": gene_id_key,
                "name_to_id": None,
                "chunk_size": 2048,
                "layer": None,
                "allow_non_integer": False,
                "n_counts_key": n_counts_key,
                "target_sum": 10_000.0,
            }
            state["paths"].append(str(path))
            if exact:
                out_medians = compute_medians_exact(
                    state["paths"], gene_id_key=gene_id_key, n_counts_key=n_counts_key
                )
            else:
                sketch.merge(_sketch_unit((str(path), 0, None, opts)))
                out_medians = sketch.medians()
        else:
            out_medians = given_medians
        metadata.update(
            vocab=out_vocab,
            vocab_size=len(out_vocab),
            pad_token_id=int(out_vocab.pad_id),
            medians=out_medians,
            model_input_size=model_input_size,
            gene_id_key=gene_id_key,
            n_counts_key=n_counts_key,
            **extra,
        )

    return metadata_cb


def _check_fraction(name: str, value: float | None) -> float:
    value = 0.0 if value is None else float(value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return value


def _even_out(
    ranges: list[tuple[int, int, int]], total_workers: int, drop_last: bool, rng: random.Random
) -> list[tuple[int, int, int]]:
    """Drop (``drop_last``) or repeat ranges so that every worker gets the same number."""
    extra = len(ranges) % total_workers
    if extra == 0 or not ranges:
        return ranges
    if drop_last:
        dropped = set(rng.sample(range(len(ranges)), extra))
        return [r for i, r in enumerate(ranges) if i not in dropped]
    return ranges + rng.sample(ranges, total_workers - extra)


def ann_split_data(
    file_paths: Sequence[str | PathLike[str]],
    batch_size: int,
    total_workers: int,
    test_size: float | None = None,
    validation_size: float | None = None,
    rng: random.Random | None = None,
    metadata_cb: MetadataCallback | None = None,
    is_shuffled: bool = False,
    drop_last: bool = True,
) -> dict[str, Any]:
    """Cut the rows of ``file_paths`` into ranges of ``batch_size`` rows and split them.

    The ranges of all files are assigned to test, validation and training at random (``rng``), in
    the shares ``test_size`` and ``validation_size`` (rounded to a multiple of ``total_workers``
    ranges; a non-zero share gets at least one range per worker). The training split then has a
    number of ranges divisible by ``total_workers`` too, so every worker reads the same amount: ``drop_last=True`` drops the last,
    shorter range of each file and as many ranges as needed; ``drop_last=False`` keeps every row
    and repeats a few ranges instead. Inside a file the ranges are in row order (sequential reads),
    or in a random order when ``is_shuffled``.

    Returns the keyword arguments of :class:`SplitInfo` without ``mini_batch_size``. Raises
    ``ValueError`` when a split with a non-zero share (or the training split) would be empty.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if total_workers < 1:
        raise ValueError(f"total_workers must be >= 1, got {total_workers}")
    test = _check_fraction("test_size", test_size)
    val = _check_fraction("validation_size", validation_size)
    if test + val >= 1.0:
        raise ValueError(f"test_size + validation_size must be < 1, got {test} + {val}")
    rng = rng or random.Random()
    files = [str(Path(f)) for f in file_paths]
    if not files:
        raise ValueError("file_paths must name at least one .h5ad file")
    metadata: dict[str, Any] = {}
    ranges: list[tuple[int, int, int]] = []
    var_names = None
    for fidx, path in enumerate(files):
        if not Path(path).is_file():
            raise InputError(path, "file_paths", "does not exist", "pass existing .h5ad files")
        ad = open_h5ad(path)
        try:
            if var_names is None:
                var_names = ad.var_names
            elif not ad.var_names.equals(var_names):
                raise InputError(
                    path,
                    "var_names",
                    f"differ from those of {files[0]}",
                    "align all files to the same genes (same var_names, same order)",
                )
            if metadata_cb is not None:
                metadata_cb(ad, metadata)
            n = ad.n_obs
        finally:
            ad.file.close()
        stop = (n // batch_size) * batch_size if drop_last else n
        ranges += [(fidx, s, min(s + batch_size, n)) for s in range(0, stop, batch_size)]
    order = list(range(len(ranges)))
    rng.shuffle(order)
    n_test = _share(test, len(ranges), total_workers)
    n_val = _share(val, len(ranges), total_workers)
    if n_test + n_val >= len(ranges):
        raise ValueError(
            f"{len(ranges)} ranges of {batch_size} rows cannot be split into test ({n_test}), "
            f"validation ({n_val}) and training ranges over {total_workers} workers; use a "
            "smaller batch_size (or pre_fetch_then_batch) or fewer workers"
        )
    picked = {
        "test": [ranges[i] for i in order[:n_test]],
        "val": [ranges[i] for i in order[n_test : n_test + n_val]],
        "train": [ranges[i] for i in order[n_test + n_val :]],
    }
    out: dict[str, Any] = {"files": files}
    for split, share in (("train", 1.0), ("val", val), ("test", test)):
        chosen = _even_out(sorted(picked[split]), total_workers, drop_last, rng)
        if share > 0 and not chosen:
            raise ValueError(
                f"the {split} split is empty: {len(ranges)} ranges of {batch_size} rows over "
                f"{total_workers} workers leave none for it; use a smaller batch_size (or "
                "pre_fetch_then_batch), fewer workers, or drop_last=False"
            )
        per_file: list[list[list[int]]] = [[] for _ in files]
        for fidx, start, end in chosen:
            per_file[fidx].append([start, end])
        if is_shuffled:
            for lst in per_file:
                rng.shuffle(lst)
        out[f"{split}_indices"] = per_file
    out["metadata"] = metadata
    return out


def _share(fraction: float, n: int, total_workers: int) -> int:
    """Ranges for a held-out share: a multiple of ``total_workers`` (at least one round)."""
    if fraction <= 0 or n == 0:
        return 0
    return max(1, round(fraction * n / total_workers)) * total_workers


class ShuffleStrategy(ABC):
    """How the data is split and shuffled during training (protoplast's strategy base class).

    Subclasses implement :meth:`split` (returning a :class:`SplitInfo`) and :meth:`mixer`; a
    strategy whose dataset yields single cells sets :attr:`is_mixer` to ``True`` and has a
    ``mini_batch_size``: ``AnnDataModule`` then batches ``mini_batch_size`` items with
    :meth:`mixer` as the collate function.

    Parameters
    ----------
    file_paths
        The ``.h5ad`` files.
    batch_size
        Rows fetched per read.
    total_workers
        Ray processes times DataLoader workers per process.
    test_size, validation_size
        Shares of the data for testing and validation (``None``: none).
    random_seed
        Seed of :attr:`rng` (``None``: a different split each time).
    metadata_cb
        ``metadata_cb(adata, metadata)`` writes what the model and dataset need into the metadata.
    is_shuffled
        Shuffle the order of the ranges.

    >>> class EveryFile(ShuffleStrategy):
    ...     def split(self):
    ...         return SplitInfo(self.file_paths, [[] for _ in self.file_paths],
    ...                          [[] for _ in self.file_paths], [[] for _ in self.file_paths], {})
    ...     def mixer(self, batch):
    ...         return batch
    >>> EveryFile(["a.h5ad"], 16, 1).is_mixer
    False
    """

    def __init__(
        self,
        file_paths: list[str],
        batch_size: int,
        total_workers: int,
        test_size: float | None = None,
        validation_size: float | None = None,
        random_seed: int | None = 42,
        metadata_cb: MetadataCallback | None = None,
        is_shuffled: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"{type(self).__name__}.batch_size must be >= 1, got {batch_size}")
        if total_workers < 1:
            raise ValueError(
                f"{type(self).__name__}.total_workers must be >= 1, got {total_workers}"
            )
        self.file_paths = [str(f) for f in file_paths]
        self.batch_size = batch_size
        self.total_workers = total_workers
        self.test_size = test_size
        self.validation_size = validation_size
        self.random_seed = random_seed
        self.metadata_cb = metadata_cb
        self.is_shuffled = is_shuffled
        self.rng = random.Random(random_seed) if random_seed is not None else random.Random()

    @property
    def is_mixer(self) -> bool:
        """Whether the dataset yields single items that :meth:`mixer` batches (default ``False``)."""
        return False

    @abstractmethod
    def split(self) -> SplitInfo:
        """Split the data among the workers; returns a :class:`SplitInfo`."""

    @abstractmethod
    def mixer(self, batch: list) -> Any:
        """Combine single items into a batch (the DataLoader's ``collate_fn`` when :attr:`is_mixer`)."""


class SequentialShuffleStrategy(ShuffleStrategy):
    """Ranges of consecutive rows, read in file order (protoplast's default strategy).

    Rows of a batch come from neighbouring rows of one file, so the batches are only as random as
    the files' row order (shuffle the files beforehand when they are sorted by label). Which
    ranges go to validation and testing is drawn at random.

    Parameters
    ----------
    file_paths, batch_size, total_workers, test_size, validation_size, random_seed, metadata_cb
        As for :class:`ShuffleStrategy`.
    is_shuffled
        Shuffle the order of the ranges inside each file (default ``False``).
    pre_fetch_then_batch
        Read ``pre_fetch_then_batch * batch_size`` rows at once and yield them as items of
        ``batch_size`` rows (``None``: one item per read of ``batch_size`` rows).
    drop_last
        Drop the remainder so that every worker gets the same number of full ranges; ``False``
        keeps every row and repeats a few ranges to even the workers out.

    >>> s = SequentialShuffleStrategy(["a.h5ad"], 100, 2, validation_size=0.2)  # doctest: +SKIP
    >>> info = s.split()  # doctest: +SKIP
    >>> info.mini_batch_size  # doctest: +SKIP
    100
    """

    def __init__(
        self,
        file_paths: list[str],
        batch_size: int,
        total_workers: int,
        test_size: float | None = None,
        validation_size: float | None = None,
        random_seed: int | None = 42,
        metadata_cb: MetadataCallback | None = None,
        is_shuffled: bool = False,
        pre_fetch_then_batch: int | None = 16,
        drop_last: bool = True,
    ) -> None:
        super().__init__(
            file_paths,
            batch_size,
            total_workers,
            test_size,
            validation_size,
            random_seed,
            metadata_cb,
            is_shuffled,
        )
        if pre_fetch_then_batch is not None and pre_fetch_then_batch < 1:
            raise ValueError(
                f"pre_fetch_then_batch must be >= 1 or None, got {pre_fetch_then_batch}"
            )
        self.pre_fetch_then_batch = pre_fetch_then_batch
        self.drop_last = drop_last

    def split(self) -> SplitInfo:
        """Ranges of ``batch_size * pre_fetch_then_batch`` rows; items of ``batch_size`` rows."""
        fetch = self.batch_size * (self.pre_fetch_then_batch or 1)
        parts = ann_split_data(
            self.file_paths,
            fetch,
            self.total_workers,
            self.test_size,
            self.validation_size,
            self.rng,
            self.metadata_cb,
            self.is_shuffled,
            self.drop_last,
        )
        mini = self.batch_size if self.pre_fetch_then_batch else None
        return SplitInfo(**parts, mini_batch_size=mini)

    def mixer(self, batch: list) -> Any:
        """Not used: this strategy's datasets yield whole batches (:attr:`is_mixer` is ``False``)."""
        raise NotImplementedError(
            "SequentialShuffleStrategy yields ready batches (is_mixer is False), so it has no "
            "mixer; subclass ShuffleStrategy with is_mixer=True to batch single items"
        )
