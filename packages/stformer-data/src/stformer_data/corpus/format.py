"""The on-disk format of a corpus: every file name, the ``datasets`` state, one reader of each part.

Layout of a corpus directory::

    corpus/
      dataset/               # datasets' save_to_disk layout: input_ids, length, [token_type_ids],
        data-*.arrow         # file_index, cell_index, chosen obs columns (Arrow IPC streams)
        dataset_info.json
        state.json
      example_lengths.pkl    # list of sequence lengths (stFormer/Geneformer compatible)
      token_dictionary.json  # the vocabulary of input_ids (and .pkl for stFormer/Geneformer)
      gene_dictionary.json   # binned scheme only: the gene vocabulary behind token_type_ids
      gene_medians.json      # the medians used (rank scheme)
      manifest.json          # settings, vocabulary hash, sources with sizes and checksums, counts

The writer (:mod:`stformer_data.corpus.write`) and the readers (:mod:`stformer_data.corpus.read`,
:mod:`stformer_data.stream.corpus_source`) import these names and functions; nothing else spells
a file name of the format.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import datasets

from stformer_data.atomic import atomic_write_bytes, atomic_write_json

FORMAT_VERSION = 2
MANIFEST = "manifest.json"
DATASET_DIR = "dataset"
DATASET_STATE = "state.json"
EXAMPLE_LENGTHS = "example_lengths.pkl"
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


def features(token_types: bool, obs_kinds: Mapping[str, str]) -> datasets.Features:
    """The ``datasets`` features of a corpus (``obs_kinds``: column -> ``datasets.Value`` type)."""
    cols: dict[str, Any] = {
        INPUT_IDS: datasets.Sequence(datasets.Value("int32")),
        LENGTH: datasets.Value("int32"),
    }
    if token_types:
        cols[TOKEN_TYPE_IDS] = datasets.Sequence(datasets.Value("int32"))
    cols[FILE_INDEX] = datasets.Value("int32")
    cols[CELL_INDEX] = datasets.Value("int64")
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


def arrow_files(path: str | PathLike[str]) -> list[Path]:
    """The Arrow files of a corpus, in order (from ``dataset/state.json``)."""
    data_dir = Path(path) / DATASET_DIR
    state = json.loads((data_dir / DATASET_STATE).read_text())
    return [data_dir / d["filename"] for d in state["_data_files"]]


def is_complete_corpus(path: str | PathLike[str]) -> bool:
    """Whether ``path`` is a whole corpus (its manifest is written last)."""
    return (Path(path) / MANIFEST).is_file()


def write_manifest(path: Path, manifest: Mapping[str, Any]) -> None:
    atomic_write_json(path / MANIFEST, manifest, indent=1)


def read_manifest(path: str | PathLike[str]) -> dict[str, Any]:
    return json.loads((Path(path) / MANIFEST).read_text())


def write_lengths(path: Path, lengths: Sequence[int]) -> None:
    atomic_write_bytes(path / EXAMPLE_LENGTHS, pickle.dumps(list(lengths)))


def read_lengths(path: str | PathLike[str]) -> list[int]:
    """The example lengths (a pickle of a list of ints, as stFormer/Geneformer write it)."""
    with (Path(path) / EXAMPLE_LENGTHS).open("rb") as fh:
        return pickle.load(fh)


#: inside the hidden ``.<name>.partial`` folder of a corpus being written: the resume state
PARTIAL_PLAN = "plan.json"  # the job's fingerprint: a rerun resumes only when it matches
PARTIAL_SHARDS = "shards"  # <unit>.arrow, <unit>.lengths.npy, <unit>.json (the unit is done)
