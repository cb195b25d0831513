from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from stformer_data import (
    GeneVocab,
    RankTokenizerConfig,
    RankValueTokenizer,
    compute_medians_exact,
    iter_row_chunks,
    load_medians,
    load_name_to_id,
    map_genes,
    open_h5ad,
    resolve_gene_ids,
)

from ._reference import rank_cell_reference

SC_FILES = [
    "pbmc68k_reduced_700_counts.h5ad",
    "cxg_cortex_culture_hvg2000_counts.h5ad",
    "celltypist_sample559_counts.h5ad",
    "pbmc10k_protein_v3_200_scvi.h5ad",
    "mouse_10x_10k_subset_1000genes_scanpy.h5ad",
]


def _median_by_token(tok: RankValueTokenizer) -> np.ndarray:
    return tok._median_by_token


@pytest.mark.shared_data
@pytest.mark.parametrize("name", SC_FILES)
def test_rank_matches_per_cell_reference_on_real_files(shared_data, name):
    path = shared_data / "sc" / name
    gf = shared_data / "geneformer_30M"
    name_to_id = load_name_to_id(gf / "gene_name_id_dict.pkl", allow_pickle=True)
    adata = open_h5ad(path)
    try:
        ids = resolve_gene_ids(adata.var, name_to_id=name_to_id, path=path)
        vocab = GeneVocab.load(gf / "token_dictionary.pkl", allow_pickle=True)
        medians = load_medians(gf / "gene_median_dictionary.pkl", allow_pickle=True)
        if not any(g in vocab for g in ids):  # mouse genes: vocabulary and medians from the data
            vocab = GeneVocab.from_genes(ids)
            medians = compute_medians_exact([path])
        mapping = map_genes(ids, vocab, vocab.special_ids, path=path)
        limit = 300  # small enough that truncation happens on every file
        tok = RankValueTokenizer(vocab, medians, RankTokenizerConfig(model_input_size=limit))
        checked = 0
        for start, stop, block in iter_row_chunks(adata, 1024, path=path):
            got = tok.tokenize_block(block, np.asarray(block.sum(1)).ravel(), mapping)
            dense = block.toarray()
            for i in range(stop - start):
                want = rank_cell_reference(
                    dense[i], mapping.column_token, _median_by_token(tok), limit=limit
                )
                assert got[i].tolist() == want, f"{name} row {start + i}"
                checked += 1
        assert checked == adata.n_obs  # every cell of every file
    finally:
        adata.file.close()


def test_ties_break_by_lower_token_and_zeros_never_appear():
    vocab = GeneVocab.from_genes(["a", "b", "c", "d"])  # tokens 2..5
    tok = RankValueTokenizer(vocab, {"a": 1.0, "b": 1.0, "c": 2.0, "d": 1.0})
    mapping = map_genes(np.array(["d", "b", "c", "a"]), vocab, vocab.special_ids)
    block = sp.csr_matrix(np.array([[3.0, 3.0, 6.0, 0.0], [0.0, 0.0, 0.0, 0.0]], dtype=np.float32))
    seqs = tok.tokenize_block(block, np.array([12.0, 0.0]), mapping)
    assert seqs[0].tolist() == [3, 4, 5]  # b, c, d all equal -> by token id; a (zero) absent
    assert seqs[1].size == 0


def test_cls_eos_and_truncation_count_special_tokens():
    vocab = GeneVocab.from_genes([f"g{i}" for i in range(10)], cls_token=True, eos_token=True)
    tok = RankValueTokenizer(
        vocab,
        {f"g{i}": 1.0 for i in range(10)},
        RankTokenizerConfig(model_input_size=5, add_cls=True, add_eos=True),
    )
    mapping = map_genes(np.array([f"g{i}" for i in range(10)]), vocab, vocab.special_ids)
    block = sp.csr_matrix(np.arange(1, 11, dtype=np.float32)[None, :])
    (seq,) = tok.tokenize_block(block, np.array([55.0]), mapping)
    assert seq.tolist() == [vocab.cls_id, vocab["g9"], vocab["g8"], vocab["g7"], vocab.eos_id]


