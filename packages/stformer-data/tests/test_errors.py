"""Every bad input gives an InputError naming the file and the field, and leaves no complete corpus."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from stformer_data import (
    GeneVocab,
    InputError,
    NeighborhoodConfig,
    TokenizeConfig,
    is_complete_corpus,
    tokenize_files,
)


def _write(tmp_path, adata, name="bad.h5ad"):
    path = tmp_path / name
    adata.write_h5ad(path)
    return path


def _fails(tmp_path, path, vocab, medians, match, **config):
    out = tmp_path / "out"
    with pytest.raises(InputError, match=match) as err:
        tokenize_files(
            [path],
            out,
            vocab=vocab,
            medians=medians,
            config=TokenizeConfig(**config),
            progress=False,
        )
    assert str(path) in str(err.value) and "Fix:" in str(err.value)
    assert not out.exists() and not is_complete_corpus(out)
    return err.value


def _with_value(adata, row, col, value):
    a = adata.copy()
    X = a.X.toarray()
    X[row, col] = value
    a.X = sp.csr_matrix(X)
    return a


def test_non_integer_counts_refused_unless_allowed(tmp_path, small_h5ad):
    _, adata, vocab, med = small_h5ad
    path = _write(tmp_path, _with_value(adata, 5, 3, 1.5))
    _fails(tmp_path, path, vocab, med, "non-integer")
    ok = tokenize_files(
        [path],
        tmp_path / "ok",
        vocab=vocab,
        medians=med,
        progress=False,
        config=TokenizeConfig(allow_non_integer=True),
    )
    assert ok.manifest["counts"]["cells_written"] == 400


def test_negative_counts(tmp_path, small_h5ad):
    _, adata, vocab, med = small_h5ad
    _fails(tmp_path, _write(tmp_path, _with_value(adata, 0, 0, -2.0)), vocab, med, "negative")


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_and_inf(tmp_path, small_h5ad, value):
    _, adata, vocab, med = small_h5ad
    _fails(
        tmp_path, _write(tmp_path, _with_value(adata, 399, 7, value)), vocab, med, "NaN or infinite"
    )


def test_duplicate_gene_ids_are_summed_with_a_warning_and_reported(tmp_path, small_h5ad):
    _, adata, vocab, med = small_h5ad
    a = adata.copy()
    a.var_names = [a.var_names[0]] + list(a.var_names[:-1])  # column 1 repeats column 0's id
    path = _write(tmp_path, a)
    with pytest.warns(UserWarning, match="summed"):
        c = tokenize_files([path], tmp_path / "c", vocab=vocab, medians=med, progress=False)
    assert c.manifest["sources"][0]["n_duplicate_gene_columns_summed"] == 1


def test_no_gene_in_vocabulary(tmp_path, small_h5ad):
    path, _, _, med = small_h5ad
    _fails(
        tmp_path, path, GeneVocab.from_genes(["ENSG_OTHER"]), med, "match no gene of the vocabulary"
    )


def test_missing_gene_id_column(tmp_path, small_h5ad):
    path, _, vocab, med = small_h5ad
    _fails(tmp_path, path, vocab, med, r"var\['ensembl'\] does not exist", gene_id_key="ensembl")


def test_missing_obs_columns(tmp_path, small_h5ad):
    path, _, vocab, med = small_h5ad
    _fails(
        tmp_path, path, vocab, med, r"obs columns \['donor'\] do not exist", obs_columns=("donor",)
    )


def test_missing_layer(tmp_path, small_h5ad):
    path, _, vocab, med = small_h5ad
    _fails(tmp_path, path, vocab, med, r"layers\['counts'\] does not exist", layer="counts")


def test_neighbourhood_mode_without_coordinates(tmp_path, small_h5ad):
    _, adata, vocab, med = small_h5ad
    a = adata.copy()
    del a.obsm["spatial"]
    _fails(tmp_path, _write(tmp_path, a), vocab, med, "needs spot coordinates", mode="neighborhood")


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_truncated_or_corrupt_h5ad(tmp_path, small_h5ad, damage):
    path, _, vocab, med = small_h5ad
    data = path.read_bytes()
    bad = tmp_path / "damaged.h5ad"
    bad.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not an hdf5 file" * 100)
    _fails(tmp_path, bad, vocab, med, "cannot be read as h5ad")


def test_input_errors_survive_pickling_from_worker_processes():
    import pickle

    err = pickle.loads(pickle.dumps(InputError("x.h5ad", "obs['a']", "is missing", "add it")))
    assert (
        isinstance(err, InputError) and err.field == "obs['a']" and str(err).endswith("Fix: add it")
    )


def test_missing_section_key_is_refused_before_any_work(tmp_path, small_h5ad):
    path, _, vocab, med = small_h5ad
    _fails(
        tmp_path,
        path,
        vocab,
        med,
        r"obs\['slide'\] does not exist",
        mode="neighborhood",
        neighborhood=NeighborhoodConfig(section_key="slide"),
    )


def test_bad_counts_found_by_a_worker_process_raise_the_same_error(tmp_path, small_h5ad):
    _, adata, vocab, med = small_h5ad
    path = _write(tmp_path, _with_value(adata, 350, 3, -1.0))
    _fails(tmp_path, path, vocab, med, "negative", num_proc=2, rows_per_unit=100)
