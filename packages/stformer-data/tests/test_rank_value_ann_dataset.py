"""RankValueAnnDataset and rank_value_metadata_cb: rank-value tokens of protoplast row ranges."""

from __future__ import annotations

import anndata
import numpy as np
import pytest
import scipy.sparse as sp

import stformer_data as sd
from stformer_data.torch import RankValueAnnDataset

pytestmark = pytest.mark.shared_data


@pytest.fixture(scope="module")
def halves(shared_data, tmp_path_factory):
    adata = anndata.read_h5ad(shared_data / "sc" / "pbmc68k_reduced_700_counts.h5ad")
    folder = tmp_path_factory.mktemp("pbmc_rank_ranges")
    paths = []
    for i, part in enumerate((adata[:350], adata[350:])):
        path = folder / f"part{i}.h5ad"
        part.copy().write_h5ad(path)
        paths.append(str(path))
    return paths


def _split(files, **kwargs):
    cb = sd.rank_value_metadata_cb(model_input_size=32, **kwargs)
    strategy = sd.SequentialShuffleStrategy(
        files, 20, 1, validation_size=0.1, metadata_cb=cb, pre_fetch_then_batch=2
    )
    return strategy.split()


def test_metadata_has_what_model_and_dataset_need(halves):
    info = _split(halves, extra={"note": "kept"})
    meta = info.metadata
    genes = list(anndata.read_h5ad(halves[0], backed="r").var_names)
    assert list(meta["vocab"])[2:] == genes  # <pad>, <mask>, then the genes in file order
    assert (meta["vocab_size"], meta["pad_token_id"]) == (len(genes) + 2, meta["vocab"].pad_id)
    assert meta["model_input_size"] == 32 and meta["note"] == "kept"
    # medians over both files: exactly compute_medians_exact's, or the sketch's estimate of them
    exact = sd.compute_medians_exact(halves)
    assert _split(halves, exact=True).metadata["medians"] == exact
    assert meta["medians"].keys() == exact.keys()
    assert meta["medians"] == pytest.approx(exact, rel=0.2)
    given = {"fixed": 1.0}
    assert _split(halves, medians=given).metadata["medians"] == given


def test_items_are_the_tokenizers_tokens_of_the_rows(halves):
    info = _split(halves)
    meta = info.metadata
    ds = RankValueAnnDataset.create_distributed_ds(info, "X", "train")
    batch = next(iter(ds))
    n, width = batch["input_ids"].shape
    assert n == 20 and width <= 32
    assert batch["attention_mask"].sum(dim=1).tolist() == batch["length"].tolist()
    # the same rows through the tokenizer directly
    start, end = info.train_indices[0][0][0], info.train_indices[0][0][0] + 20
    adata = anndata.read_h5ad(halves[0])
    tok = sd.RankValueTokenizer(
        meta["vocab"], meta["medians"], sd.RankTokenizerConfig(model_input_size=32)
    )
    mapping = sd.map_genes(np.asarray(adata.var_names), meta["vocab"], meta["vocab"].special_ids)
    n_counts = np.asarray(adata.obs["n_counts"], dtype=np.float64)
    block = tok.tokenize(
        sd.Cells(
            counts=sp.csr_matrix(adata.X[start:end], dtype=np.float32),
            file=sd.FileCells(mapping=mapping, n_counts=n_counts),
            first_row=start,
        )
    )
    for i in range(n):
        length = int(batch["length"][i])
        assert batch["input_ids"][i, :length].tolist() == block.row(i).tolist()
        assert (batch["input_ids"][i, length:] == meta["vocab"].pad_id).all()
    assert len(ds) == sum(1 for _ in ds)


def test_missing_metadata_names_the_callback(halves):
    info = sd.SequentialShuffleStrategy(halves, 20, 1, pre_fetch_then_batch=2).split()
    with pytest.raises(KeyError, match="rank_value_metadata_cb"):
        RankValueAnnDataset.create_distributed_ds(info, "X", "train")
