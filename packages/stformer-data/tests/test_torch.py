import os
import shutil
import subprocess
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

torch = pytest.importorskip("torch")
from torch.utils.data import DataLoader  # noqa: E402

from stformer_data import (  # noqa: E402
    BlockShuffleStrategy,
    CellSplit,
    GeneVocab,
    InputError,
    RankValueTokenizer,
    SequentialBlockStrategy,
    TokenizeConfig,
    map_genes,
    resolve_gene_ids,
    tokenize_files,
)
from stformer_data.torch import (  # noqa: E402
    CorpusStreamDataset,
    H5adCellDataset,
    H5adStreamDataset,
    resolve_world,
)

pytestmark = pytest.mark.filterwarnings("ignore:Sparse (invariant checks|CSR tensor support)")

GENES = [f"ENSG{k:05d}" for k in range(30)]


def _write(path, n, genes=GENES, seed=0, density=0.3):
    X = sp.random(n, len(genes), density=density, format="csr", dtype=np.float32, random_state=seed)
    X.data = np.ceil(X.data * 9)
    obs = pd.DataFrame(
        {"donor": [f"{path.stem}_d{i % 3}" for i in range(n)]}, index=[f"c{i}" for i in range(n)]
    )
    ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=list(genes))).write_h5ad(path)
    return path


@pytest.fixture
def files(tmp_path):
    return [
        _write(tmp_path / "a.h5ad", 45, seed=1),
        _write(tmp_path / "b.h5ad", 0, seed=2),
        _write(tmp_path / "c.h5ad", 71, seed=3),
        _write(tmp_path / "d.h5ad", 13, seed=4),
    ]


@pytest.fixture
def tokenizer():
    vocab = GeneVocab.from_genes(GENES)
    return RankValueTokenizer(vocab, {g: 1.0 + i for i, g in enumerate(GENES)})


def _consume(ds, world, workers):
    """Cells (file, row) seen per rank, and batches per rank, as DataLoader(num_workers=workers) yields them."""
    seen, n_batches = [], []
    for rank in range(world):
        ds.rank, ds.world_size = rank, world
        cells, count = [], 0
        for batch in DataLoader(ds, batch_size=None, num_workers=workers):
            cells += list(
                zip(batch["file_index"].tolist(), batch["cell_index"].tolist(), strict=True)
            )
            count += 1
        assert count == len(ds)
        seen.append(cells)
        n_batches.append(count)
    return seen, n_batches


@pytest.mark.filterwarnings("ignore:.*has no cells")
@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("workers", [0, 2])
def test_every_cell_exactly_once_across_ranks_and_workers(files, world, workers):
    ds = H5adStreamDataset(
        files, batch_size=8, strategy=BlockShuffleStrategy(block_size=5, buffer_size=24)
    )
    seen, n_batches = _consume(ds, world, workers)
    everything = [c for cells in seen for c in cells]
    expected = [(f, r) for f, n in enumerate([45, 0, 71, 13]) for r in range(n)]
    assert sorted(everything) == expected
    assert len(set(n_batches)) == 1


@pytest.fixture(scope="module")
def real_files(request):
    """A single-cell and a spatial file of ../shared/data (different gene sets), and their union."""
    shared = request.getfixturevalue("shared_data")
    files = [
        shared / "sc" / "pbmc68k_reduced_700_counts.h5ad",
        shared / "spatial" / "mouse_cortex_ccc_1073_orgaccc.h5ad",
    ]
    genes = sorted(
        {g for f in files for g in resolve_gene_ids(ad.io.read_h5ad(f, backed="r").var).tolist()}
    )
    return files, genes


@pytest.mark.shared_data
@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("workers", [0, 2])
def test_exactly_once_on_real_files(real_files, world, workers):
    files, genes = real_files
    ds = H5adStreamDataset(
        files,
        genes=genes,
        batch_size=32,
        strategy=BlockShuffleStrategy(block_size=64, buffer_size=256),
        obs_keys=("n_counts",),
    )
    ds.set_epoch(world)
    seen, n_batches = _consume(ds, world, workers)
    expected = [(0, r) for r in range(700)] + [(1, r) for r in range(1073)]
    assert sorted(c for cells in seen for c in cells) == expected
    assert len(set(n_batches)) == 1


@pytest.mark.filterwarnings("ignore:.*has no cells")
def test_raw_batches_match_the_file_rows(files):
    ds = H5adStreamDataset(files, batch_size=16, obs_keys=("donor",))
    ds.set_epoch(3)
    truth = [ad.io.read_h5ad(f) for f in files]
    for batch in ds:
        dense = batch["X"].to_dense().numpy()
        for i, (f, r) in enumerate(
            zip(batch["file_index"].tolist(), batch["cell_index"].tolist(), strict=True)
        ):
            assert np.array_equal(dense[i], truth[f].X[r].toarray().ravel())
            assert batch["donor"][i] == truth[f].obs["donor"].iloc[r]
        assert batch["length"].tolist() == (dense != 0).sum(1).tolist()


