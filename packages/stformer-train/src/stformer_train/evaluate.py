"""Honest evaluation of cell embeddings: kNN label transfer to held-out cells, with baselines."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from sklearn.decomposition import PCA
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier


@dataclass(frozen=True)
class KnnScore:
    accuracy: float
    macro_f1: float
    n_train: int
    n_test: int


def holdout_split(labels: np.ndarray, *, test_fraction: float = 0.2, seed: int = 0) -> np.ndarray:
    """Boolean mask of held-out cells, stratified by label where every class has >= 2 cells."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    labels = np.asarray(labels)
    idx = np.arange(len(labels))
    _, counts = np.unique(labels, return_counts=True)
    stratify = labels if counts.min() >= 2 else None
    _, test = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=stratify)
    mask = np.zeros(len(labels), dtype=bool)
    mask[test] = True
    return mask


def knn_score(
    embeddings: np.ndarray, labels: np.ndarray, test_mask: np.ndarray, *, k: int = 15
) -> KnnScore:
    """Fit a k-nearest-neighbour classifier on the training cells and score it on the held-out cells."""
    labels = np.asarray(labels)
    test_mask = np.asarray(test_mask, dtype=bool)
    if embeddings.shape[0] != labels.shape[0] or labels.shape[0] != test_mask.shape[0]:
        raise ValueError("embeddings, labels and test_mask must have one entry per cell")
    n_train = int((~test_mask).sum())
    if n_train == 0 or test_mask.sum() == 0:
        raise ValueError("both the training and the held-out part must be non-empty")
    clf = KNeighborsClassifier(n_neighbors=min(k, n_train))
    clf.fit(embeddings[~test_mask], labels[~test_mask])
    pred = clf.predict(embeddings[test_mask])
    truth = labels[test_mask]
    return KnnScore(
        accuracy=float(accuracy_score(truth, pred)),
        macro_f1=float(f1_score(truth, pred, average="macro", zero_division=0)),
        n_train=n_train,
        n_test=int(test_mask.sum()),
    )


def pca_of_counts(
    counts: sp.spmatrix | np.ndarray,
    *,
    n_components: int = 50,
    target_sum: float = 1e4,
    seed: int = 0,
) -> np.ndarray:
    """PCA of log1p(counts per ``target_sum``): the standard baseline for learned embeddings.

    Sparse input is never densified (sklearn's PCA centres sparse data implicitly).
    """
    X = sp.csr_matrix(counts, dtype=np.float64)
    totals = np.asarray(X.sum(axis=1)).ravel()
    totals[totals == 0] = 1.0
    X = sp.diags(target_sum / totals) @ X
    X.data = np.log1p(X.data)
    n_components = max(1, min(n_components, min(X.shape) - 1))
    pca = PCA(n_components=n_components, svd_solver="arpack", random_state=seed)
    return pca.fit_transform(X).astype(np.float32)
