"""V2 tokenization collapses duplicate Ensembl ids as Geneformer's ``collapse_gene_ids`` does.

The reference below is Geneformer's published algorithm written per cell, independently of
stformer's vectorised code: map each column's id through the mapping dictionary (an id the
dictionary does not name stays itself), keep the ids in the token dictionary, **sum the raw counts
of columns that end on one id**, normalise by the cell's total count and ``target_sum / median``,
order the expressed genes by decreasing value, keep ``model_input_size - 2`` and frame them with
``<cls>`` ... ``<eos>``.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from stformer_data import GeneVocab, RankTokenizerConfig, TokenizeConfig, tokenize_files

TARGET_SUM = 10_000.0


def geneformer_v2_cell(
    counts: np.ndarray,
    var_ids: list[str],
    mapping: dict[str, str],
    token_of: dict[str, int],
    median_of: dict[str, float],
    *,
    model_input_size: int,
    cls_id: int,
    eos_id: int,
) -> list[int]:
    """One cell's V2 tokens by the published algorithm, one column at a time, in float64."""
    summed: dict[str, float] = {}
    for j, gene in enumerate(var_ids):
        gene = mapping.get(gene, gene)
        if gene in token_of and counts[j] > 0:
            summed[gene] = summed.get(gene, 0.0) + float(counts[j])  # summed before normalising
    n_counts = float(counts.sum())
    values = [(c / n_counts * TARGET_SUM / median_of[g], g) for g, c in summed.items()]
    values.sort(key=lambda vg: -vg[0])
    ranked = [token_of[g] for _, g in values[: model_input_size - 2]]
    return [cls_id, *ranked, eos_id]


def test_v2_tokens_sum_duplicate_ids_through_the_mapping_like_geneformer(tmp_path):
    rng = np.random.default_rng(7)
    vocab_genes = [f"ENSG{i:011d}" for i in range(12)]
    # columns: every vocabulary gene once, two retired ids that map onto genes 0 and 1, a symbol
    # that maps onto gene 2 as well, and two ids outside the vocabulary
    mapping = {
        "ENSG_RETIRED_A": vocab_genes[0],
        "ENSG_RETIRED_B": vocab_genes[1],
        "SYMBOL2": vocab_genes[2],
        "ENSG_RETIRED_C": "ENSG_NOT_IN_VOCAB",
    }
    var_ids = [*vocab_genes, "ENSG_RETIRED_A", "ENSG_RETIRED_B", "SYMBOL2", "ENSG_RETIRED_C", "X"]
    n_cells = 40
    dense = rng.poisson(rng.uniform(0.2, 6.0, size=len(var_ids)), size=(n_cells, len(var_ids)))
    dense[:, 12] += rng.integers(0, 30, size=n_cells)  # the duplicates carry real weight
    dense[0] = 0  # an empty cell: no tokens at all
    dense = dense.astype(np.float32)
    medians = {g: float(m) for g, m in zip(vocab_genes, rng.uniform(0.3, 9.0, 12), strict=True)}
    adata = ad.AnnData(
        X=sp.csr_matrix(dense),
        obs=pd.DataFrame(index=[f"c{i}" for i in range(n_cells)]),
        var=pd.DataFrame({"ensembl_id": var_ids}, index=[f"col{j}" for j in range(len(var_ids))]),
    )
    path = tmp_path / "dups.h5ad"
    adata.write_h5ad(path)

    vocab = GeneVocab.from_genes(vocab_genes).with_special_tokens(cls_token=True, eos_token=True)
    model_input_size = 8  # truncation to model_input_size - 2 = 6 genes happens in most cells
    with pytest.warns(UserWarning, match="summed"):
        corpus = tokenize_files(
            [path],
            tmp_path / "corpus",
            vocab=vocab,
            medians=medians,
            name_to_id=mapping,
            config=TokenizeConfig(
                gene_id_key="ensembl_id",
                rank=RankTokenizerConfig(
                    model_input_size=model_input_size, add_cls=True, add_eos=True
                ),
            ),
            progress=False,
        )
    token_of = {g: vocab[g] for g in vocab_genes}
    want = {}
    for i in range(n_cells):
        if dense[i].sum() == 0:
            continue
        want[i] = geneformer_v2_cell(
            dense[i],
            var_ids,
            mapping,
            token_of,
            medians,
            model_input_size=model_input_size,
            cls_id=vocab.cls_id,
            eos_id=vocab.eos_id,
        )
    got = dict(zip(corpus.dataset["cell_index"], corpus.dataset["input_ids"], strict=True))
    assert got == want
    # the check has teeth: without summing, the duplicated genes would rank differently
    assert any(
        want[i]
        != geneformer_v2_cell(
            np.where(np.isin(np.arange(len(var_ids)), [12, 13, 14]), 0, dense[i]),
            var_ids,
            mapping,
            token_of,
            medians,
            model_input_size=model_input_size,
            cls_id=vocab.cls_id,
            eos_id=vocab.eos_id,
        )
        for i in want
    )
