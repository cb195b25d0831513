"""``run_search`` (corpus in, search folder out) and ``PretrainML.run_hyperparameter_train``.

A search folder holds::

    OUT/search.json      the search space, base configs and corpus (a resume must match them)
    OUT/study.db         optuna: the SQLite study (resume continues it)
    OUT/ray_results/     ray: the Tune experiment (resume restores it)
    OUT/trials/…/        one pretraining run directory per trial
    OUT/trials.csv       one row per trial: state, eval_loss, steps, time, parameters
    OUT/trials.png       the objective per trial and against each parameter
    OUT/best.yaml|json   model:/train: configs of the best trial (stformer pretrain --config best.yaml)
    OUT/summary.json     best trial, its eval_loss and parameters, trial states
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any

from stformer_data.atomic import atomic_write_text
from stformer_train import ModelConfig, TrainConfig
from stformer_train.config import merge_config
from stformer_train.hf import PretrainML as _BasePretrainML
from stformer_tune._results import SearchResult, write_results, write_trials_csv
from stformer_tune._space import SearchSpace
from stformer_tune._trial import require_eval_split

log = logging.getLogger(__name__)

BACKENDS = ("optuna", "ray")
SEARCH_FILE = "search.json"


def resolve_backend(backend: str) -> str:
    """``"optuna"`` or ``"ray"``; stFormer's misspelling ``"optuma"`` is accepted with a DeprecationWarning."""
    name = str(backend).strip().lower()
    if name == "optuma":
        warnings.warn(
            "backend='optuma' is a misspelling kept from stFormer; use backend='optuna'",
            DeprecationWarning,
            stacklevel=3,
        )
        return "optuna"
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    return name


def _check_search_file(out_dir: Path, record: dict[str, Any], resume: bool) -> None:
    path = out_dir / SEARCH_FILE
    if path.exists() and not resume:
        raise FileExistsError(
            f"{out_dir}: a search already exists in this folder; pass --resume (resume=True) to "
            "continue it, or choose another output folder"
        )
    if path.exists() and resume:
        saved = json.loads(path.read_text())
        for key in ("backend", "search_space", "model", "train"):
            if saved.get(key) != record[key]:
                raise ValueError(
                    f"{path}: --resume with a different {key} than the interrupted search "
                    f"(saved {saved.get(key)!r}, now {record[key]!r}); use the same settings, "
                    "or start a new search in another folder"
                )
    atomic_write_text(path, json.dumps(record, indent=1, default=str) + "\n")


