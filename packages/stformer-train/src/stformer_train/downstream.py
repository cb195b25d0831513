"""Working from a run directory alone: embed an h5ad, evaluate the embeddings, fine-tune a classifier.

``finetune_classifier`` lives in :mod:`stformer_train.finetune` (re-exported here).

A run's ``model/`` folder holds the weights, the vocabulary (``token_dictionary.json``), the gene
medians and the tokenizer settings (``stformer_tokenizer.json``); new cells are tokenized with
exactly those before they reach the model.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

import stformer_data as sd
from stformer_data.atomic import atomic_write_bytes, atomic_write_text, partial_path
from stformer_train.embed import Pooling, embed_sequences
from stformer_train.evaluate import holdout_split, knn_score, pca_of_counts
from stformer_train.finetune import finetune_classifier  # noqa: F401  (moved; kept importable)
from stformer_train.geneformer import FolderModel, open_model

_MISSING_LABELS = ("nan", "NA", "None", "")


#: The files of a trained model: a stformer run (``RUN`` or ``RUN/model``) or a Geneformer folder.
RunModel = FolderModel


def _labels(corpus: sd.Corpus, label_key: str) -> np.ndarray:
    return np.asarray(corpus.dataset[label_key]).astype(str)


def _write_h5ad(adata, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)  # anndata writes to a path, so the rename is ours
    try:
        adata.write_h5ad(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def embed_h5ad(
    run: str | PathLike[str],
    h5ad: str | PathLike[str],
    out: str | PathLike[str],
    *,
    pooling: Pooling = "mean",
    hidden_layer: int = -1,
    batch_size: int = 64,
    progress: bool = True,
) -> Path:
    """Embed every cell of ``h5ad`` with the run's model into ``out`` (``obsm["X_stformer"]``).

    Cells with no gene of the vocabulary get a row of NaN and ``obs["stformer_embedded"] = False``.
    ``pooling`` and ``hidden_layer`` are those of :func:`~stformer_train.embed_sequences`.
    """
    rm = open_model(run)
    adata = sd.open_h5ad(h5ad, backed=False)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = rm.tokenize(h5ad, Path(tmp) / "corpus", progress=progress)
        seqs, types = rm.sequences(corpus)
        emb = embed_sequences(
            rm.load_mlm(),
            seqs,
            token_type_ids=types,
            pad_id=rm.vocab.pad_id,
            pooling=pooling,
            hidden_layer=hidden_layer,
            batch_size=batch_size,
            progress=progress,
        )
        rows = np.asarray(corpus.dataset["cell_index"])
    full = np.full((adata.n_obs, emb.shape[1]), np.nan, dtype=np.float32)
    full[rows] = emb
    adata.obsm["X_stformer"] = full
    adata.obs["stformer_embedded"] = np.isin(np.arange(adata.n_obs), rows)
    adata.uns["stformer"] = {
        "model_dir": str(rm.model_dir),
        "pooling": pooling,
        "hidden_layer": hidden_layer,
    }
    return _write_h5ad(adata, Path(out))


def evaluate_run(
    run: str | PathLike[str],
    h5ad: str | PathLike[str],
    *,
    label_key: str,
    out_dir: str | PathLike[str],
    test_fraction: float = 0.2,
    seed: int = 0,
    k: int = 15,
    pooling: Pooling = "mean",
    hidden_layer: int = -1,
    progress: bool = True,
) -> dict[str, Any]:
    """kNN label transfer to held-out cells: the run's embeddings vs a random-init model and PCA.

    The random-init model has the run's shape and is pooled the same way (``pooling``, ``hidden_layer``).

    Writes ``evaluation.json`` and ``embedding_2d.png`` (2-D PCA of the embeddings coloured by label)
    into ``out_dir`` and returns the scores.
    """
    rm = open_model(run)
    adata = sd.open_h5ad(h5ad, backed=False)
    if label_key not in adata.obs.columns:
        raise sd.InputError(
            h5ad,
            f"obs[{label_key!r}]",
            "does not exist",
            f"pass --label-key with one of {list(adata.obs.columns)}",
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = rm.tokenize(
            h5ad, Path(tmp) / "corpus", obs_columns=(label_key,), progress=progress
        )
        seqs, types = rm.sequences(corpus, hide_phenotype=label_key)
        labels = _labels(corpus, label_key)
        rows = np.asarray(corpus.dataset["cell_index"])
        emb = embed_sequences(
            rm.load_mlm(),
            seqs,
            token_type_ids=types,
            pad_id=rm.vocab.pad_id,
            pooling=pooling,
            hidden_layer=hidden_layer,
            progress=progress,
            desc="embed (pretrained)",
        )
        emb_random = embed_sequences(
            rm.random_init(seed + 1),
            seqs,
            token_type_ids=types,
            pad_id=rm.vocab.pad_id,
            pooling=pooling,
            hidden_layer=hidden_layer,
            progress=progress,
            desc="embed (random init)",
        )
    layer = rm.settings["settings"].get("layer")
    counts = adata.X if layer is None else adata.layers[layer]
    pca = pca_of_counts(counts[rows], seed=seed)
    valid = ~np.isin(labels, _MISSING_LABELS)
    test = holdout_split(labels[valid], test_fraction=test_fraction, seed=seed)
    scores = {
        name: knn_score(x[valid], labels[valid], test, k=k).__dict__
        for name, x in (("stformer", emb), ("random_init", emb_random), ("pca", pca))
    }
    plot = plot_embedding_2d(
        emb[valid],
        labels[valid],
        out_dir / "embedding_2d.png",
        title=f"stformer embeddings ({label_key})",
    )
    result = {
        "label_key": label_key,
        "k": k,
        "test_fraction": test_fraction,
        "seed": seed,
        "pooling": pooling,
        "hidden_layer": hidden_layer,
        "n_cells": int(valid.sum()),
        "scores": scores,
        "plot": str(plot),
    }
    atomic_write_text(out_dir / "evaluation.json", json.dumps(result, indent=1))
    return result


def plot_embedding_2d(x: np.ndarray, labels: np.ndarray, path: Path, *, title: str) -> Path:
    """2-D PCA of ``x`` coloured by label, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    xy = PCA(n_components=2, random_state=0).fit_transform(x)
    fig, ax = plt.subplots(figsize=(7, 5))
    for name in np.unique(labels):
        sel = labels == name
        ax.scatter(xy[sel, 0], xy[sel, 1], s=4, label=str(name)[:30])
    ax.set_xlabel("PC1")
    ax.set_ylabel("PC2")
    ax.set_title(title)
    ax.legend(markerscale=3, fontsize=6, loc="center left", bbox_to_anchor=(1, 0.5))
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, png.getvalue())
