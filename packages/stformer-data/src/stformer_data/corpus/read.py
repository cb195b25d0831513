"""Opening a corpus written by :func:`stformer_data.tokenize_files`: :func:`load_corpus`."""

from __future__ import annotations

from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stformer_data._errors import InputError
from stformer_data.corpus.format import (
    DATASET_DIR,
    INPUT_IDS,
    MANIFEST,
    RETOKENIZE_FIX,
    TOKEN_DICTIONARY,
    arrow_files,
    check_token_ids,
    is_complete_corpus,
    read_lengths,
    read_manifest,
    verify_shards,
)
from stformer_data.genes.vocab import GeneVocab


@dataclass(frozen=True)
class Corpus:
    """A tokenized corpus loaded from disk by :func:`load_corpus` (or returned by :func:`tokenize_files`).

    ``dataset`` is memory-mapped; ``vocab`` is the vocabulary of ``input_ids``; ``manifest`` the
    parsed ``manifest.json``; ``lengths`` the example lengths.

    >>> sorted(Corpus.__dataclass_fields__)
    ['dataset', 'manifest', 'path', 'vocab']
    """

    path: Path
    dataset: datasets.Dataset
    vocab: GeneVocab
    manifest: dict[str, Any]

    @property
    def lengths(self) -> list[int]:
        return read_lengths(self.path)


def load_corpus(path: str | PathLike[str], *, verify: bool = True) -> Corpus:
    """Open a corpus written by :func:`tokenize_files` (memory-mapped Arrow; nothing is copied).

    Parameters
    ----------
    verify
        Check every Arrow shard against the size and XXH3-128 checksum the manifest records (a
        few hundred milliseconds for a 100,000-cell corpus in the page cache); a corpus of format
        version 2, which records none, has its token ids checked against the vocabulary instead.
        ``False`` checks only that every shard exists with its recorded size.

    Raises
    ------
    InputError
        The corpus is incomplete, its manifest, dictionary or a shard is missing, damaged or
        changed, a token id lies outside the vocabulary, or it holds no sequences.
    """
    path = Path(path)
    if not is_complete_corpus(path):
        raise InputError(
            path,
            MANIFEST,
            "is missing: this is not a complete stformer corpus",
            "tokenize again with `stformer tokenize` (an interrupted run leaves no corpus)",
        )
    manifest = read_manifest(path)
    vocab = _vocab(path)
    verify_shards(path, manifest, checksums=verify)
    if verify and not manifest.get("shards"):
        check_shard_ids(path, len(vocab))
    try:
        dataset = datasets.load_from_disk(str(path / DATASET_DIR))
    except Exception as exc:  # datasets raises several types for a damaged folder
        raise InputError(
            path / DATASET_DIR,
            "dataset",
            f"cannot be opened ({type(exc).__name__}: {exc})",
            RETOKENIZE_FIX,
        ) from exc
    if len(dataset) == 0:
        raise InputError(
            path,
            "corpus",
            "holds no sequences (every cell was empty after the vocabulary filter)",
            "tokenize files whose cells express genes of the vocabulary",
        )
    return Corpus(path=path, dataset=dataset, vocab=vocab, manifest=manifest)


def _vocab(path: Path) -> GeneVocab:
    file = path / TOKEN_DICTIONARY
    try:
        return GeneVocab.load(file)
    except InputError:
        raise
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise InputError(
            file,
            "token dictionary",
            f"cannot be read ({type(exc).__name__}: {exc})",
            RETOKENIZE_FIX,
        ) from exc


def check_shard_ids(path: str | PathLike[str], vocab_size: int) -> None:
    """Check the ``input_ids`` of every Arrow shard of a corpus against the vocabulary size (a
    vectorized min/max per record batch over the memory-mapped column); an id outside it is an
    :class:`InputError` naming the shard."""
    for arrow in arrow_files(path):
        try:
            reader = pa.ipc.open_stream(pa.memory_map(str(arrow), "r"))
            for batch in reader:
                values = batch.column(INPUT_IDS).values
                if len(values):
                    mm = pc.min_max(values)
                    lo_hi = np.array([mm["min"].as_py(), mm["max"].as_py()], dtype=np.int64)
                    check_token_ids(lo_hi, vocab_size, arrow, INPUT_IDS)
        except (OSError, pa.ArrowException) as exc:
            raise InputError(
                arrow,
                "Arrow shard",
                f"cannot be read ({type(exc).__name__}: {exc})",
                RETOKENIZE_FIX,
            ) from exc
