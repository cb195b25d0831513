"""Bad-input checks on the values read from a file (raw counts expected)."""

from __future__ import annotations

from os import PathLike

import numpy as np
import scipy.sparse as sp

from stformer_data._errors import InputError


def check_counts(
    block: sp.csr_matrix,
    *,
    path: str | PathLike[str] | None,
    rows: tuple[int, int],
    allow_non_integer: bool = False,
) -> None:
    """Raise :class:`InputError` for NaN/inf, negative or (unless allowed) non-integer values."""
    data = block.data
    where = f"X rows {rows[0]}:{rows[1]}"
    if not np.all(np.isfinite(data)):
        raise InputError(
            path, where, "contains NaN or infinite values", "clean the matrix before tokenizing"
        )
    if data.size and data.min() < 0:
        raise InputError(
            path,
            where,
            "contains negative values; raw counts are expected",
            "pass raw counts (e.g. --layer counts) instead of scaled data",
        )
    if not allow_non_integer and data.size and not np.all(data == np.round(data)):
        raise InputError(
            path,
            where,
            "contains non-integer values; raw counts are expected",
            "point --layer at raw counts, or pass --allow-non-integer for normalised input",
        )
