"""Shared set-up of the benchmark scripts; each imports this module first.

* It keeps the benchmarks folder off the import path: ``benchmarks/tokenize.py`` is named like the
  standard library's ``tokenize`` module (imported by linecache, inspect, pandas), and a script run
  from this folder would otherwise shadow it. The module is found because the script's folder is
  ``sys.path[0]``; importing it removes that folder again.
* :func:`shared_data` locates ``../shared/data`` (or ``$STFORMER_SHARED_DATA``).
"""

import os
import sys
from pathlib import Path

_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if not (p and os.path.isdir(p) and os.path.samefile(p, _here))]


def shared_data() -> Path:
    """The real test data folder; exits with a clear message when it is absent."""
    env = os.environ.get("STFORMER_SHARED_DATA")
    path = Path(env) if env else Path(_here).parents[1] / "shared" / "data"
    if not path.is_dir():
        sys.exit(f"shared data not found at {path}: set STFORMER_SHARED_DATA")
    return path
