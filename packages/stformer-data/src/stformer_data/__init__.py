"""stformer-data: from AnnData files to token corpora and token batches.

The sub-packages are the stages a cell passes through:

* :mod:`stformer_data.h5ad` -- open ``.h5ad`` files and read their rows;
* :mod:`stformer_data.genes` -- gene vocabularies, per-gene medians, a file's gene mapping;
* :mod:`stformer_data.tokenize` -- the tokenizer contract and the rank-value, binned and
  neighbourhood tokenizers;
* :mod:`stformer_data.corpus` -- token corpora on disk (Hugging Face ``datasets`` Arrow);
* :mod:`stformer_data.stream` -- shuffle strategies, splits, epoch plans and the sources that read
  planned buffers of cells;
* :mod:`stformer_data.torch` -- the torch datasets on top (``pip install "stformer-data[torch]"``).

Depends on anndata, numpy, scipy, pandas, h5py, datasets/pyarrow and tqdm. It imports no other
stformer package and none of transformers, lightning, ray, deepspeed or optuna.
"""

from stformer_data._errors import InputError
from stformer_data._synthetic import SimulationConfig, simulate_counts
from stformer_data.corpus import (
    Corpus,
    TokenizeConfig,
    is_complete_corpus,
    is_stformer_corpus,
    load_corpus,
    tokenize_files,
)
from stformer_data.genes import (
    CLS,
    EOS,
    MASK,
    PAD,
    GeneMapping,
    GeneVocab,
    MedianSketch,
    compute_medians,
    compute_medians_exact,
    load_geneformer_dictionaries,
    load_medians,
    load_name_to_id,
    map_genes,
    resolve_gene_ids,
    save_medians,
)
from stformer_data.h5ad import (
    H5adReader,
    check_counts,
    iter_row_chunks,
    library_sizes,
    open_h5ad,
    read_rows,
)
from stformer_data.stream import (
    BaseDataset,
    BlockShuffleStrategy,
    BufferPlan,
    CellSplit,
    CorpusSource,
    H5adSource,
    MaskedDataset,
    RandomShuffleStrategy,
    SequentialBlockStrategy,
    SequentialShuffleStrategy,
    ShuffleStrategy,
    SplitInfo,
    ann_split_data,
    batch_diversity,
    batches_per_rank,
    bucket_batches,
    category_random_split,
    cell_line_metadata_cb,
    grouped_random_split,
    padding_fraction,
    plan_epoch,
    rank_value_metadata_cb,
)
from stformer_data.tokenize import (
    BinnedTokenizer,
    BinnedTokenizerConfig,
    Cells,
    FileCells,
    GeneTokenizer,
    NeighborhoodConfig,
    NeighborhoodTokenizer,
    RankTokenizerConfig,
    RankValueTokenizer,
    TokenBlock,
    Tokenizer,
    binned_vocab,
    build_neighbor_graph,
)

__version__ = "0.1.0"

__all__ = [
    # errors and test data
    "InputError",
    "SimulationConfig",
    "simulate_counts",
    # h5ad: open files, read rows
    "H5adReader",
    "check_counts",
    "iter_row_chunks",
    "library_sizes",
    "open_h5ad",
    "read_rows",
    # genes: vocabularies, medians, gene mapping
    "CLS",
    "EOS",
    "MASK",
    "PAD",
    "GeneMapping",
    "GeneVocab",
    "MedianSketch",
    "compute_medians",
    "compute_medians_exact",
    "load_geneformer_dictionaries",
    "load_medians",
    "load_name_to_id",
    "map_genes",
    "resolve_gene_ids",
    "save_medians",
    # tokenize: the contract and the tokenizers
    "Cells",
    "FileCells",
    "TokenBlock",
    "Tokenizer",
    "BinnedTokenizer",
    "BinnedTokenizerConfig",
    "GeneTokenizer",
    "NeighborhoodConfig",
    "NeighborhoodTokenizer",
    "RankTokenizerConfig",
    "RankValueTokenizer",
    "binned_vocab",
    "build_neighbor_graph",
    # corpus: token corpora on disk
    "Corpus",
    "TokenizeConfig",
    "is_complete_corpus",
    "is_stformer_corpus",
    "load_corpus",
    "tokenize_files",
    # stream: shuffle, split, epoch plans, sources
    "BaseDataset",
    "MaskedDataset",
    "grouped_random_split",
    "BlockShuffleStrategy",
    "BufferPlan",
    "CorpusSource",
    "H5adSource",
    "RandomShuffleStrategy",
    "SequentialBlockStrategy",
    "CellSplit",
    # stream: protoplast's documented strategies and SplitInfo (row ranges per file)
    "SequentialShuffleStrategy",
    "ShuffleStrategy",
    "SplitInfo",
    "ann_split_data",
    "cell_line_metadata_cb",
    "rank_value_metadata_cb",
    "batch_diversity",
    "batches_per_rank",
    "bucket_batches",
    "category_random_split",
    "padding_fraction",
    "plan_epoch",
]
