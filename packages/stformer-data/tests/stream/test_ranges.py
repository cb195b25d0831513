"""protoplast's ShuffleStrategy, SequentialShuffleStrategy, SplitInfo, ann_split_data and
cell_line_metadata_cb, tested against their document (seed 004) on two real PBMC files."""

from __future__ import annotations

import anndata
import pytest

from stformer_data import (
    InputError,
    SequentialShuffleStrategy,
    ShuffleStrategy,
    SplitInfo,
    ann_split_data,
    cell_line_metadata_cb,
)


@pytest.fixture(scope="module")
def pbmc_files(shared_data, tmp_path_factory):
    """The 700-cell PBMC sample as two files (350 + 350 cells), bulk_labels as cell_line."""
    adata = anndata.read_h5ad(shared_data / "sc" / "pbmc68k_reduced_700_counts.h5ad")
    adata.obs["cell_line"] = adata.obs["bulk_labels"]
    folder = tmp_path_factory.mktemp("pbmc_two")
    paths = []
    for i, part in enumerate((adata[:350], adata[350:])):
        path = folder / f"part{i}.h5ad"
        part.copy().write_h5ad(path)
        paths.append(str(path))
    return paths, adata


def _rows(per_file):
    return {(f, r) for f, ranges in enumerate(per_file) for s, e in ranges for r in range(s, e)}


def _n_ranges(per_file):
    return sum(len(r) for r in per_file)


# --- SplitInfo ------------------------------------------------------------------------------------
def test_split_info_fields_and_to_dict():
    info = SplitInfo(
        ["a.h5ad", "b.h5ad"], [[[0, 4]], [[0, 4]]], [[[4, 6]], []], [[], [[4, 6]]], {"k": 1}
    )
    assert info.mini_batch_size is None  # documented default
    assert info.to_dict() == {
        "files": ["a.h5ad", "b.h5ad"],
        "train_indices": [[[0, 4]], [[0, 4]]],
        "val_indices": [[[4, 6]], []],
        "test_indices": [[], [[4, 6]]],
        "metadata": {"k": 1},
        "mini_batch_size": None,
    }
    assert SplitInfo(**info.to_dict()) == info  # a dataclass: round trip through its dict


def test_split_info_positional_order_and_mini_batch():
    info = SplitInfo(["a"], [[[0, 2]]], [[]], [[]], {}, 2)
    assert (info.files, info.train_indices, info.mini_batch_size) == (["a"], [[[0, 2]]], 2)
    with pytest.raises(ValueError, match="one list of ranges per file"):
        SplitInfo(["a", "b"], [[[0, 2]]], [[], []], [[], []], {})


# --- ShuffleStrategy (abstract) -------------------------------------------------------------------
def test_shuffle_strategy_is_abstract_and_subclassable(pbmc_files):
    files, _ = pbmc_files
    with pytest.raises(TypeError):
        ShuffleStrategy(files, 10, 1)

    class WholeFiles(ShuffleStrategy):
        """A custom strategy as the document shows: subclass, implement split and mixer."""

        def split(self):
            n = [anndata.read_h5ad(f, backed="r").n_obs for f in self.file_paths]
            return SplitInfo(self.file_paths, [[[0, k]] for k in n], [[], []], [[], []], {})

        def mixer(self, batch):
            return batch

    s = WholeFiles(files, 10, 2)
    assert (s.file_paths, s.batch_size, s.total_workers) == (files, 10, 2)
    assert (s.test_size, s.validation_size, s.random_seed) == (None, None, 42)
    assert s.metadata_cb is None and s.is_shuffled is True  # documented defaults
    assert s.is_mixer is False
    assert s.split().train_indices == [[[0, 350]], [[0, 350]]]
    assert s.mixer([1, 2]) == [1, 2]
    # rng: seeded by random_seed, so the same seed draws the same numbers
    assert (
        WholeFiles(files, 10, 2, random_seed=3).rng.random()
        == WholeFiles(files, 10, 2, random_seed=3).rng.random()
    )


# --- SequentialShuffleStrategy ----------------------------------------------------------------------
def test_sequential_defaults(pbmc_files):
    files, _ = pbmc_files
    s = SequentialShuffleStrategy(files, 10, 2)
    assert s.is_shuffled is False and s.pre_fetch_then_batch == 16 and s.drop_last is True
    assert s.test_size is None and s.validation_size is None and s.random_seed == 42
    assert s.is_mixer is False
    with pytest.raises(NotImplementedError):
        s.mixer([])


