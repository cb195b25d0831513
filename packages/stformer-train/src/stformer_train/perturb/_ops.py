"""Perturbations of one rank-value token sequence, as Geneformer defines them.

A cell is a sequence of gene tokens ordered by normalised expression (first = highest), optionally
framed by ``<cls>`` / ``<eos>``; the frame never moves. Each operation returns the perturbed copy, or
``None`` when it does not apply to the cell (the gene is not expressed there).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

PerturbType = Literal["delete", "overexpress", "inhibit", "activate"]
PERTURB_TYPES: tuple[str, ...] = ("delete", "overexpress", "inhibit", "activate")


def _quartile_target(pos: int, n: int, shift: int, up: bool) -> int:
    """Geneformer's quartile move of ``perturb_rank_shift``: the target index among ``n`` genes.

    ``activate`` by ``shift`` quartiles: a gene in quartile ``q`` (0 = highest ranks) moves to the
    middle of quartile ``q - shift``, or to the front when that is above the first quartile.
    ``inhibit``: to the middle of quartile ``q + shift``, or to the end below the last one.
    """
    q = min(3, (4 * pos) // n)
    target = q - shift if up else q + shift
    if target < 0:
        return 0
    if target > 3:
        return n - 1
    lo, hi = (target * n) // 4, ((target + 1) * n) // 4
    return min(n - 1, (lo + hi) // 2)


def perturb_tokens(
    genes: np.ndarray,
    targets: Sequence[int],
    kind: str,
    *,
    rank_shift: int = 1,
    max_genes: int | None = None,
) -> np.ndarray | None:
    """Apply one perturbation of ``targets`` (gene token ids, all together) to the gene tokens ``genes``.

    Parameters
    ----------
    genes
        The cell's gene tokens in rank order, without ``<cls>`` / ``<eos>``.
    targets
        Token ids perturbed together (one id: a single-gene perturbation).
    kind
        ``"delete"`` removes them; ``"overexpress"`` moves them to the front (in the given order),
        inserting those the cell does not express and dropping the last genes beyond ``max_genes``;
        ``"inhibit"`` / ``"activate"`` move each expressed target ``rank_shift`` quartiles down / up.
    rank_shift
        Quartiles moved by ``inhibit`` / ``activate`` (1, 2 or 3).
    max_genes
        Longest gene sequence the model takes (``overexpress`` only).

    Returns
    -------
    The perturbed gene tokens, or ``None`` when no target is expressed (``overexpress``: never).
    """
    if kind not in PERTURB_TYPES:
        raise ValueError(f"perturbation must be one of {PERTURB_TYPES}, got {kind!r}")
    targets = np.asarray(targets, dtype=genes.dtype)
    present = np.isin(genes, targets)
    if kind == "overexpress":
        out = np.concatenate([targets, genes[~np.isin(genes, targets)]])
        return out[:max_genes] if max_genes is not None else out
    if not present.any():
        return None
    if kind == "delete":
        return genes[~present]
    if rank_shift not in (1, 2, 3):
        raise ValueError(f"rank_shift must be 1, 2 or 3, got {rank_shift}")
    out = genes.copy()
    for t in targets:
        where = np.flatnonzero(out == t)
        if where.size == 0:
            continue
        pos = int(where[0])
        dest = _quartile_target(pos, out.size, rank_shift, up=kind == "activate")
        rest = np.delete(out, pos)
        out = np.insert(rest, dest, t)
    return out
