"""The Optuna back-end: an SQLite study in the search folder, resumable, pruned on evaluation losses."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from stformer_train import ModelConfig, TrainConfig
from stformer_tune._results import TrialRecord
from stformer_tune._space import SearchSpace
from stformer_tune._trial import apply_params, run_trial

log = logging.getLogger(__name__)

STUDY_FILE = "study.db"
STUDY_NAME = "stformer"
_INTERRUPTED = "interrupted"


def _import_optuna():
    try:
        import optuna
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ImportError('the Optuna back-end needs optuna: pip install "stformer-tune"') from exc
    return optuna


def default_pruner(n_startup_trials: int = 2):
    """Median pruning on the reported evaluation losses, after ``n_startup_trials`` complete trials."""
    optuna = _import_optuna()
    return optuna.pruners.MedianPruner(
        n_startup_trials=n_startup_trials, n_warmup_steps=0, interval_steps=1
    )


def trial_dir(out_dir: Path, number: int) -> Path:
    return out_dir / "trials" / f"trial_{number:04d}"


def _close_stale_trials(study, out_dir: Path) -> int:
    """Mark trials left RUNNING by a killed process as interrupted failures; remove their folders."""
    optuna = _import_optuna()
    for t in study.get_trials(
        deepcopy=False
    ):  # interrupted with Ctrl-C: failed already, folder left
        if t.state == optuna.trial.TrialState.FAIL and t.user_attrs.get(_INTERRUPTED):
            shutil.rmtree(trial_dir(out_dir, t.number), ignore_errors=True)
    stale = [
        t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.RUNNING
    ]
    for t in stale:
        study._storage.set_trial_user_attr(t._trial_id, _INTERRUPTED, True)
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        shutil.rmtree(trial_dir(out_dir, t.number), ignore_errors=True)
    return len(stale)


def finished_trials(study) -> int:
    """Trials that count towards ``n_trials``: complete, pruned, or failed (not interrupted)."""
    optuna = _import_optuna()
    states = optuna.trial.TrialState
    return sum(
        1
        for t in study.get_trials(deepcopy=False)
        if t.state in (states.COMPLETE, states.PRUNED)
        or (t.state == states.FAIL and not t.user_attrs.get(_INTERRUPTED))
    )


def open_study(out_dir: Path, *, resume: bool, seed: int, pruner: Any = None):
    """Create (or, with ``resume``, load) the study stored in ``out_dir / "study.db"``."""
    optuna = _import_optuna()
    db = out_dir / STUDY_FILE
    if db.exists() and not resume:
        raise FileExistsError(
            f"{db}: a study already exists in this folder; pass --resume (resume=True) to continue "
            "it, or choose another output folder"
        )
    if resume and not db.exists():
        log.info("%s: no study to resume; starting a new one", db)
    storage = optuna.storages.RDBStorage(
        f"sqlite:///{db.resolve()}", engine_kwargs={"connect_args": {"timeout": 60}}
    )
    previous = 0
    if db.exists() and resume:
        try:
            previous = len(optuna.load_study(study_name=STUDY_NAME, storage=storage).trials)
        except KeyError:
            previous = 0
    # Re-seed past the trials already drawn so a resumed search does not repeat the first draws.
    sampler = optuna.samplers.TPESampler(seed=seed + previous, n_startup_trials=4)
    return optuna.create_study(
        study_name=STUDY_NAME,
        storage=storage,
        direction="minimize",
        sampler=sampler,
        pruner=pruner if pruner is not None else default_pruner(),
        load_if_exists=resume,
    )


def records_from_study(study) -> list[TrialRecord]:
    records = []
    for t in study.get_trials(deepcopy=False):
        inter = sorted((int(s), float(v)) for s, v in t.intermediate_values.items())
        value = t.value if t.value is not None else (inter[-1][1] if inter else None)
        duration = t.duration.total_seconds() if t.duration is not None else None
        records.append(
            TrialRecord(
                number=t.number,
                state=t.state.name,
                eval_loss=value,
                params=dict(t.params),
                steps=t.user_attrs.get("steps", inter[-1][0] if inter else None),
                duration_s=duration,
                intermediate=inter,
            )
        )
    return records


def run_optuna(
    corpus: Any,
    out_dir: Path,
    space: SearchSpace,
    model: ModelConfig,
    train: TrainConfig,
    *,
    n_trials: int,
    resume: bool = False,
    seed: int = 0,
    pruner: Any = None,
    threads: int | None = None,
    arguments: dict[str, Any] | None = None,
) -> list[TrialRecord]:
    """Run (or continue) the Optuna study until ``n_trials`` trials have finished; return all trials."""
    optuna = _import_optuna()
    study = open_study(out_dir, resume=resume, seed=seed, pruner=pruner)
    stale = _close_stale_trials(study, out_dir)
    done = finished_trials(study)
    remaining = max(0, n_trials - done)
    log.info(
        "optuna study %s: %d finished, %d interrupted, %d to run",
        out_dir / STUDY_FILE,
        done,
        stale,
        remaining,
    )

    def objective(trial) -> float:
        params = {p.name: p.suggest(trial) for p in space.params}
        model_t, train_t = apply_params(model, train, params)

        def report(step: int, loss: float, final: bool) -> None:
            trial.report(loss, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"eval_loss {loss:.4g} at step {step}")

        try:
            outcome = run_trial(
                corpus,
                trial_dir(out_dir, trial.number),
                model_t,
                train_t,
                report,
                threads=threads,
                arguments=arguments,
            )
        except KeyboardInterrupt:
            trial.set_user_attr(_INTERRUPTED, True)
            raise
        trial.set_user_attr("steps", outcome.steps)
        return outcome.eval_loss

    if remaining:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study.optimize(
            objective,
            n_trials=remaining,
            catch=(ValueError, RuntimeError, FloatingPointError),
            gc_after_trial=True,
        )
    return records_from_study(study)
