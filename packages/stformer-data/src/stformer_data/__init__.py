"""stformer-data: from AnnData files to token corpora.

Gene vocabularies (token dictionaries), per-gene medians, Geneformer rank-value tokenization,
corpora on disk (Hugging Face ``datasets`` Arrow), and a simulator of raw-count data.

Streaming into training: shuffle strategies, train/val/test splits and epoch planning are here;
the torch datasets are in :mod:`stformer_data.torch` (``pip install "stformer-data[torch]"``).

Depends on anndata, numpy, scipy, pandas, h5py, datasets/pyarrow and tqdm. It imports no other
stformer package and none of transformers, lightning, ray, deepspeed or optuna.
"""

from stformer_data._binned import BinnedTokenizer, BinnedTokenizerConfig, binned_vocab
from stformer_data._corpus import (
    Corpus,
    TokenizeConfig,
    is_complete_corpus,
    load_corpus,
    tokenize_files,
)
from stformer_data._errors import InputError
from stformer_data._io import (
    GeneMapping,
    H5adReader,
    check_counts,
    iter_row_chunks,
    library_sizes,
    load_name_to_id,
    map_genes,
    open_h5ad,
    read_rows,
    resolve_gene_ids,
)
from stformer_data._medians import (
    MedianSketch,
    compute_medians,
    compute_medians_exact,
    load_medians,
    save_medians,
)
from stformer_data._rank import RankTokenizerConfig, RankValueTokenizer
from stformer_data._shuffle import (
    BlockShuffleStrategy,
    RandomShuffleStrategy,
    SequentialShuffleStrategy,
    ShuffleStrategy,
)
from stformer_data._spatial import NeighborhoodConfig, NeighborhoodTokenizer, build_neighbor_graph
from stformer_data._split import SplitInfo, category_random_split
from stformer_data._stream import (
    BufferPlan,
    batch_diversity,
    batches_per_rank,
    bucket_batches,
    padding_fraction,
    plan_epoch,
)
from stformer_data._synthetic import SimulationConfig, simulate_counts
from stformer_data._vocab import CLS, EOS, MASK, PAD, GeneVocab, load_geneformer_dictionaries

__version__ = "0.1.0"

__all__ = [
    "BlockShuffleStrategy",
    "BufferPlan",
    "RandomShuffleStrategy",
    "SequentialShuffleStrategy",
    "ShuffleStrategy",
    "SplitInfo",
    "batch_diversity",
    "batches_per_rank",
    "bucket_batches",
    "category_random_split",
    "padding_fraction",
    "plan_epoch",
    "H5adReader",
    "MedianSketch",
    "compute_medians",
    "load_geneformer_dictionaries",
    "BinnedTokenizer",
    "BinnedTokenizerConfig",
    "NeighborhoodConfig",
    "NeighborhoodTokenizer",
    "binned_vocab",
    "build_neighbor_graph",
    "read_rows",
    "CLS",
    "EOS",
    "MASK",
    "PAD",
    "Corpus",
    "GeneMapping",
    "GeneVocab",
    "InputError",
    "RankTokenizerConfig",
    "RankValueTokenizer",
    "SimulationConfig",
    "TokenizeConfig",
    "check_counts",
    "compute_medians_exact",
    "is_complete_corpus",
    "iter_row_chunks",
    "library_sizes",
    "load_corpus",
    "load_medians",
    "load_name_to_id",
    "map_genes",
    "open_h5ad",
    "resolve_gene_ids",
    "save_medians",
    "simulate_counts",
    "tokenize_files",
]
