"""The held-out split a run keeps (``RUN/split.json``): planned once, used by pretraining and
recognised by evaluation only for the pretraining file (issue 18.3)."""

from __future__ import annotations

import json
import shutil

import anndata as ad
import numpy as np
import pytest

from stformer_train import TrainConfig, holdout_split, plan_split, read_split, write_split
from stformer_train.run_dir import corpus_labels, split_corpus


def test_plan_split_holds_out_a_stratified_test_part_and_the_validation_of_split_corpus(
    tiny_corpus, tiny
):
    labels = corpus_labels(tiny_corpus, "cell_type")
    split = plan_split(tiny_corpus, test_fraction=0.2, eval_fraction=0.25, seed=3, labels=labels)
    n = len(tiny_corpus.dataset)
    parts = [set(split.train), set(split.validation), set(split.test)]
    assert sum(map(len, parts)) == n and set().union(*parts) == set(range(n))
    # the test part is holdout_split's (stratified), as `stformer demo` always drew it
    expected = np.flatnonzero(holdout_split(labels, test_fraction=0.2, seed=3))
    np.testing.assert_array_equal(split.test, expected)
    # split_corpus, given the rows trained on, validates on exactly split.validation
    train, val = split_corpus(
        tiny_corpus, tiny, TrainConfig(eval_fraction=0.25, seed=3), split.trained_on.tolist()
    )
    assert len(train) == len(split.train) and len(val) == len(split.validation)
    ds = tiny_corpus.dataset
    assert val["input_ids"] == ds.select(split.validation)["input_ids"]
    assert train["input_ids"] == ds.select(split.train)["input_ids"]
    # no test fraction: every cell is trained on, and split_corpus is unchanged
    none = plan_split(tiny_corpus, seed=3)
    assert len(none.test) == 0 and len(none.trained_on) == n


def test_plan_split_without_labels_and_bad_fractions(tiny_corpus):
    a = plan_split(tiny_corpus, test_fraction=0.25, seed=1)
    b = plan_split(tiny_corpus, test_fraction=0.25, seed=1)
    np.testing.assert_array_equal(a.test, b.test)
    assert len(a.test) == int(np.ceil(0.25 * len(tiny_corpus.dataset)))
    with pytest.raises(ValueError, match="test_fraction"):
        plan_split(tiny_corpus, test_fraction=1.5)
    with pytest.raises(ValueError, match="eval_fraction"):
        plan_split(tiny_corpus, eval_fraction=0.999999)


def test_split_json_names_cells_and_recognises_only_the_pretraining_file(
    tiny_corpus, tiny_h5ad, tmp_path
):
    labels = corpus_labels(tiny_corpus, "cell_type")
    split = plan_split(tiny_corpus, test_fraction=0.2, seed=0, labels=labels)
    run = tmp_path / "run"
    path = write_split(
        run, tiny_corpus, split, test_fraction=0.2, eval_fraction=0.0, seed=0, label_key="cell_type"
    )
    data = json.loads(path.read_text())
    adata = ad.io.read_h5ad(tiny_h5ad)
    rows = np.asarray(tiny_corpus.dataset["cell_index"])
    assert data["counts"] == {"train": len(split.train), "validation": 0, "test": len(split.test)}
    assert data["test"]["obs_name"] == list(adata.obs_names[rows[split.test]])
    kept = read_split(run / "model")  # RUN/model finds RUN/split.json
    assert kept.n_test == len(split.test)
    mask = kept.test_mask(tiny_h5ad, adata.obs_names, rows)
    np.testing.assert_array_equal(np.flatnonzero(mask), split.test)
    # a byte-identical copy elsewhere is the same file; other bytes with the same names are not
    copy = tmp_path / "copy.h5ad"
    shutil.copy(tiny_h5ad, copy)
    np.testing.assert_array_equal(kept.test_mask(copy, adata.obs_names, rows), mask)
    adata.obs["extra"] = 1
    adata.write_h5ad(tmp_path / "other.h5ad")
    assert kept.test_mask(tmp_path / "other.h5ad", adata.obs_names, rows) is None
    assert read_split(tmp_path / "nothing") is None
