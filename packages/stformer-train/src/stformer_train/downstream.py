"""Working from a run directory alone: embed an h5ad, evaluate the embeddings, fine-tune a classifier.

A run's ``model/`` folder holds the weights, the vocabulary (``token_dictionary.json``), the gene
medians and the tokenizer settings (``stformer_tokenizer.json``); new cells are tokenized with
exactly those before they reach the model.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch

import stformer_data as sd
from stformer_data.atomic import atomic_write_text, partial_path
from stformer_train.embed import Pooling, embed_sequences
from stformer_train.evaluate import holdout_split, knn_score, pca_of_counts
from stformer_train.geneformer import FolderModel, open_model
from stformer_train.plots import plot_embedding_2d  # moved to plots.py; kept importable here

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


def finetune_classifier(
    run: str | PathLike[str],
    h5ad: str | PathLike[str],
    *,
    label_key: str,
    out_dir: str | PathLike[str],
    epochs: float = 3.0,
    batch_size: int = 32,
    learning_rate: float = 5e-4,
    test_fraction: float = 0.2,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune the run's encoder as a cell-type classifier; score it on held-out cells.

    The classifier (``AutoModelForSequenceClassification``: BERT's pooled first token for rank
    models, mean pooling for GeneBert) is saved to ``out_dir/model``; ``finetune.json`` has the
    held-out accuracy and macro-F1.
    """
    from sklearn.metrics import accuracy_score, f1_score
    from tqdm.auto import tqdm
    from transformers import AutoModelForSequenceClassification

    import stformer_train.models  # noqa: F401  (registers GeneBert with the Auto classes)
    from stformer_collate import pad_examples

    rm = open_model(run)
    out_dir = Path(out_dir)
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = rm.tokenize(
            h5ad, Path(tmp) / "corpus", obs_columns=(label_key,), progress=progress
        )
        seqs, types = rm.sequences(corpus, hide_phenotype=label_key)
        labels = _labels(corpus, label_key)
    valid = np.flatnonzero(~np.isin(labels, _MISSING_LABELS))
    classes = sorted(set(labels[valid]))
    y = np.array([classes.index(v) for v in labels[valid]])
    test = holdout_split(labels[valid], test_fraction=test_fraction, seed=seed)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        rm.model_dir,
        num_labels=len(classes),
        id2label=dict(enumerate(classes)),
        label2id={c: i for i, c in enumerate(classes)},
        attn_implementation="sdpa",
        ignore_mismatched_sizes=True,  # a classifier checkpoint with other classes: a new head
    )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01)
    train_idx = np.flatnonzero(~test)
    rng = np.random.default_rng(seed)
    steps = max(1, int(np.ceil(len(train_idx) / batch_size * epochs)))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / steps))

    def batch_of(idx):
        examples = [{"input_ids": seqs[valid[i]]} for i in idx]
        if types is not None:
            for e, i in zip(examples, idx, strict=True):
                e["token_type_ids"] = types[valid[i]]
        b = pad_examples(examples, pad_id=rm.vocab.pad_id)
        extra = {"token_type_ids": b["token_type_ids"].to(device)} if "token_type_ids" in b else {}
        return b["input_ids"].to(device), b["attention_mask"].to(device), extra

    model.train()
    order = np.concatenate([rng.permutation(train_idx) for _ in range(int(np.ceil(epochs)) + 1)])
    for s in tqdm(range(steps), desc="finetune", disable=not progress):
        idx = order[s * batch_size : (s + 1) * batch_size]
        ids, mask, extra = batch_of(idx)
        loss = model(
            input_ids=ids,
            attention_mask=mask,
            labels=torch.as_tensor(y[idx], device=device),
            **extra,
        ).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
    model.eval()
    test_idx = np.flatnonzero(test)
    preds = []
    with torch.inference_mode():
        for s in range(0, len(test_idx), 128):
            ids, mask, extra = batch_of(test_idx[s : s + 128])
            preds.append(
                model(input_ids=ids, attention_mask=mask, **extra).logits.argmax(-1).cpu().numpy()
            )
    pred = np.concatenate(preds)
    result = {
        "label_key": label_key,
        "classes": [str(c) for c in classes],
        "n_train": int(len(train_idx)),
        "n_test": int(len(test_idx)),
        "steps": steps,
        "accuracy": float(accuracy_score(y[test_idx], pred)),
        "macro_f1": float(f1_score(y[test_idx], pred, average="macro", zero_division=0)),
        "seconds": round(time.time() - started, 1),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir / "model")
    atomic_write_text(out_dir / "finetune.json", json.dumps(result, indent=1))
    return result
