"""Atomic writes: a file or folder appears under its final name only when it is complete.

Every stformer package writes its outputs through these helpers (corpora, medians, vocabularies,
run directories, models, metrics, search results), so that an interrupted or failed command never
leaves something that looks finished:

* :func:`atomic_write_text` / :func:`atomic_write_bytes` / :func:`atomic_write_json` write a file
  next to its final path under a hidden temporary name, flush it to disk and rename it;
* :func:`atomic_path` yields a temporary sibling path for writers that stream to a file, renamed
  when the block succeeds;
* :func:`atomic_dir` yields a hidden ``.<name>.partial`` folder to fill; on success the folder is
  renamed to its final name (replacing an existing one only then), on an exception it is removed
  unless ``keep_on_error`` asks to keep it (resumable work such as a corpus's finished shards).

A full disk, a read-only file system or a folder without write permission (``ENOSPC``,
``EDQUOT``, ``EROFS``, ``EACCES``, ``EPERM``) while writing becomes one
:class:`~stformer_data.InputError` naming the path and the fix, and the partial output is removed
(also by ``atomic_dir(keep_on_error=True)``, as it is for any ``InputError`` raised in its block:
a refused input leaves nothing to resume; an interruption still keeps the folder).

``os.replace`` is atomic on POSIX within one file system, which is why the temporary path is always
a sibling of the final one.

>>> import tempfile, pathlib
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> _ = atomic_write_json(root / "metrics.json", {"accuracy": 0.9})
>>> (root / "metrics.json").read_text()
'{"accuracy": 0.9}'
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from collections.abc import Iterator
from os import PathLike
from pathlib import Path
from typing import Any

from stformer_data._errors import InputError

__all__ = [
    "atomic_dir",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "disk_error",
    "partial_path",
]

_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def _disk_errno(exc: BaseException) -> int | None:
    """The errno of a full / read-only / not writable disk in ``exc`` or its causes, else None.

    Some writers (pyarrow, h5py) raise an ``OSError`` without ``errno`` whose message carries the
    system's text, so that is matched too."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError):
            if exc.errno in _DISK_ERRNOS:
                return exc.errno
            text = str(exc)
            for code in _DISK_ERRNOS:
                if os.strerror(code) in text:
                    return code
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def disk_error(path: str | PathLike[str], exc: BaseException) -> InputError | None:
    """The :class:`InputError` for a write to ``path`` that failed because the disk is full,
    read-only or not writable (None for any other error)."""
    code = _disk_errno(exc)
    if code is None:
        return None
    if code in (errno.ENOSPC, errno.EDQUOT):
        problem = "cannot be written: no space left on the device (disk full or quota reached)"
        fix = "free space on that file system, or write the output elsewhere (--out)"
    elif code == errno.EROFS:
        problem = "is not writable: the file system is read-only"
        fix = "write the output to a writable folder (--out)"
    else:
        problem = "is not writable: permission denied"
        fix = "make the folder writable for you (chmod / chown), or write elsewhere (--out)"
    return InputError(path, "output", problem, fix)


@contextlib.contextmanager
def _disk_errors(path: Path) -> Iterator[None]:
    """Turn a full / read-only / not writable disk while writing ``path`` into an InputError."""
    try:
        yield
    except OSError as exc:
        err = disk_error(path, exc)
        if err is None:
            raise
        raise err from exc


def partial_path(path: str | PathLike[str]) -> Path:
    """The hidden sibling ``.<name>.partial`` where ``path`` is built before it is renamed."""
    path = Path(path)
    return path.with_name(f".{path.name}.partial")


def atomic_write_bytes(path: str | PathLike[str], data: bytes, *, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (parents are created); return ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with _disk_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                if fsync:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return path


def atomic_write_text(
    path: str | PathLike[str], text: str, *, encoding: str = "utf-8", fsync: bool = True
) -> Path:
    """Write ``text`` to ``path`` atomically (parents are created); return ``path``."""
    return atomic_write_bytes(path, text.encode(encoding), fsync=fsync)


def atomic_write_json(
    path: str | PathLike[str], obj: Any, *, indent: int | None = None, fsync: bool = True
) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically; return ``path``."""
    return atomic_write_text(path, json.dumps(obj, indent=indent), fsync=fsync)


@contextlib.contextmanager
def atomic_dir(
    path: str | PathLike[str], *, keep_on_error: bool = False, reuse: bool = False
) -> Iterator[Path]:
    """Build a folder under a temporary name and rename it to ``path`` when the block succeeds.

    Parameters
    ----------
    path
        The final folder. If it exists it is replaced, but only once the new one is complete.
    keep_on_error
        Keep the temporary folder when the block raises (e.g. finished shards to resume from);
        by default it is removed, so a failed command leaves nothing behind.
    reuse
        Start from a temporary folder left by an earlier, interrupted attempt instead of clearing
        it (the caller checks that its contents belong to the same job).
    """
    path = Path(path)
    tmp = partial_path(path)
    with _disk_errors(path):
        if tmp.exists() and not reuse:
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
    except InputError as exc:  # a refused input or a full/read-only disk: nothing worth resuming
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.field == "output" and exc.path and Path(exc.path).is_relative_to(tmp):
            raise InputError(path, exc.field, exc.problem, exc.fix) from exc  # the folder asked for
        raise
    except OSError as exc:
        err = disk_error(path, exc)
        if err is None and not keep_on_error:
            shutil.rmtree(tmp, ignore_errors=True)
        if err is None:
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        raise err from exc
    except BaseException:
        if not keep_on_error:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        with _disk_errors(path):
            if path.exists():
                old = path.with_name(f".{path.name}.old")
                if old.exists():
                    shutil.rmtree(old)
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old)
            else:
                os.replace(tmp, path)
    except InputError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_path(path: str | PathLike[str]) -> Iterator[Path]:
    """Yield a hidden temporary sibling of ``path`` to write (by any writer, e.g. a stream); on
    success it is renamed to ``path``, on an exception removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with _disk_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            yield tmp
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
