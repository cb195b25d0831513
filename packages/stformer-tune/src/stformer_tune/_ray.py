"""The Ray back-end: Ray Tune with an Optuna searcher and an ASHA scheduler.

Each trial is a plain function trainable that runs ``pretrain_mlm`` in the Ray worker and reports
every evaluation loss with ``tune.report``; ASHA stops the trials whose losses fall behind.
Resources per trial may be fractions of a CPU (``{"cpu": 0.5}``). Without an ``address`` Ray
starts locally on ``num_cpus`` CPUs; with one (``"auto"``, ``"ray://head:10001"``) it joins that
cluster, whose workers must see the corpus and the output folder at the same paths.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from stformer_train import ModelConfig, TrainConfig
from stformer_tune._results import TrialRecord
from stformer_tune._space import SearchSpace
from stformer_tune._trial import METRIC, MODE, apply_params, run_trial

log = logging.getLogger(__name__)

EXPERIMENT = "ray_tune"


def _import_ray():
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Under `uv run`, Ray would otherwise package the working tree and build a fresh virtual
    # environment for its workers; the workers use this interpreter's environment instead.
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    try:
        import ray
        from ray import tune
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ImportError(
            'the Ray back-end needs Ray Tune: pip install "ray[default,tune]"'
        ) from exc
    return ray, tune


def validate_resources(resources: Mapping[str, Any] | float | None) -> dict[str, float]:
    """``{"cpu": c, "gpu": g}`` per trial (``c`` > 0, fractions allowed); a number means CPUs."""
    if resources is None:
        return {"cpu": 1.0}
    if isinstance(resources, int | float) and not isinstance(resources, bool):
        resources = {"cpu": float(resources)}
    if not isinstance(resources, Mapping):
        raise ValueError(
            f"resources_per_trial must be a mapping like {{'cpu': 0.5}}, got {resources!r}"
        )
    out: dict[str, float] = {}
    for key, value in resources.items():
        k = str(key).lower()
        if k not in ("cpu", "gpu"):
            raise ValueError(f"resources_per_trial: unknown resource {key!r}; use 'cpu' and 'gpu'")
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or value < 0
            or not math.isfinite(value)
        ):
            raise ValueError(f"resources_per_trial[{key!r}] must be a number >= 0, got {value!r}")
        out[k] = float(value)
    out.setdefault("cpu", 1.0)
    if out["cpu"] <= 0:
        raise ValueError(
            f"resources_per_trial['cpu'] must be > 0 (Ray needs a CPU share; 0.01 is fine), "
            f"got {out['cpu']}"
        )
    return out


def _ray_trainable(
    config: dict[str, Any],
    *,
    corpus: Any,
    model: ModelConfig,
    train: TrainConfig,
    out_dir: str,
    threads: int,
    arguments: dict[str, Any] | None = None,
) -> None:
    """The function trainable: one trial of ``pretrain_mlm`` in the Ray worker."""
    from ray import tune

    model_t, train_t = apply_params(model, train, config)
    trial_id = tune.get_context().get_trial_id()

    def report(step: int, loss: float, final: bool) -> None:
        tune.report({METRIC: loss, "step": step, "final": final})

    run_trial(
        corpus,
        Path(out_dir) / "trials" / f"trial_{trial_id}",
        model_t,
        train_t,
        report,
        threads=threads,
        arguments=arguments,
    )


def ensure_ray(address: str | None = None, num_cpus: int = 2) -> bool:
    """Start (or join) Ray unless it is running; return whether this call started it."""
    ray, _ = _import_ray()
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False)
    return True


def _evaluations(train: TrainConfig) -> int:
    if train.max_steps > 0:
        return math.ceil(train.max_steps / (train.eval_steps or train.save_steps)) + 1
    return 1000


class SearchInterrupted(RuntimeError):
    """The search stopped before all its trials finished (Ctrl-C); ``resume=True`` continues it.

    ``trials`` holds the trials as they were when it stopped.
    """

    def __init__(self, message: str, trials: list[TrialRecord]):
        super().__init__(message)
        self.trials = trials


def _interrupted(results, n_trials: int) -> bool:
    finished = results.num_terminated + results.num_errors
    return finished < len(results) or len(results) < n_trials


def _creation_order(result) -> tuple[int, str]:
    """Tune names a trial folder ``<trainable>_<trial_id>_<index>_<params>_<date>``; sort by the index."""
    name = Path(str(result.path)).name
    trial_id = (result.metrics or {}).get("trial_id")
    match = re.search(
        rf"_{re.escape(trial_id)}_(\d+)_" if trial_id else r"_[0-9a-f]{5,}_(\d+)_", name
    )
    return (int(match.group(1)) if match else 1 << 30, name)


def _records(results, *, interrupted: bool = False) -> list[TrialRecord]:
    records = []
    ordered = sorted(results, key=_creation_order)
    for number, r in enumerate(ordered):
        inter: list[tuple[int, float]] = []
        df = r.metrics_dataframe
        if df is not None and METRIC in df:
            inter = [(int(s), float(v)) for s, v in zip(df["step"], df[METRIC], strict=True)]
        metrics = r.metrics or {}
        if r.error is not None:
            state = "FAIL"
        elif metrics.get("final"):
            state = "COMPLETE"
        elif interrupted or METRIC not in metrics:
            state = "RUNNING"  # cut off by an interruption (or never reached an evaluation)
        else:
            state = "PRUNED"  # stopped by ASHA before its last evaluation
        params = {k: v for k, v in (r.config or {}).items()}
        records.append(
            TrialRecord(
                number=number,
                state=state,
                eval_loss=metrics.get(METRIC),
                params=params,
                steps=metrics.get("step"),
                duration_s=metrics.get("time_total_s"),
                intermediate=inter,
            )
        )
    return records


def run_ray(
    corpus: Any,
    out_dir: Path,
    space: SearchSpace,
    model: ModelConfig,
    train: TrainConfig,
    *,
    n_trials: int,
    resources_per_trial: Mapping[str, Any] | float | None = None,
    resume: bool = False,
    seed: int = 0,
    address: str | None = None,
    num_cpus: int = 2,
    grace_period: int = 1,
    reduction_factor: int = 2,
    arguments: dict[str, Any] | None = None,
) -> list[TrialRecord]:
    """Run ``n_trials`` trials with Ray Tune (OptunaSearch + ASHAScheduler); return them all.

    ``corpus`` is a corpus folder or a loaded ``stformer_data.Corpus`` (sent to the trials
    through Ray's object store; its Arrow data stays memory-mapped by path).
    With ``resume`` an interrupted experiment in ``out_dir / "ray_results"`` is restored
    (unfinished and errored trials run again).
    """
    resources = validate_resources(resources_per_trial)
    ray, tune = _import_ray()
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    storage = (out_dir / "ray_results").resolve()
    experiment = storage / EXPERIMENT
    if experiment.exists() and not resume:
        raise FileExistsError(
            f"{experiment}: a Ray Tune experiment already exists; pass --resume "
            "(resume=True) to continue it, or choose another output folder"
        )
    started = ensure_ray(address, num_cpus)
    try:
        trainable = tune.with_resources(
            tune.with_parameters(
                _ray_trainable,
                corpus=corpus
                if not isinstance(corpus, str | os.PathLike)
                else str(Path(corpus).resolve()),
                model=model,  # the configs travel whole (frozen dataclasses pickle)
                train=train,
                out_dir=str(out_dir.resolve()),
                threads=max(1, int(resources["cpu"])),
                arguments=dict(arguments or {}),
            ),
            resources,
        )
        if resume and tune.Tuner.can_restore(str(experiment)):
            tuner = tune.Tuner.restore(str(experiment), trainable, resume_errored=True)
        else:
            searcher = OptunaSearch(
                space=space.distributions(), metric=METRIC, mode=MODE, seed=seed
            )
            scheduler = ASHAScheduler(
                time_attr="training_iteration",
                max_t=_evaluations(train),
                grace_period=grace_period,
                reduction_factor=reduction_factor,
            )
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    metric=METRIC,
                    mode=MODE,
                    search_alg=searcher,
                    scheduler=scheduler,
                    num_samples=n_trials,
                    reuse_actors=True,
                ),
                run_config=tune.RunConfig(
                    name=EXPERIMENT,
                    storage_path=str(storage),
                    verbose=0,
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
                ),
            )
        results = tuner.fit()
        interrupted = _interrupted(results, n_trials)
        records = _records(results, interrupted=interrupted)
    finally:
        if started:
            ray.shutdown()
    if interrupted:
        done = sum(r.state != "RUNNING" for r in records)
        raise SearchInterrupted(
            f"the Ray Tune search in {experiment} stopped after {done} of {n_trials} trials; "
            "run it again with --resume (resume=True) to continue",
            records,
        )
    return records
