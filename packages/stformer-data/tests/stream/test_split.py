import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from stformer_data import CellSplit, InputError, grouped_random_split


def _write(path, donors):
    n = len(donors)
    a = ad.AnnData(
        X=sp.csr_matrix(np.ones((n, 3), dtype=np.float32)),
        obs=pd.DataFrame({"donor": donors}, index=[f"c{i}" for i in range(n)]),
        var=pd.DataFrame(index=["g0", "g1", "g2"]),
    )
    a.write_h5ad(path)
    return path


def test_category_split_keeps_groups_whole_and_fills_every_split():
    cats = np.repeat([f"d{i}" for i in range(10)], np.arange(1, 11) * 10)
    out = grouped_random_split(cats, (0.7, 0.15, 0.15), seed=4)
    assert sorted(out["train"] + out["val"] + out["test"]) == sorted(set(cats))
    assert all(out[s] for s in ("train", "val", "test"))
    share = {s: np.isin(cats, out[s]).mean() for s in out}
    assert abs(share["train"] - 0.7) < 0.15


def test_fraction_split_counts_are_exact_and_disjoint():
    info = CellSplit.from_counts(["a", "b"], [60, 40], fractions=(0.8, 0.1, 0.1), seed=0)
    assert info.counts() == {"train": 80, "val": 10, "test": 10}
    for f in range(2):
        parts = [info.indices(s)[f] for s in ("train", "val", "test")]
        assert sorted(np.concatenate(parts).tolist()) == list(range(info.n_obs[f]))


def test_grouped_split_from_files_saved_and_reloaded_on_resume(tmp_path):
    files = [
        _write(tmp_path / "a.h5ad", ["d1"] * 5 + ["d2"] * 5),
        _write(tmp_path / "b.h5ad", ["d2"] * 3 + ["d3"] * 4 + ["d4"] * 2),
    ]
    run = tmp_path / "run"
    info = CellSplit.load_or_create(
        run, files, fractions=(0.5, 0.25, 0.25), group_key="donor", seed=1
    )
    donors = [np.array(["d1"] * 5 + ["d2"] * 5), np.array(["d2"] * 3 + ["d3"] * 4 + ["d4"] * 2)]
    for split in ("train", "val", "test"):
        in_split = set(
            np.concatenate(
                [d[r] for d, r in zip(donors, info.indices(split), strict=True)]
            ).tolist()
        )
        assert in_split == set(info.groups[split])
    assert json.loads((run / "split.json").read_text())["group_key"] == "donor"
    again = CellSplit.load_or_create(
        run, files, fractions=(0.9, 0.05, 0.05), seed=99
    )  # resumed: saved split wins
    assert again.groups == info.groups
    assert all(np.array_equal(a, b) for a, b in zip(again.codes, info.codes, strict=True))


def test_same_seed_same_split_other_seed_other_split():
    a = CellSplit.from_counts(["x"], [200], seed=5)
    b = CellSplit.from_counts(["x"], [200], seed=5)
    c = CellSplit.from_counts(["x"], [200], seed=6)
    assert np.array_equal(a.codes[0], b.codes[0]) and not np.array_equal(a.codes[0], c.codes[0])


def test_saved_split_for_other_files_or_changed_file_is_refused(tmp_path):
    f = _write(tmp_path / "a.h5ad", ["d1"] * 4 + ["d2"] * 4 + ["d3"] * 4)
    CellSplit.load_or_create(tmp_path / "run", [f], seed=0)
    with pytest.raises(InputError, match="files"):
        CellSplit.load_or_create(tmp_path / "run", [tmp_path / "other.h5ad"])
    _write(f, ["d1"] * 5)
    with pytest.raises(InputError, match="n_obs"):
        CellSplit.load_or_create(tmp_path / "run", [f])


def test_missing_group_key_names_the_column(tmp_path):
    f = _write(tmp_path / "a.h5ad", ["d1"] * 3)
    with pytest.raises(InputError, match="obs\\['sample'\\]"):
        CellSplit.create([f], group_key="sample")


@pytest.mark.parametrize("fractions", [(0.5, 0.5), (0.9, 0.2, 0.0), (-0.1, 0.6, 0.5)])
def test_bad_fractions_are_refused(fractions):
    with pytest.raises(ValueError, match="fractions"):
        CellSplit.from_counts(["a"], [10], fractions=fractions)
