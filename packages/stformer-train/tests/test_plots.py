from __future__ import annotations

import sys

import numpy as np
import pytest

from stformer_train.plots import (
    category_colors,
    embedding_map,
    plot_embedding_2d,
    plot_loss_curve,
)
from stformer_train.progress import MissingBackend


def test_loss_curve_with_validation_and_chance_level_writes_a_png(tmp_path):
    history = [{"loss": 4.6 - 0.01 * i, "step": 10 * i, "epoch": 0.1 * i} for i in range(1, 8)]
    history += [{"eval_loss": 4.55, "step": 50}, {"train_runtime": 3.0, "step": 70}]
    path = plot_loss_curve(history, tmp_path / "loss.png", vocab_size=102)
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_palette_does_not_repeat_past_ten_or_sixty_classes():
    for n in (10, 11, 60, 75):
        colors = category_colors(n)
        assert len(colors) == n and len(set(colors)) == n


def test_embedding_panels_with_baselines_and_scores_write_a_png(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.array([f"type {i % 14}" for i in range(60)])
    path = plot_embedding_2d(
        rng.normal(size=(60, 8)),
        labels,
        tmp_path / "emb.png",
        title="cells",
        baselines={
            "PCA of counts": rng.normal(size=(60, 5)),
            "random-init model": rng.normal(size=(60, 8)),
        },
        scores={"stformer": {"accuracy": 0.8, "macro_f1": 0.7}},
        method="pca",
    )
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_umap_asked_for_without_umap_learn_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "umap", None)
    with pytest.raises(
        MissingBackend, match=r"uv pip install umap-learn .*pip: pip install umap-learn"
    ):
        embedding_map(np.zeros((10, 3)), method="umap")
    xy, method = embedding_map(np.random.default_rng(0).normal(size=(10, 3)), method="auto")
    assert method == "PCA" and xy.shape == (10, 2)
