"""The on-disk format of a corpus: every file name, the ``datasets`` state, one reader of each part.

Layout of a corpus directory::

    corpus/
      dataset/               # datasets' save_to_disk layout: input_ids, length, [token_type_ids],
        data-*.arrow         # file_index, cell_index, chosen obs columns (Arrow IPC streams)
        dataset_info.json
        state.json
      example_lengths.npy    # the sequence lengths (NumPy, read without unpickling)
      example_lengths.pkl    # the same list pickled, as stFormer's PretrainML takes it (never read
                             # by stformer's commands: a pickle runs code when loaded)
      token_dictionary.json  # the vocabulary of input_ids (and .pkl for stFormer/Geneformer)
      gene_dictionary.json   # binned scheme only: the gene vocabulary behind token_type_ids
      gene_medians.json      # the medians used (rank scheme)
      manifest.json          # settings, vocabulary hash, sources with sizes and checksums, counts,
                             # column dtypes, every Arrow shard with its size and checksum

Format versions: 3 (this one) stores token ids in the smallest integer type their vocabulary fits
(``uint16`` up to 65,536 tokens, else ``int32``) and the index columns as small as they fit, and
records every shard's size and XXH3-128 checksum; version 2 (int32 columns, no shard checksums, only
the pickled lengths) is still read.

The writer (:mod:`stformer_data.corpus.write`) and the readers (:mod:`stformer_data.corpus.read`,
:mod:`stformer_data.stream.corpus_source`) import these names and functions; nothing else spells
a file name of the format.
"""

from __future__ import annotations

import io
import json
import pickle
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from stformer_data._errors import InputError
from stformer_data.atomic import atomic_write_bytes, atomic_write_json

FORMAT_VERSION = 3
#: the format versions this code reads (2: int32 columns, no shard checksums)
READABLE_VERSIONS = (2, 3)
MANIFEST = "manifest.json"
DATASET_DIR = "dataset"
DATASET_STATE = "state.json"
EXAMPLE_LENGTHS = "example_lengths.pkl"
EXAMPLE_LENGTHS_NPY = "example_lengths.npy"
TOKEN_DICTIONARY = "token_dictionary.json"
TOKEN_DICTIONARY_PICKLE = "token_dictionary.pkl"
GENE_DICTIONARY = "gene_dictionary.json"
GENE_MEDIANS = "gene_medians.json"

#: the columns of every corpus, before the optional token_type_ids and the obs columns
INPUT_IDS, LENGTH, TOKEN_TYPE_IDS = "input_ids", "length", "token_type_ids"
FILE_INDEX, CELL_INDEX = "file_index", "cell_index"


def arrow_name(index: int, total: int) -> str:
    """The file name of Arrow shard ``index`` of ``total`` in ``dataset/``."""
    return f"data-{index:05d}-of-{total:05d}.arrow"


#: the column dtypes of a version-2 corpus (what a manifest without ``dtypes`` means)
V2_DTYPES = {
    INPUT_IDS: "int32",
    LENGTH: "int32",
    TOKEN_TYPE_IDS: "int32",
    FILE_INDEX: "int32",
    CELL_INDEX: "int64",
}


def smallest_int(n_values: int, *, unsigned: bool = False) -> str:
    """The smallest NumPy integer type holding ``0 .. n_values - 1`` (at least 8 bits).

    >>> smallest_int(767, unsigned=True), smallest_int(25_426), smallest_int(70_000, unsigned=True)
    ('uint16', 'int16', 'uint32')
    """
    for bits in (8, 16, 32, 64):
        kind = f"{'u' if unsigned else ''}int{bits}"
        if n_values - 1 <= np.iinfo(kind).max:
            return kind
    raise ValueError(f"{n_values} values do not fit a 64-bit integer")


def id_dtype(vocab_size: int) -> str:
    """The dtype of ``input_ids`` for a vocabulary of ``vocab_size`` tokens: ``uint16`` when it
    fits (Geneformer's V1 and V2 vocabularies do), else ``int32``."""
    return "uint16" if vocab_size <= 1 << 16 else "int32"


def column_dtypes(
    *, vocab_size: int, type_vocab_size: int | None, max_length: int, n_files: int, max_rows: int
) -> dict[str, str]:
    """The dtype of every fixed column of a new corpus: each as small as its values allow."""
    dtypes = {
        INPUT_IDS: id_dtype(vocab_size),
        LENGTH: smallest_int(max_length + 1),
        FILE_INDEX: smallest_int(n_files),
        CELL_INDEX: "int32" if max_rows <= np.iinfo(np.int32).max else "int64",
    }
    if type_vocab_size is not None:
        dtypes[TOKEN_TYPE_IDS] = smallest_int(type_vocab_size)
    return dtypes


