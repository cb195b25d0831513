"""Bad-input suite, corpus family: folders --overwrite must not delete, planted pickles, corpora
that mean nothing, damaged shards and manifests.

Each case runs the command through ``stformer_cli.main.cli``, asserts its exit code and message,
and that nothing complete-looking or foreign was left or run. The helpers live in this file.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp

import stformer_data as sd
from stformer_cli.main import cli
from stformer_data.atomic import partial_path
from stformer_data.corpus.format import arrow_files, shard_records

TINY = ["--layers", "2", "--hidden", "32", "--heads", "2", "--max-length", "48"]
TINY += ["--batch-size", "8", "--max-steps", "1", "--no-progress"]


class Planted:
    """A pickle that runs code when loaded: it creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (eval, (f"open({self.marker!r}, 'w').close() or {{'<pad>': 0, '<mask>': 1}}",))


def plant(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps(Planted(marker)))
    return path


def write_h5ad(path: Path, counts: np.ndarray, genes: list[str]) -> Path:
    adata = ad.AnnData(X=sp.csr_matrix(counts.astype(np.float32)))
    adata.var_names = genes
    adata.obs_names = [f"c{i}" for i in range(counts.shape[0])]
    adata.write_h5ad(path)
    return path


def run(args: list[str], capsys) -> tuple[int, str]:
    code = cli([str(a) for a in args])
    captured = capsys.readouterr()
    return code, " ".join((captured.out + captured.err).split())  # rich wraps long lines


