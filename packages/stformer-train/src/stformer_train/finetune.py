"""Fine-tune a model folder into a cell classifier, and predict labels of new cells with it.

:func:`finetune_classifier` trains transformers' ``BertForSequenceClassification`` (a GeneBert
classifier for binned models) with the ``Trainer``, starting from a stformer run or a Geneformer
checkpoint (:func:`~stformer_train.geneformer.open_model`), and scores it on held-out cells beside
two baselines on the same cells: the majority class of the training cells and a kNN on the frozen
embeddings of the starting model. :func:`predict_h5ad` labels the cells of an h5ad with a
fine-tuned folder (stformer's, or a Geneformer ``BertForSequenceClassification`` folder with its
dictionaries).

Pooling follows the corpus: a corpus whose cells start with ``<cls>`` (Geneformer V2) is
classified from that token (BERT's pooler, as transformers' class does); one without is
classified from the mean of its non-pad tokens, since a rank corpus's first token is just the
cell's top gene. The choice is stored as ``stformer_pooling`` in the model's ``config.json`` and
honoured by :func:`load_classifier`.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from transformers import BertForSequenceClassification
from transformers.modeling_outputs import SequenceClassifierOutput

import stformer_data as sd
from stformer_data.atomic import atomic_dir
from stformer_train.api import open_for_input
from stformer_train.embedding import embed_sequences
from stformer_train.evaluate import holdout_split, knn_score
from stformer_train.geneformer import FolderModel, open_model
from stformer_train.models._genebert import GeneBertConfig, GeneBertForClassification
from stformer_train.run_dir import TOKENIZER_SETTINGS, run_held_out, save_model

__all__ = [
    "FinetunePooling",
    "NoBetterThanMajorityWarning",
    "StformerBertForSequenceClassification",
    "StformerGeneBertForClassification",
    "confidence_key",
    "corpus_pooling",
    "finetune_classifier",
    "load_classifier",
    "predict_h5ad",
]

FinetunePooling = Literal["auto", "mean", "cls"]

_MISSING_LABELS = ("nan", "NA", "None", "")
FINETUNE_JSON = "finetune.json"


class NoBetterThanMajorityWarning(UserWarning):
    """The fine-tuned classifier is no more accurate than predicting the largest class."""


def _mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    if attention_mask is None:
        return hidden.mean(1)
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


def _classification_loss(logits: torch.Tensor, labels: torch.Tensor | None, n: int):
    if labels is None:
        return None
    return F.cross_entropy(logits.float().view(-1, n), labels.long().view(-1))


class StformerBertForSequenceClassification(BertForSequenceClassification):
    """``BertForSequenceClassification`` that can classify from the mean of the non-pad tokens.

    ``config.stformer_pooling`` is ``"cls"`` (the default, and what a Geneformer classifier folder
    has: exactly transformers' class, BERT's pooler over the first token) or ``"mean"`` (the mean
    of the last hidden states over ``attention_mask``, then dropout and the classifier). The
    weights are transformers' own, so any saved ``BertForSequenceClassification`` or
    ``BertForMaskedLM`` loads into it.
    """

    def forward(
        self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs
    ):
        if getattr(self.config, "stformer_pooling", "cls") != "mean":
            return super().forward(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
                labels=labels,
                **kwargs,
            )
        hidden = self.bert(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            return_dict=True,
            **kwargs,
        ).last_hidden_state
        logits = self.classifier(self.dropout(_mean_pool(hidden, attention_mask)))
        return SequenceClassifierOutput(
            loss=_classification_loss(logits, labels, self.num_labels), logits=logits
        )


class StformerGeneBertForClassification(GeneBertForClassification):
    """GeneBert's classifier with ``config.stformer_pooling`` honoured (``"mean"`` or ``"cls"``)."""

    def forward(
        self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs
    ):
        if getattr(self.config, "stformer_pooling", "cls") != "mean":
            return super().forward(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
                labels=labels,
                **kwargs,
            )
        hidden = self.bert(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            **kwargs,
        ).last_hidden_state
        pooled = F.relu(self.pre_classifier(_mean_pool(hidden, attention_mask)))
        logits = self.classifier(self.dropout(pooled))
        loss = None if labels is None else self._loss(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide transformers' load report (new head, unused MLM weights: expected here) and its bars."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # "Loading weights" / "Writing model shards"
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _classifier_class(model_dir: Path):
    from transformers import AutoConfig

    import stformer_train.models  # noqa: F401  (registers GeneBert with the Auto classes)

    config = AutoConfig.from_pretrained(model_dir)
    if config.model_type == GeneBertConfig.model_type:
        return StformerGeneBertForClassification
    if config.model_type != "bert":
        raise sd.InputError(
            model_dir,
            "config.json",
            f"has model_type {config.model_type!r}; a classifier needs a BERT (or GeneBert) model",
            "pass a stformer run, a fine-tuned folder or a Geneformer BERT checkpoint",
        )
    return StformerBertForSequenceClassification


def load_classifier(model_dir: str | PathLike[str], **kwargs: Any):
    """Load a classifier folder (stformer's or a Geneformer ``BertForSequenceClassification``).

    Its ``config.stformer_pooling`` (``"mean"`` or ``"cls"``; absent: ``"cls"``, transformers'
    behaviour) decides the pooling. ``kwargs`` go to ``from_pretrained``.
    """
    model_dir = Path(model_dir)
    kwargs.setdefault("attn_implementation", "sdpa")
    with _quiet_transformers():
        return _classifier_class(model_dir).from_pretrained(model_dir, **kwargs)


def corpus_pooling(
    sequences: Sequence[Sequence[int]], vocab: sd.GeneVocab
) -> Literal["mean", "cls"]:
    """``"cls"`` when every cell starts with the vocabulary's ``<cls>`` token, else ``"mean"``."""
    cls_id = vocab.cls_id
    if cls_id is None or len(sequences) == 0:
        return "mean"
    return "cls" if all(len(s) and int(s[0]) == cls_id for s in sequences) else "mean"


def _resolve_pooling(pooling: str, sequences, vocab: sd.GeneVocab) -> Literal["mean", "cls"]:
    if pooling not in ("auto", "mean", "cls"):
        raise ValueError(f"pooling must be 'auto', 'mean' or 'cls', got {pooling!r}")
    return corpus_pooling(sequences, vocab) if pooling == "auto" else pooling  # type: ignore[return-value]


def _obs_column(h5ad: str | PathLike[str], label_key: str) -> None:
    columns = list(sd.open_h5ad(h5ad, backed=True).obs.columns)
    if label_key not in columns:
        raise sd.InputError(
            h5ad,
            f"obs[{label_key!r}]",
            "does not exist",
            f"pass --label-key with one of {columns}",
        )


def _counts_text(labels: np.ndarray) -> str:
    values, counts = np.unique(labels, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    return ", ".join(f"{str(values[i])!r}: {counts[i]}" for i in order)


def _split(
    h5ad,
    label_key: str,
    labels: np.ndarray,
    test_fraction: float,
    seed: int,
    given: np.ndarray | None = None,
) -> np.ndarray:
    """The held-out mask (``given``: the run's own held-out cells, else a new stratified split),
    or an error naming the column and its counts when it means nothing."""
    field = f"obs[{label_key!r}]"
    if len(labels) == 0:
        raise sd.InputError(
            h5ad,
            field,
            "has no labelled cell among the tokenized cells",
            "pass a label column with values, and cells that have genes of the model's vocabulary",
        )
    classes = np.unique(labels)
    if len(classes) < 2:
        raise sd.InputError(
            h5ad,
            field,
            f"has a single class ({_counts_text(labels)} cells); a one-class classifier means nothing",
            "pass a --label-key with at least two classes (or cells of more than one class)",
        )
    fix = "add cells to the small classes, drop classes with one cell, or change --test-fraction"
    try:
        test = (
            given
            if given is not None
            else holdout_split(labels, test_fraction=test_fraction, seed=seed)
        )
    except ValueError as err:
        raise sd.InputError(
            h5ad,
            field,
            f"has too few cells for a {test_fraction:g} held-out split ({_counts_text(labels)}): {err}",
            fix,
        ) from err
    missing = sorted(set(classes) - set(labels[~test]))
    if missing or not test.any():
        problem = f"classes {missing} have no training cell" if missing else "no cell is held out"
        raise sd.InputError(
            h5ad,
            field,
            f"has too few cells for a {test_fraction:g} held-out split ({_counts_text(labels)}): {problem}",
            fix,
        )
    return test


def _scores(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "accuracy": float(accuracy_score(truth, pred)),
        "macro_f1": float(f1_score(truth, pred, average="macro", zero_division=0)),
    }


class _Collator:
    """Pad ``input_ids`` (and ``token_type_ids``) and stack ``labels``: one batch for the Trainer."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        from stformer_collate import pad_examples

        batch = pad_examples(examples, pad_id=self.pad_id)
        if "labels" in examples[0]:
            batch["labels"] = torch.as_tensor([e["labels"] for e in examples], dtype=torch.long)
        return batch


def _examples(seqs, types, idx: np.ndarray, y: np.ndarray | None = None) -> list[dict[str, Any]]:
    out = []
    for j, i in enumerate(idx):
        e: dict[str, Any] = {"input_ids": list(seqs[i])}
        if types is not None:
            e["token_type_ids"] = list(types[i])
        if y is not None:
            e["labels"] = int(y[j])
        out.append(e)
    return out


def _trainer_args(out: Path, *, progress: bool, seed: int, **kwargs: Any):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(out),
        seed=seed,
        data_seed=seed,
        weight_decay=0.01,
        max_grad_norm=1.0,
        lr_scheduler_type="linear",
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=not progress,
        dataloader_pin_memory=torch.cuda.is_available(),
        remove_unused_columns=False,
        use_cpu=not torch.cuda.is_available(),
        **kwargs,
    )


def _quiet_trainer(trainer) -> None:
    """One progress bar and no dicts of metrics printed: the figures are reported once, at the end."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    class _Bar(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: D102
            return None

    trainer.remove_callback(PrinterCallback)
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(_Bar())


def _run_held_out(rm: FolderModel, h5ad, rows: np.ndarray) -> tuple[np.ndarray | None, str]:
    """:func:`~stformer_train.run_dir.run_held_out` for ``h5ad``'s obs names."""
    adata = sd.open_h5ad(h5ad)
    try:
        mask, why = run_held_out(rm.model_dir, h5ad, adata.obs_names, rows)
    finally:
        adata.file.close()
    if mask is not None:
        return mask, why
    return None, f"held-out cells: a new split, as {why}; they may have been seen in pretraining"


def _check_out_dir(out_dir: Path) -> None:
    """Only a folder this function wrote (a ``finetune.json`` in it) is ever replaced."""
    if out_dir.exists() and (
        not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / FINETUNE_JSON).is_file())
    ):
        raise sd.InputError(
            out_dir,
            "--out",
            "exists and is not a finetune folder (no finetune.json); it would be replaced",
            "pass a new or empty folder, or a folder an earlier `stformer finetune` wrote",
        )


