"""Token corpora on disk: a Hugging Face ``datasets`` Arrow dataset plus the files that describe it.

Layout of a corpus directory::

    corpus/
      dataset/               # datasets.Dataset.save_to_disk: input_ids, length, chosen obs columns
      example_lengths.pkl    # list of sequence lengths (stFormer/Geneformer compatible)
      token_dictionary.json  # the vocabulary (and .pkl for stFormer/Geneformer)
      gene_medians.json      # the medians used
      manifest.json          # settings, vocabulary hash, sources with sizes and checksums, counts

It is written under a hidden temporary name next to its destination and renamed only when every
file is complete, so a directory named like the corpus is always a whole corpus.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import datasets
from tqdm.auto import tqdm

from stformer_data._errors import InputError
from stformer_data._io import (
    check_counts,
    iter_row_chunks,
    library_sizes,
    map_genes,
    open_h5ad,
    resolve_gene_ids,
)
from stformer_data._medians import load_medians, save_medians
from stformer_data._rank import RankTokenizerConfig, RankValueTokenizer
from stformer_data._vocab import GeneVocab

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class TokenizeConfig:
    """How h5ad files are read for tokenization.

    Parameters
    ----------
    gene_id_key
        ``var`` column with gene ids; ``None`` uses ``var_names``.
    layer
        Layer holding raw counts; ``None`` uses ``X``.
    obs_columns
        ``obs`` columns copied into the corpus (e.g. a cell-type label); all must exist.
    chunk_size
        Rows read per chunk; memory is bounded by it.
    allow_non_integer
        Accept non-integer (already normalised) values instead of refusing them.
    """

    gene_id_key: str | None = None
    layer: str | None = None
    obs_columns: tuple[str, ...] = ()
    chunk_size: int = 2048
    allow_non_integer: bool = False
    rank: RankTokenizerConfig = field(default_factory=RankTokenizerConfig)

    def __post_init__(self) -> None:
        if self.chunk_size <= 0:
            raise ValueError(f"chunk_size must be > 0, got {self.chunk_size}")
        object.__setattr__(self, "obs_columns", tuple(self.obs_columns))


@dataclass
class FileReport:
    path: str
    size_bytes: int
    sha256: str
    n_genes: int
    n_genes_in_vocab: int
    cells_in: int = 0
    cells_written: int = 0
    cells_skipped_empty: int = 0


@dataclass(frozen=True)
class Corpus:
    """A tokenized corpus loaded from disk."""

    path: Path
    dataset: datasets.Dataset
    vocab: GeneVocab
    manifest: dict[str, Any]

    @property
    def lengths(self) -> list[int]:
        with (self.path / "example_lengths.pkl").open("rb") as fh:
            return pickle.load(fh)


def sha256_file(path: str | PathLike[str], block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            h.update(chunk)
    return h.hexdigest()


def is_complete_corpus(path: str | PathLike[str]) -> bool:
    return (Path(path) / MANIFEST).is_file()


def load_corpus(path: str | PathLike[str]) -> Corpus:
    """Open a corpus written by :func:`tokenize_files` (memory-mapped Arrow; nothing is copied)."""
    path = Path(path)
    if not is_complete_corpus(path):
        raise InputError(path, MANIFEST, "is missing: this is not a complete stformer corpus",
                         "tokenize again with `stformer tokenize` (an interrupted run leaves no corpus)")
    manifest = json.loads((path / MANIFEST).read_text())
    vocab = GeneVocab.load(path / "token_dictionary.json")
    return Corpus(path=path, dataset=datasets.load_from_disk(str(path / "dataset")), vocab=vocab, manifest=manifest)


def tokenize_files(
    files: Sequence[str | PathLike[str]],
    out_dir: str | PathLike[str],
    *,
    vocab: GeneVocab,
    medians: Mapping[str, float] | str | PathLike[str],
    config: TokenizeConfig | None = None,
    name_to_id: Mapping[str, str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Corpus:
    """Rank-value tokenize h5ad files into a corpus directory, atomically.

    A complete corpus at ``out_dir`` is refused unless ``overwrite``; leftovers of an interrupted
    run (the hidden temporary directory) are removed and the work redone.
    """
    config = config or TokenizeConfig()
    out_dir = Path(out_dir)
    files = [Path(f) for f in files]
    if not files:
        raise ValueError("no input files given")
    if out_dir.exists() and not overwrite:
        what = "a complete corpus" if is_complete_corpus(out_dir) else "a directory that is not a corpus"
        raise InputError(out_dir, "output directory", f"already exists and holds {what}",
                         "choose another --out or pass --overwrite")
    if not isinstance(medians, Mapping):
        medians = load_medians(medians)
    tokenizer = RankValueTokenizer(vocab, medians, config.rank)

    # Validate every file's header before writing anything.
    reports: list[FileReport] = []
    for f in files:
        adata = open_h5ad(f)
        try:
            missing = [c for c in config.obs_columns if c not in adata.obs.columns]
            if missing:
                raise InputError(f, f"obs columns {missing}", "do not exist",
                                 f"choose among {list(adata.obs.columns)}")
            ids = resolve_gene_ids(adata.var, gene_id_key=config.gene_id_key, name_to_id=name_to_id, path=f)
            mapping = map_genes(ids, vocab, vocab.special_ids, path=f)
            reports.append(FileReport(path=str(f.resolve()), size_bytes=f.stat().st_size, sha256=sha256_file(f),
                                      n_genes=mapping.n_genes, n_genes_in_vocab=mapping.n_in_vocab))
        finally:
            adata.file.close()

    tmp = out_dir.with_name(f".{out_dir.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    total = sum(_n_obs(f) for f in files)
    bar = tqdm(total=total, desc="tokenize", unit="cell", disable=not progress)

    def examples() -> Iterator[dict[str, Any]]:
        for file_index, (f, report) in enumerate(zip(files, reports, strict=True)):
            adata = open_h5ad(f)
            try:
                ids = resolve_gene_ids(adata.var, gene_id_key=config.gene_id_key, name_to_id=name_to_id, path=f)
                mapping = map_genes(ids, vocab, vocab.special_ids, path=f)
                factors = tokenizer.column_factors(mapping)
                obs = {c: adata.obs[c].astype(str).to_numpy() for c in config.obs_columns}
                for start, stop, block in iter_row_chunks(adata, config.chunk_size, layer=config.layer, path=f):
                    check_counts(block, path=f, rows=(start, stop), allow_non_integer=config.allow_non_integer)
                    n_counts = library_sizes(adata, block, start, stop, n_counts_key=config.rank.n_counts_key, path=f)
                    seqs = tokenizer.tokenize_block(block, n_counts, mapping, factors)
                    for i, seq in enumerate(seqs):
                        report.cells_in += 1
                        if seq.size == 0:
                            report.cells_skipped_empty += 1
                            continue
                        report.cells_written += 1
                        row = {"input_ids": seq.tolist(), "length": int(seq.size),
                               "file_index": file_index, "cell_index": start + i}
                        for c, values in obs.items():
                            row[c] = values[start + i]
                        yield row
                    bar.update(stop - start)
            finally:
                adata.file.close()

    features = datasets.Features({
        "input_ids": datasets.Sequence(datasets.Value("int32")),
        "length": datasets.Value("int32"),
        "file_index": datasets.Value("int32"),
        "cell_index": datasets.Value("int64"),
        **{c: datasets.Value("string") for c in config.obs_columns},
    })
    started = time.time()
    datasets.disable_progress_bars()
    try:
        ds = datasets.Dataset.from_generator(examples, features=features, cache_dir=str(tmp / ".cache"))
        ds.save_to_disk(str(tmp / "dataset"))
        del ds
    finally:
        bar.close()
        datasets.enable_progress_bars()
    shutil.rmtree(tmp / ".cache", ignore_errors=True)
    written = datasets.load_from_disk(str(tmp / "dataset"))
    with (tmp / "example_lengths.pkl").open("wb") as fh:
        pickle.dump([int(x) for x in written["length"]], fh)
    vocab.save_json(tmp / "token_dictionary.json")
    vocab.save_pickle(tmp / "token_dictionary.pkl")
    save_medians(medians, tmp / "gene_medians.json")
    manifest = {
        "format_version": FORMAT_VERSION,
        "scheme": "rank",
        "mode": "spot",
        "tokenizer": asdict(config.rank),
        "read": {k: v for k, v in asdict(config).items() if k != "rank"},
        "vocab_size": len(vocab),
        "vocab_sha256": vocab.content_hash(),
        "sources": [asdict(r) for r in reports],
        "counts": {
            "cells_in": sum(r.cells_in for r in reports),
            "cells_written": sum(r.cells_written for r in reports),
            "cells_skipped": {"empty_after_vocab_filter": sum(r.cells_skipped_empty for r in reports)},
        },
        "seconds": round(time.time() - started, 3),
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    if out_dir.exists():  # overwrite=True: replace only once the new corpus is complete
        old = out_dir.with_name(f".{out_dir.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out_dir)
    return load_corpus(out_dir)


def _n_obs(path: Path) -> int:
    adata = open_h5ad(path)
    try:
        return adata.n_obs
    finally:
        adata.file.close()
