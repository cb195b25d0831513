"""Keep the benchmarks folder off the import path.

``benchmarks/tokenize.py`` is named like the standard library's ``tokenize`` module, which
linecache, inspect and pandas import; a script run from this folder would otherwise shadow it.
Every benchmark imports this module first (it is found because the script's folder is
``sys.path[0]``) and it removes that folder again.
"""

import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if not (p and os.path.isdir(p) and os.path.samefile(p, _here))]