def _write_model_folder(net, model_dir: Path, corpus: sd.Corpus, rm: FolderModel) -> None:
    """A run's ``model/`` layout: weights, vocabulary, medians and the source's tokenizer settings."""
    save_model(net, model_dir, corpus)
    if rm.binned:  # a binned corpus of new cells has its own ids; the model reads the source's
        rm.vocab.save_json(model_dir / "token_dictionary.json")
        rm.vocab.save_pickle(model_dir / "token_dictionary.pkl")
    used = corpus.manifest.get("settings") or {}
    settings = {
        **rm.settings["settings"],
        "gene_id_key": used.get("gene_id_key"),
        "layer": used.get("layer"),
        "obs_columns": [],
    }
    written = json.loads((model_dir / TOKENIZER_SETTINGS).read_text())
    payload = {**written, **{k: v for k, v in rm.settings.items() if k != "settings"}}
    payload["settings"] = settings
    (model_dir / TOKENIZER_SETTINGS).write_text(json.dumps(payload, indent=1))


@torch.inference_mode()
def _head_inputs(
    net, seqs, types, idx: np.ndarray, pad_id: int, batch_size: int = 64
) -> np.ndarray:
    """What ``net.classifier`` reads for the cells ``idx`` (captured with a forward hook)."""
    captured: list[torch.Tensor] = []
    hook = net.classifier.register_forward_hook(lambda m, args, out: captured.append(args[0]))
    was_training = net.training
    net.eval()
    collate = _Collator(pad_id)
    device = next(net.parameters()).device
    try:
        for s in range(0, len(idx), batch_size):
            batch = collate(_examples(seqs, types, idx[s : s + batch_size]))
            net(**{k: v.to(device) for k, v in batch.items()})
    finally:
        hook.remove()
        net.train(was_training)
    return torch.cat(captured).float().cpu().numpy()


