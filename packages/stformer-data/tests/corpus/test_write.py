from __future__ import annotations

import json
import pickle

import datasets
import h5py
import numpy as np
import pytest
import scipy.sparse as sp
import xxhash

import stformer_data.corpus.write as corpus_mod
from stformer_data import (
    InputError,
    RankTokenizerConfig,
    RankValueTokenizer,
    TokenizeConfig,
    is_complete_corpus,
    iter_row_chunks,
    load_corpus,
    map_genes,
    open_h5ad,
    tokenize_files,
)


def _expected(path, vocab, medians, config=None):
    tok = RankValueTokenizer(vocab, medians, config or RankTokenizerConfig())
    adata = open_h5ad(path)
    try:
        mapping = map_genes(np.asarray(adata.var_names), vocab, vocab.special_ids)
        out = []
        for _, _, block in iter_row_chunks(adata, 97):
            out += [s.tolist() for s in tok.tokenize_block(block, None, mapping)]
        return out
    finally:
        adata.file.close()


def test_layout_manifest_and_datasets_load_from_disk(small_h5ad, tmp_path):
    path, adata, vocab, medians = small_h5ad
    corpus = tokenize_files(
        [path],
        tmp_path / "c",
        vocab=vocab,
        medians=medians,
        progress=False,
        config=TokenizeConfig(
            obs_columns=("cell_type", "n_counts"), rows_per_unit=150, chunk_size=64
        ),
    )
    ds = datasets.load_from_disk(str(tmp_path / "c" / "dataset"))
    assert ds["input_ids"] == _expected(path, vocab, medians)
    assert ds["cell_type"] == list(adata.obs["cell_type"].astype(str))
    assert ds.features["n_counts"].dtype == "float64"
    assert ds["length"] == [len(x) for x in ds["input_ids"]] == corpus.lengths
    with (tmp_path / "c" / "example_lengths.pkl").open("rb") as fh:
        assert pickle.load(fh) == corpus.lengths
    m = corpus.manifest
    assert m["vocab_sha256"] == vocab.content_hash() and m["scheme"] == "rank"
    src = m["sources"][0]
    assert src["size_bytes"] == path.stat().st_size
    assert src["xxh3_128"] == xxhash.xxh3_128(path.read_bytes()).hexdigest()
    assert src["n_genes_in_vocab"] == 120 and m["counts"]["cells_written"] == 400
    assert not (tmp_path / ".c.partial").exists()


def test_empty_cells_are_skipped_and_counted(tmp_path, small_h5ad):
    _, adata, vocab, medians = small_h5ad
    a = adata.copy()
    X = a.X.tolil()
    X[[3, 10]] = 0
    a.X = sp.csr_matrix(X)
    a.write_h5ad(tmp_path / "e.h5ad")
    corpus = tokenize_files(
        [tmp_path / "e.h5ad"], tmp_path / "c", vocab=vocab, medians=medians, progress=False
    )
    assert corpus.manifest["counts"]["cells_skipped"] == {"empty_after_vocab_filter": 2}
    assert 3 not in corpus.dataset["cell_index"] and len(corpus.dataset) == 398


@pytest.mark.parametrize("storage", ["dense", "csc", "layer"])
def test_dense_csc_and_layer_storage_give_the_same_tokens(tmp_path, small_h5ad, storage):
    path, adata, vocab, medians = small_h5ad
    a = adata.copy()
    if storage == "dense":
        a.X = a.X.toarray()
    elif storage == "csc":
        a.X = sp.csc_matrix(a.X)
    else:
        a.layers["counts"] = a.X.copy()
        a.X = sp.csr_matrix(a.X.multiply(0.5))  # not counts: only the layer is
    a.write_h5ad(tmp_path / "s.h5ad")
    cfg = TokenizeConfig(layer="counts" if storage == "layer" else None, chunk_size=50)
    corpus = tokenize_files(
        [tmp_path / "s.h5ad"],
        tmp_path / "c",
        vocab=vocab,
        medians=medians,
        config=cfg,
        progress=False,
    )
    assert corpus.dataset["input_ids"] == _expected(path, vocab, medians)


