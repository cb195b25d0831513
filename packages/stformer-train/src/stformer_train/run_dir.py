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
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
    "heldout",
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
        with FolderLock(run.root):
            old = None if run.is_empty() else run.read_config()
            if overwrite and not run.is_empty():
                removed = run.remove_outputs()
                log.info("--overwrite: removed %s from %s", ", ".join(removed), run.root)
                old = None
            elif old is not None:
                diff = config_differences(old, config)
                if diff:
                    raise RunConflictError(
                        run.root,
                        "config",
                        "holds a different run: "
                        + "; ".join(f"{k}: {a!r} there, {b!r} now" for k, a, b in diff),
                        "pass --overwrite to start again in this folder (removes what stformer "
                        "wrote there), or --resume with the run's own settings, or choose another --out",
                    )
            if resume and old is None:
                raise RunConflictError(
                    run.root,
                    "--resume",
                    "finds no stformer run to resume",
                    "drop --resume to start a new run",
                )
            for sub in (run.checkpoints, run.logs):
                sub.mkdir(parents=True, exist_ok=True)
            if not run.manifest_path.exists():
                _atomic_json(run.manifest_path, {"format": RUN_FORMAT, "version": 1})
            run.write_config({**(old or {}), **config})
            yield run

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
