"""Streamed token fields (binned tokens, token_type_ids), read-ahead, tokenizer threads, padding."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

torch = pytest.importorskip("torch")

from stformer_data import (  # noqa: E402
    BinnedTokenizer,
    BinnedTokenizerConfig,
    BlockShuffleStrategy,
    GeneVocab,
    NeighborhoodTokenizer,
    RankTokenizerConfig,
    RankValueTokenizer,
    TokenizeConfig,
    tokenize_files,
)
from stformer_data._ragged import _row_kernels, pad_rows  # noqa: E402
from stformer_data.tokenize import rank_kernel as _rank_kernel  # noqa: E402
from stformer_data.torch import (  # noqa: E402
    CorpusStreamDataset,
    H5adCellDataset,
    H5adStreamDataset,
    _auto_threads,
)

GENES = [f"ENSG{k:05d}" for k in range(40)]


def _write(path, n, seed):
    rng = np.random.default_rng(seed)
    X = sp.random(n, len(GENES), density=0.4, format="csr", dtype=np.float32, random_state=seed)
    X.data = np.ceil(X.data * 20)
    obs = pd.DataFrame(
        {"sex": rng.choice(["F", "M"], n), "donor": [f"d{i % 4}" for i in range(n)]},
        index=[f"{path.stem}{i}" for i in range(n)],
    )
    ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=GENES)).write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def binned(tmp_path_factory):
    """Two files, their binned corpus (phenotype ``sex``) and the same tokenizer for streaming."""
    tmp = tmp_path_factory.mktemp("binned")
    files = [_write(tmp / "a.h5ad", 37, 1), _write(tmp / "b.h5ad", 29, 2)]
    vocab = GeneVocab.from_genes(GENES)
    cfg = TokenizeConfig(scheme="binned", binned=BinnedTokenizerConfig(phenotypes=("sex",)))
    corpus = tokenize_files(files, tmp / "corpus", vocab=vocab, config=cfg, progress=False)
    rows = {
        (int(f), int(c)): (list(ids), list(types))
        for f, c, ids, types in zip(
            corpus.dataset["file_index"],
            corpus.dataset["cell_index"],
            corpus.dataset["input_ids"],
            corpus.dataset["token_type_ids"],
            strict=True,
        )
    }
    tok = BinnedTokenizer(vocab, corpus.vocab, cfg.binned)
    return files, corpus, rows, tok


def _check_batches(batches, rows, pad_id):
    seen = []
    for batch in batches:
        assert batch["token_type_ids"].shape == batch["input_ids"].shape
        for i, key in enumerate(
            zip(batch["file_index"].tolist(), batch["cell_index"].tolist(), strict=True)
        ):
            n = int(batch["length"][i])
            ids, types = rows[key]
            assert batch["input_ids"][i, :n].tolist() == ids
            assert batch["token_type_ids"][i, :n].tolist() == types
            assert (batch["input_ids"][i, n:] == pad_id).all()
            assert (batch["token_type_ids"][i, n:] == 0).all()
            assert batch["attention_mask"][i].sum() == n
            seen.append(key)
    assert sorted(seen) == sorted(rows)  # every cell exactly once


def test_binned_tokens_on_the_fly_equal_the_binned_corpus(binned):
    files, corpus, rows, tok = binned
    ds = H5adStreamDataset(
        files,
        tokenizer=tok,
        batch_size=8,
        strategy=BlockShuffleStrategy(block_size=4, buffer_size=16),
    )
    _check_batches(ds, rows, corpus.vocab.pad_id)
    # the per-cell (Hugging Face) form carries token_type_ids too
    example = next(iter(H5adCellDataset(files, tokenizer=tok)))
    ids, types = rows[(example["file_index"], example["cell_index"])]
    assert example["input_ids"].tolist() == ids and example["token_type_ids"].tolist() == types


def test_corpus_stream_carries_token_type_ids(binned):
    _, corpus, rows, _ = binned
    ds = CorpusStreamDataset(
        corpus.path,
        batch_size=8,
        length_bucketing=True,
        strategy=BlockShuffleStrategy(block_size=4, buffer_size=16),
    )
    _check_batches(ds, rows, corpus.vocab.pad_id)


def test_binned_phenotype_values_missing_from_the_vocabulary_are_named(binned, tmp_path):
    files, corpus, _, _ = binned
    other = _write(tmp_path / "other.h5ad", 5, 3)
    adata = ad.io.read_h5ad(other)
    adata.obs["sex"] = "unknown"
    adata.write_h5ad(other)
    tok = BinnedTokenizer(
        GeneVocab.from_genes(GENES), corpus.vocab, BinnedTokenizerConfig(phenotypes=("sex",))
    )
    with pytest.raises(
        Exception, match=r"other.h5ad.*obs\['sex'\].*missing from the token dictionary"
    ):
        H5adStreamDataset([*files, other], tokenizer=tok)
    tok = BinnedTokenizer(
        GeneVocab.from_genes(GENES), corpus.vocab, BinnedTokenizerConfig(phenotypes=("tissue",))
    )
    with pytest.raises(
        Exception, match=r"a.h5ad.*\['tissue'\].*phenotypes of the binned tokenizer"
    ):
        H5adStreamDataset(files, tokenizer=tok)


def test_neighbourhood_tokens_cannot_be_made_on_the_fly(binned):
    files, _, _, _ = binned
    vocab = GeneVocab.from_genes(GENES)
    rank = RankValueTokenizer(vocab, dict.fromkeys(GENES, 1.0))
    with pytest.raises(TypeError, match="neighbours.*--mode neighborhood.*CorpusStreamDataset"):
        H5adStreamDataset(files, tokenizer=NeighborhoodTokenizer(rank))


def _all_batches(ds):
    return [{k: (v.clone() if torch.is_tensor(v) else v) for k, v in b.items()} for b in ds]


@pytest.mark.parametrize("tokenized", [False, True])
def test_read_ahead_and_threads_change_nothing(binned, tokenized):
    """Prefetch 0/1/3 and 1/2 tokenizer threads give the same batches; batches kept across
    buffers stay intact while later buffers refill the reader's arrays."""
    files, _, _, _ = binned
    vocab = GeneVocab.from_genes(GENES)
    tok = (
        RankValueTokenizer(vocab, {g: 1.0 + i for i, g in enumerate(GENES)}) if tokenized else None
    )

    def run(prefetch, threads):
        ds = H5adStreamDataset(
            files,
            tokenizer=tok,
            batch_size=5,
            strategy=BlockShuffleStrategy(block_size=3, buffer_size=10),
            prefetch=prefetch,
            tokenize_threads=threads,
            length_bucketing=tokenized,
        )
        return _all_batches(ds)

    want = run(0, 1)
    assert len(want) == 14
    for prefetch, threads in [(1, 1), (3, 2), (1, None)]:
        got = run(prefetch, threads)
        assert len(got) == len(want)
        for a, b in zip(got, want, strict=True):
            for key in ("file_index", "cell_index", "length"):
                assert torch.equal(a[key], b[key])
            if tokenized:
                assert torch.equal(a["input_ids"], b["input_ids"])
            else:
                assert torch.equal(a["X"].to_dense(), b["X"].to_dense())