def run_search(
    corpus: str | PathLike[str],
    out_dir: str | PathLike[str],
    search_space: Mapping[str, Any] | SearchSpace,
    *,
    model: ModelConfig | None = None,
    train: TrainConfig | None = None,
    backend: str = "optuna",
    n_trials: int = 8,
    resources_per_trial: Mapping[str, Any] | float | None = None,
    resume: bool = False,
    seed: int = 0,
    address: str | None = None,
    num_cpus: int = 2,
    pruner: Any = None,
) -> SearchResult:
    """Search hyperparameters of ``pretrain_mlm`` on ``corpus``; write the results into ``out_dir``.

    Parameters
    ----------
    corpus
        A stformer corpus folder (``stformer_data.tokenize_files`` output).
    search_space
        stFormer's dict form (see :class:`SearchSpace`); names are TrainConfig/ModelConfig fields.
    model, train
        The base configs every trial starts from. ``train.eval_fraction`` must be > 0: the
        objective is the evaluation loss on that held-out split (minimised by both back-ends; the
        best trial is the complete trial with the lowest final ``eval_loss``).
    backend
        ``"optuna"`` (SQLite study, median pruning) or ``"ray"`` (Tune + OptunaSearch + ASHA).
    n_trials
        Trials in the whole search; a resumed Optuna study runs only the missing ones.
    resources_per_trial
        ``{"cpu": 0.5, "gpu": 0}`` per trial (Ray); with Optuna the CPU count sets torch's threads.
    resume
        Continue the search stored in ``out_dir`` (otherwise an existing one is an error).
    address
        Ray cluster address; ``None`` starts a local Ray with ``num_cpus`` CPUs.
    pruner
        An ``optuna.pruners`` object (Optuna back-end); default median pruning.
    """
    from stformer_data import load_corpus

    backend = resolve_backend(backend)
    space = SearchSpace.from_dict(search_space)
    model = model or ModelConfig()
    train = train or TrainConfig(eval_fraction=0.1)
    require_eval_split(train)
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise ValueError(f"n_trials must be an int >= 1, got {n_trials!r}")
    from stformer_tune._ray import validate_resources

    resources = validate_resources(resources_per_trial)
    corpus_obj = load_corpus(corpus)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "backend": backend,
        "search_space": space.to_dict(),
        "model": model.to_dict(),
        "train": train.to_dict(),
        "corpus": str(corpus_obj.path),
        "n_trials": n_trials,
        "resources_per_trial": resources,
    }
    _check_search_file(out, record, resume)
    if backend == "optuna":
        from stformer_tune._optuna import run_optuna

        trials = run_optuna(
            corpus_obj,
            out,
            space,
            model,
            train,
            n_trials=n_trials,
            resume=resume,
            seed=seed,
            pruner=pruner,
            threads=max(1, int(resources["cpu"])),
        )
    else:
        from stformer_tune._ray import SearchInterrupted, run_ray

        try:
            trials = run_ray(
                corpus_obj.path,
                out,
                space,
                model,
                train,
                n_trials=n_trials,
                resources_per_trial=resources,
                resume=resume,
                seed=seed,
                address=address,
                num_cpus=num_cpus,
            )
        except SearchInterrupted as exc:  # leave the table of what ran, then stop
            write_trials_csv(exc.trials, space, out / "trials.csv")
            raise
    return write_results(trials, space, model, train, out, backend=backend)


class PretrainML(_BasePretrainML):
    """stFormer's ``PretrainML`` with its hyperparameter search, ``run_hyperparameter_train``.

    The constructor is :class:`stformer_train.hf.PretrainML`'s; ``dataset_path`` must be a
    stformer corpus folder. ``training_overrides`` may set TrainConfig fields, e.g.
    ``{"eval_fraction": 0.1, "eval_steps": 50, "max_steps": 200}`` (a trial's length).

    >>> PretrainML(dataset_path="c", example_lengths_file="c/example_lengths.pkl",
    ...            token_dictionary_file="c/vocab.json", output_dir="o").search_dir
    PosixPath('o/hyperparameter_search/stformer')
    """

    @property
    def search_dir(self) -> Path:
        return self.output_dir / "hyperparameter_search" / self.run_name

    def base_train_config(self) -> TrainConfig:
        """The TrainConfig every trial starts from (stFormer's settings plus ``training_overrides``)."""
        allowed = set(TrainConfig.__dataclass_fields__)
        unknown = sorted(set(self.training_overrides) - allowed)
        if unknown:
            raise ValueError(
                f"PretrainML.training_overrides: {unknown} are not TrainConfig fields, which a "
                f"search needs; allowed: {sorted(allowed)}"
            )
        # a search needs a validation split: 10% unless the overrides choose
        return merge_config(self.train_config, {"eval_fraction": 0.1, **self.training_overrides})

    def run_hyperparameter_train(
        self,
        search_space: Mapping[str, Any],
        resources_per_trial: Mapping[str, Any] | float | None = None,
        n_trials: int = 8,
        backend: str = "ray",
        *,
        resume: bool = False,
        address: str | None = None,
        seed: int | None = None,
        **kwargs: Any,
    ) -> SearchResult:
        """Search ``search_space`` with ``n_trials`` trials on ``backend`` (``"ray"`` or ``"optuna"``).

        Results go to :attr:`search_dir` (see :func:`run_search`); ``best.yaml`` there is a
        config for ``stformer pretrain --config``.
        """
        return run_search(
            self.dataset_path,
            self.search_dir,
            search_space,
            model=self.model_config,
            train=self.base_train_config(),
            backend=resolve_backend(backend),
            n_trials=n_trials,
            resources_per_trial=resources_per_trial,
            resume=resume,
            address=address,
            seed=self.seed if seed is None else seed,
            **kwargs,
        )
