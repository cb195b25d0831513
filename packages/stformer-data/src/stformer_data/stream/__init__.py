"""Stage 5, stream: cells into training, in numpy (the torch datasets are :mod:`stformer_data.torch`).

``ranges`` (protoplast's ShuffleStrategy / SplitInfo: row ranges per file), ``shuffle``
(stformer's block order and shuffle buffers), ``split`` (train/val/test), ``datasets`` (STEP's
map-style AnnData datasets and stratified split), ``epoch`` (the epoch
plan: every cell once per epoch across ranks and workers; batch measures), ``buffers`` (a shuffle
buffer in memory, recycled), ``h5ad_source`` / ``h5ad_reader`` (h5ad files as a source and a
worker's reader, tokens on the fly), ``corpus_source`` (a tokenized corpus, memory-mapped).
"""

from stformer_data.stream.buffers import Buffer
from stformer_data.stream.corpus_source import CorpusSource, CorpusSourceReader
from stformer_data.stream.datasets import BaseDataset, MaskedDataset, category_random_split
from stformer_data.stream.epoch import (
    BufferPlan,
    batch_diversity,
    batches_per_rank,
    bucket_batches,
    padding_fraction,
    plan_epoch,
)
from stformer_data.stream.h5ad_reader import H5adSourceReader
from stformer_data.stream.h5ad_source import H5adSource
from stformer_data.stream.ranges import (
    SequentialShuffleStrategy,
    ShuffleStrategy,
    SplitInfo,
    ann_split_data,
    cell_line_metadata_cb,
    rank_value_metadata_cb,
)
from stformer_data.stream.shuffle import (
    BlockShuffleStrategy,
    RandomShuffleStrategy,
    SequentialBlockStrategy,
)
from stformer_data.stream.split import CellSplit, grouped_random_split

__all__ = [
    # protoplast's documented strategies and split (row ranges per file)
    "SequentialShuffleStrategy",
    "ShuffleStrategy",
    "SplitInfo",
    "ann_split_data",
    "cell_line_metadata_cb",
    "rank_value_metadata_cb",
    # stformer's block strategies, cell splits, epoch plans, sources
    "BaseDataset",
    "BlockShuffleStrategy",
    "Buffer",
    "BufferPlan",
    "CorpusSource",
    "CorpusSourceReader",
    "H5adSource",
    "H5adSourceReader",
    "MaskedDataset",
    "RandomShuffleStrategy",
    "SequentialBlockStrategy",
    "CellSplit",
    "batch_diversity",
    "batches_per_rank",
    "bucket_batches",
    "category_random_split",
    "grouped_random_split",
    "padding_fraction",
    "plan_epoch",
]
