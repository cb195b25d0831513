"""Corpus format 3: small integer columns, shard checksums, safe example lengths, refusals."""

from __future__ import annotations

import json
import os
import pickle
import shutil

import anndata as ad
import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp

from stformer_data import (
    GeneVocab,
    InputError,
    TokenizeConfig,
    compute_medians_exact,
    load_corpus,
    simulate_counts,
    tokenize_files,
)
from stformer_data.atomic import partial_path
from stformer_data.corpus.format import (
    FORMAT_VERSION,
    arrow_files,
    is_stformer_corpus,
    read_lengths,
    smallest_int,
)
from stformer_data.torch import CorpusStreamDataset


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A 300-cell file, its vocabulary and medians, and a corpus of it (two shards)."""
    root = tmp_path_factory.mktemp("integrity")
    adata = simulate_counts(n_cells=300, n_genes=100, program_size=10, seed=3)
    path = root / "cells.h5ad"
    adata.write_h5ad(path)
    vocab = GeneVocab.from_genes(adata.var_names)
    medians = compute_medians_exact([path])
    corpus = tokenize_files(
        [path],
        root / "corpus",
        vocab=vocab,
        medians=medians,
        progress=False,
        config=TokenizeConfig(rows_per_unit=150, chunk_size=64),
    )
    return path, vocab, medians, corpus


def _copy(corpus, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(corpus.path, out)
    return out


class _Planted:
    """Unpickling this writes ``marker``: a pickle that runs code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (eval, (f"open({self.marker!r}, 'w').close() or [3]",))


def test_smallest_types_and_manifest(made):
    _, vocab, _, corpus = made
    m = corpus.manifest
    assert m["format_version"] == FORMAT_VERSION == 3
    feats = corpus.dataset.features
    assert feats["input_ids"].feature.dtype == "uint16" == m["dtypes"]["input_ids"]
    assert feats["length"].dtype == "int16"  # 2,048 positions
    assert feats["file_index"].dtype == "int8" and feats["cell_index"].dtype == "int32"
    assert smallest_int(25_426) == "int16" and smallest_int(70_000, unsigned=True) == "uint32"
    assert [s["file"] for s in m["shards"]] == [p.name for p in arrow_files(corpus.path)]
    assert all(s["size_bytes"] > 0 and len(s["xxh3_128"]) == 32 for s in m["shards"])
    ids = np.concatenate([np.asarray(x) for x in corpus.dataset["input_ids"]])
    assert ids.max() < len(vocab)


def test_streamed_batches_are_int64(made):
    corpus = made[3]
    batch = next(iter(CorpusStreamDataset(corpus.path, batch_size=32)))
    assert batch["input_ids"].dtype == batch["attention_mask"].dtype
    assert str(batch["input_ids"].dtype) == "torch.int64"
    row = list(corpus.dataset["cell_index"]).index(int(batch["cell_index"][0]))
    first = np.asarray(corpus.dataset["input_ids"][row])
    assert batch["input_ids"][0, : first.size].tolist() == first.tolist()