def _linear_probe_init(net, x: np.ndarray, y: np.ndarray, seed: int) -> None:
    """Set ``net.classifier`` to a logistic regression fitted on the frozen features ``x``.

    Linear probing before fine-tuning (LP-FT, Kumar et al., ICLR 2022): a random head on mean-pooled
    features, whose differences between cells are small beside their common part, predicts one
    class for every cell for many steps; a fitted head starts where the frozen model already is.
    Features are standardised for the fit and the scaling is folded back into the weights.
    """
    from sklearn.linear_model import LogisticRegression

    mu, sd_ = x.mean(0), x.std(0) + 1e-6
    clf = LogisticRegression(max_iter=500, random_state=seed).fit((x - mu) / sd_, y)
    n = net.classifier.out_features
    weight = np.zeros((n, x.shape[1]), dtype=np.float64)
    bias = np.full(n, -1e4 if len(clf.classes_) < n else 0.0)  # a class absent from training
    coef, intercept = clf.coef_, clf.intercept_
    if len(clf.classes_) == 2:  # sklearn's binary form: one row for the positive class
        coef = np.vstack([-coef[0] / 2, coef[0] / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    for row, c in enumerate(clf.classes_):
        weight[c] = coef[row] / sd_
        bias[c] = intercept[row] - (coef[row] * mu / sd_).sum()
    with torch.no_grad():
        net.classifier.weight.copy_(torch.as_tensor(weight, dtype=net.classifier.weight.dtype))
        net.classifier.bias.copy_(torch.as_tensor(bias, dtype=net.classifier.bias.dtype))


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
    pooling: FinetunePooling = "auto",
    k: int = 15,
    head_init: Literal["linear_probe", "random"] = "linear_probe",
    gene_id_key: str | None = None,
    layer: str | None = None,
    allow_non_integer: bool | None = None,
    n_counts_key: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune a model folder as a cell classifier; score it on held-out cells beside baselines.

    Parameters
    ----------
    run
        A stformer run (``RUN`` or ``RUN/model``), a fine-tuned folder's ``model/`` or a
        Geneformer checkpoint folder with its dictionaries.
    h5ad
        Raw counts with the labels in ``obs[label_key]`` (cells without a label are left out).
    label_key
        The ``obs`` column to learn. A single class, or too few cells for the split (every class
        needs a training cell, at least one cell is held out), is an error naming the column and
        its counts, raised before training; nothing is written then.
    out_dir
        Written atomically: ``model/`` (weights, vocabulary, medians, tokenizer settings and the
        class names in ``config.id2label``: usable by ``stformer embed`` and ``predict``) and
        ``finetune.json`` (the returned figures). An existing folder is replaced only if it holds
        a ``finetune.json``.
    epochs, batch_size, learning_rate, seed
        transformers ``Trainer`` settings (AdamW, weight decay 0.01, linear decay, no warm-up,
        gradient clipping at 1). ``seed`` also draws the split and the new head.
    test_fraction
        Held-out fraction, stratified by label where every class has at least two cells.
    pooling
        ``auto`` (default): ``cls`` when every cell starts with ``<cls>`` (V2 / cls-tokenized
        corpora), else ``mean`` over the non-pad tokens. The same pooling gives the kNN baseline.
    k
        Neighbours of the kNN baseline on the frozen embeddings of the starting model.
    head_init
        ``linear_probe`` (default): the new head starts as a logistic regression fitted on the
        frozen model's features of the training cells (LP-FT), reported as the ``linear_probe``
        baseline; ``random``: transformers' random initialisation.
    gene_id_key, layer
        ``var`` column with the model's gene ids (default: the model's setting, else var_names)
        and the layer with the raw counts (default: ``X``).
    allow_non_integer, n_counts_key
        Accept non-integer counts; ``obs`` column with library sizes (``""``: row sums). ``None``
        keeps the model's settings (:func:`stformer_train.api.open_for_input`).
    progress
        Show progress bars.

    Returns
    -------
    dict
        ``accuracy``, ``macro_f1``, ``baselines`` (``majority`` and ``knn``, each with
        ``accuracy`` and ``macro_f1``), ``warning`` (text, or ``None``), the split sizes, the
        classes and the settings. When the accuracy is no better than the majority class a
        :class:`NoBetterThanMajorityWarning` is also issued.
    """
    from transformers import Trainer, set_seed

    started = time.time()
    out_dir = Path(out_dir)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if pooling not in ("auto", "mean", "cls"):
        raise ValueError(f"pooling must be 'auto', 'mean' or 'cls', got {pooling!r}")
    if head_init not in ("linear_probe", "random"):
        raise ValueError(f"head_init must be 'linear_probe' or 'random', got {head_init!r}")
    _check_out_dir(out_dir)
    _obs_column(h5ad, label_key)
    rm = open_for_input(
        run,
        gene_id_key=gene_id_key,
        layer=layer,
        allow_non_integer=allow_non_integer,
        n_counts_key=n_counts_key,
    )
    with tempfile.TemporaryDirectory() as tmp:
        corpus = rm.tokenize(
            h5ad, Path(tmp) / "corpus", obs_columns=(label_key,), progress=progress
        )
        seqs, types = rm.sequences(corpus, hide_phenotype=label_key)
        labels = np.asarray(corpus.dataset[label_key]).astype(str)
        valid = np.flatnonzero(~np.isin(labels, _MISSING_LABELS))
        rows = np.asarray(corpus.dataset["cell_index"])[valid]
        run_test, split_note = _run_held_out(rm, h5ad, rows)
        test = _split(h5ad, label_key, labels[valid], test_fraction, seed, given=run_test)
        classes = sorted(str(c) for c in set(labels[valid]))
        y = np.searchsorted(classes, labels[valid])
        train_idx, test_idx = np.flatnonzero(~test), np.flatnonzero(test)
        pooled = _resolve_pooling(pooling, [seqs[i] for i in valid], rm.vocab)

        # baselines on the same held-out cells
        counts = np.bincount(y[train_idx], minlength=len(classes))
        majority = int(np.argmax(counts))
        baselines = {
            "majority": {
                "class": str(classes[majority]),
                **_scores(y[test_idx], np.full(len(test_idx), majority)),
            }
        }
        with _quiet_transformers():
            frozen = rm.load_mlm()
        emb = embed_sequences(
            frozen,
            [seqs[i] for i in valid],
            token_type_ids=None if types is None else [types[i] for i in valid],
            pad_id=rm.vocab.pad_id,
            pooling=pooled,
            progress=progress,
            desc="embed (frozen)",
        )
        del frozen
        knn = knn_score(emb, y, test, k=k)
        baselines["knn"] = {"k": k, "accuracy": knn.accuracy, "macro_f1": knn.macro_f1}

        set_seed(seed)
        model = load_classifier(
            rm.model_dir,
            num_labels=len(classes),
            id2label=dict(enumerate(classes)),
            label2id={c: i for i, c in enumerate(classes)},
            problem_type="single_label_classification",
            ignore_mismatched_sizes=True,  # a classifier checkpoint with other classes: a new head
        )
        model.config.stformer_pooling = pooled
        if head_init == "linear_probe":
            x = _head_inputs(model, seqs, types, valid, rm.vocab.pad_id)
            _linear_probe_init(model, x[train_idx], y[train_idx], seed)
            with torch.no_grad():
                probe = model.classifier(torch.as_tensor(x[test_idx])).argmax(-1).numpy()
            baselines["linear_probe"] = _scores(y[test_idx], probe)
        args = _trainer_args(
            Path(tmp) / "trainer",
            progress=progress,
            seed=seed,
            num_train_epochs=epochs,
            per_device_train_batch_size=batch_size,
            per_device_eval_batch_size=max(batch_size, 64),
            learning_rate=learning_rate,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=_examples(seqs, types, valid[train_idx], y[train_idx]),
            data_collator=_Collator(rm.vocab.pad_id),
        )
        _quiet_trainer(trainer)
        train_out = trainer.train()
        logits = trainer.predict(_examples(seqs, types, valid[test_idx])).predictions
        pred = np.asarray(logits).argmax(-1)
        scores = _scores(y[test_idx], pred)
        warning = None
        if scores["accuracy"] <= baselines["majority"]["accuracy"] + 1e-12:
            warning = (
                f"the fine-tuned accuracy ({scores['accuracy']:.3f}) is no better than predicting "
                f"the majority class {classes[majority]!r} ({baselines['majority']['accuracy']:.3f}): "
                "the classifier has not learned; train longer (--epochs), with another "
                "--learning-rate, or on more cells"
            )
            warnings.warn(warning, NoBetterThanMajorityWarning, stacklevel=2)
        result = {
            "label_key": label_key,
            "classes": [str(c) for c in classes],
            "n_train": int(len(train_idx)),
            "n_test": int(len(test_idx)),
            "pooling": pooled,
            "head_init": head_init,
            "epochs": epochs,
            "steps": int(train_out.global_step),
            "train_loss": float(train_out.training_loss),
            "accuracy": scores["accuracy"],
            "macro_f1": scores["macro_f1"],
            "baselines": baselines,
            "warning": warning,
            "seed": seed,
            "test_fraction": test_fraction,
            "split": "run" if run_test is not None else "new",
            "split_note": split_note,
            "source": str(rm.model_dir),
            "seconds": round(time.time() - started, 1),
        }
        with _quiet_transformers(), atomic_dir(out_dir) as staging:
            _write_model_folder(trainer.model, staging / "model", corpus, rm)
            (staging / FINETUNE_JSON).write_text(json.dumps(result, indent=1))
    return result


def _classifier_folder(path: Path) -> Path:
    """The classifier's model folder: ``path``, ``path/model`` or ``path/finetune/model``."""
    for candidate in (path, path / "model", path / "finetune" / "model"):
        cfg = candidate / "config.json"
        if cfg.is_file():
            arch = " ".join(json.loads(cfg.read_text()).get("architectures") or [])
            if "Classification" in arch:
                return candidate
    raise sd.InputError(
        path,
        "config.json",
        "holds no sequence-classification model (a masked-LM or no model)",
        "pass the folder `stformer finetune` wrote (or its model/), or a BertForSequenceClassification folder",
    )


def predict_h5ad(
    model: str | PathLike[str],
    h5ad: str | PathLike[str],
    out: str | PathLike[str],
    *,
    key_added: str = "stformer_label",
    dictionaries: str | PathLike[str] | None = None,
    gene_id_key: str | None = None,
    layer: str | None = None,
    allow_non_integer: bool | None = None,
    n_counts_key: str | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> Path:
    """Label every cell of ``h5ad`` with a classifier folder; write the result to ``out`` atomically.

    Parameters
    ----------
    model
        A folder ``stformer finetune`` wrote (or its ``model/``, or a run holding ``finetune/``),
        or a Geneformer ``BertForSequenceClassification`` folder with its token and median
        dictionaries (next to it or in ``dictionaries``).
    h5ad, out
        The cells (raw counts) and the output ``.h5ad`` (a copy of the input with the results).
    key_added
        ``obs`` column of the predicted class; ``obs[key_added.replace("label", "confidence")]``
        (``stformer_confidence`` by default) holds its probability, and ``obsm["stformer_proba"]``
        every class's probability (the class names in ``uns["stformer_proba_classes"]``). Cells
        with no gene of the vocabulary get no label, confidence NaN and probabilities NaN.
    gene_id_key, layer
        ``var`` column with the model's gene ids and the layer of raw counts (defaults: the
        model's settings, var_names and ``X``).
    allow_non_integer, n_counts_key
        As for :func:`finetune_classifier`.
    batch_size, progress
        Cells per forward pass; progress bars.
    """
    import pandas as pd

    folder = _classifier_folder(Path(model))
    rm = open_for_input(
        open_model(folder, dictionaries=dictionaries, gene_id_key=gene_id_key),
        gene_id_key=gene_id_key,
        layer=layer,
        allow_non_integer=allow_non_integer,
        n_counts_key=n_counts_key,
    )
    net = load_classifier(folder).eval()
    id2label = {int(i): str(v) for i, v in net.config.id2label.items()}
    classes = [id2label.get(i, f"LABEL_{i}") for i in range(net.config.num_labels)]
    adata = sd.open_h5ad(h5ad, backed=False)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = rm.tokenize(h5ad, Path(tmp) / "corpus", progress=progress)
        seqs, types = rm.sequences(corpus)
        rows = np.asarray(corpus.dataset["cell_index"])
    proba = _predict_proba(net, seqs, types, rm.vocab.pad_id, batch_size, progress)
    full = np.full((adata.n_obs, len(classes)), np.nan, dtype=np.float32)
    full[rows] = proba
    label = np.full(adata.n_obs, None, dtype=object)
    label[rows] = np.asarray(classes, dtype=object)[proba.argmax(1)]
    confidence = np.full(adata.n_obs, np.nan, dtype=np.float32)
    confidence[rows] = proba.max(1)
    adata.obs[key_added] = pd.Categorical(label, categories=classes)
    adata.obs[confidence_key(key_added)] = confidence
    adata.obsm["stformer_proba"] = full
    adata.uns["stformer_proba_classes"] = np.asarray(classes, dtype=object)
    adata.uns["stformer_predict"] = {
        "model_dir": str(rm.model_dir),
        "pooling": getattr(net.config, "stformer_pooling", "cls"),
        "key_added": key_added,
    }
    return _write_h5ad(adata, Path(out))


def _write_h5ad(adata, path: Path) -> Path:
    """anndata writes to a path, so the atomic rename is ours."""
    import os

    from stformer_data.atomic import partial_path

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    try:
        adata.write_h5ad(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def confidence_key(key_added: str) -> str:
    """The ``obs`` column of the confidence beside ``key_added`` (``stformer_label`` -> ``stformer_confidence``)."""
    return (
        key_added.replace("label", "confidence")
        if "label" in key_added
        else f"{key_added}_confidence"
    )


@torch.inference_mode()
def _predict_proba(net, seqs, types, pad_id: int, batch_size: int, progress: bool) -> np.ndarray:
    from tqdm.auto import tqdm

    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net.to(device)
    collate = _Collator(pad_id)
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    order = np.argsort(-lengths, kind="stable")  # little padding; results put back in order
    out = np.zeros((len(seqs), net.config.num_labels), dtype=np.float32)
    for start in tqdm(
        range(0, len(order), batch_size), desc="predict", unit="batch", disable=not progress
    ):
        idx = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate(_examples(seqs, types, idx)).items()}
        out[idx] = torch.softmax(net(**batch).logits.float(), -1).cpu().numpy()
    return out
