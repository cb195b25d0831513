"""The run directory: one folder holding everything a training run wrote.

::

    RUN/
      config.json        # the resolved configuration (engine, ModelConfig, TrainConfig, corpus)
      checkpoints/       # trainer checkpoints (resume from here)
      logs/              # tensorboard/, metrics.csv, log_history.json, loss_curve.png
      model/             # the final model (save_pretrained) + vocabulary + medians + tokenizer settings
      best_model/        # with early stopping: the model of the best validation loss
      split.json         # the cells trained on, validated on and held out (never trained on)
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

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


#: the run's cell split: which cells were trained on, validated on and held out (``RUN/split.json``)
SPLIT_FILE = "split.json"
#: label values that mean "no label" (left out of stratification and of evaluations)
MISSING_LABELS = ("nan", "NA", "None", "")


@dataclass(frozen=True)
class CorpusSplit:
    """Rows of a corpus's ``dataset`` for training, validation (loss only) and the held-out test.

    Test cells are never trained on; the validation cells are those :func:`split_corpus` takes
    out of ``trained_on`` for the validation loss (same rule, same seed).

    >>> import numpy as np
    >>> CorpusSplit(np.array([0, 3]), np.array([1]), np.array([2])).trained_on.tolist()
    [0, 1, 3]
    """

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray

    @property
    def trained_on(self) -> np.ndarray:
        """Training and validation rows, sorted: the ``train_indices`` of a pretraining run."""
        return np.sort(np.concatenate([self.train, self.validation])).astype(np.int64)


def _validation_positions(n: int, eval_fraction: float, seed: int) -> np.ndarray:
    """Positions (of ``n`` training candidates) that :func:`split_corpus` keeps for validation."""
    if not eval_fraction:
        return np.zeros(0, dtype=np.int64)
    n_eval = max(1, int(round(n * eval_fraction)))
    if n_eval >= n:
        raise ValueError(
            f"TrainConfig.eval_fraction={eval_fraction} leaves no training cells out of {n}"
        )
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[:n_eval])


def plan_split(
    corpus: Corpus,
    *,
    test_fraction: float = 0.0,
    eval_fraction: float = 0.0,
    seed: int = 0,
    labels: np.ndarray | None = None,
) -> CorpusSplit:
    """The held-out test cells (``test_fraction``), then validation and training cells, seeded.

    With ``labels`` (one per corpus row) the test part is stratified by label
    (:func:`~stformer_train.holdout_split`) and drawn from labelled cells only (values in
    :data:`MISSING_LABELS` stay in training); without, it is a plain random draw.
    ``stformer demo`` and ``stformer pretrain`` both split this way.
    """
    from stformer_train.evaluate import holdout_split

    n = len(corpus.dataset)
    test = np.zeros(n, dtype=bool)
    if test_fraction:
        if labels is not None:
            labels = np.asarray(labels).astype(str)
            if labels.shape != (n,):
                raise ValueError(f"labels must have one entry per corpus row ({n})")
            valid = np.flatnonzero(~np.isin(labels, MISSING_LABELS))
        else:
            labels, valid = np.zeros(n, dtype=str), np.arange(n)
        if len(valid) < 2:
            raise ValueError(
                f"test_fraction={test_fraction} needs at least 2 (labelled) cells; "
                f"{corpus.path} has {len(valid)}"
            )
        test[valid[holdout_split(labels[valid], test_fraction=test_fraction, seed=seed)]] = True
    pool = np.flatnonzero(~test)
    val = pool[_validation_positions(len(pool), eval_fraction, seed)]
    return CorpusSplit(train=np.setdiff1d(pool, val), validation=val, test=np.flatnonzero(test))


def corpus_labels(corpus: Corpus, label_key: str | None) -> np.ndarray | None:
    """``label_key`` of every corpus row, as strings: the corpus's own column, else the source
    files' ``obs`` (rows by ``file_index`` / ``cell_index``); None when neither has it."""
    import stformer_data as sd

    if not label_key:
        return None
    if label_key in corpus.dataset.column_names:
        return np.asarray(corpus.dataset[label_key]).astype(str)
    per_file = []
    for src in corpus.manifest.get("sources", []):
        try:
            adata = sd.open_h5ad(src["path"], backed=True)
        except (OSError, ValueError):
            return None
        try:
            if label_key not in adata.obs.columns:
                return None
            per_file.append(adata.obs[label_key].astype(str).to_numpy())
        finally:
            adata.file.close()
    if not per_file:
        return None
    file_index = np.asarray(corpus.dataset["file_index"], dtype=np.int64)
    cell_index = np.asarray(corpus.dataset["cell_index"], dtype=np.int64)
    out = np.empty(len(file_index), dtype=object)
    for i, values in enumerate(per_file):
        sel = file_index == i
        out[sel] = values[cell_index[sel]]
    return out.astype(str)


def _obs_names(path: str) -> list[str] | None:
    """The obs names of a source file, or None when it cannot be opened (moved, deleted)."""
    import stformer_data as sd

    try:
        adata = sd.open_h5ad(path, backed=True)
    except (OSError, ValueError):
        return None
    try:
        return [str(x) for x in adata.obs_names]
    finally:
        adata.file.close()


