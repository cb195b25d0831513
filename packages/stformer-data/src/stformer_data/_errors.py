"""Errors raised on bad input: each names the file, the field and what to do about it."""

from __future__ import annotations

from os import PathLike


class InputError(ValueError):
    """Bad user input: a file, a field in it, and how to fix it.

    >>> str(InputError("x.h5ad", "obs['n_counts']", "has NaN values", "recompute library sizes"))
    "x.h5ad: obs['n_counts'] has NaN values. Fix: recompute library sizes"
    """

    def __init__(
        self, path: str | PathLike[str] | None, field: str, problem: str, fix: str | None = None
    ) -> None:
        self.path = None if path is None else str(path)
        self.field = field
        self.problem = problem
        self.fix = fix
        where = f"{self.path}: " if self.path else ""
        msg = f"{where}{field} {problem}"
        if fix:
            msg += f". Fix: {fix}"
        super().__init__(msg)

    def __reduce__(self):  # picklable, so errors raised in worker processes reach the caller intact
        return (type(self), (self.path, self.field, self.problem, self.fix))


def read_error(path: str | PathLike[str], field: str, exc: Exception) -> InputError:
    """The error for a file that could not be read while streaming (vanished, truncated, corrupt)."""
    return InputError(
        path,
        field,
        f"could not be read ({type(exc).__name__}: {exc}); the file vanished, "
        "is truncated or is corrupt",
        "restore or re-export the file",
    )
