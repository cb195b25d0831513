"""Figures of a run: the loss curve with its chance level, and 2-D maps of cell embeddings.

:func:`plot_loss_curve` draws training and validation loss against the step with the loss of a
uniform guess over the vocabulary (ln |vocab|) dashed, so a curve that never leaves it has
learnt nothing. :func:`plot_embedding_2d` puts the model's embeddings beside its baselines (PCA
of the counts, a random-init model) in panels, each titled with its kNN accuracy and macro-F1,
coloured by a palette that does not repeat, with the legend outside the axes. The 2-D map is
UMAP when umap-learn is installed (``pip install umap-learn``; not a dependency: its numba
compilation takes minutes on a first run) and PCA otherwise, as the figure says.
"""

from __future__ import annotations

import colorsys
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stformer_data.atomic import atomic_write_bytes


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return atomic_write_bytes(Path(path), png.getvalue())


def loss_rows(history: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The numeric rows (step, epoch, losses, learning rate) of a trainer's log history."""
    rows = []
    for entry in history:
        row = {k: v for k, v in entry.items() if isinstance(v, int | float)}
        if any(k.endswith("loss") for k in row):
            rows.append(row)
    return rows


def plot_loss_curve(
    history: Sequence[Mapping[str, Any]],
    path: Path,
    *,
    title: str = "stformer pretraining",
    vocab_size: int | None = None,
) -> Path:
    """Training and validation loss against the step, with the chance level; a PNG, atomically.

    ``history`` is a trainer's log history (``loss`` and ``eval_loss`` rows by ``step``; the
    Lightning engine writes the same names). With ``vocab_size`` a dashed line marks
    ln(vocab_size), the cross-entropy of a uniform guess over the vocabulary.
    """
    plt = _pyplot()
    rows = [r for r in loss_rows(history) if "step" in r]
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for key, label, style in (
        ("loss", "training loss", dict(color="tab:blue", lw=1.2)),
        (
            "eval_loss",
            "validation loss (held-out cells)",
            dict(color="tab:orange", marker="o", ms=4),
        ),
    ):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        if pts:
            ax.plot(*zip(*pts, strict=True), label=label, **style)
    if vocab_size and vocab_size > 1:
        chance = math.log(vocab_size)
        ax.axhline(chance, color="grey", ls="--", lw=1)
        ax.annotate(
            f"chance: ln {vocab_size} = {chance:.2f}",
            (0.01, chance),
            xycoords=("axes fraction", "data"),
            va="bottom",
            fontsize=8,
            color="grey",
        )
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("masked-LM cross-entropy (nats)")
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return _save(fig, path)


def category_colors(n: int) -> list[tuple[float, float, float]]:
    """``n`` distinct colours: matplotlib's tab20, tab20b and tab20c (60), then golden-angle hues.

    >>> len(set(category_colors(75)))
    75
    """
    from matplotlib import colormaps

    base: list[tuple[float, float, float]] = []
    for name in ("tab20", "tab20b", "tab20c"):
        base.extend(tuple(c[:3]) for c in colormaps[name].colors)
    # tab20 pairs a strong and a light shade: take the strong ones first
    ordered = base[0:20:2] + base[1:20:2] + base[20:]
    if n <= len(ordered):
        return ordered[:n]
    extra = []
    for i in range(n - len(ordered)):
        hue = (i * 0.618033988749895) % 1.0
        light, sat = (0.35, 0.85) if i % 2 else (0.55, 0.65)
        extra.append(colorsys.hls_to_rgb(hue, light, sat))
    return ordered + extra


def embedding_map(x: np.ndarray, *, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
    """2-D coordinates of ``x`` and the method's name: ``umap`` (umap-learn), ``pca`` or ``auto``."""
    x = np.asarray(x, dtype=np.float32)
    if method not in ("auto", "umap", "pca"):
        raise ValueError(f"method must be auto, umap or pca; got {method!r}")
    if method in ("auto", "umap") and len(x) > 3:
        try:
            import umap  # optional
        except ImportError:
            if method == "umap":
                from stformer_train.progress import MissingBackend, install_hint

                raise MissingBackend(install_hint("umap-learn", what="a UMAP plot")) from None
        else:
            reducer = umap.UMAP(n_neighbors=min(15, len(x) - 1), random_state=seed)
            return reducer.fit_transform(x), "UMAP"
    from sklearn.decomposition import PCA

    n = min(2, x.shape[1], len(x))
    xy = PCA(n_components=n, random_state=seed).fit_transform(x)
    if xy.shape[1] < 2:
        xy = np.column_stack([xy, np.zeros(len(xy))])
    return xy, "PCA"


def _score_text(score: Any) -> str:
    if score is None:
        return ""
    get = score.get if isinstance(score, Mapping) else lambda k: getattr(score, k, None)
    acc, f1 = get("accuracy"), get("macro_f1")
    parts = [
        f"kNN acc {acc:.3f}" if acc is not None else "",
        f"macro-F1 {f1:.3f}" if f1 is not None else "",
    ]
    return ", ".join(p for p in parts if p)


def plot_embedding_2d(
    x: np.ndarray,
    labels: np.ndarray,
    path: Path,
    *,
    title: str,
    baselines: Mapping[str, np.ndarray] | None = None,
    scores: Mapping[str, Any] | None = None,
    name: str = "stformer",
    method: str = "auto",
    seed: int = 0,
) -> Path:
    """Panels of 2-D maps coloured by label: the embeddings ``x`` beside each baseline; a PNG.

    Parameters
    ----------
    x, labels
        The model's cell embeddings and one label per cell.
    baselines
        Other embeddings of the same cells by panel name (e.g. ``{"PCA of counts": ...,
        "random init": ...}``).
    scores
        By panel name (``name`` for ``x``): a :class:`~stformer_train.KnnScore` or a dict with
        ``accuracy`` and ``macro_f1``, shown in the panel's title.
    method
        ``auto`` (UMAP when umap-learn is installed, else PCA, said in the figure), ``umap`` or
        ``pca``.
    """
    plt = _pyplot()
    labels = np.asarray(labels).astype(str)
    panels = {name: np.asarray(x), **{k: np.asarray(v) for k, v in (baselines or {}).items()}}
    classes = sorted(np.unique(labels), key=lambda c: (-int((labels == c).sum()), c))
    colors = dict(zip(classes, category_colors(len(classes)), strict=True))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), squeeze=False)
    used = set()
    for ax, (panel, values) in zip(axes[0], panels.items(), strict=True):
        xy, used_method = embedding_map(values, method=method, seed=seed)
        used.add(used_method)
        for c in classes:
            sel = labels == c
            ax.scatter(xy[sel, 0], xy[sel, 1], s=5, color=colors[c], label=c[:30], linewidths=0)
        score = _score_text((scores or {}).get(panel))
        ax.set_title(panel + (f"\n{score}" if score else ""), fontsize=10)
        ax.set_xlabel(f"{used_method} 1")
        ax.set_ylabel(f"{used_method} 2")
        ax.set_xticks([])
        ax.set_yticks([])
    note = "" if "PCA" not in used or method == "pca" else " (PCA: pip install umap-learn for UMAP)"
    fig.suptitle(title + note, fontsize=11)
    ncol = 1 + len(classes) // 25
    fig.legend(
        *axes[0][0].get_legend_handles_labels(),
        loc="center left",
        bbox_to_anchor=(1.0, 0.5),
        fontsize=7,
        markerscale=2.5,
        ncol=ncol,
        frameon=False,
    )
    fig.tight_layout()
    return _save(fig, path)
