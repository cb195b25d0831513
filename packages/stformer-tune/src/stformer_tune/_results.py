"""Results of a search: the trials table, the best config for ``stformer pretrain`` and a plot."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stformer_data.atomic import atomic_write_bytes, atomic_write_text
from stformer_train import ModelConfig, TrainConfig
from stformer_tune._space import SearchSpace
from stformer_tune._trial import METRIC, apply_params


@dataclass(frozen=True, kw_only=True)
class TrialRecord:
    """One trial of a search, whatever the back-end.

    ``state`` is ``COMPLETE``, ``PRUNED`` (stopped early by the pruner/scheduler), ``FAIL`` or
    ``RUNNING``; ``eval_loss`` is the objective (the last evaluation; for a pruned trial the last
    one it reached).
    """

    number: int
    state: str
    eval_loss: float | None
    params: dict[str, Any]
    steps: int | None = None
    duration_s: float | None = None
    intermediate: list[tuple[int, float]] = field(default_factory=list)


@dataclass(frozen=True)
class SearchResult:
    """What a search wrote and found.

    ``best_config`` is the YAML that ``stformer pretrain --config`` reads (``model:`` and
    ``train:`` sections).
    """

    out_dir: Path
    backend: str
    trials: list[TrialRecord]
    best: TrialRecord
    best_config: Path
    best_config_json: Path
    trials_csv: Path
    plot: Path

    @property
    def best_params(self) -> dict[str, Any]:
        return dict(self.best.params)


class NoTrialCompleted(RuntimeError):
    """Every trial failed or was pruned, so there is no best config (the trials table is written)."""


def _atomic_write(path: Path, text: str) -> Path:
    return atomic_write_text(path, text)


def best_trial(trials: Sequence[TrialRecord]) -> TrialRecord:
    """The COMPLETE trial with the lowest ``eval_loss`` (the objective every back-end minimises)."""
    done = [
        t
        for t in trials
        if t.state == "COMPLETE" and t.eval_loss is not None and math.isfinite(t.eval_loss)
    ]
    if not done:
        states = {t.number: t.state for t in trials}
        raise NoTrialCompleted(
            f"no trial completed (states: {states}); see trials.csv, the log and the "
            "trials/ folders for the errors"
        )
    return min(done, key=lambda t: (t.eval_loss, t.number))


def write_trials_csv(trials: Sequence[TrialRecord], space: SearchSpace, path: Path) -> Path:
    """One row per trial: number, state, eval_loss, steps, duration and each hyperparameter."""
    cols = ["number", "state", METRIC, "steps", "duration_s", *space.names]
    fh = io.StringIO(newline="")
    writer = csv.DictWriter(fh, fieldnames=cols)
    writer.writeheader()
    for t in sorted(trials, key=lambda t: t.number):
        writer.writerow(
            {
                "number": t.number,
                "state": t.state,
                METRIC: t.eval_loss,
                "steps": t.steps,
                "duration_s": None if t.duration_s is None else round(t.duration_s, 2),
                **{k: t.params.get(k) for k in space.names},
            }
        )
    return atomic_write_text(path, fh.getvalue())


#: TrainConfig fields that set a trial's budget, not a result: left out of ``best.yaml`` so that
#: ``stformer pretrain --config best.yaml --epochs 2`` trains two epochs, not the trial's steps.
TRIAL_BUDGET = ("max_steps", "eval_steps")


def write_best_config(
    best: TrialRecord, model: ModelConfig, train: TrainConfig, out_dir: Path, *, backend: str
) -> tuple[Path, Path]:
    """``best.yaml`` and ``best.json``: the base configs with the best trial's values set.

    ``model``/``train`` are the base configs every trial started from; the searched values are
    merged onto them and the trial budget (:data:`TRIAL_BUDGET`: ``max_steps``, ``eval_steps``)
    is left out, so the run length comes from the base ``num_train_epochs`` or the command line.
    ``stformer pretrain CORPUS --out RUN --config best.yaml`` accepts either file directly.
    """
    import yaml

    best_model, best_train = apply_params(model, train, best.params)
    train_d = {k: v for k, v in best_train.to_dict().items() if k not in TRIAL_BUDGET}
    payload = {"model": best_model.to_dict(), "train": train_d}
    budget = ", ".join(f"{k}={getattr(train, k)}" for k in TRIAL_BUDGET)
    header = (
        f"# best trial {best.number} of a stformer-tune search ({backend}): "
        f"{METRIC}={best.eval_loss:.6g}\n# params: {json.dumps(best.params)}\n"
        f"# the trial budget ({budget}) is not part of the result: set the run length with "
        "num_train_epochs here or --epochs / --max-steps\n"
    )
    yaml_path = _atomic_write(
        out_dir / "best.yaml", header + yaml.safe_dump(payload, sort_keys=False)
    )
    json_path = _atomic_write(out_dir / "best.json", json.dumps(payload, indent=1) + "\n")
    return yaml_path, json_path


def plot_trials(trials: Sequence[TrialRecord], space: SearchSpace, path: Path) -> Path:
    """PNG: the objective per trial (with the running best), then the objective against each parameter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    ordered = sorted((t for t in trials if t.eval_loss is not None), key=lambda t: t.number)
    n = 1 + len(space.params)
    ncols = min(n, 4)
    nrows = math.ceil(n / ncols)
    fig, grid = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.6 * nrows), squeeze=False)
    axes = grid.ravel()
    for extra in axes[n:]:
        extra.set_visible(False)
    ax = axes[0]
    colors = {
        "COMPLETE": "tab:blue",
        "PRUNED": "tab:orange",
        "FAIL": "tab:red",
        "RUNNING": "tab:gray",
    }
    for state, color in colors.items():
        pts = [(t.number, t.eval_loss) for t in ordered if t.state == state]
        if pts:
            ax.scatter(*zip(*pts, strict=True), color=color, label=state.lower(), zorder=3)
    done = [t for t in ordered if t.state == "COMPLETE"]
    if done:
        running, best = [], math.inf
        for t in done:
            best = min(best, t.eval_loss)  # type: ignore[type-var]
            running.append(best)
        ax.step(
            [t.number for t in done],
            running,
            where="post",
            color="black",
            lw=1,
            label="best so far",
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="trial", ylabel=METRIC, title="objective per trial")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    for ax, spec in zip(axes[1:n], space.params, strict=True):
        pts = [
            (t.params.get(spec.name), t.eval_loss, colors.get(t.state, "k"))
            for t in ordered
            if spec.name in t.params
        ]
        if spec.type == "categorical":
            labels = [str(v) for v in spec.values]
            xs = [labels.index(str(p[0])) for p in pts]
            ax.set_xticks(range(len(labels)), labels)
            ax.set_xlim(-0.5, len(labels) - 0.5)
        else:
            xs = [p[0] for p in pts]
            if spec.type == "loguniform" or spec.log:
                from matplotlib.ticker import LogFormatterSciNotation, LogLocator

                ax.set_xscale("log")  # decades only, as 10^-4: readable, never overlapping
                ax.xaxis.set_major_locator(LogLocator(base=10, numticks=6))
                ax.xaxis.set_major_formatter(LogFormatterSciNotation(base=10))
                ax.xaxis.set_minor_formatter(plt.NullFormatter())
            else:
                ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
            ax.tick_params(axis="x", labelsize=8)
        ax.scatter(xs, [p[1] for p in pts], c=[p[2] for p in pts], zorder=3)
        ax.set(xlabel=spec.name, ylabel=METRIC, title=f"{METRIC} by {spec.name} ({spec.type})")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(path, png.getvalue())


