"""IterableAnnDataset (Transformeromics): tensors with attention_mask and labels; work split by file."""

import anndata
import pytest
import torch
from torch.utils.data import DataLoader

from stformer_data import GeneTokenizer, InputError
from stformer_data.shards import IterableAnnDataset

PBMC = "sc/pbmc68k_reduced_700_counts.h5ad"


@pytest.fixture(scope="module")
def shards(shared_data, tmp_path_factory):
    adata = anndata.io.read_h5ad(shared_data / PBMC)
    folder = tmp_path_factory.mktemp("shards")
    paths = []
    for i in range(3):
        paths.append(folder / f"s{i}.h5ad")
        adata[i * 100 : (i + 1) * 100].copy().write_h5ad(paths[-1])
    return adata, paths


def test_items_and_labels(shards):
    adata, paths = shards
    tok = GeneTokenizer.from_adata(adata, included_phenotypes=["phase"])
    ds = IterableAnnDataset(paths, tok, label_key="bulk_labels")
    items = list(ds)
    assert len(items) == len(ds) == 300
    first = items[0]
    assert first["input_ids"].dtype == torch.long and first["attention_mask"].tolist() == [1] * len(
        first["input_ids"]
    )
    assert ds.label_names[int(first["labels"])] == adata.obs["bulk_labels"].iloc[0]
    reg = IterableAnnDataset(paths[:1], tok, label_key="n_counts", regression=True)
    assert next(iter(reg))["labels"].dtype == torch.float32 and reg.num_labels == 1


def test_each_worker_reads_whole_shards(shards):
    adata, paths = shards
    tok = GeneTokenizer.from_adata(adata)
    ds = IterableAnnDataset(paths, tok)
    assert [ds.worker_files(w, 2) for w in (0, 1)] == [[paths[0], paths[2]], [paths[1]]]
    seen = [len(b["input_ids"]) for b in DataLoader(ds, batch_size=None, num_workers=2)]
    assert len(seen) == 300
    four = list(DataLoader(IterableAnnDataset(paths, tok), batch_size=None, num_workers=4))
    assert len(four) == 300  # more workers than shards: the extra worker idles, nothing is repeated


def test_missing_file_and_label(shards, tmp_path):
    adata, paths = shards
    tok = GeneTokenizer.from_adata(adata)
    with pytest.raises(InputError, match="does not exist"):
        IterableAnnDataset([tmp_path / "nope.h5ad"], tok)
    with pytest.raises(InputError, match="no_such"):
        IterableAnnDataset(paths, tok, label_key="no_such")
