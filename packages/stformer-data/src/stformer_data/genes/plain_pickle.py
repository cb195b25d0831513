"""Read a pickle that holds plain data only, without running code from the file.

Geneformer ships its dictionaries as pickles (``token_dictionary.pkl``: gene id -> numpy int64,
``gene_median_dictionary.pkl``: gene id -> numpy float). A full ``pickle.load`` runs whatever callables the
file names, so stformer loads such files with an unpickler that resolves no global except numpy's scalar
constructor for numeric dtypes: dictionaries, lists, tuples, strings, numbers, booleans and ``None`` load;
anything else (a planted ``__reduce__``, a class instance) is refused before it is called.

>>> import pickle, tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "d.pkl"
>>> _ = p.write_bytes(pickle.dumps({"ENSG1": 2, "ENSG2": 3.5}))
>>> load_plain_pickle(p, "token dictionary")
{'ENSG1': 2, 'ENSG2': 3.5}
"""

from __future__ import annotations

import io
import pickle
from os import PathLike
from pathlib import Path
from typing import Any

from stformer_data._errors import InputError

__all__ = ["PlainPickleError", "load_plain_pickle"]

_SCALAR = {("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}
_DTYPE = {("numpy", "dtype")}


class PlainPickleError(pickle.UnpicklingError):
    """The pickle names a global that plain data does not need."""


def _numeric_scalar(dtype: Any, *args: Any) -> Any:
    import numpy as np

    if not isinstance(dtype, np.dtype) or dtype.hasobject or dtype.kind not in "biufc":
        raise PlainPickleError(f"numpy scalar of dtype {dtype!r}")
    from numpy._core.multiarray import scalar  # numpy >= 2

    return scalar(dtype, *args)


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SCALAR:
            return _numeric_scalar
        if (module, name) in _DTYPE:
            import numpy as np

            return np.dtype
        raise PlainPickleError(f"{module}.{name}")


def load_plain_pickle(path: str | PathLike[str], field: str) -> Any:
    """Unpickle ``path`` when it holds plain data only (see the module docstring).

    Raises
    ------
    InputError
        naming ``path`` and ``field`` when the file names any other Python object (nothing from it has run
        then) or is not a pickle at all.
    """
    path = Path(path)
    try:
        return _PlainUnpickler(io.BytesIO(path.read_bytes())).load()
    except PlainPickleError as exc:
        raise InputError(
            path,
            field,
            f"is a pickle that names {exc} (not plain data); stformer did not load it, since that "
            "would run code from the file",
            "use Geneformer's published dictionaries or a JSON file "
            '({"ENSG...": value, ...}) beside the model',
        ) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise InputError(
            path, field, f"is not a readable pickle ({exc})", "pass Geneformer's dictionary file"
        ) from None