def features(
    token_types: bool, obs_kinds: Mapping[str, str], dtypes: Mapping[str, str] | None = None
) -> datasets.Features:
    """The ``datasets`` features of a corpus (``obs_kinds``: column -> ``datasets.Value`` type;
    ``dtypes``: the fixed columns' types, :func:`column_dtypes`; default: version 2's)."""
    dt = {**V2_DTYPES, **(dtypes or {})}
    cols: dict[str, Any] = {
        INPUT_IDS: datasets.Sequence(datasets.Value(dt[INPUT_IDS])),
        LENGTH: datasets.Value(dt[LENGTH]),
    }
    if token_types:
        cols[TOKEN_TYPE_IDS] = datasets.Sequence(datasets.Value(dt[TOKEN_TYPE_IDS]))
    cols[FILE_INDEX] = datasets.Value(dt[FILE_INDEX])
    cols[CELL_INDEX] = datasets.Value(dt[CELL_INDEX])
    for c, kind in obs_kinds.items():
        cols[c] = datasets.Value(kind)
    return datasets.Features(cols)


def write_dataset_state(data_dir: Path, arrow_names: Sequence[str], fingerprint: str) -> None:
    """``dataset/state.json`` as ``datasets.load_from_disk`` reads it."""
    state = {
        "_data_files": [{"filename": name} for name in arrow_names],
        "_fingerprint": fingerprint[:16],
        "_format_columns": None,
        "_format_kwargs": {},
        "_format_type": None,
        "_output_all_columns": False,
        "_split": None,
    }
    atomic_write_json(data_dir / DATASET_STATE, state, indent=2)


RETOKENIZE_FIX = "tokenize the corpus again with `stformer tokenize` (or restore it from a copy)"


def arrow_files(path: str | PathLike[str]) -> list[Path]:
    """The Arrow files of a corpus, in order (from ``dataset/state.json``)."""
    data_dir = Path(path) / DATASET_DIR
    state_file = data_dir / DATASET_STATE
    try:
        state = json.loads(state_file.read_text())
        return [data_dir / d["filename"] for d in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(
            state_file,
            "dataset state",
            f"cannot be read ({type(exc).__name__}: {exc})",
            RETOKENIZE_FIX,
        ) from exc


def is_complete_corpus(path: str | PathLike[str]) -> bool:
    """Whether ``path`` is a whole corpus (its manifest is written last)."""
    return (Path(path) / MANIFEST).is_file()


def is_stformer_corpus(path: str | PathLike[str]) -> bool:
    """Whether ``path`` is a folder that stformer wrote as a corpus: its ``manifest.json`` parses
    and says so (a format version and a scheme) and it has the ``dataset/`` folder.

    What ``--overwrite`` may replace: a folder of other files, or one whose manifest is damaged,
    is not a stformer corpus and is never deleted.

    >>> import tempfile
    >>> is_stformer_corpus(tempfile.mkdtemp())
    False
    """
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(manifest, dict)
        and isinstance(manifest.get("format_version"), int)
        and isinstance(manifest.get("scheme"), str)
        and (path / DATASET_DIR).is_dir()
    )


def write_manifest(path: Path, manifest: Mapping[str, Any]) -> None:
    atomic_write_json(path / MANIFEST, manifest, indent=1)


def read_manifest(path: str | PathLike[str]) -> dict[str, Any]:
    """The parsed ``manifest.json`` of a corpus; a damaged one is an :class:`InputError` naming it."""
    file = Path(path) / MANIFEST
    try:
        manifest = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(
            file, "manifest", f"cannot be read ({type(exc).__name__}: {exc})", RETOKENIZE_FIX
        ) from exc
    if not isinstance(manifest, dict) or "format_version" not in manifest:
        raise InputError(file, "manifest", "is not a stformer corpus manifest", RETOKENIZE_FIX)
    version = manifest["format_version"]
    if version not in READABLE_VERSIONS:
        raise InputError(
            file,
            "format_version",
            f"is {version!r}; this stformer reads corpus format versions {list(READABLE_VERSIONS)}",
            "tokenize the corpus again with this stformer (or use the stformer that wrote it)",
        )
    return manifest


def write_lengths(path: Path, lengths: Sequence[int] | np.ndarray) -> None:
    """``example_lengths.npy`` (read safely) and ``example_lengths.pkl`` (stFormer's format)."""
    values = np.asarray(lengths, dtype=np.int64)
    kind = smallest_int(int(values.max(initial=0)) + 1, unsigned=True)
    buf = io.BytesIO()
    np.save(buf, values.astype(kind), allow_pickle=False)
    atomic_write_bytes(path / EXAMPLE_LENGTHS_NPY, buf.getvalue())
    atomic_write_bytes(path / EXAMPLE_LENGTHS, pickle.dumps(values.tolist(), protocol=4))