@pytest.fixture(scope="module")
def cells(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bad_corpus") / "cells.h5ad"
    sd.simulate_counts(n_cells=60, n_genes=50, program_size=8, seed=2).write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def corpus(cells, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bad_corpus_c") / "corpus"
    assert cli(["tokenize", str(cells), "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.fixture
def copy(corpus, tmp_path) -> Path:
    out = tmp_path / "corpus"
    shutil.copytree(corpus, out)
    return out


def assert_no_run(out: Path) -> None:
    """Nothing complete-looking: no model, no config of a finished run."""
    assert not (out / "model").exists() and not (out / "config.json").exists()


def test_overwrite_never_deletes_a_foreign_folder(cells, tmp_path, capsys):
    mine = tmp_path / "my_results"
    mine.mkdir()
    (mine / "figure.png").write_bytes(b"\x89PNG keep me")
    (mine / "notes").mkdir()
    for extra in ([], ["--overwrite"]):
        code, msg = run(["tokenize", cells, "--out", mine, "--no-progress", *extra], capsys)
        assert code == 2
        assert str(mine) in msg and "not a stformer corpus" in msg
        assert "--overwrite" not in msg  # never suggested for a folder stformer did not write
        assert (mine / "figure.png").read_bytes() == b"\x89PNG keep me" and (
            mine / "notes"
        ).is_dir()
        assert not partial_path(mine).exists()
    # a plain file named like the output
    target = tmp_path / "data.csv"
    target.write_text("a,b\n")
    code, msg = run(["tokenize", cells, "--out", target, "--overwrite", "--no-progress"], capsys)
    assert code == 2 and "is a file" in msg and target.read_text() == "a,b\n"


def test_overwrite_replaces_a_corpus_and_refusal_names_it(cells, copy, capsys):
    code, msg = run(["tokenize", cells, "--out", copy, "--no-progress"], capsys)
    assert code == 2 and "already holds a stformer corpus" in msg and "--overwrite" in msg
    assert run(["tokenize", cells, "--out", copy, "--overwrite", "--no-progress"], capsys)[0] == 0
    assert sd.is_stformer_corpus(copy) and not partial_path(copy).exists()


@pytest.mark.parametrize(
    ("name", "n_cells", "message"),
    [
        ("zero_cells.h5ad", 0, "has 0 cells"),
        ("all_zero.h5ad", 30, "are all empty after the vocabulary filter"),
    ],
)
def test_meaningless_inputs_leave_no_corpus(tmp_path, capsys, name, n_cells, message):
    genes = [f"ENSG{i:011d}" for i in range(12)]
    src = write_h5ad(tmp_path / name, np.zeros((n_cells, 12)), genes)
    vocab = sd.GeneVocab.from_genes(genes)
    vocab.save_json(tmp_path / "vocab.json")
    (tmp_path / "medians.json").write_text(json.dumps(dict.fromkeys(genes, 1.0)))
    out = tmp_path / "out"
    args = ["tokenize", src, "--out", out, "--vocab", tmp_path / "vocab.json"]
    code, msg = run([*args, "--medians", tmp_path / "medians.json", "--no-progress"], capsys)
    assert code == 2 and message in msg and name in msg and "Fix:" in msg
    assert not out.exists() and not partial_path(out).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [name, "medians.json", "vocab.json"]
    )


def test_pretrain_unpickles_nothing_from_a_corpus(copy, tmp_path, capsys):
    marker = tmp_path / "code_ran"
    plant(copy / "example_lengths.pkl", marker)
    plant(copy / "token_dictionary.pkl", marker)
    out = tmp_path / "run"
    code, msg = run(["pretrain", copy, "--out", out, *TINY], capsys)
    assert code == 0, msg
    assert not marker.exists()


@pytest.mark.parametrize("option", ["--vocab", "--medians", "--name-to-id"])
def test_tokenize_refuses_pickles_without_allow_pickle(cells, tmp_path, capsys, option):
    marker = tmp_path / "code_ran"
    pkl = plant(tmp_path / "dictionary.pkl", marker)
    out = tmp_path / "out"
    code, msg = run(["tokenize", cells, "--out", out, option, pkl, "--no-progress"], capsys)
    assert code == 2 and str(pkl) in msg and "--allow-pickle" in msg
    assert not marker.exists() and not out.exists() and not partial_path(out).exists()


def test_stformer_api_reads_a_corpus_pickles_safe_siblings(copy, tmp_path):
    """stFormer's documented loaders take the corpus's .pkl paths; stformer reads the .npy/.json
    it wrote beside them instead, and a bare pickle is refused with allow_pickle=False."""
    from stformer_train.hf import load_example_lengths, load_token_dictionary

    expected = sd.load_corpus(copy).lengths
    vocab = json.loads((copy / "token_dictionary.json").read_text())["token_to_id"]
    marker = tmp_path / "code_ran"
    assert load_example_lengths(plant(copy / "example_lengths.pkl", marker)) == expected
    assert load_token_dictionary(plant(copy / "token_dictionary.pkl", marker)) == vocab
    assert not marker.exists()
    bare = plant(tmp_path / "lengths.pkl", marker)
    with pytest.raises(sd.InputError, match="allow-pickle") as e:
        load_example_lengths(bare, allow_pickle=False)
    assert str(bare) in str(e.value)
    with pytest.raises(sd.InputError, match="allow-pickle"):
        load_token_dictionary(bare, allow_pickle=False)
    assert not marker.exists()


def _flip_bit(shard: Path) -> None:
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x04
    shard.write_bytes(bytes(data))


def _empty_shards(corpus: Path) -> None:
    """Rewrite every shard with no rows, consistently (sizes, checksums, lengths): a corpus that
    is whole but holds no sequences, as an older stformer could write."""
    files = arrow_files(corpus)
    for arrow in files:
        schema = pa.ipc.open_stream(pa.memory_map(str(arrow))).schema
        arrow.unlink()
        with pa.OSFile(str(arrow), "wb") as sink, pa.ipc.new_stream(sink, schema):
            pass
    m = json.loads((corpus / "manifest.json").read_text())
    m["shards"] = shard_records(corpus / "dataset", [a.name for a in files])
    m["counts"]["cells_written"] = 0
    (corpus / "manifest.json").write_text(json.dumps(m))
    np.save(corpus / "example_lengths.npy", np.zeros(0, np.int16))


@pytest.mark.parametrize(
    ("damage", "names", "message"),
    [
        ("bit_flip", "shard", "does not match its checksum"),
        ("truncate", "shard", "truncated or changed"),
        ("delete", "shard", "is missing from the corpus"),
        ("manifest", "manifest", "manifest cannot be read"),
        ("empty", "corpus", "holds no sequences"),
    ],
)
def test_pretrain_on_damaged_corpus(copy, tmp_path, capsys, damage, names, message):
    shard = arrow_files(copy)[0]
    if damage == "bit_flip":
        _flip_bit(shard)
    elif damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:-64])
    elif damage == "delete":
        shard.unlink()
    elif damage == "manifest":
        (copy / "manifest.json").write_text('{"format_version": 3, "scheme": "ra')
    else:
        _empty_shards(copy)
    out = tmp_path / "run"
    code, msg = run(["pretrain", copy, "--out", out, *TINY], capsys)
    assert code == 2, msg
    named = {"shard": shard, "manifest": copy / "manifest.json", "corpus": copy}[names]
    assert str(named) in msg and message in msg
    assert "Fix:" in msg and ("stformer tokenize" in msg or "tokenize files" in msg)
    assert "Traceback" not in msg
    assert_no_run(out)
