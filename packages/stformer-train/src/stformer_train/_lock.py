"""An exclusive, per-folder writer lock: ``fcntl.flock`` on a file that holds the owner's process id.

The lock is released by the operating system when its process ends, also on ``kill -9``, so a
stale lock file never blocks a rerun. Within one process the lock is re-entrant (the CLI takes it
before tokenizing; the training function it calls takes it again).
"""

from __future__ import annotations

import fcntl
import os
import threading
from os import PathLike
from pathlib import Path

from stformer_data import InputError

LOCK_NAME = ".stformer.lock"

_held: dict[Path, list] = {}  # folder -> [open file, count]
_guard = threading.Lock()


class RunLockedError(InputError):
    """Another process is writing the folder (its process id is in the message)."""


class FolderLock:
    """Hold ``folder/.stformer.lock`` exclusively while the block runs.

    >>> import tempfile
    >>> with FolderLock(tempfile.mkdtemp()) as lock:
    ...     lock.held
    True
    """

    def __init__(self, folder: str | PathLike[str], *, what: str = "run directory"):
        self.folder = Path(folder).resolve()
        self.what = what
        self.held = False

    @property
    def path(self) -> Path:
        return self.folder / LOCK_NAME

    def acquire(self) -> FolderLock:
        with _guard:
            entry = _held.get(self.folder)
            if entry is not None:
                entry[1] += 1
                self.held = True
                return self
            self.folder.mkdir(parents=True, exist_ok=True)
            fh = open(self.path, "a+")  # noqa: SIM115 - kept open while the lock is held
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                owner = fh.read().strip() or "unknown"
                fh.close()
                raise RunLockedError(
                    self.folder,
                    self.what,
                    f"is being written by another stformer process (pid {owner})",
                    f"wait for process {owner} to finish (or stop it), or choose another --out",
                ) from None
            fh.seek(0)
            fh.truncate()
            fh.write(f"{os.getpid()}\n")
            fh.flush()
            _held[self.folder] = [fh, 1]
            self.held = True
            return self

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        with _guard:
            entry = _held.get(self.folder)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] == 0:
                fh = entry[0]
                del _held[self.folder]
                fh.seek(0)
                fh.truncate()
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
                fh.close()

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def holds_lock(folder: str | PathLike[str]) -> bool:
    """Whether this process holds the lock of ``folder``."""
    return Path(folder).resolve() in _held