def _names_hash(names: list[str]) -> str:
    return hashlib.sha256("\n".join(names).encode()).hexdigest()


def write_split(
    root: str | PathLike[str],
    corpus: Corpus,
    split: CorpusSplit,
    *,
    test_fraction: float,
    eval_fraction: float,
    seed: int,
    label_key: str | None = None,
) -> Path:
    """Write ``ROOT/split.json`` (atomically): each part's cells as source file, row and obs name.

    The sources are identified by path, number of cells, a hash of their obs names and the
    corpus's checksum of the file, so :func:`read_split` recognises the file where it was and a
    byte-identical copy anywhere else, and nothing else (same obs names are not enough: barcodes
    repeat across datasets).
    """
    file_index = np.asarray(corpus.dataset["file_index"], dtype=np.int64)
    cell_index = np.asarray(corpus.dataset["cell_index"], dtype=np.int64)
    sources, names = [], []
    for src in corpus.manifest.get("sources", []):
        path = str(Path(src["path"]).resolve())
        obs = _obs_names(path)
        names.append(obs)
        sources.append(
            {
                "path": path,
                "n_obs": src.get("n_obs"),
                "size_bytes": src.get("size_bytes"),
                "xxh3_128": src.get("xxh3_128"),
                "obs_names_sha256": None if obs is None else _names_hash(obs),
            }
        )

    def part(rows: np.ndarray) -> dict[str, list]:
        f, c = file_index[rows], cell_index[rows]
        return {
            "file_index": f.tolist(),
            "cell_index": c.tolist(),
            "obs_name": [
                None if names[i] is None else names[i][j] for i, j in zip(f, c, strict=True)
            ],
        }

    payload = {
        "format_version": 1,
        "corpus": str(Path(corpus.path).resolve()),
        "seed": seed,
        "test_fraction": test_fraction,
        "eval_fraction": eval_fraction,
        "stratified_by": label_key,
        "sources": sources,
        "counts": {
            "train": len(split.train),
            "validation": len(split.validation),
            "test": len(split.test),
        },
        "train": part(split.train),
        "validation": part(split.validation),
        "test": part(split.test),
    }
    return atomic_write_text(Path(root) / SPLIT_FILE, json.dumps(payload))


@dataclass(frozen=True)
class RunSplit:
    """A run's ``split.json`` (see :func:`write_split`), read back."""

    path: Path
    data: dict[str, Any]

    @property
    def n_test(self) -> int:
        return int(self.data["counts"]["test"])

    def test_mask(
        self, h5ad: str | PathLike[str], obs_names: Any, rows: np.ndarray
    ) -> np.ndarray | None:
        """Which of ``rows`` (cells of ``h5ad``, whose obs names are ``obs_names``) the run held out.

        ``None`` when ``h5ad`` is none of the run's pretraining files (the same path with the same
        obs names, or a byte-identical copy).
        """
        names = [str(x) for x in obs_names]
        digest = _names_hash(names)
        path = Path(h5ad)
        resolved = str(path.resolve())
        size = path.stat().st_size if path.is_file() else None
        for i, src in enumerate(self.data["sources"]):
            if src["path"] == resolved:
                same = src.get("n_obs") == len(names) and src.get("obs_names_sha256") in (
                    None,
                    digest,
                )
            else:
                same = (
                    src.get("xxh3_128") is not None
                    and src.get("size_bytes") == size
                    and _checksum(path) == src["xxh3_128"]
                )
            if same:
                test = self.data["test"]
                held = [
                    c for f, c in zip(test["file_index"], test["cell_index"], strict=True) if f == i
                ]
                return np.isin(np.asarray(rows, dtype=np.int64), held)
        return None


def _checksum(path: Path) -> str:
    from stformer_data.corpus.format import checksum_file  # the corpus manifest's checksum

    return checksum_file(path)


def read_split(run: str | PathLike[str]) -> RunSplit | None:
    """The split a run kept (``RUN/split.json``; ``RUN/model`` also works), or None."""
    root = Path(run)
    for candidate in (root / SPLIT_FILE, root.parent / SPLIT_FILE):
        if candidate.is_file():
            return RunSplit(candidate, json.loads(candidate.read_text()))
    return None


def split_corpus(
    corpus: Corpus, model: ModelConfig, train: TrainConfig, indices: list[int] | None = None
) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """The training and (with ``train.eval_fraction``) validation parts of a corpus, seeded.

    ``indices`` restricts training to those rows (a run's :attr:`CorpusSplit.trained_on`: the
    held-out test cells are never seen); the validation rows are taken out of them by the rule of
    :func:`plan_split`, so ``split.json`` names exactly the cells used.

    Raises ``ValueError`` when a sequence is longer than the model's positions.
    """
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
    val = _validation_positions(len(dataset), train.eval_fraction, train.seed)
    keep = np.setdiff1d(np.arange(len(dataset)), val)
    return dataset.select(keep), dataset.select(val)
