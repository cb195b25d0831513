"""protoplast's DistributedAnnDataset, tested against its document (seed 004) on real PBMC files."""

from __future__ import annotations

import math

import anndata
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from stformer_data import SequentialShuffleStrategy, cell_line_metadata_cb
from stformer_data.torch import DistributedAnnDataset


@pytest.fixture(scope="module")
def pbmc_files(shared_data, tmp_path_factory):
    adata = anndata.read_h5ad(shared_data / "sc" / "pbmc68k_reduced_700_counts.h5ad")
    adata.obs["cell_line"] = adata.obs["bulk_labels"]
    adata.layers["counts"] = adata.X.copy()
    folder = tmp_path_factory.mktemp("pbmc_two_ds")
    paths = []
    for i, part in enumerate((adata[:350], adata[350:])):
        path = folder / f"part{i}.h5ad"
        part.copy().write_h5ad(path)
        paths.append(str(path))
    return paths, adata


@pytest.fixture(scope="module")
def split(pbmc_files):
    files, _ = pbmc_files
    return SequentialShuffleStrategy(
        files, 20, 2, validation_size=0.2, metadata_cb=cell_line_metadata_cb, pre_fetch_then_batch=2
    ).split()


def _dense_rows(adata, fidx, start, end):
    offset = 350 * fidx
    return adata.X[offset + start : offset + end].toarray().astype(np.float32)


def test_constructor_and_metadata_attributes(pbmc_files, split):
    files, adata = pbmc_files
    ds = DistributedAnnDataset(files, split.train_indices, split.metadata, "X", 20)
    assert ds.files == files and ds.batches == split.train_indices and ds.mini_batch_size == 20
    assert ds.num_genes == adata.n_vars and ds.metadata is split.metadata  # keys as attributes
    assert ds.sparse_key == "X" and ds.X is None and ds.ad is None


def test_create_distributed_ds_from_split_info_and_dict(split):
    for source in (split, split.to_dict()):
        train = DistributedAnnDataset.create_distributed_ds(source, "X")  # mode="train" default
        val = DistributedAnnDataset.create_distributed_ds(source, "X", "val")
        assert train.batches == split.train_indices and val.batches == split.val_indices
        assert train.mini_batch_size == split.mini_batch_size
    with pytest.raises(TypeError, match="unexpected keyword"):
        DistributedAnnDataset.create_distributed_ds(split, "X", no_such_arg=1)


def test_items_are_sparse_rows_of_the_file(pbmc_files, split):
    files, adata = pbmc_files
    ds = DistributedAnnDataset.create_distributed_ds(split, "X", "val")
    items = list(ds)
    assert len(items) == len(ds)
    expected = [
        (f, s + i, min(s + i + 20, e))
        for f, ranges in enumerate(split.val_indices)
        for s, e in ranges
        for i in range(0, e - s, 20)
    ]
    assert len(items) == len(expected)
    for X, (f, s, e) in zip(items, expected, strict=True):
        assert X.layout == torch.sparse_csr and X.dtype == torch.float32
        np.testing.assert_array_equal(X.to_dense().numpy(), _dense_rows(adata, f, s, e))


def test_whole_ranges_without_mini_batch(pbmc_files, split):
    files, adata = pbmc_files
    ds = DistributedAnnDataset(files, split.val_indices, split.metadata, "X")
    items = list(ds)
    assert len(items) == len(ds) == sum(len(r) for r in split.val_indices)
    assert all(x.shape[0] == 40 for x in items)


def test_layers_key_and_bad_key(pbmc_files, split):
    files, adata = pbmc_files
    ds = DistributedAnnDataset(files, split.val_indices, split.metadata, "layers.counts", 20)
    a, b = next(iter(ds)), next(iter(DistributedAnnDataset(files, split.val_indices, {}, "X", 20)))
    torch.testing.assert_close(a.to_dense(), b.to_dense())
    with pytest.raises(ValueError, match="sparse_key"):
        DistributedAnnDataset(files, split.val_indices, {}, "obsm.X_pca")
    missing = DistributedAnnDataset(files, split.val_indices, {}, "layers.nope", 20)
    with pytest.raises(ValueError, match="layers"):
        next(iter(missing))


def test_transform_hook_adds_obs(pbmc_files, split):
    files, adata = pbmc_files

    class WithLabels(DistributedAnnDataset):
        def transform(self, start, end):
            X = super().transform(start, end)
            labels = self.ad.obs["cell_line"].iloc[start:end].astype(str)
            return {"X": X, "y": torch.tensor([self.cell_lines.index(v) for v in labels])}

    ds = WithLabels.create_distributed_ds(split, "X", "val")
    item = next(iter(ds))
    (f, (s, _)) = next((f, r[0]) for f, r in enumerate(split.val_indices) if r)
    truth = adata.obs["cell_line"].iloc[350 * f + s : 350 * f + s + 20].astype(str)
    assert [split.metadata["cell_lines"][i] for i in item["y"].tolist()] == list(truth)


def test_dataloader_workers_share_the_ranges_once(pbmc_files, split):
    files, _ = pbmc_files

    class Rows(DistributedAnnDataset):
        def transform(self, start, end):
            return torch.tensor([self.files.index(str(self.ad.filename)), start, end])

    ds = Rows(files, split.train_indices, split.metadata, "X", 20)
    seen = [tuple(t.tolist()) for t in DataLoader(ds, batch_size=None, num_workers=2)]
    expected = {
        (f, s + i, s + i + 20)
        for f, r in enumerate(split.train_indices)
        for s, e in r
        for i in range(0, e - s, 20)
    }
    assert len(seen) == len(expected) and set(seen) == expected  # every item exactly once


def test_len_rounds_up(pbmc_files):
    files, _ = pbmc_files
    ds = DistributedAnnDataset(files, [[[0, 50]], [[0, 30]]], {}, "X", 20)
    assert len(ds) == math.ceil(50 / 20) + math.ceil(30 / 20)
