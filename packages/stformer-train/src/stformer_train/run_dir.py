"""The run directory: one folder holding everything a training run wrote.

::

    RUN/
      stformer_run.json  # the marker: this folder is a stformer run (what --overwrite may remove)
      .stformer.lock     # held (fcntl) by the process writing the run; holds its process id
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
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stformer_data import InputError
from stformer_data.atomic import atomic_dir, atomic_write_text
from stformer_train._lock import LOCK_NAME, FolderLock

if TYPE_CHECKING:
    import datasets

    from stformer_data import Corpus
    from stformer_train.config import ModelConfig, TrainConfig

log = logging.getLogger(__name__)

RUN_MANIFEST = "stformer_run.json"
RUN_FORMAT = "stformer-run"
RUN_ENTRIES = (
    "config.json",
    "checkpoints",
    "logs",
    "model",
    "best_model",
    "corpus",
    "split.json",  # SPLIT_FILE
    "evaluation",  # stformer evaluate's default --out
    "finetune",  # stformer finetune's default --out
    RUN_MANIFEST,
)
"""What stformer writes into a run directory: ``--overwrite`` removes these and nothing else."""

RESUMABLE_FIELDS = frozenset(
    f"train.{name}"
    for name in (
        "max_steps",
        "num_train_epochs",
        "logging_steps",
        "save_steps",
        "save_total_limit",
        "eval_steps",
        "per_device_eval_batch_size",
        "early_stopping_patience",
        "early_stopping_min_delta",
        "report_to",
    )
)
"""Config fields a resumed run may change (how long it runs and how it reports), not what it is."""


class RunConflictError(InputError):
    """A run directory holds a different run, or is not a stformer run at all."""


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

    @property
    def manifest_path(self) -> Path:
        return self.root / RUN_MANIFEST

    def write_config(self, config: dict[str, Any]) -> Path:
        return _atomic_json(self.config_path, config)

    def read_config(self) -> dict[str, Any] | None:
        """The stored ``config.json`` (``None`` when absent or unreadable)."""
        try:
            data = json.loads(self.config_path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def is_stformer_run(self) -> bool:
        """Whether the folder carries stformer's run marker (or, written before the marker
        existed, a ``config.json`` with stformer's ``engine``/``model``/``train`` sections)."""
        try:
            marker = json.loads(self.manifest_path.read_text())
            if isinstance(marker, dict) and marker.get("format") == RUN_FORMAT:
                return True
        except (OSError, ValueError):
            pass
        old = self.read_config()
        return old is not None and {"engine", "model", "train"} <= set(old)

    def is_empty(self) -> bool:
        return not self.root.exists() or not any(p.name != LOCK_NAME for p in self.root.iterdir())

    def remove_outputs(self) -> list[str]:
        """Delete what stformer wrote (:data:`RUN_ENTRIES`); other files stay. Returns the names."""
        removed = []
        for name in RUN_ENTRIES:
            path = self.root / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
            else:
                continue
            removed.append(name)
        return removed

    @classmethod
    @contextmanager
    def open(
        cls,
        root: str | PathLike[str],
        config: Mapping[str, Any],
        *,
        overwrite: bool = False,
        resume: bool | None = None,
    ) -> Iterator[RunDir]:
        """Check, lock and (re)write a run directory for ``config``; the lock is held in the block.

        A new or empty folder starts a run. A stformer run whose stored config agrees with
        ``config`` (fields both hold; :data:`RESUMABLE_FIELDS` may differ) is resumed; one that
        disagrees is refused with :class:`RunConflictError` naming the differing fields, before
        anything is written, unless ``overwrite`` (then what stformer wrote is removed first). A
        folder without the stformer marker is refused when it holds a name stformer would write
        (``config.json``, ``model``, ...) and always with ``overwrite``; other files in it stay.
        ``resume=True`` refuses a folder with no run to resume; a second process writing the same
        folder is refused with :class:`stformer_train._lock.RunLockedError` naming its pid.
        """
        if overwrite and resume:
            raise ValueError("choose one of overwrite (start again) and resume (continue)")
        run = cls(Path(root))
        if int(os.environ.get("RANK", "0") or 0) != 0:
            # torchrun / Ray workers other than rank 0: rank 0 checks, locks and writes the
            # folder. Writing or checking here would race with it (folders made here first make
            # rank 0 see a foreign folder; the lock would refuse a rank): wait for its marker.
            deadline = time.monotonic() + 600.0
            while not run.manifest_path.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            yield run
            return
        if run.root.exists() and not run.root.is_dir():
            raise RunConflictError(
                run.root, "--out", "is a file, not a folder", "choose a folder for the run"
            )
        if not run.is_empty() and not run.is_stformer_run():
            taken = [n for n in RUN_ENTRIES if n != "corpus" and (run.root / n).exists()]
            if overwrite or taken:
                held = f" and holds {', '.join(taken)}" if taken else ""
                raise RunConflictError(
                    run.root,
                    "--out",
                    f"is not a stformer run (no {RUN_MANIFEST}){held}",
                    "choose a new or empty folder; stformer neither overwrites nor deletes "
                    "files it did not write",
                )
        existed, fresh = run.root.exists(), run.is_empty()
        try:
            with FolderLock(run.root):
                yield from run._open_locked(config, overwrite=overwrite, resume=resume)
        except InputError:
            if fresh:  # a new run refused on its inputs leaves nothing behind
                run._remove_new(existed)
            raise

    def _remove_new(self, existed: bool) -> None:
        """Undo a new run that failed on its inputs: what stformer wrote, and the folder if new."""
        self.remove_outputs()
        (self.root / LOCK_NAME).unlink(missing_ok=True)
        if not existed and self.root.is_dir() and not any(self.root.iterdir()):
            self.root.rmdir()

    def _open_locked(
        self, config: Mapping[str, Any], *, overwrite: bool, resume: bool | None
    ) -> Iterator[RunDir]:
        old = None if self.is_empty() else self.read_config()
        if overwrite and not self.is_empty():
            removed = self.remove_outputs()
            log.info("--overwrite: removed %s from %s", ", ".join(removed), self.root)
            old = None
        elif old is not None:
            diff = config_differences(old, config)
            if diff:
                raise RunConflictError(
                    self.root,
                    "config",
                    "holds a different run: "
                    + "; ".join(f"{k}: {a!r} there, {b!r} now" for k, a, b in diff),
                    "pass --overwrite to start again in this folder (removes what stformer "
                    "wrote there), or --resume with the run's own settings, or choose another --out",
                )
        if resume and old is None:
            raise RunConflictError(
                self.root,
                "--resume",
                "finds no stformer run to resume",
                "drop --resume to start a new run",
            )
        for sub in (self.checkpoints, self.logs):
            sub.mkdir(parents=True, exist_ok=True)
        if not self.manifest_path.exists():
            _atomic_json(self.manifest_path, {"format": RUN_FORMAT, "version": 1})
        self.write_config({**(old or {}), **config})
        yield self

    def resume_point(self) -> ResumePoint | None:
        """The last complete checkpoint (see :func:`complete_checkpoint`), after removing
        half-written ones (a kill during a save); ``None`` when there is none."""
        return resume_point(self.checkpoints)

    def write_history(self, history: list[dict[str, Any]]) -> Path:
        return _atomic_json(self.logs / "log_history.json", history)


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = list(value) if isinstance(value, tuple) else value
    return flat


