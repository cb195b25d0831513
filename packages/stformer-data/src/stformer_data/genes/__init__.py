"""Stage 2, genes: vocabularies (token dictionaries), per-gene medians, and how a file's columns
map to tokens.

``vocab`` (:class:`GeneVocab`, special tokens, Geneformer dictionaries), ``medians`` (deterministic sketches
or exact), ``mapping`` (gene ids of a file, symbol->id dictionaries, :class:`GeneMapping`).
"""

from stformer_data.genes.mapping import GeneMapping, load_name_to_id, map_genes, resolve_gene_ids
from stformer_data.genes.medians import (
    MedianSketch,
    compute_medians,
    compute_medians_exact,
    load_medians,
    save_medians,
)
from stformer_data.genes.vocab import CLS, EOS, MASK, PAD, GeneVocab, load_geneformer_dictionaries

__all__ = [
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
]
