"""The run directory: one folder holding everything a training run wrote.

::

    RUN/
      config.json        # the resolved configuration (engine, ModelConfig, TrainConfig, corpus)
      checkpoints/       # trainer checkpoints (resume from here)
      logs/              # tensorboard/, metrics.csv, log_history.json, loss_curve.png
      model/             # the final model (save_pretrained) + vocabulary + medians + tokenizer settings
      best_model/        # with early stopping: the model of the best validation loss
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stformer_data.atomic import atomic_dir, atomic_write_text

if TYPE_CHECKING:
    import datasets

    from stformer_data import Corpus
    from stformer_train.config import ModelConfig, TrainConfig


@dataclass(frozen=True)
class RunDir:
    """The folders of one training run (see the module docstring).

    >>> RunDir(Path("runs/a")).model
    PosixPath('runs/a/model')
    """

    root: Path

    @classmethod
    def create(cls, root: str | PathLike[str]) -> RunDir:
        run = cls(Path(root))
        for sub in (run.root, run.checkpoints, run.logs):
            sub.mkdir(parents=True, exist_ok=True)
        return run

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def config_path(self) -> Path:
        return self.root / "config.json"

    def write_config(self, config: dict[str, Any]) -> Path:
        return _atomic_json(self.config_path, config)

    def write_history(self, history: list[dict[str, Any]]) -> Path:
        return _atomic_json(self.logs / "log_history.json", history)


def _atomic_json(path: Path, payload: Any) -> Path:
    return atomic_write_text(path, json.dumps(payload, indent=1, default=str))


TOKENIZER_SETTINGS = "stformer_tokenizer.json"


def save_model(
    net: Any,
    model_dir: Path,
    corpus: Corpus,
    *,
    state_dict: dict[str, Any] | None = None,
    log_history: list[dict[str, Any]] | None = None,
    run_config: dict[str, Any] | None = None,
) -> None:
    """Save model weights, vocabulary, gene medians, tokenizers and model card atomically into ``model_dir``.

    ``state_dict`` replaces ``net``'s own weights (e.g. parameters gathered from ZeRO-3 shards).
    Besides the weights the folder gets ``token_dictionary.json`` / ``.pkl``, the gene medians
    (or, binned, the gene dictionary), ``stformer_tokenizer.json`` (the corpus's tokenizer
    settings), a Hugging Face fast tokenizer (``tokenizer.json``: ``AutoTokenizer`` loads it, with
    the model's ids) and ``README.md``, a Hub model card (:mod:`stformer_train.hub`) with the data,
    the tokenizer settings, ``run_config`` (default: the run's ``config.json`` next to
    ``model_dir``) and the final losses of ``log_history``.
    """
    from stformer_train._hub import save_hub_files, tokenizer_settings

    if run_config is None:
        run_file = Path(model_dir).parent / "config.json"
        run_config = json.loads(run_file.read_text()) if run_file.is_file() else None
    manifest = dict(corpus.manifest or {})
    with atomic_dir(model_dir) as tmp:
        net.save_pretrained(tmp, state_dict=state_dict)
        corpus.vocab.save_json(tmp / "token_dictionary.json")
        corpus.vocab.save_pickle(tmp / "token_dictionary.pkl")
        for name in ("gene_medians.json", "gene_dictionary.json"):  # the genes of a binned corpus
            if (corpus.path / name).exists():
                shutil.copy2(corpus.path / name, tmp / name)
        settings = {k: manifest.get(k) for k in ("format_version", "settings", "vocab_sha256")}
        (tmp / TOKENIZER_SETTINGS).write_text(json.dumps(settings, indent=1))
        sources = manifest.get("sources") or ()
        save_hub_files(
            tmp,
            corpus.vocab,
            {**tokenizer_settings(manifest), **_shown_settings(manifest)},
            corpus={
                "path": str(corpus.path),
                "n_cells": len(corpus.dataset),
                "n_genes": _n_genes(corpus),
                "sources": [s for s in sources if isinstance(s, dict)],
            },
            run_config=run_config,
            log_history=log_history,
        )


def _n_genes(corpus: Corpus) -> int:
    """The genes a model reads: the vocabulary's (rank) or the gene dictionary's (binned)."""
    from stformer_data import GeneVocab

    genes = corpus.path / "gene_dictionary.json"
    return len((GeneVocab.load(genes) if genes.is_file() else corpus.vocab).genes)


def _shown_settings(manifest: dict[str, Any]) -> dict[str, Any]:
    """The corpus settings a model card shows beside the tokenizer's (gene ids, layer, ...)."""
    settings = dict(manifest.get("settings") or {})
    scheme = settings.get("scheme")
    shown = {k: settings.get(k) for k in ("mode", "gene_id_key", "layer", "obs_columns")}
    part = settings.get(scheme) if scheme in ("rank", "binned") else None
    for k, v in dict(part or {}).items():
        shown.setdefault(k, v)
    return shown


def split_corpus(
    corpus: Corpus, model: ModelConfig, train: TrainConfig, indices: list[int] | None = None
) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """The training and (with ``train.eval_fraction``) validation parts of a corpus, seeded.

    Raises ``ValueError`` when a sequence is longer than the model's positions.
    """
    import numpy as np

    longest = max(corpus.lengths) if corpus.lengths else 0
    if longest > model.max_position_embeddings:
        raise ValueError(
            f"ModelConfig.max_position_embeddings ({model.max_position_embeddings}) is shorter than the longest "
            f"sequence in {corpus.path} ({longest}); raise it or tokenize with a smaller model_input_size"
        )
    dataset = corpus.dataset
    if indices is not None:
        dataset = dataset.select(indices)
    columns = [c for c in ("input_ids", "length", "token_type_ids") if c in dataset.column_names]
    dataset = dataset.select_columns(columns)
    if not train.eval_fraction:
        return dataset, None
    n_eval = max(1, int(round(len(dataset) * train.eval_fraction)))
    if n_eval >= len(dataset):
        raise ValueError(
            f"TrainConfig.eval_fraction={train.eval_fraction} leaves no training cells "
            f"out of {len(dataset)}"
        )
    order = np.random.default_rng(train.seed).permutation(len(dataset))
    return dataset.select(np.sort(order[n_eval:])), dataset.select(np.sort(order[:n_eval]))