def config_differences(
    stored: Mapping[str, Any], requested: Mapping[str, Any]
) -> list[tuple[str, Any, Any]]:
    """``(field, stored, requested)`` for every field both configs hold with different values,
    except :data:`RESUMABLE_FIELDS`.

    >>> config_differences({"model": {"hidden_size": 64}}, {"model": {"hidden_size": 32}})
    [('model.hidden_size', 64, 32)]
    """
    old, new = _flatten(stored), _flatten(requested)
    return [
        (k, old[k], new[k])
        for k in sorted(old.keys() & new.keys())
        if k not in RESUMABLE_FIELDS and old[k] != new[k]
    ]


_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


@dataclass(frozen=True)
class ResumePoint:
    """Where a run resumes: the checkpoint folder (or file), its step and the run's total steps."""

    path: Path
    step: int
    max_steps: int | None = None

    def describe(self, root: Path | None = None) -> str:
        where = self.path.relative_to(root) if root is not None else self.path
        total = f" of {self.max_steps}" if self.max_steps and self.max_steps > 0 else ""
        return f"{where} (step {self.step}{total})"


def complete_checkpoint(folder: Path) -> str | None:
    """``None`` when a Hugging Face checkpoint folder is complete, else what it lacks."""
    try:
        state = json.loads((folder / "trainer_state.json").read_text())
    except FileNotFoundError:
        return "no trainer_state.json"
    except (OSError, ValueError):
        return "an unreadable trainer_state.json"
    if not isinstance(state, dict) or "global_step" not in state:
        return "a trainer_state.json without global_step"
    if not any((folder / w).exists() for w in _WEIGHTS) and not any(folder.glob("global_step*")):
        return "no model weights"
    return None


