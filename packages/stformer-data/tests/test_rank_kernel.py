"""The compiled rank kernel: exact against the numpy path, threads, row subsets, refusals."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from stformer_data import GeneVocab, RankTokenizerConfig, RankValueTokenizer, map_genes
from stformer_data import _rank_kernel as kernel

pytestmark = pytest.mark.skipif(not kernel.compiled(), reason="numba is not installed")


def _case(seed=3, n_rows=300, n_genes=400, reverse=False):
    rng = np.random.default_rng(seed)
    genes = [f"g{i}" for i in range(n_genes)]
    vocab = GeneVocab.from_genes(genes[::-1] if reverse else genes, cls_token=True, eos_token=True)
    medians = {
        g: float(m) for g, m in zip(genes, rng.choice([0.5, 1.0, 3.0], n_genes), strict=True)
    }
    medians["g5"] = float("nan")  # no usable median: never a token
    block = sp.random(n_rows, n_genes, density=0.2, format="csr", random_state=seed)
    keep = np.ones(n_rows)
    keep[7] = 0  # an empty cell
    block = sp.csr_matrix(sp.diags(keep) @ block)
    block.eliminate_zeros()
    block.data = np.ceil(block.data * 6).astype(np.float32)  # small counts: many ties
    mapping = map_genes(np.array(genes), vocab, vocab.special_ids)
    return vocab, medians, block, mapping


def _numpy_path(tok, block, mapping):
    tok.use_kernel = False
    try:
        return tok.tokenize_block_flat(block, None, mapping)
    finally:
        tok.use_kernel = True


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("threads", [1, 3])
def test_tokenize_csr_equals_the_numpy_path(reverse, threads):
    vocab, medians, block, mapping = _case(reverse=reverse)
    tok = RankValueTokenizer(
        vocab,
        medians,
        RankTokenizerConfig(model_input_size=50, add_cls=True, add_eos=True),
        threads=threads,
    )
    want = _numpy_path(tok, block, mapping)
    got = tok.tokenize_csr(block.indptr, block.indices, block.data, mapping)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    assert got[1][8] == got[1][7]  # the empty cell stays empty (no <cls>/<eos> alone)
    assert (np.diff(got[1]) <= 50).all() and (np.diff(got[1]) == 50).any()  # truncated


def test_row_subsets_and_offset_indptr():
    vocab, medians, block, mapping = _case(seed=4)
    tok = RankValueTokenizer(vocab, medians)
    rows = np.array([30, 2, 2, 299, 7])
    want = _numpy_path(tok, block[rows], mapping)
    # indptr that does not start at 0: the arrays are a slice of a larger file
    pad = 11
    data = np.concatenate([np.ones(pad, np.float32), block.data])
    indices = np.concatenate([np.zeros(pad, block.indices.dtype), block.indices])
    got = tok.tokenize_csr(block.indptr + pad, indices, data, mapping, rows=rows)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_unsorted_and_repeated_columns_take_the_exact_path():
    vocab, medians, block, mapping = _case(seed=5, n_rows=40)
    tok = RankValueTokenizer(vocab, medians)
    want = _numpy_path(tok, block, mapping)
    # the same matrix with each row's entries reversed and one entry split in two
    indptr, indices, data = [0], [], []
    for i in range(block.shape[0]):
        row = block[i]
        cols, vals = row.indices[::-1].tolist(), row.data[::-1].tolist()
        if vals and vals[0] >= 2:
            cols, vals = [cols[0], *cols], [1.0, vals[0] - 1.0, *vals[1:]]
        indices += cols
        data += vals
        indptr.append(len(indices))
    _, _, flags = kernel.rank_csr(
        np.array(indptr),
        np.array(indices, np.int32),
        np.array(data, np.float32),
        np.ones(400, np.float32),
        mapping.column_token.astype(np.int32),
        10,
    )
    assert flags & kernel.UNSORTED
    got = tok.tokenize_csr(np.array(indptr), np.array(indices), np.array(data), mapping)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


@pytest.mark.parametrize(
    ("value", "check", "refused"),
    [
        (np.nan, kernel.CHECK_FINITE, True),
        (np.inf, kernel.CHECK_FINITE, True),
        (-1.0, kernel.CHECK_FINITE, True),
        (0.5, kernel.CHECK_FINITE, False),
        (0.5, kernel.CHECK_COUNTS, True),
        (2.0, kernel.CHECK_COUNTS, False),
    ],
)
def test_value_checks(value, check, refused):
    indptr = np.array([0, 2, 3])
    data = np.array([1.0, 3.0, value], np.float32)
    args = (indptr, np.array([0, 1, 1], np.int32), data, np.ones(2, np.float32))
    _, _, flags = kernel.rank_csr(*args, np.array([2, 3], np.int32), 5, check=check)
    assert bool(flags & kernel.BAD_VALUES) is refused


def test_out_of_range_columns_are_refused():
    tok_args = (np.ones(2, np.float32), np.array([2, 3], np.int32), 5)
    _, _, flags = kernel.rank_csr(
        np.array([0, 1]), np.array([2], np.int32), np.ones(1, np.float32), *tok_args
    )
    assert flags & kernel.BAD_INDEX


def test_threads_must_be_positive():
    vocab, medians, _, _ = _case(n_rows=10)
    with pytest.raises(ValueError, match="threads must be >= 1"):
        RankValueTokenizer(vocab, medians, threads=0)
