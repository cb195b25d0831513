"""Stage 3, tokenize: the tokenizer contract and the tokenizers that implement it.

``contract`` (:class:`Tokenizer`, :class:`Cells`, :class:`FileCells`, :class:`TokenBlock`: the one
interface the corpus writer and the streaming reader call), ``rank`` (Geneformer rank-value),
``rank_kernel`` / ``rank_jit`` (its compiled kernel), ``binned`` (expression bins, genes in
``token_type_ids``), ``gene_tokenizer`` (Transformeromics' ``GeneTokenizer``, one AnnData cell at a time), ``spatial`` (stFormer's neighbourhood mode and neighbour graphs).
"""

from stformer_data.tokenize.binned import BinnedTokenizer, BinnedTokenizerConfig, binned_vocab
from stformer_data.tokenize.contract import Cells, FileCells, TokenBlock, Tokenizer, token_room
from stformer_data.tokenize.gene_tokenizer import GeneTokenizer
from stformer_data.tokenize.rank import RankTokenizerConfig, RankValueTokenizer
from stformer_data.tokenize.spatial import (
    NeighborhoodConfig,
    NeighborhoodTokenizer,
    build_neighbor_graph,
)

__all__ = [
    "BinnedTokenizer",
    "BinnedTokenizerConfig",
    "Cells",
    "FileCells",
    "GeneTokenizer",
    "NeighborhoodConfig",
    "NeighborhoodTokenizer",
    "RankTokenizerConfig",
    "RankValueTokenizer",
    "TokenBlock",
    "Tokenizer",
    "binned_vocab",
    "build_neighbor_graph",
    "token_room",
]
