"""Working from a run directory alone: embed an h5ad, evaluate the embeddings, fine-tune a classifier.

``finetune_classifier`` lives in :mod:`stformer_train.finetune` (re-exported here).

A run's ``model/`` folder holds the weights, the vocabulary (``token_dictionary.json``), the gene
medians and the tokenizer settings (``stformer_tokenizer.json``); new cells are tokenized with
exactly those before they reach the model.
"""

from __future__ import annotations

import json
import os
import tempfile
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

import stformer_data as sd
from stformer_data.atomic import atomic_write_text, partial_path
from stformer_train.api import embed, open_for_input
from stformer_train.embedding import Pooling, embed_sequences
from stformer_train.evaluate import holdout_split, knn_score, pca_of_counts
from stformer_train.finetune import finetune_classifier  # noqa: F401  (moved; kept importable)
from stformer_train.geneformer import FolderModel
from stformer_train.plots import plot_embedding_2d  # moved to plots.py; kept importable here
from stformer_train.run_dir import MISSING_LABELS, run_held_out

_MISSING_LABELS = MISSING_LABELS


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
    run: str | PathLike[str] | FolderModel,
    h5ad: str | PathLike[str],
    out: str | PathLike[str],
    *,
    key_added: str = "X_stformer",
    layer: str | None = None,
    gene_id_key: str | None = None,
    pooling: Pooling = "mean",
    hidden_layer: int = -1,
    batch_size: int = 64,
    progress: bool = True,
) -> Path:
    """Embed every cell of ``h5ad`` with the run's model into a new file ``out`` (atomically).

    The file-to-file form of :func:`stformer_train.embed` (same arguments): ``out`` is ``h5ad``
    with ``obsm[key_added]``, ``uns[key_added]["params"]`` and ``obs["stformer_embedded"]``.
    """
    adata = embed(
        h5ad,
        run,
        key_added=key_added,
        layer=layer,
        gene_id_key=gene_id_key,
        pooling=pooling,
        hidden_layer=hidden_layer,
        batch_size=batch_size,
        progress=progress,
    )
    return _write_h5ad(adata, Path(out))


def held_out_mask(
    run: str | PathLike[str],
    h5ad: str | PathLike[str],
    obs_names: Any,
    rows: np.ndarray,
    labels: np.ndarray,
    *,
    test_fraction: float,
    seed: int,
) -> tuple[np.ndarray, str, str]:
    """Which of ``rows`` (labelled cells of ``h5ad``, one label each) to score on: the run's own
    held-out cells when ``h5ad`` is a pretraining file of the run (``RUN/split.json``), else a
    new stratified ``test_fraction`` split seeded by ``seed``.

    Returns the mask, ``"run"`` or ``"new"``, and a sentence for the user saying which (a new
    split says that its cells may have been seen in pretraining). :func:`evaluate_run` scores on
    it; a fine-tuning run should too.
    """
    mask, why = run_held_out(run, h5ad, obs_names, rows)
    if mask is not None:
        return mask, "run", why
    mask = holdout_split(labels, test_fraction=test_fraction, seed=seed)
    return (
        mask,
        "new",
        f"held-out cells: a new {test_fraction:g} split (seed {seed}), as {why}; "
        "these cells may have been seen in pretraining",
    )