@pytest.mark.filterwarnings("ignore:.*has no cells")
def test_epochs_are_deterministic_and_differ(files):
    ds = H5adStreamDataset(files, batch_size=8)

    def order(epoch):
        ds.set_epoch(epoch)
        return [
            c
            for b in ds
            for c in zip(b["file_index"].tolist(), b["cell_index"].tolist(), strict=True)
        ]

    assert order(2) == order(2)
    assert order(0) != order(1)


@pytest.mark.filterwarnings("ignore:.*has no cells")
def test_on_the_fly_tokens_equal_the_tokenizer_output(files, tokenizer):
    ds = H5adStreamDataset(files, batch_size=8, tokenizer=tokenizer, length_bucketing=True)
    for batch in ds:
        for i, (f, r) in enumerate(
            zip(batch["file_index"].tolist(), batch["cell_index"].tolist(), strict=True)
        ):
            row = ad.io.read_h5ad(files[f])[r]
            mapping = map_genes(np.array(GENES), tokenizer.vocab, tokenizer.vocab.special_ids)
            want = tokenizer.tokenize_block(
                sp.csr_matrix(row.X), np.asarray(row.X.sum(1)).ravel(), mapping
            )[0]
            n = int(batch["length"][i])
            assert batch["input_ids"][i, :n].tolist() == want.tolist()
            assert batch["attention_mask"][i].sum() == n
            assert (batch["input_ids"][i, n:] == tokenizer.vocab.pad_id).all()
        break


def test_per_cell_examples_feed_a_collating_dataloader(tmp_path, tokenizer):
    f = _write(tmp_path / "a.h5ad", 40)
    ds = H5adCellDataset([f], tokenizer=tokenizer, batch_size=8)
    examples = list(ds)
    assert len(examples) == len(ds) == 40
    assert {"input_ids", "length", "file_index", "cell_index"} <= set(examples[0])

    def pad(batch):
        width = max(len(e["input_ids"]) for e in batch)
        return torch.tensor(
            np.stack([np.pad(e["input_ids"], (0, width - len(e["input_ids"]))) for e in batch])
        )

    shapes = [b.shape[0] for b in DataLoader(ds, batch_size=8, collate_fn=pad)]
    assert shapes == [8] * 5


def test_split_rows_are_streamed(tmp_path):
    fs = [_write(tmp_path / "a.h5ad", 30), _write(tmp_path / "b.h5ad", 20)]
    split = CellSplit.create(fs, group_key="donor", fractions=(0.6, 0.2, 0.2), seed=0)
    got = {}
    for name in ("train", "val", "test"):
        ds = H5adStreamDataset.from_split(split, name, batch_size=4, obs_keys=("donor",))
        got[name] = {d for b in ds for d in b["donor"]}
        assert sum(b["X"].shape[0] for b in ds) == split.counts()[name]
    assert got["train"] == set(split.groups["train"]) and not got["train"] & got["val"]


def test_files_with_other_genes_are_aligned_to_the_vocabulary(tmp_path, tokenizer):
    a = _write(tmp_path / "a.h5ad", 10, genes=GENES[:20])
    b = _write(tmp_path / "b.h5ad", 10, genes=GENES[10:] + ["NOT_IN_VOCAB"], seed=5)
    with pytest.raises(InputError, match="b.h5ad.*var gene ids.*genes="):
        H5adStreamDataset([a, b])
    ds = H5adStreamDataset(
        [a, b], genes=tokenizer.vocab, strategy=SequentialBlockStrategy(), batch_size=10
    )
    batches = list(ds)
    assert batches[0]["X"].shape[1] == len(tokenizer.vocab)
    second = ad.io.read_h5ad(b)
    cols = [tokenizer.vocab[g] for g in GENES[10:]]
    assert np.array_equal(batches[1]["X"].to_dense().numpy()[:, cols], second.X.toarray()[:, :20])
    assert len(list(H5adStreamDataset([a, b], tokenizer=tokenizer, batch_size=10))) == 2


def test_a_file_that_vanishes_mid_epoch_is_named(tmp_path):
    a, b = _write(tmp_path / "a.h5ad", 20), _write(tmp_path / "b.h5ad", 20)
    ds = H5adStreamDataset([a, b], batch_size=10, strategy=SequentialBlockStrategy(buffer_size=10))
    it = iter(ds)
    next(it)
    os.remove(b)
    with pytest.raises(InputError, match="b.h5ad: file vanished"):
        list(it)