def test_sequential_split_ranges_and_mini_batch(pbmc_files):
    files, adata = pbmc_files
    s = SequentialShuffleStrategy(
        files,
        25,
        2,
        test_size=0.1,
        validation_size=0.2,
        metadata_cb=cell_line_metadata_cb,
        pre_fetch_then_batch=2,
    )
    info = s.split()
    assert isinstance(info, SplitInfo)
    assert info.files == files and info.mini_batch_size == 25
    every = [
        r
        for split in (info.train_indices, info.val_indices, info.test_indices)
        for f in split
        for r in f
    ]
    assert all(e - s_ == 50 for s_, e in every)  # pre_fetch_then_batch * batch_size rows per range
    # 7 full ranges of 50 rows per file (the 350th row... none left over), 14 in all
    train, val, test = _rows(info.train_indices), _rows(info.val_indices), _rows(info.test_indices)
    assert not (train & val) and not (train & test) and not (val & test)
    for split in (info.train_indices, info.val_indices, info.test_indices):
        assert _n_ranges(split) % 2 == 0  # every worker gets as many ranges
        for ranges in split:
            assert ranges == sorted(ranges)  # sequential: file order
    assert _n_ranges(info.val_indices) >= 2 and _n_ranges(info.test_indices) >= 2
    assert info.metadata["num_genes"] == adata.n_vars
    assert info.metadata["num_classes"] == adata.obs["bulk_labels"].nunique()


def test_sequential_without_prefetch_yields_whole_ranges(pbmc_files):
    files, _ = pbmc_files
    info = SequentialShuffleStrategy(files, 40, 1, pre_fetch_then_batch=None).split()
    assert info.mini_batch_size is None
    assert all(e - s == 40 for f in info.train_indices for s, e in f)


def test_sequential_drop_last_false_keeps_every_row(pbmc_files):
    files, _ = pbmc_files
    info = SequentialShuffleStrategy(
        files, 40, 3, validation_size=0.2, pre_fetch_then_batch=None, drop_last=False
    ).split()
    rows = _rows(info.train_indices) | _rows(info.val_indices)
    assert rows == {(f, r) for f in range(2) for r in range(350)}  # 350 = 8 * 40 + 30: kept
    assert _n_ranges(info.train_indices) % 3 == 0 and _n_ranges(info.val_indices) % 3 == 0


def test_sequential_drop_last_drops_remainder(pbmc_files):
    files, _ = pbmc_files
    info = SequentialShuffleStrategy(files, 40, 3, pre_fetch_then_batch=None).split()
    assert all(e - s == 40 for f in info.train_indices for s, e in f)
    assert _n_ranges(info.train_indices) % 3 == 0  # 16 full ranges -> 15


def test_sequential_seed_and_shuffle(pbmc_files):
    files, _ = pbmc_files

    def split(**kw):
        return SequentialShuffleStrategy(
            files, 10, 1, validation_size=0.3, pre_fetch_then_batch=1, **kw
        ).split()

    assert split(random_seed=1) == split(random_seed=1)
    assert split(random_seed=1).val_indices != split(random_seed=2).val_indices
    shuffled = split(random_seed=1, is_shuffled=True)
    assert _rows(shuffled.train_indices) == _rows(split(random_seed=1).train_indices)
    assert any(r != sorted(r) for r in shuffled.train_indices)


def test_sequential_rejects_empty_split_and_bad_args(pbmc_files):
    files, _ = pbmc_files
    with pytest.raises(ValueError, match="cannot be split"):
        SequentialShuffleStrategy(files, 2000, 1, validation_size=0.2).split()  # 32000-row ranges
    with pytest.raises(ValueError, match="batch_size"):
        SequentialShuffleStrategy(files, 0, 1)
    with pytest.raises(TypeError):
        SequentialShuffleStrategy(files, 10, 1, prefetch_then_batch=2)  # misspelt: TypeError


# --- ann_split_data and the metadata callback -----------------------------------------------------
def test_ann_split_data_returns_split_info_kwargs(pbmc_files):
    import random

    files, _ = pbmc_files
    out = ann_split_data(files, 50, 2, 0.0, 0.2, random.Random(0), cell_line_metadata_cb)
    assert set(out) == {"files", "train_indices", "val_indices", "test_indices", "metadata"}
    assert out["test_indices"] == [[], []]
    SplitInfo(**out)


def test_ann_split_data_checks_files(pbmc_files, tmp_path):
    files, adata = pbmc_files
    with pytest.raises(InputError, match="does not exist"):
        ann_split_data([str(tmp_path / "missing.h5ad")], 10, 1)
    other = adata[:100, :50].copy()
    path = tmp_path / "fewer_genes.h5ad"
    other.write_h5ad(path)
    with pytest.raises(InputError, match="var_names"):
        ann_split_data([files[0], str(path)], 10, 1)


def test_cell_line_metadata_cb_merges_files(pbmc_files):
    files, adata = pbmc_files
    meta: dict = {}
    for f in files:
        cell_line_metadata_cb(anndata.read_h5ad(f, backed="r"), meta)
    assert meta["num_genes"] == adata.n_vars
    assert sorted(meta["cell_lines"]) == sorted(adata.obs["bulk_labels"].cat.categories)
    assert meta["num_classes"] == len(meta["cell_lines"])


def test_cell_line_metadata_cb_names_missing_column(pbmc_files):
    _, adata = pbmc_files
    with pytest.raises(InputError, match="cell_line"):
        cell_line_metadata_cb(anndata.AnnData(adata.X[:5]), {})