def evaluate_run(
    run: str | PathLike[str] | FolderModel,
    h5ad: str | PathLike[str],
    *,
    label_key: str = "cell_type",
    out_dir: str | PathLike[str],
    layer: str | None = None,
    gene_id_key: str | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    k: int = 15,
    pooling: Pooling = "mean",
    hidden_layer: int = -1,
    batch_size: int = 64,
    embeddings_path: str | PathLike[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """kNN label transfer to held-out cells: the run's embeddings vs a random-init model and PCA.

    Held-out means held out: when ``h5ad`` is a file the run was pretrained on (its
    ``split.json``, written by ``stformer pretrain`` and ``stformer demo``), the test cells are
    the run's own held-out cells; otherwise a stratified ``test_fraction`` split seeded by
    ``seed`` is drawn and the result says that these cells may have been seen in pretraining
    (``result["split"]`` is ``"run"`` or ``"new"``, ``result["split_note"]`` the sentence).

    The random-init model has the run's shape and is pooled the same way (``pooling``,
    ``hidden_layer``). ``layer`` / ``gene_id_key`` are those of :func:`stformer_train.embed`.
    Writes ``evaluation.json`` and ``embedding_2d.png`` (2-D PCA of the embeddings coloured by
    label) into ``out_dir``; with ``embeddings_path`` also an ``.h5ad`` with the labelled cells'
    ``obsm["X_stformer"]``, ``obsm["X_random_init"]``, ``obsm["X_pca"]`` and
    ``obs["stformer_split"]``. Returns the scores.
    """
    import anndata as ad

    rm = open_for_input(run, gene_id_key=gene_id_key, layer=layer)
    adata = sd.open_h5ad(h5ad, backed=False)
    if label_key not in adata.obs.columns:
        raise sd.InputError(
            h5ad,
            f"obs[{label_key!r}]",
            "does not exist",
            f"pass --label-key with one of {list(adata.obs.columns)}",
        )
    n_labelled = int((~adata.obs[label_key].astype(str).isin(_MISSING_LABELS)).sum())
    if n_labelled < 2:  # kNN transfer needs a cell to learn from and one held out
        raise sd.InputError(
            h5ad,
            f"obs[{label_key!r}]",
            f"labels {n_labelled} cell(s); kNN label transfer needs at least 2 (one to train on, "
            "one held out), so no score would mean anything",
            "pass a file with more labelled cells",
        )
    labelled = adata.obs[label_key].astype(str)
    counts = labelled[~labelled.isin(_MISSING_LABELS)].value_counts()
    if len(counts) < 2:  # every cell would be "right": accuracy and macro-F1 of 1.000 mean nothing
        raise sd.InputError(
            h5ad,
            f"obs[{label_key!r}]",
            f"has a single class ({counts.index[0]!r}: {int(counts.iloc[0])} cells), so kNN "
            "accuracy and macro-F1 would be 1.000 whatever the embeddings",
            "pass a --label-key with at least two classes, or cells of more than one class",
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
        embs = {}
        for name, model in (
            ("pretrained", rm.load_mlm()),
            ("random init", rm.random_init(seed + 1)),
        ):
            embs[name] = embed_sequences(
                model,
                seqs,
                token_type_ids=types,
                pad_id=rm.vocab.pad_id,
                pooling=pooling,
                hidden_layer=hidden_layer,
                batch_size=batch_size,
                progress=progress,
                desc=f"embed ({name})",
            )
    emb, emb_random = embs["pretrained"], embs["random init"]
    counts = adata.X if layer is None else adata.layers[layer]
    pca = pca_of_counts(counts[rows], seed=seed)
    valid = ~np.isin(labels, MISSING_LABELS)
    test, split_kind, note = held_out_mask(
        rm.model_dir,
        h5ad,
        adata.obs_names,
        rows[valid],
        labels[valid],
        test_fraction=test_fraction,
        seed=seed,
    )
    scores = {
        name: knn_score(x[valid], labels[valid], test, k=k).__dict__
        for name, x in (("stformer", emb), ("random_init", emb_random), ("pca", pca))
    }
    plot = plot_embedding_2d(
        emb[valid],
        labels[valid],
        out_dir / "embedding_2d.png",
        title=f"stformer embeddings ({label_key})",
        baselines={"PCA of counts": pca[valid], "random-init model": emb_random[valid]},
        scores={
            "stformer": scores["stformer"],
            "PCA of counts": scores["pca"],
            "random-init model": scores["random_init"],
        },
        seed=seed,
    )
    result = {
        "label_key": label_key,
        "k": k,
        "split": split_kind,
        "split_note": note,
        "test_fraction": test_fraction,
        "seed": seed,
        "pooling": pooling,
        "hidden_layer": hidden_layer,
        "layer": layer,
        "gene_id_key": rm.settings["settings"].get("gene_id_key"),
        "n_cells": int(valid.sum()),
        "scores": scores,
        "plot": str(plot),
    }
    if embeddings_path is not None:
        cells = ad.AnnData(obs=adata.obs.iloc[rows[valid]].copy())
        cells.obs["stformer_split"] = np.where(test, "test", "train")
        for key, x in (("X_stformer", emb), ("X_random_init", emb_random), ("X_pca", pca)):
            cells.obsm[key] = x[valid]
        cells.uns["X_stformer"] = {
            "params": {"model": str(rm.model_dir), "pooling": pooling, "hidden_layer": hidden_layer}
        }
        result["embeddings"] = str(_write_h5ad(cells, Path(embeddings_path)))
    atomic_write_text(out_dir / "evaluation.json", json.dumps(result, indent=1))
    if rm.kind == "stformer":  # the run's model card shows the scores; not a Geneformer folder
        from stformer_train._hub import evaluation_markdown, update_model_card

        update_model_card(rm.model_dir, "Evaluation", evaluation_markdown(result, h5ad))
    return result