@pytest.mark.parametrize("parallel", ["threads", "processes"])
def test_num_proc_over_files_and_row_ranges_matches_one_process(tmp_path, small_h5ad, parallel):
    path, _, vocab, medians = small_h5ad
    one = tokenize_files(
        [path, path], tmp_path / "one", vocab=vocab, medians=medians, progress=False
    )
    two = tokenize_files(
        [path, path],
        tmp_path / "two",
        vocab=vocab,
        medians=medians,
        progress=False,
        config=TokenizeConfig(num_proc=2, rows_per_unit=90, chunk_size=37, parallel=parallel),
    )
    assert one.dataset["input_ids"] == two.dataset["input_ids"]
    assert two.dataset["file_index"] == [0] * 400 + [1] * 400


def test_interrupted_run_leaves_no_corpus_and_resumes(tmp_path, small_h5ad, monkeypatch, capsys):
    path, _, vocab, medians = small_h5ad
    cfg = TokenizeConfig(rows_per_unit=100)
    real = corpus_mod._run_unit
    calls = []

    def crash_after_two(job, on_chunk=None):
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-run
        calls.append(job.unit.index)
        return real(job, on_chunk)

    monkeypatch.setattr(corpus_mod, "_run_unit", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        tokenize_files(
            [path], tmp_path / "c", vocab=vocab, medians=medians, config=cfg, progress=False
        )
    partial = tmp_path / ".c.partial"
    assert (
        f"interrupted; 2 of 4 shards done are kept in {partial}; rerun the same command to "
        f"resume, or delete {partial}" in capsys.readouterr().err
    )
    assert not (tmp_path / "c").exists() and not is_complete_corpus(tmp_path / "c")
    with pytest.raises(InputError, match="not a complete"):
        load_corpus(tmp_path / ".c.partial")
    calls.clear()
    monkeypatch.setattr(
        corpus_mod,
        "_run_unit",
        lambda job, on_chunk=None: (calls.append(job.unit.index), real(job, on_chunk))[1],
    )
    corpus = tokenize_files(
        [path], tmp_path / "c", vocab=vocab, medians=medians, config=cfg, progress=False
    )
    assert calls == [2, 3]  # units 0 and 1 were reused
    assert corpus.dataset["input_ids"] == _expected(path, vocab, medians)
    assert corpus.manifest["counts"]["cells_in"] == 400


def test_changed_settings_redo_instead_of_resuming(tmp_path, small_h5ad, monkeypatch):
    path, _, vocab, medians = small_h5ad
    real = corpus_mod._run_unit
    monkeypatch.setattr(
        corpus_mod,
        "_run_unit",
        lambda job, on_chunk=None: (
            (_ for _ in ()).throw(KeyboardInterrupt) if job.unit.index == 1 else real(job, on_chunk)
        ),
    )
    with pytest.raises(KeyboardInterrupt):
        tokenize_files(
            [path],
            tmp_path / "c",
            vocab=vocab,
            medians=medians,
            progress=False,
            config=TokenizeConfig(rows_per_unit=200),
        )
    monkeypatch.setattr(corpus_mod, "_run_unit", real)
    cfg = TokenizeConfig(rows_per_unit=200, rank=RankTokenizerConfig(model_input_size=10))
    corpus = tokenize_files(
        [path], tmp_path / "c", vocab=vocab, medians=medians, config=cfg, progress=False
    )
    assert max(corpus.lengths) == 10


def test_existing_output_is_refused_or_replaced_atomically(tmp_path, small_h5ad):
    path, _, vocab, medians = small_h5ad
    tokenize_files([path], tmp_path / "c", vocab=vocab, medians=medians, progress=False)
    with pytest.raises(InputError, match="--overwrite"):
        tokenize_files([path], tmp_path / "c", vocab=vocab, medians=medians, progress=False)
    cfg = TokenizeConfig(rank=RankTokenizerConfig(model_input_size=5))
    c = tokenize_files(
        [path],
        tmp_path / "c",
        vocab=vocab,
        medians=medians,
        config=cfg,
        progress=False,
        overwrite=True,
    )
    assert max(c.lengths) == 5
    assert (
        json.loads((tmp_path / "c" / "manifest.json").read_text())["settings"]["rank"][
            "model_input_size"
        ]
        == 5
    )


def test_binned_corpus_has_gene_type_ids_and_phenotypes(tmp_path, small_h5ad):
    from stformer_data import BinnedTokenizerConfig, GeneVocab

    path, adata, vocab, _ = small_h5ad
    cfg = TokenizeConfig(scheme="binned", binned=BinnedTokenizerConfig(phenotypes=("cell_type",)))
    corpus = tokenize_files([path], tmp_path / "b", vocab=vocab, config=cfg, progress=False)
    row = corpus.dataset[0]
    assert row["token_type_ids"][1] == len(vocab)  # the phenotype's own type id
    assert (
        corpus.vocab.id_to_token(row["input_ids"][1])
        == f"cell_type={adata.obs['cell_type'].iloc[0]}"
    )
    assert corpus.manifest["type_vocab_size"] == len(vocab) + 1
    assert (
        GeneVocab.load(tmp_path / "b" / "gene_dictionary.json").content_hash()
        == vocab.content_hash()
    )


@pytest.mark.slow
def test_killed_process_leaves_no_corpus_and_a_rerun_completes(tmp_path, small_h5ad, monkeypatch):
    """SIGKILL a real tokenizing process mid-run, then rerun: it resumes the finished units."""
    import os
    import signal
    import subprocess
    import sys
    import time

    path, _, vocab, medians = small_h5ad
    vocab.save_json(tmp_path / "v.json")
    (tmp_path / "m.json").write_text(json.dumps(medians))
    script = (
        "import sys, time, stformer_data.corpus.write as c\n"
        "from stformer_data import GeneVocab, TokenizeConfig, load_medians, tokenize_files\n"
        "real = c._run_unit\n"
        "def slow(job, on_chunk=None):\n"
        "    r = real(job, on_chunk); time.sleep(0.5); return r\n"
        "c._run_unit = slow\n"
        f"tokenize_files([{str(path)!r}], {str(tmp_path / 'c')!r}, vocab=GeneVocab.load({str(tmp_path / 'v.json')!r}),"
        f" medians=load_medians({str(tmp_path / 'm.json')!r}), config=TokenizeConfig(rows_per_unit=50),"
        " progress=False)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    shards = tmp_path / ".c.partial" / "shards"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(shards.glob("*.json"))) < 2 and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = len(list(shards.glob("*.json")))
    assert 2 <= finished < 8
    assert not (tmp_path / "c").exists() and not is_complete_corpus(tmp_path / "c")
    real, calls = corpus_mod._run_unit, []
    monkeypatch.setattr(
        corpus_mod,
        "_run_unit",
        lambda job, on_chunk=None: (calls.append(job.unit.index), real(job, on_chunk))[1],
    )
    corpus = tokenize_files(
        [path],
        tmp_path / "c",
        vocab=vocab,
        medians=medians,
        progress=False,
        config=TokenizeConfig(rows_per_unit=50),
    )
    assert len(calls) == 8 - finished  # the units finished before the kill were reused
    assert corpus.dataset["input_ids"] == _expected(path, vocab, medians)
    assert not (tmp_path / ".c.partial").exists()


def test_unsorted_and_repeated_csr_entries_in_a_file_are_summed(tmp_path, small_h5ad):
    """A CSR file whose rows list columns out of order, one entry split in two: the fast path
    hands such chunks to the exact scipy path (sorted, duplicates summed)."""
    path, adata, vocab, medians = small_h5ad
    X = sp.csr_matrix(adata.X, dtype=np.float32)
    indptr, indices, data = [0], [], []
    for i in range(X.shape[0]):
        cols, vals = X[i].indices[::-1].tolist(), X[i].data[::-1].tolist()
        if vals and vals[0] >= 2:
            cols, vals = [cols[0], *cols], [1.0, vals[0] - 1.0, *vals[1:]]
        indices += cols
        data += vals
        indptr.append(len(indices))
    messy = adata.copy()
    messy.X = sp.csr_matrix(
        (np.array(data, np.float32), np.array(indices, np.int32), np.array(indptr)),
        shape=X.shape,
    )
    assert not messy.X.has_canonical_format
    messy_path = tmp_path / "messy.h5ad"
    messy.write_h5ad(messy_path)
    with h5py.File(messy_path, "r") as h5:  # stored as given
        stored = h5["X/indices"][: h5["X/indptr"][1]]
        assert (np.diff(stored) <= 0).any()
    corpus = tokenize_files(
        [messy_path], tmp_path / "c", vocab=vocab, medians=medians, progress=False
    )
    assert corpus.dataset["input_ids"] == _expected(path, vocab, medians)