def test_duplicate_gene_ids_are_summed_with_a_warning():
    vocab = GeneVocab.from_genes(["a", "b"])
    with pytest.warns(UserWarning, match="summed"):
        mapping = map_genes(np.array(["a", "b", "a"]), vocab, vocab.special_ids, path="x.h5ad")
    tok = RankValueTokenizer(vocab, {"a": 1.0, "b": 1.0})
    block = sp.csr_matrix(np.array([[2.0, 3.0, 2.0]], dtype=np.float32))
    (seq,) = tok.tokenize_block(block, np.array([7.0]), mapping)
    assert seq.tolist() == [vocab["a"], vocab["b"]]  # a = 2 + 2 > b = 3


@pytest.mark.parametrize("columns_in_token_order", [True, False])
def test_compiled_kernel_and_numpy_path_give_identical_tokens(columns_in_token_order):
    rng = np.random.default_rng(5)
    genes = [f"g{i}" for i in range(300)]
    vocab = GeneVocab.from_genes(genes if columns_in_token_order else genes[::-1], cls_token=True)
    medians = {
        g: float(m) for g, m in zip(genes, rng.choice([0.5, 1.0, 2.0], 300), strict=True)
    }  # many ties
    block = sp.random(64, 300, density=0.3, format="csr", random_state=1, dtype=np.float32)
    block.data = np.ceil(block.data * 5)
    mapping = map_genes(np.array(genes), vocab, vocab.special_ids)
    tok = RankValueTokenizer(vocab, medians, RankTokenizerConfig(model_input_size=40, add_cls=True))
    fast = tok.tokenize_block_flat(block, None, mapping)
    tok.use_kernel = False
    slow = tok.tokenize_block_flat(block, None, mapping)
    assert all(np.array_equal(a, b) for a, b in zip(fast, slow, strict=True))
    assert fast[0].size > 64 * 30


@pytest.mark.shared_data
@pytest.mark.parametrize("name", SC_FILES)
def test_corpus_fast_path_matches_per_cell_reference_on_real_files(shared_data, name, tmp_path):
    """tokenize_files' zero-copy CSR path (kernel threads, file-segment chunks) on real files
    with Geneformer's dictionaries: token for token the plain per-cell reference."""
    from stformer_data import TokenizeConfig, tokenize_files

    path = shared_data / "sc" / name
    gf = shared_data / "geneformer_30M"
    name_to_id = load_name_to_id(gf / "gene_name_id_dict.pkl", allow_pickle=True)
    adata = open_h5ad(path)
    try:
        ids = resolve_gene_ids(adata.var, name_to_id=name_to_id, path=path)
        dense = [b.toarray() for _, _, b in iter_row_chunks(adata, 4096, path=path)]
    finally:
        adata.file.close()
    vocab = GeneVocab.load(gf / "token_dictionary.pkl", allow_pickle=True)
    medians = load_medians(gf / "gene_median_dictionary.pkl", allow_pickle=True)
    if not any(g in vocab for g in ids):  # mouse genes: vocabulary and medians from the data
        vocab = GeneVocab.from_genes(ids)
        medians = compute_medians_exact([path])
    limit = 300
    corpus = tokenize_files(
        [path],
        tmp_path / "c",
        vocab=vocab,
        medians=medians,
        name_to_id=name_to_id,
        config=TokenizeConfig(
            rank=RankTokenizerConfig(model_input_size=limit), num_proc=2, chunk_size=97
        ),
        progress=False,
    )
    mapping = map_genes(ids, vocab, vocab.special_ids, path=path)
    medians_by_token = _median_by_token(RankValueTokenizer(vocab, medians))
    want = [
        rank_cell_reference(row, mapping.column_token, medians_by_token, limit=limit)
        for block in dense
        for row in block
    ]
    got = dict(zip(corpus.dataset["cell_index"], corpus.dataset["input_ids"], strict=True))
    assert [got.get(i, []) for i in range(len(want))] == want