def test_a_truncated_file_is_named(tmp_path):
    a, b = _write(tmp_path / "a.h5ad", 20), _write(tmp_path / "b.h5ad", 200, density=0.9)
    ds = H5adStreamDataset([a, b], batch_size=10)
    with open(b, "r+b") as fh:
        fh.truncate(os.path.getsize(b) // 2)
    with pytest.raises(InputError, match="b.h5ad"):
        list(ds)


def test_a_file_truncated_while_open_is_named(tmp_path):
    a = _write(tmp_path / "a.h5ad", 400, density=0.9)
    ds = H5adStreamDataset(
        [a], batch_size=10, strategy=SequentialBlockStrategy(buffer_size=10, block_size=10)
    )
    it = iter(ds)
    next(it)
    with open(a, "r+b") as fh:
        fh.truncate(os.path.getsize(a) // 3)
    # the stat check before a read ("file changed ... truncated"), or, when the read-ahead thread
    # checked just before the truncation, the short read itself ("could not be read ... truncated")
    with pytest.raises(
        InputError, match="a.h5ad: (file changed|rows .* could not be read).* truncated"
    ):
        list(it)


def test_empty_files_are_skipped_and_all_empty_is_an_error(tmp_path):
    e1, e2 = _write(tmp_path / "e1.h5ad", 0), _write(tmp_path / "e2.h5ad", 0)
    full = _write(tmp_path / "f.h5ad", 9)
    with pytest.warns(UserWarning, match="e1.h5ad: has no cells"):
        ds = H5adStreamDataset([e1, full], batch_size=4)
    assert sum(b["X"].shape[0] for b in ds) == 9
    with pytest.raises(InputError, match="none to read"), pytest.warns(UserWarning):
        H5adStreamDataset([e1, e2])


@pytest.fixture(scope="module")
def corpus_rows(tmp_path_factory):
    """A tokenized corpus of two files and its sequences by (file, cell)."""
    tmp = tmp_path_factory.mktemp("corpus")
    fs = [_write(tmp / "a.h5ad", 50), _write(tmp / "b.h5ad", 30, seed=9)]
    vocab = GeneVocab.from_genes(GENES)
    corpus = tokenize_files(
        fs,
        tmp / "corpus",
        vocab=vocab,
        medians={g: 1.0 + i for i, g in enumerate(GENES)},
        config=TokenizeConfig(obs_columns=("donor",)),
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
    return corpus.path, rows


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("workers", [0, 2])
def test_corpus_streaming_yields_every_tokenized_cell_once(corpus_rows, world, workers):
    path, rows = corpus_rows
    seen = []
    for rank in range(world):
        ds = CorpusStreamDataset(
            path,
            batch_size=8,
            length_bucketing=True,
            rank=rank,
            world_size=world,
            obs_keys=("donor",),
            strategy=BlockShuffleStrategy(block_size=4, buffer_size=16),
        )
        n_batches = 0
        for batch in DataLoader(ds, batch_size=None, num_workers=workers):
            n_batches += 1
            for i, key in enumerate(
                zip(batch["file_index"].tolist(), batch["cell_index"].tolist(), strict=True)
            ):
                n = int(batch["length"][i])
                assert batch["input_ids"][i, :n].tolist() == rows[key]
                seen.append(key)
        assert n_batches == len(ds)
    assert sorted(seen) == sorted(rows)


def test_corpus_bad_input_is_named(corpus_rows, tmp_path):
    path, _ = corpus_rows
    with pytest.raises(InputError, match="manifest.json.*not a complete stformer corpus"):
        CorpusStreamDataset(tmp_path)
    with pytest.raises(InputError, match="columns \\['tissue'\\].*choose among"):
        CorpusStreamDataset(path, obs_keys=("tissue",))
    # a shard that vanishes, or is truncated, after the dataset was created
    for damage, message in [
        (os.remove, "vanished after the dataset was created"),
        (lambda f: os.truncate(f, os.path.getsize(f) // 2), "record batches|changed"),
    ]:
        copy = tmp_path / f"corpus_{message[:4]}"
        shutil.copytree(path, copy)
        ds = CorpusStreamDataset(copy, batch_size=8)
        arrow = ds.source.arrow_files[-1]
        damage(arrow)
        with pytest.raises(InputError, match=message) as info:
            list(ds)
        assert str(copy) in str(info.value)


def test_resolve_world_prefers_arguments_then_environment(monkeypatch):
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert resolve_world() == (2, 3)
    assert resolve_world(0, 1) == (0, 1)
    with pytest.raises(ValueError, match="rank"):
        resolve_world(3, 3)


def test_package_import_does_not_import_torch():
    code = "import sys, stformer_data; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
