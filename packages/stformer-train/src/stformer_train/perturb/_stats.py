"""Rank perturbed genes by their mean shift, with confidence intervals (the stats step)."""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import numpy as np
import pandas as pd


def perturbation_stats(
    table: str | PathLike[str] | pd.DataFrame,
    *,
    groupby: str | Sequence[str] | None = None,
    metric: str | None = None,
    confidence: float = 0.95,
    min_cells: int = 1,
) -> pd.DataFrame:
    """Per perturbed gene (and group), the mean of ``metric`` over cells with a t confidence interval.

    Parameters
    ----------
    table
        ``perturbations.parquet`` (a path, or the folder holding it) or its DataFrame.
    groupby
        ``obs`` column(s) copied into the table (e.g. ``cell_type``): genes are ranked within each group.
    metric
        ``"shift"`` (1 - cosine similarity: how far the cell moves) or ``"shift_to_goal"`` (goal-state
        runs: how much closer to the goal state it moves). Default: ``shift_to_goal`` when the table
        has it, else ``shift``.
    confidence
        Level of the two-sided interval of the mean (Student's t over the cells).
    min_cells
        Leave out genes perturbed in fewer cells (per group).

    Returns
    -------
    One row per (group, gene), sorted by group and then by mean (largest first), with ``n_cells``,
    ``mean``, ``std``, ``ci_low``, ``ci_high`` and ``rank`` (1 = largest mean within the group).
    """
    from scipy import stats

    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if isinstance(table, pd.DataFrame):
        df = table
    else:
        path = Path(table)
        if path.is_dir():
            path = path / "perturbations.parquet"
        df = pd.read_parquet(path)
    metric = metric or ("shift_to_goal" if "shift_to_goal" in df.columns else "shift")
    if metric not in df.columns:
        raise ValueError(
            f"metric {metric!r} is not a column of the table; columns: {list(df.columns)}"
        )
    groups = [groupby] if isinstance(groupby, str) else list(groupby or [])
    for g in groups:
        if g not in df.columns:
            raise ValueError(
                f"groupby column {g!r} is not in the table; pass it as obs_columns when perturbing (columns: {list(df.columns)})"
            )
    keys = [*groups, "perturbed"]
    agg = (
        df.groupby(keys, observed=True, sort=False)[metric]
        .agg(["count", "mean", "std"])
        .reset_index()
    )
    agg = agg.rename(columns={"count": "n_cells"})
    agg = agg[agg["n_cells"] >= min_cells].copy()
    n = agg["n_cells"].to_numpy(dtype=float)
    sem = agg["std"].to_numpy(dtype=float) / np.sqrt(n)
    with np.errstate(invalid="ignore"):
        t = stats.t.ppf(0.5 + confidence / 2, np.maximum(n - 1, 1))
    half = np.where(n > 1, t * sem, np.nan)
    agg["ci_low"] = agg["mean"] - half
    agg["ci_high"] = agg["mean"] + half
    agg["metric"] = metric
    agg = agg.sort_values(
        [*groups, "mean"], ascending=[True] * len(groups) + [False], kind="stable"
    )
    agg["rank"] = (
        agg.groupby(groups, observed=True).cumcount() + 1 if groups else np.arange(1, len(agg) + 1)
    )
    return agg.reset_index(drop=True)