def scan_checkpoints(
    checkpoints: Path, *, clean: bool = True
) -> tuple[ResumePoint | None, list[str]]:
    """The newest complete ``checkpoint-N`` under ``checkpoints``, and what was skipped.

    Half-written checkpoints (``checkpoint-N.partial`` staging folders, and ``checkpoint-N``
    folders an older version left without ``trainer_state.json`` or weights) are skipped and,
    with ``clean`` (the one process writing the run), removed; the second value describes each.
    """
    skipped: list[str] = []
    if not checkpoints.is_dir():
        return None, skipped
    found: list[tuple[int, Path]] = []
    for path in sorted(checkpoints.iterdir()):
        if path.is_dir() and path.name.endswith(".partial"):
            skipped.append(f"{path.name} (a checkpoint save that was interrupted)")
            if clean:
                shutil.rmtree(path, ignore_errors=True)
            continue
        match = _CHECKPOINT.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    for _, path in sorted(found, reverse=True):
        problem = complete_checkpoint(path)
        if problem is None:
            state = json.loads((path / "trainer_state.json").read_text())
            return ResumePoint(path, int(state["global_step"]), state.get("max_steps")), skipped
        skipped.append(f"{path.name} (incomplete: {problem})")
        if clean:
            shutil.rmtree(path, ignore_errors=True)
    return None, skipped


def resume_point(checkpoints: Path, *, clean: bool = True) -> ResumePoint | None:
    """:func:`scan_checkpoints` with a warning for each checkpoint skipped."""
    point, skipped = scan_checkpoints(checkpoints, clean=clean)
    for what in skipped:
        log.warning("skipping checkpoint %s%s", what, "; removed" if clean else "")
    return point


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


def run_held_out(
    run: str | PathLike[str], h5ad: str | PathLike[str], obs_names: Any, rows: np.ndarray
) -> tuple[np.ndarray | None, str]:
    """The run's own held-out cells among ``rows`` (cells of ``h5ad`` with obs names
    ``obs_names``) when ``h5ad`` is a pretraining file of the run and the split holds some but not
    all of them: ``(mask, sentence saying so)``; else ``(None, why not)``. ``evaluate`` and
    ``finetune`` score on these cells (``RUN/split.json``), so held out means held out."""
    split = read_split(run)
    mask = None if split is None else split.test_mask(h5ad, obs_names, rows)
    if mask is not None and mask.any() and not mask.all():
        return mask, (
            f"held-out cells: the run's split ({split.path}), {int(mask.sum())} labelled cells "
            "that pretraining never saw"
        )
    if split is None:
        return None, "the run kept no split.json"
    if mask is None:
        return None, "this file is not one the run was pretrained on"
    return None, "the run held out no labelled cells of this file (pretrain --test-fraction 0)"


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
