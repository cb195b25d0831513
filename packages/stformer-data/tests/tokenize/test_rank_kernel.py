"""The compiled rank kernel: exact against the numpy path, threads, row subsets, refusals."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from stformer_data import GeneVocab, RankTokenizerConfig, RankValueTokenizer, map_genes
from stformer_data.tokenize import rank_kernel as kernel

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


def _random_case(rng, kind):
    """A CSR block whose values stress the rank table: small counts (ties), counts above any
    table, fractions, NaN and zeros; factors with ties, zeros and NaN; repeated tokens."""
    n_genes, n_rows = int(rng.integers(1, 300)), int(rng.integers(1, 40))
    block = sp.random(
        n_rows, n_genes, density=rng.uniform(0, 1), format="csr", random_state=rng.integers(1e9)
    )
    values = {
        0: lambda d: np.ceil(d * 5),
        1: lambda d: np.ceil(d**3 * 200),
        2: lambda d: d * 7,
        3: lambda d: rng.choice([0, 1, 2, 3, 0.5, 100, np.nan], d.size),
    }[kind](block.data)
    block.data = values.astype(np.float64 if kind == 1 else np.float32)
    if rng.random() < 0.5:
        factor = rng.choice([0.0, 0.5, 1.0, 1 / 3, 3.0, 2.0, 7.1, np.nan], n_genes)
    else:
        factor = rng.lognormal(0, 1, n_genes)
    column_token = rng.integers(-1, n_genes // 2 + 3, n_genes).astype(np.int32)
    return block, factor.astype(np.float32), column_token, int(rng.integers(1, n_genes + 2))


@pytest.mark.parametrize("kind", [0, 1, 2, 3])
def test_rank_table_gives_the_same_tokens_as_the_radix_sort(kind):
    rng = np.random.default_rng(kind)
    for _ in range(60):
        block, factor, column_token, limit = _random_case(rng, kind)
        args = (block.indptr.astype(np.int64), block.indices, block.data, factor, column_token)
        rows = rng.integers(0, block.shape[0], 7)
        for kw in ({}, {"rows": rows, "threads": 2}, {"check": kernel.CHECK_COUNTS}):
            want = kernel.rank_csr(*args, limit, table=False, **kw)
            got = kernel.rank_csr(*args, limit, table=True, **kw)
            assert got[2] == want[2]
            if not want[2]:
                assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_rank_table_bounds_its_size_and_orders_every_pair():
    factor = np.array([2.0, 1.0, 0.0, 4.0, 1.0], np.float32)
    column_token = np.array([7, 5, 6, -1, 3], np.int32)
    table = kernel.build_table(factor, column_token)
    assert table.xmax == kernel.TABLE_COUNTS
    pairs = table.pair_rank.reshape(5, table.xmax)
    assert (pairs[[2, 3]] == -1).all()  # no usable median / no token: never in the table
    # (column 0, count 1) = 2.0 ties (column 1, count 2) = 2.0 and (column 4, count 2) = 2.0:
    # the lower token first, as the radix path breaks ties
    assert pairs[4, 1] < pairs[1, 1] < pairs[0, 0]
    assert np.all(np.diff(table.rank_key.astype(np.int64)) >= 0)
    assert kernel.build_table(np.zeros(3, np.float32), np.arange(3, dtype=np.int32)) is None


def test_rank_table_is_built_once_enough_values_were_ranked():
    tables = kernel._Tables(size=2)
    factor = np.linspace(1, 2, 50).astype(np.float32)
    column_token = np.arange(50, dtype=np.int32)
    pairs = 50 * kernel.TABLE_COUNTS
    assert tables.get(factor, column_token, pairs // 2) is None
    first = tables.get(factor, column_token, pairs // 2)  # the running count reaches the size
    assert first is not None
    same_content = (factor.copy(), column_token.copy())
    assert tables.get(*same_content, 1) is first  # found by content, not by object
    for k in range(2):  # least recently used tables are dropped
        tables.get(factor + k + 1, column_token, 0, force=True)
    assert tables.get(factor, column_token, 1) is None
    # a full-transcriptome vocabulary: never a table (the radix passes are faster there)
    wide = np.ones(kernel.TABLE_COLUMNS + 1, np.float32)
    wide_tokens = np.arange(wide.size, dtype=np.int32)
    assert tables.get(wide, wide_tokens, 10**9) is None
    assert tables.get(wide, wide_tokens, 10**9, force=True) is not None  # unless asked for


def test_rank_into_writes_in_place_like_rank_csr():
    vocab, medians, block, mapping = _case(seed=8)
    tok = RankValueTokenizer(
        vocab,
        medians,
        RankTokenizerConfig(model_input_size=40, add_cls=True, add_eos=True),
    )
    want_ids, want_off = tok.tokenize_csr(block.indptr, block.indices, block.data, mapping)
    rows = np.arange(block.shape[0])[::-1]
    slots = tok.csr_slots(np.diff(block.indptr)[rows])
    start = np.concatenate([[0], np.cumsum(slots + 3)[:-1]])  # gaps between rows stay untouched
    out = np.full(int(start[-1] + slots[-1] + 3), -9, np.int32)
    lengths = tok.tokenize_csr_into(
        block.indptr, block.indices, block.data, mapping, rows=rows, out=out, out_start=start
    )
    assert (lengths <= slots).all() and lengths[rows == 7] == 0  # the empty cell stays empty
    for i, r in enumerate(rows):
        got = out[start[i] : start[i] + lengths[i]]
        assert np.array_equal(got, want_ids[want_off[r] : want_off[r + 1]])
        assert (out[start[i] + lengths[i] : start[i] + slots[i] + 3] == -9).all()