def write_results(
    trials: Sequence[TrialRecord],
    space: SearchSpace,
    model: ModelConfig,
    train: TrainConfig,
    out_dir: Path,
    *,
    backend: str,
) -> SearchResult:
    """Write ``trials.csv``, ``trials.png``, ``best.yaml``/``best.json`` and ``summary.json`` into ``out_dir``."""
    csv_path = write_trials_csv(trials, space, out_dir / "trials.csv")
    png = plot_trials(trials, space, out_dir / "trials.png")
    best = best_trial(
        trials
    )  # after the table, so a search without a complete trial still leaves it
    yaml_path, json_path = write_best_config(best, model, train, out_dir, backend=backend)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state] = counts.get(t.state, 0) + 1
    summary = {
        "backend": backend,
        "metric": METRIC,
        "mode": "min",
        "n_trials": len(trials),
        "states": counts,
        "best_trial": best.number,
        "best_eval_loss": best.eval_loss,
        "best_params": best.params,
        "search_space": space.to_dict(),
    }
    _atomic_write(out_dir / "summary.json", json.dumps(summary, indent=1, default=str) + "\n")
    return SearchResult(
        out_dir=out_dir,
        backend=backend,
        trials=list(trials),
        best=best,
        best_config=yaml_path,
        best_config_json=json_path,
        trials_csv=csv_path,
        plot=png,
    )