def test_stopping_early_stops_the_read_ahead(binned):
    files, _, _, _ = binned
    ds = H5adStreamDataset(
        files, batch_size=4, strategy=BlockShuffleStrategy(block_size=2, buffer_size=8), prefetch=2
    )
    it = iter(ds)
    first = next(it)
    it.close()  # the reader thread is joined and the files are closed
    assert first["X"].shape[0] == 4
    assert len(list(ds)) == len(ds)  # and a new epoch reads again


def test_bad_read_ahead_settings_are_refused(binned):
    files, _, _, _ = binned
    with pytest.raises(ValueError, match="prefetch must be >= 0"):
        H5adStreamDataset(files, prefetch=-1)
    with pytest.raises(ValueError, match="tokenize_threads must be >= 1"):
        H5adStreamDataset(files, tokenize_threads=0)


def test_auto_threads_share_the_cpus(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda _: set(range(8)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert _auto_threads(0) == 8
    assert _auto_threads(4) == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert _auto_threads(0) == 2
    assert _auto_threads(4) == 1


def test_pad_rows_kernel_equals_numpy(monkeypatch):
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 9, 30)
    start = np.concatenate([[0], np.cumsum(lengths)[:-1]]) + 3
    values = rng.integers(0, 100, int(lengths.sum()) + 3).astype(np.int32)
    positions = rng.permutation(30)[:12]
    got = pad_rows(values, start, lengths, positions, -1, mask=True)
    assert _row_kernels() is not None
    monkeypatch.setattr("stformer_data._ragged._row_kernels", lambda: None)
    want = pad_rows(values, start, lengths, positions, -1, mask=True)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    for r, i in enumerate(positions):
        assert got[0][r, : lengths[i]].tolist() == values[start[i] : start[i] + lengths[i]].tolist()
        assert got[1][r].sum() == lengths[i]


@pytest.mark.parametrize("dense", [False, True])
def test_rank_tokens_on_the_fly_equal_the_corpus(tmp_path, dense, monkeypatch):
    """Rank-value tokens streamed from h5ad equal tokenize_files' corpus for every cell: with
    <cls>/<eos>, truncation, genes outside the vocabulary, empty cells, counts above the rank
    table and fractions. Sparse X takes the in-place path (tokens written into slots reserved
    from indptr), dense X the per-run path."""
    rng = np.random.default_rng(5)
    genes = [*GENES, "NOT_IN_VOCAB1", "NOT_IN_VOCAB2"]
    paths = []
    for k, n in enumerate([61, 44]):
        X = sp.random(n, len(genes), density=0.5, format="csr", dtype=np.float32, random_state=k)
        X.data = np.ceil(X.data * 12)
        X.data[::7] = 250  # above any rank table's counts
        X = X.tolil()
        X[3, :] = 0  # an empty cell
        X[5, :] = 0
        X[5, len(GENES)] = 4  # a cell with genes outside the vocabulary only
        X = X.tocsr()
        X.eliminate_zeros()
        adata = ad.AnnData(
            X=X.toarray() if dense else X,
            obs=pd.DataFrame(index=[f"f{k}c{i}" for i in range(n)]),
            var=pd.DataFrame(index=genes),
        )
        paths.append(tmp_path / f"r{k}.h5ad")
        adata.write_h5ad(paths[-1])
    vocab = GeneVocab.from_genes(GENES, cls_token=True, eos_token=True)
    medians = {g: float(rng.choice([0.5, 1.0, 2.5, 3.0])) for g in GENES}
    rank = RankTokenizerConfig(model_input_size=20, add_cls=True, add_eos=True)
    corpus = tokenize_files(
        paths,
        tmp_path / "corpus",
        vocab=vocab,
        medians=medians,
        config=TokenizeConfig(rank=rank),
        progress=False,
    )
    rows = {
        (int(f), int(c)): list(ids)
        for f, c, ids in zip(
            corpus.dataset["file_index"],
            corpus.dataset["cell_index"],
            corpus.dataset["input_ids"],
            strict=True,
        )
    }
    tok = RankValueTokenizer(vocab, medians, rank)
    used = {"in place": 0, "per run": 0, "table": 0}
    for name, label in (("tokenize_csr_into", "in place"), ("tokenize_csr", "per run")):
        method = getattr(RankValueTokenizer, name)

        def spy(self, *args, _method=method, _label=label, **kwargs):
            used[_label] += 1
            return _method(self, *args, **kwargs)

        monkeypatch.setattr(RankValueTokenizer, name, spy)
    build = _rank_kernel.build_table

    def counting_build(factor, column_token):
        used["table"] += factor.size == len(genes)  # (not the kernel's warm-up table)
        return build(factor, column_token)

    monkeypatch.setattr(_rank_kernel, "build_table", counting_build)
    _rank_kernel._TABLES.clear()
    for threads in (1, 2):
        ds = H5adStreamDataset(
            paths,
            tokenizer=tok,
            batch_size=16,
            strategy=BlockShuffleStrategy(block_size=4, buffer_size=40),
            tokenize_threads=threads,
        )
        seen = []
        for batch in ds:
            for i, key in enumerate(
                zip(batch["file_index"].tolist(), batch["cell_index"].tolist(), strict=True)
            ):
                n = int(batch["length"][i])
                assert batch["input_ids"][i, :n].tolist() == rows.get(key, []), key
                assert (batch["input_ids"][i, n:] == vocab.pad_id).all()
                seen.append(key)
        assert len(seen) == 105 and set(rows) <= set(seen)
        assert max(len(r) for r in rows.values()) == 20  # truncated, specials included
    assert used["per run" if dense else "in place"] > 0
    assert used["in place" if dense else "per run"] == 0
    assert used["table"] == 1  # built once enough values were ranked, then reused


def test_out_of_range_column_indices_are_named(tmp_path):
    """A corrupt file (column index beyond var) read on the tokenizing pool: an error naming it."""
    import h5py

    path = _write(tmp_path / "bad.h5ad", 30, 3)
    with h5py.File(path, "r+") as h5:
        indices = h5["X/indices"][:]
        indices[-1] = len(GENES) + 5
        h5["X/indices"][:] = indices
    tok = RankValueTokenizer(GeneVocab.from_genes(GENES), {g: 1.0 for g in GENES})
    ds = H5adStreamDataset([path], tokenizer=tok, batch_size=8)
    with pytest.raises(ValueError, match=r"bad\.h5ad.*column indices outside"):
        list(ds)