def test_version_2_corpus_still_reads(made, tmp_path):
    """A version-2 corpus (int32 columns, no shard records, only the pickled lengths)."""
    corpus = made[3]
    old = _copy(corpus, tmp_path)
    for arrow in arrow_files(old):
        table = pa.ipc.open_stream(pa.memory_map(str(arrow))).read_all()
        cast = {
            "input_ids": pa.list_(pa.int32()),
            "length": pa.int32(),
            "file_index": pa.int32(),
            "cell_index": pa.int64(),
        }
        schema = pa.schema([pa.field(f.name, cast.get(f.name, f.type)) for f in table.schema])
        table = table.cast(schema)
        arrow.unlink()
        with pa.OSFile(str(arrow), "wb") as sink, pa.ipc.new_stream(sink, schema) as w:
            w.write_table(table)
    info = json.loads((old / "dataset" / "dataset_info.json").read_text())
    info["features"]["input_ids"]["feature"]["dtype"] = "int32"
    for k, kind in (("length", "int32"), ("file_index", "int32"), ("cell_index", "int64")):
        info["features"][k]["dtype"] = kind
    (old / "dataset" / "dataset_info.json").write_text(json.dumps(info))
    m = json.loads((old / "manifest.json").read_text())
    m["format_version"] = 2
    del m["shards"], m["dtypes"]
    (old / "manifest.json").write_text(json.dumps(m))
    (old / "example_lengths.npy").unlink()
    (old / "example_lengths.pkl").write_bytes(pickle.dumps(_Planted(tmp_path / "ran")))
    back = load_corpus(old)
    assert back.dataset.features["input_ids"].feature.dtype == "int32"
    assert back.dataset["input_ids"] == corpus.dataset["input_ids"]
    assert back.lengths == corpus.lengths  # from the length column: the pickle is not loaded
    assert not (tmp_path / "ran").exists()
    batch = next(iter(CorpusStreamDataset(old, batch_size=16)))
    assert str(batch["input_ids"].dtype) == "torch.int64"
    # a version-2 shard with an id beyond the vocabulary: found by the id check on open
    arrow = arrow_files(old)[0]
    table = pa.ipc.open_stream(pa.memory_map(str(arrow))).read_all()
    ids = table.column("input_ids").combine_chunks()
    values = ids.values.to_numpy().copy()
    values[5] = 16_712_445
    flipped = pa.ListArray.from_arrays(ids.offsets, pa.array(values, pa.int32()))
    table = table.set_column(0, "input_ids", flipped)
    with pa.OSFile(str(arrow), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    with pytest.raises(InputError, match=r"token id 16712445, outside the vocabulary") as e:
        load_corpus(old)
    assert arrow.name in str(e.value) and "stformer tokenize" in str(e.value)
    # the streaming reader checks each record batch it maps
    with pytest.raises(InputError, match=r"16712445") as e:
        next(iter(CorpusStreamDataset(old, batch_size=16)))
    assert arrow.name in str(e.value)


def test_damaged_shards_and_manifest(made, tmp_path):
    corpus = made[3]
    bad = _copy(corpus, tmp_path)
    shard = arrow_files(bad)[1]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x10  # one bit
    shard.write_bytes(bytes(data))
    with pytest.raises(InputError, match="does not match its checksum") as e:
        load_corpus(bad)
    assert str(shard) in str(e.value) and "stformer tokenize" in str(e.value)
    shard.write_bytes(bytes(data[:-100]))
    for opener in (load_corpus, lambda p: CorpusStreamDataset(p, batch_size=8)):
        with pytest.raises(InputError, match="truncated or changed") as e:
            opener(bad)
        assert str(shard) in str(e.value)
    shard.unlink()
    with pytest.raises(InputError, match="is missing from the corpus") as e:
        load_corpus(bad)
    assert str(shard) in str(e.value) and "Fix: tokenize" in str(e.value)
    (bad / "manifest.json").write_text('{"format_version": 3, "sch')
    for opener in (load_corpus, lambda p: CorpusStreamDataset(p, batch_size=8)):
        with pytest.raises(InputError, match="manifest cannot be read") as e:
            opener(bad)
        assert str(bad / "manifest.json") in str(e.value) and "Fix: tokenize" in str(e.value)
    assert not is_stformer_corpus(bad)
    assert is_stformer_corpus(corpus.path)


def test_lengths_never_unpickled(made, tmp_path):
    corpus = made[3]
    planted = _copy(corpus, tmp_path)
    marker = tmp_path / "ran"
    (planted / "example_lengths.pkl").write_bytes(pickle.dumps(_Planted(marker)))
    again = load_corpus(planted)
    assert again.lengths == corpus.lengths == read_lengths(planted)
    assert np.load(planted / "example_lengths.npy", allow_pickle=False).tolist() == corpus.lengths
    assert not marker.exists()
    (planted / "example_lengths.npy").unlink()
    assert read_lengths(planted) == corpus.lengths  # from the Arrow length column
    assert not marker.exists()
    assert read_lengths(planted, allow_pickle=True) == [3]  # consent: loaded (and it runs)
    assert marker.exists()


def test_overwrite_replaces_only_stformer_corpora(made, tmp_path):
    path, vocab, medians, _ = made
    kw = dict(vocab=vocab, medians=medians, progress=False)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("years of work")
    for overwrite in (False, True):
        with pytest.raises(InputError, match="not a stformer corpus") as e:
            tokenize_files([path], mine, overwrite=overwrite, **kw)
        assert str(mine) in str(e.value) and "--overwrite" not in str(e.value)
        assert (mine / "thesis.txt").read_text() == "years of work"
    empty = tmp_path / "empty"
    empty.mkdir()
    first = tokenize_files([path], empty, **kw)  # an empty folder is used as it is
    with pytest.raises(InputError, match="already holds a stformer corpus.*--overwrite"):
        tokenize_files([path], empty, **kw)
    again = tokenize_files([path], empty, overwrite=True, **kw)
    assert again.dataset["input_ids"] == first.dataset["input_ids"]


def _write_h5ad(path, counts, genes):
    adata = ad.AnnData(X=sp.csr_matrix(counts.astype(np.float32)))
    adata.var_names = list(genes)
    adata.obs_names = [f"c{i}" for i in range(counts.shape[0])]
    adata.write_h5ad(path)


def test_meaningless_corpora_refused_and_partial_removed(made, tmp_path):
    _, vocab, medians, _ = made
    genes = vocab.genes[:20]
    kw = dict(vocab=vocab, medians=medians, progress=False)
    cases = {
        "zero_cells.h5ad": (np.zeros((0, 20)), "has 0 cells"),
        "all_zero.h5ad": (np.zeros((40, 20)), "are all empty after the vocabulary filter"),
    }
    for name, (counts, message) in cases.items():
        _write_h5ad(tmp_path / name, counts, genes)
        out = tmp_path / f"out_{name}"
        with pytest.raises(InputError, match=message) as e:
            tokenize_files([tmp_path / name], out, config=TokenizeConfig(rows_per_unit=16), **kw)
        assert name in str(e.value)
        assert not out.exists() and not partial_path(out).exists()
    assert sorted(os.listdir(tmp_path)) == sorted(cases)  # nothing else was left
