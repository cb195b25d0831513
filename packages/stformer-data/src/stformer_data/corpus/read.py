"""Opening a corpus written by :func:`stformer_data.tokenize_files`: :func:`load_corpus`."""

from __future__ import annotations

from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import datasets

from stformer_data._errors import InputError
from stformer_data.corpus.format import (
    DATASET_DIR,
    MANIFEST,
    TOKEN_DICTIONARY,
    is_complete_corpus,
    read_lengths,
    read_manifest,
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


def load_corpus(path: str | PathLike[str]) -> Corpus:
    """Open a corpus written by :func:`tokenize_files` (memory-mapped Arrow; nothing is copied)."""
    path = Path(path)
    if not is_complete_corpus(path):
        raise InputError(
            path,
            MANIFEST,
            "is missing: this is not a complete stformer corpus",
            "tokenize again with `stformer tokenize` (an interrupted run leaves no corpus)",
        )
    manifest = read_manifest(path)
    vocab = GeneVocab.load(path / TOKEN_DICTIONARY)
    return Corpus(
        path=path,
        dataset=datasets.load_from_disk(str(path / DATASET_DIR)),
        vocab=vocab,
        manifest=manifest,
    )