def read_lengths(path: str | PathLike[str], *, allow_pickle: bool = False) -> list[int]:
    """The example lengths of a corpus, read without unpickling.

    From ``example_lengths.npy`` (``allow_pickle=False``); a version-2 corpus has only the pickle,
    so its lengths are read from the dataset's ``length`` column instead, unless
    ``allow_pickle=True`` says the pickle is trusted.
    """
    path = Path(path)
    npy = path / EXAMPLE_LENGTHS_NPY
    if npy.is_file():
        try:
            return np.load(npy, allow_pickle=False).astype(np.int64).tolist()
        except (OSError, ValueError) as exc:
            raise InputError(
                npy,
                "example lengths",
                f"cannot be read ({type(exc).__name__}: {exc})",
                RETOKENIZE_FIX,
            ) from exc
    if allow_pickle and (path / EXAMPLE_LENGTHS).is_file():
        with (path / EXAMPLE_LENGTHS).open("rb") as fh:
            return [int(v) for v in pickle.load(fh)]  # noqa: S301 - the caller trusts this file
    lengths: list[int] = []
    for arrow in arrow_files(path):
        table = _open_table(arrow)
        lengths += table.column(LENGTH).to_numpy().astype(np.int64).tolist()
    return lengths


def checksum_bytes(path: str | PathLike[str]) -> str:
    """XXH3-128 of a file, hex (the checksum of sources and shards in the manifest)."""
    return checksum_file(path)


def shard_records(data_dir: Path, names: Sequence[str]) -> list[dict[str, Any]]:
    """The manifest's ``shards``: every Arrow file of ``dataset/`` with its size and checksum."""
    return [
        {
            "file": name,
            "size_bytes": (data_dir / name).stat().st_size,
            "xxh3_128": checksum_bytes(data_dir / name),
        }
        for name in names
    ]


def verify_shards(
    path: str | PathLike[str], manifest: Mapping[str, Any], *, checksums: bool
) -> None:
    """Check that every shard the manifest records exists with its size (and, with
    ``checksums=True``, its XXH3-128 checksum); a deleted, truncated or changed shard is an
    :class:`InputError` naming it and the fix. Version-2 manifests record no shards: nothing to do.
    """
    data_dir = Path(path) / DATASET_DIR
    for rec in manifest.get("shards", ()):
        shard = data_dir / rec["file"]
        if not shard.is_file():
            raise InputError(shard, "Arrow shard", "is missing from the corpus", RETOKENIZE_FIX)
        size = shard.stat().st_size
        if size != rec["size_bytes"]:
            raise InputError(
                shard,
                "Arrow shard",
                f"has {size} bytes where the manifest records {rec['size_bytes']} "
                "(truncated or changed)",
                RETOKENIZE_FIX,
            )
        if checksums and checksum_bytes(shard) != rec["xxh3_128"]:
            raise InputError(
                shard,
                "Arrow shard",
                "does not match its checksum in the manifest (the file is corrupt or was changed)",
                RETOKENIZE_FIX,
            )


def check_token_ids(
    values: np.ndarray, vocab_size: int, where: str | PathLike[str], name: str
) -> None:
    """Token ids must lie in ``0 .. vocab_size - 1``: a vectorized min/max over a column's values."""
    if values.size == 0:
        return
    low, high = int(values.min()), int(values.max())
    if low < 0 or high >= vocab_size:
        bad = high if high >= vocab_size else low
        raise InputError(
            where,
            name,
            f"holds token id {bad}, outside the vocabulary of {vocab_size} tokens "
            "(the corpus is corrupt or was changed)",
            RETOKENIZE_FIX,
        )


def _open_table(arrow: Path):
    import pyarrow as pa

    try:
        return pa.ipc.open_stream(pa.memory_map(str(arrow), "r")).read_all()
    except (OSError, pa.ArrowException) as exc:
        raise InputError(
            arrow, "Arrow shard", f"cannot be read ({type(exc).__name__}: {exc})", RETOKENIZE_FIX
        ) from exc


#: inside the hidden ``.<name>.partial`` folder of a corpus being written: the resume state
PARTIAL_PLAN = "plan.json"  # the job's fingerprint: a rerun resumes only when it matches
PARTIAL_SHARDS = "shards"  # <unit>.arrow, <unit>.lengths.npy, <unit>.json (the unit is done)


def checksum_file(path: str | PathLike[str], block: int = 1 << 22) -> str:
    """XXH3-128 of a file's bytes, hex (``xxhsum -H2``): a fast non-cryptographic checksum that
    detects changed or corrupted inputs at a small fraction of SHA-256's cost on large files."""
    import mmap

    import xxhash

    h = xxhash.xxh3_128()
    with open(path, "rb") as fh:
        try:
            with (
                mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped,
                memoryview(mapped) as view,
            ):
                window = 1 << 26  # straight from the page cache, no copy; pages unmapped as
                for start in range(0, len(mapped), window):  # they are done (resident memory)
                    h.update(view[start : start + window])
                    mapped.madvise(mmap.MADV_DONTNEED, start, min(window, len(mapped) - start))
                return h.hexdigest()
        except (ValueError, OSError):  # empty files and file systems without mmap
            h = xxhash.xxh3_128()
        while chunk := fh.read(block):
            h.update(chunk)
    return h.hexdigest()
