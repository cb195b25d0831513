"""``run_search``: corpus in, search folder out (``stformer_train.hf.PretrainML.run_hyperparameter_train`` calls it).

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
from typing import TYPE_CHECKING, Any

from stformer_data.atomic import atomic_write_text
from stformer_train import ModelConfig, TrainConfig
from stformer_tune._results import SearchResult, write_results, write_trials_csv
from stformer_tune._space import SearchSpace
from stformer_tune._trial import require_eval_split

if TYPE_CHECKING:
    from stformer_data import Corpus

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
    corpus: Corpus | str | PathLike[str],
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
    arguments: Mapping[str, Any] | None = None,
) -> SearchResult:
    """Search hyperparameters of ``pretrain_mlm`` on ``corpus``; write the results into ``out_dir``.

    Parameters
    ----------
    corpus
        A stformer corpus folder (``stformer_data.tokenize_files`` output) or a loaded
        :class:`~stformer_data.Corpus` (``PretrainML`` passes its Hugging Face dataset as one).
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
    arguments
        Extra ``TrainingArguments`` fields of every trial (e.g. ``{"optim": "adafactor"}``).
    """
    from stformer_data import Corpus, load_corpus

    backend = resolve_backend(backend)
    space = SearchSpace.from_dict(search_space)
    model = model or ModelConfig()
    train = train or TrainConfig(eval_fraction=0.1)
    require_eval_split(train)
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise ValueError(f"n_trials must be an int >= 1, got {n_trials!r}")
    from stformer_tune._ray import validate_resources

    resources = validate_resources(resources_per_trial)
    corpus_obj = corpus if isinstance(corpus, Corpus) else load_corpus(corpus)
    arguments = dict(arguments or {})
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
        "arguments": arguments,
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
            arguments=arguments,
        )
    else:
        from stformer_tune._ray import SearchInterrupted, run_ray

        try:
            trials = run_ray(
                corpus_obj,
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
                arguments=arguments,
            )
        except SearchInterrupted as exc:  # leave the table of what ran, then stop
            write_trials_csv(exc.trials, space, out / "trials.csv")
            raise
    return write_results(trials, space, model, train, out, backend=backend)
