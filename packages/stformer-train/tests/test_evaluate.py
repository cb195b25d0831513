"""kNN label transfer, the held-out split and the PCA baseline on cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.decomposition import PCA

from stformer_train import holdout_split, knn_score, pca_of_counts


def test_knn_score_known_answer():
    # 1-D points, k=1: the train cells are 0 (A), 10 (B), 20 (C); the held-out cells are at
    # 1 (A -> A), 9 (B -> B), 19 (C -> C) and 11 (A -> nearest train cell is B: wrong).
    x = np.array([[0.0], [10.0], [20.0], [1.0], [9.0], [19.0], [11.0]])
    labels = np.array(["A", "B", "C", "A", "B", "C", "A"])
    test = np.array([False, False, False, True, True, True, True])
    s = knn_score(x, labels, test, k=1)
    assert (s.n_train, s.n_test) == (3, 4)
    assert s.accuracy == pytest.approx(0.75)
    # per class F1: A: precision 1/1, recall 1/2 -> 2/3; B: precision 1/2, recall 1 -> 2/3; C: 1.
    assert s.macro_f1 == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)


def test_knn_score_never_sees_held_out_labels():
    # Each held-out cell sits exactly on another held-out cell of its own label (B) but near a
    # training cell labelled A. If held-out cells leaked into the fit, 1-NN would answer B.
    x = np.array([[0.0], [0.1], [5.0], [5.1], [5.0], [5.1]])
    labels = np.array(["A", "A", "A", "A", "B", "B"])
    test = np.array([False, False, False, False, True, True])
    s = knn_score(x, labels, test, k=1)
    assert s.accuracy == 0.0


def test_knn_score_separated_clusters_and_k_clipped_to_train_size():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 0.1, (20, 4)), rng.normal(5, 0.1, (20, 4))])
    labels = np.repeat(["a", "b"], 20)
    test = np.zeros(40, dtype=bool)
    test[[0, 1, 20, 21]] = True
    assert knn_score(x, labels, test, k=5).accuracy == 1.0
    # k larger than the training part is clipped (no error): every test cell gets the majority.
    s = knn_score(x, labels, test, k=1000)
    assert s.n_train == 36 and 0.0 <= s.accuracy <= 1.0


def test_knn_score_rejects_bad_shapes_and_empty_parts():
    x = np.zeros((4, 2))
    with pytest.raises(ValueError, match="one entry per cell"):
        knn_score(x, np.array(["a", "b", "a"]), np.array([True, False, False]))
    with pytest.raises(ValueError, match="non-empty"):
        knn_score(x, np.array(list("abab")), np.zeros(4, dtype=bool))
    with pytest.raises(ValueError, match="non-empty"):
        knn_score(x, np.array(list("abab")), np.ones(4, dtype=bool))


def test_holdout_split_is_stratified_deterministic_and_seeded():
    labels = np.array(["a"] * 50 + ["b"] * 30 + ["c"] * 20)
    m = holdout_split(labels, test_fraction=0.2, seed=0)
    assert m.dtype == bool and m.sum() == 20
    assert [int(m[labels == c].sum()) for c in "abc"] == [10, 6, 4]  # stratified
    assert np.array_equal(m, holdout_split(labels, test_fraction=0.2, seed=0))
    assert not np.array_equal(m, holdout_split(labels, test_fraction=0.2, seed=1))


def test_holdout_split_without_stratification_when_a_class_is_a_singleton():
    labels = np.array(["a"] * 19 + ["rare"])
    m = holdout_split(labels, test_fraction=0.25, seed=0)
    assert m.sum() == 5


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_holdout_split_rejects_fractions_outside_0_1(fraction):
    with pytest.raises(ValueError, match="test_fraction"):
        holdout_split(np.array(list("abab")), test_fraction=fraction)


def _counts(n_cells=60, n_genes=30, seed=0):
    rng = np.random.default_rng(seed)
    return rng.poisson(rng.gamma(1.0, 2.0, size=(n_cells, n_genes))).astype(np.float32)


def test_pca_of_counts_matches_a_dense_reference_up_to_sign():
    counts = _counts()
    counts[3] = 0  # an empty cell must not divide by zero
    got = pca_of_counts(sp.csr_matrix(counts), n_components=5)
    totals = counts.sum(1, keepdims=True)
    totals[totals == 0] = 1
    ref = PCA(n_components=5, svd_solver="full").fit_transform(np.log1p(counts / totals * 1e4))
    assert got.shape == (60, 5) and got.dtype == np.float32
    for j in range(5):
        sign = np.sign(np.dot(got[:, j], ref[:, j]))
        np.testing.assert_allclose(sign * got[:, j], ref[:, j], rtol=1e-3, atol=1e-3)


def test_pca_of_counts_ignores_library_size_and_clips_components():
    counts = _counts(n_cells=40, n_genes=12)
    doubled = counts.copy()
    doubled[::2] *= 2  # same composition, twice the library size
    a = pca_of_counts(counts, n_components=50)
    b = pca_of_counts(doubled, n_components=50)
    assert a.shape == (40, 11)  # n_components clipped to min(shape) - 1
    np.testing.assert_allclose(np.abs(a), np.abs(b), rtol=1e-4, atol=1e-4)
