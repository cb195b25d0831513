"""Plain per-cell reference implementations used to check the vectorised tokenizers."""

from __future__ import annotations

import numpy as np


def rank_cell_reference(
    counts: np.ndarray,
    column_token: np.ndarray,
    median_by_token: np.ndarray,
    *,
    target_sum: float = 10_000.0,
    limit: int = 2048,
) -> list[int]:
    """One dense cell -> its rank-value tokens, by the documented rule, one gene at a time."""
    entries = []
    seen: dict[int, float] = {}
    for j in np.flatnonzero(counts):
        c = counts[j]
        t = int(column_token[j])
        if t >= 0:
            seen[t] = seen.get(t, 0.0) + float(c)  # duplicate gene ids are summed
    for t, c in seen.items():
        med = median_by_token[t]
        if c > 0 and np.isfinite(med) and med > 0:
            value = np.float32(c) * np.float32(target_sum / med)
            if value > 0:
                entries.append((-float(value), t))
    entries.sort()
    return [t for _, t in entries[:limit]]
