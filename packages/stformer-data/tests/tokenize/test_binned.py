from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from stformer_data import BinnedTokenizer, BinnedTokenizerConfig, GeneVocab, binned_vocab, map_genes


def _setup(config: BinnedTokenizerConfig, phenos=None):
    genes = GeneVocab.from_genes([f"g{i}" for i in range(6)])
    mapping = map_genes(np.array([f"g{i}" for i in range(6)]), genes, genes.special_ids)
    return genes, BinnedTokenizer(genes, binned_vocab(config.n_bins, phenos), config), mapping


def test_quantile_bins_ranked_order_and_gene_type_ids():
    genes, tok, mapping = _setup(BinnedTokenizerConfig(n_bins=5))
    block = sp.csr_matrix(np.array([[8.0, 0.0, 1.0, 4.0, 4.0, 2.0]], dtype=np.float32))
    ids, types, off = tok.tokenize_block(block, np.array([19.0]), mapping)
    v = tok.token_vocab
    # 5 expressed values: 1 < 2 < 4 = 4 < 8 -> #smaller 0,1,2,2,4 -> bin 1 + s*4//5 = 1,1,2,2,4
    assert ids.tolist() == [
        v.cls_id,
        v["bin_4"],
        v["bin_2"],
        v["bin_2"],
        v["bin_1"],
        v["bin_1"],
        v.eos_id,
    ]
    assert types.tolist() == [0, genes["g0"], genes["g3"], genes["g4"], genes["g5"], genes["g2"], 0]
    assert off.tolist() == [0, 7]


def test_index_order_edges_and_phenotype_tokens_with_own_type_ids():
    cfg = BinnedTokenizerConfig(
        n_bins=4,
        binning="edges",
        bin_edges=(1.0, 2.0),
        gene_order="index",
        phenotypes=("sex", "tissue"),
        model_input_size=5,
    )
    genes, tok, mapping = _setup(cfg, {"sex": ["F", "M"], "tissue": ["lung"]})
    block = sp.csr_matrix(np.array([[0.0, 30.0, 1.0, 0.0, 0.0, 0.0], [0.0] * 6], dtype=np.float32))
    pheno = np.stack(
        [
            tok.phenotype_ids("sex", np.array(["M", "F"])),
            tok.phenotype_ids("tissue", np.array(["lung", "lung"])),
        ],
        axis=1,
    )
    ids, types, off = tok.tokenize_block(block, np.array([31.0, 0.0]), mapping, pheno)
    v = tok.token_vocab
    # log1p(30/31*1e4)=9.18 -> bin 3; log1p(1/31*1e4)=5.78 -> bin 3; only 1 gene fits (5 - cls - eos - 2)
    assert ids.tolist() == [v.cls_id, v["sex=M"], v["tissue=lung"], v["bin_3"], v.eos_id]
    assert types.tolist() == [0, len(genes), len(genes) + 1, genes["g1"], 0]
    assert off.tolist() == [0, 5, 5]  # the empty cell gives an empty row (skipped by the writer)
    assert tok.type_vocab_size == len(genes) + 2


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="bin_edges"):
        BinnedTokenizerConfig(binning="edges", n_bins=4, bin_edges=(2.0, 1.0))
    with pytest.raises(ValueError, match="gene_order"):
        BinnedTokenizerConfig(gene_order="random")
    with pytest.raises(ValueError, match="model_input_size"):
        BinnedTokenizerConfig(model_input_size=3, phenotypes=("a",))
