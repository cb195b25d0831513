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
    net: Any, model_dir: Path, corpus: Corpus, *, state_dict: dict[str, Any] | None = None
) -> None:
    """Save model weights, vocabulary, gene medians and tokenizer settings atomically into ``model_dir``.

    ``state_dict`` replaces ``net``'s own weights (e.g. parameters gathered from ZeRO-3 shards).
    """
    with atomic_dir(model_dir) as tmp:
        net.save_pretrained(tmp, state_dict=state_dict)
        corpus.vocab.save_json(tmp / "token_dictionary.json")
        corpus.vocab.save_pickle(tmp / "token_dictionary.pkl")
        for name in ("gene_medians.json", "gene_dictionary.json"):  # the genes of a binned corpus
            if (corpus.path / name).exists():
                shutil.copy2(corpus.path / name, tmp / name)
        settings = {
            k: corpus.manifest.get(k) for k in ("format_version", "settings", "vocab_sha256")
        }
        (tmp / TOKENIZER_SETTINGS).write_text(json.dumps(settings, indent=1))


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
