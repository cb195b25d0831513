"""Token corpora on disk: a Hugging Face ``datasets`` Arrow dataset plus the files that describe it.

Layout of a corpus directory::

    corpus/
      dataset/               # datasets' save_to_disk layout: input_ids, length, [token_type_ids],
                             # file_index, cell_index, chosen obs columns
      example_lengths.pkl    # list of sequence lengths (stFormer/Geneformer compatible)
      token_dictionary.json  # the vocabulary of input_ids (and .pkl for stFormer/Geneformer)
      gene_dictionary.json   # binned scheme only: the gene vocabulary behind token_type_ids
      gene_medians.json      # the medians used (rank scheme)
      manifest.json          # settings, vocabulary hash, sources with sizes and checksums, counts

Crash safety: the work is split into units (a file's row range); each unit's Arrow shard is
written under a temporary name inside a hidden ``.<name>.partial`` directory and renamed when
complete, then a small JSON marks the unit done. A rerun with the same inputs and settings
resumes from the done units (``resume=True``) or redoes everything; the corpus directory itself
appears only by one final rename, after ``manifest.json`` is written, so a directory named like
the corpus is always a whole corpus.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import pickle
import shutil
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from multiprocessing import get_all_start_methods, get_context
from os import PathLike
from pathlib import Path
from typing import Any

import anndata as ad
import datasets
import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp
import xxhash
from tqdm.auto import tqdm

from stformer_data import _rank_kernel as _kernel
from stformer_data._binned import BinnedTokenizer, BinnedTokenizerConfig, binned_vocab
from stformer_data._errors import InputError
from stformer_data._io import (
    GeneMapping,
    check_counts,
    iter_row_chunks,
    library_sizes,
    map_genes,
    open_h5ad,
    resolve_gene_ids,
)
from stformer_data._medians import load_medians, save_medians
from stformer_data._rank import RankTokenizerConfig, RankValueTokenizer, add_specials
from stformer_data._reader import _direct_view, _MappedSegments
from stformer_data._spatial import NeighborhoodConfig, NeighborhoodTokenizer, build_neighbor_graph
from stformer_data._vocab import GeneVocab

MANIFEST = "manifest.json"
FORMAT_VERSION = 2
_SCHEMES = ("rank", "binned")
_MODES = ("spot", "neighborhood")
_PARALLEL = ("auto", "threads", "processes")


@dataclass(frozen=True, kw_only=True)
class TokenizeConfig:
    """What to tokenize and how the h5ad files are read.

    Parameters
    ----------
    scheme
        ``"rank"`` (Geneformer rank-value) or ``"binned"`` (expression bins, genes in token_type_ids).
    mode
        ``"spot"`` (one cell/spot) or ``"neighborhood"`` (stFormer: spot + neighbourhood; rank only).
    gene_id_key
        ``var`` column with gene ids; ``None`` uses ``var_names``.
    layer
        Layer holding raw counts; ``None`` uses ``X``.
    obs_columns
        ``obs`` columns copied into the corpus (e.g. a cell-type label); all must exist.
    chunk_size
        Rows read per chunk; memory is bounded by it.
    rows_per_unit
        Rows per unit of work (one Arrow shard; what ``num_proc`` workers share and a rerun resumes).
    num_proc
        Parallel workers; 1 runs in this process, on one core.
    parallel
        How ``num_proc`` workers run: ``"threads"`` (in this process: the compiled rank kernel
        releases the GIL, so a chunk's rows are ranked on ``num_proc`` threads while the previous
        chunk is written), ``"processes"`` (worker processes over files and row ranges), or
        ``"auto"``: threads for ``scheme="rank", mode="spot"``, processes otherwise (with
        ``"threads"`` the other schemes and modes run in this process on one core).
    allow_non_integer
        Accept non-integer (already normalised) values instead of refusing them.
    """

    scheme: str = "rank"
    mode: str = "spot"
    gene_id_key: str | None = None
    layer: str | None = None
    obs_columns: tuple[str, ...] = ()
    chunk_size: int = 2048
    rows_per_unit: int = 32768
    num_proc: int = 1
    parallel: str = "auto"
    allow_non_integer: bool = False
    rank: RankTokenizerConfig = field(default_factory=RankTokenizerConfig)
    binned: BinnedTokenizerConfig = field(default_factory=BinnedTokenizerConfig)
    neighborhood: NeighborhoodConfig = field(default_factory=NeighborhoodConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "obs_columns", tuple(self.obs_columns))
        if self.scheme not in _SCHEMES:
            raise ValueError(f"scheme must be one of {_SCHEMES}, got {self.scheme!r}")
        if self.mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {self.mode!r}")
        if self.scheme == "binned" and self.mode == "neighborhood":
            raise ValueError("mode='neighborhood' is defined for scheme='rank' only")
        if self.parallel not in _PARALLEL:
            raise ValueError(f"parallel must be one of {_PARALLEL}, got {self.parallel!r}")
        for name in ("chunk_size", "rows_per_unit", "num_proc"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")

    @property
    def uses_threads(self) -> bool:
        """Whether ``num_proc`` workers are threads of this process (see ``parallel``)."""
        if self.parallel == "auto":
            return self.scheme == "rank" and self.mode == "spot"
        return self.parallel == "threads"

    @property
    def n_counts_key(self) -> str | None:
        return self.binned.n_counts_key if self.scheme == "binned" else self.rank.n_counts_key

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any], **overrides: Any) -> TokenizeConfig:
        """Rebuild a config from its ``dataclasses.asdict`` form (a manifest's ``settings``).

        ``overrides`` win (e.g. other ``obs_columns`` when a model's settings are reused on new data).
        """
        nested = {
            "rank": RankTokenizerConfig,
            "binned": BinnedTokenizerConfig,
            "neighborhood": NeighborhoodConfig,
        }
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ValueError(
                f"TokenizeConfig: unknown setting(s) {unknown}; allowed: {sorted(known)}"
            )
        kwargs: dict[str, Any] = {}
        for key, value in {**settings, **overrides}.items():
            if key in nested and isinstance(value, Mapping):
                value = nested[key](
                    **{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}
                )
            elif isinstance(value, list):
                value = tuple(value)
            kwargs[key] = value
        return cls(**kwargs)


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
        with (self.path / "example_lengths.pkl").open("rb") as fh:
            return pickle.load(fh)


def checksum_file(path: str | PathLike[str], block: int = 1 << 22) -> str:
    """XXH3-128 of a file's bytes, hex (``xxhsum -H2``): a fast non-cryptographic checksum that
    detects changed or corrupted inputs at a small fraction of SHA-256's cost on large files."""
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


def is_complete_corpus(path: str | PathLike[str]) -> bool:
    return (Path(path) / MANIFEST).is_file()


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
    manifest = json.loads((path / MANIFEST).read_text())
    vocab = GeneVocab.load(path / "token_dictionary.json")
    return Corpus(
        path=path,
        dataset=datasets.load_from_disk(str(path / "dataset")),
        vocab=vocab,
        manifest=manifest,
    )


# ------------------------------------------------------------------------------------------------
# Planning: validate every file before writing anything


@dataclass
class _FilePlan:
    path: str
    size_bytes: int
    mtime_ns: int
    n_obs: int
    n_genes: int
    n_genes_in_vocab: int
    n_duplicate_gene_columns: int
    mapping: GeneMapping = field(repr=False)


@dataclass(frozen=True)
class _Unit:
    index: int
    file_index: int
    start: int
    stop: int


def _obs_kind(series: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(series):
        return "bool"
    if pd.api.types.is_integer_dtype(series):
        return "int64"
    if pd.api.types.is_float_dtype(series):
        return "float64"
    return "string"


def _plan_files(
    files: list[Path],
    vocab: GeneVocab,
    config: TokenizeConfig,
    name_to_id: Mapping[str, str] | None,
) -> tuple[list[_FilePlan], dict[str, str], dict[str, set]]:
    plans: list[_FilePlan] = []
    kinds: dict[str, set[str]] = {c: set() for c in config.obs_columns}
    phenotype_values: dict[str, set] = {c: set() for c in config.binned.phenotypes}
    seen: dict[Path, _FilePlan] = {}
    for f in files:
        if f.resolve() in seen:  # a file listed again: the same plan
            plans.append(seen[f.resolve()])
            continue
        adata = open_h5ad(f, lazy=True)
        try:
            wanted = list(config.obs_columns) + (
                list(config.binned.phenotypes) if config.scheme == "binned" else []
            )
            missing = [c for c in wanted if c not in adata.obs.columns]
            if missing:
                raise InputError(
                    f,
                    f"obs columns {missing}",
                    "do not exist",
                    f"choose among {list(adata.obs.columns)}",
                )
            if config.layer is not None and config.layer not in adata.layers:
                raise InputError(
                    f,
                    f"layers[{config.layer!r}]",
                    "does not exist",
                    f"choose one of {list(adata.layers.keys())} or omit --layer to use X",
                )
            for c in config.obs_columns:
                kinds[c].add(_obs_kind(adata.obs[c]))
            if config.scheme == "binned":
                for c in config.binned.phenotypes:
                    phenotype_values[c].update(adata.obs[c].astype(str).unique().tolist())
            if config.mode == "neighborhood":
                nb = config.neighborhood
                use_obsp = nb.graph == "obsp" or (
                    nb.graph == "auto" and nb.connectivities_key in adata.obsp
                )
                if (
                    not use_obsp
                    and nb.section_key is not None
                    and nb.section_key not in adata.obs.columns
                ):
                    raise InputError(
                        f,
                        f"obs[{nb.section_key!r}]",
                        "does not exist (the section key)",
                        f"choose a section column among {list(adata.obs.columns)} or omit "
                        "--section-key; tokenize files with different keys separately",
                    )
                if nb.connectivities_key not in adata.obsp and nb.spatial_key not in adata.obsm:
                    raise InputError(
                        f,
                        f"obsm[{nb.spatial_key!r}]",
                        "does not exist (nor obsp"
                        f"[{nb.connectivities_key!r}]): neighbourhood mode needs spot coordinates",
                        "add coordinates, name their key with --spatial-key, or use --mode spot",
                    )
            ids = resolve_gene_ids(
                adata.var, gene_id_key=config.gene_id_key, name_to_id=name_to_id, path=f
            )
            mapping = map_genes(ids, vocab, vocab.special_ids, path=f)
            stat = f.stat()
            seen[f.resolve()] = _FilePlan(
                path=str(f.resolve()),
                size_bytes=stat.st_size,
                mtime_ns=stat.st_mtime_ns,
                n_obs=adata.n_obs,
                n_genes=mapping.n_genes,
                n_genes_in_vocab=mapping.n_in_vocab,
                n_duplicate_gene_columns=mapping.n_duplicate_columns,
                mapping=mapping,
            )
            plans.append(seen[f.resolve()])
        finally:
            adata.file.close()
    obs_kinds = {c: (k.pop() if len(k) == 1 else "string") for c, k in kinds.items()}
    return plans, obs_kinds, phenotype_values


def _units(plans: list[_FilePlan], config: TokenizeConfig) -> list[_Unit]:
    units: list[_Unit] = []
    for fi, p in enumerate(plans):
        step = p.n_obs if config.mode == "neighborhood" else config.rows_per_unit
        for start in range(0, p.n_obs, max(step, 1)):
            units.append(
                _Unit(index=len(units), file_index=fi, start=start, stop=min(start + step, p.n_obs))
            )
    return units


def _features(config: TokenizeConfig, obs_kinds: Mapping[str, str]) -> datasets.Features:
    cols: dict[str, Any] = {
        "input_ids": datasets.Sequence(datasets.Value("int32")),
        "length": datasets.Value("int32"),
    }
    if config.scheme == "binned" or config.mode == "neighborhood":
        cols["token_type_ids"] = datasets.Sequence(datasets.Value("int32"))
    cols["file_index"] = datasets.Value("int32")
    cols["cell_index"] = datasets.Value("int64")
    for c, kind in obs_kinds.items():
        cols[c] = datasets.Value(kind)
    return datasets.Features(cols)


# ------------------------------------------------------------------------------------------------
# One unit of work (runs in this process or in a worker)


@dataclass(frozen=True)
class _Job:
    unit: _Unit
    path: str
    mapping: GeneMapping
    config: TokenizeConfig
    vocab: GeneVocab
    token_vocab: GeneVocab
    medians: Mapping[str, float]
    obs_kinds: Mapping[str, str]
    shard_dir: str
    factors: np.ndarray | None = None  # rank scheme: float32 target_sum / median per column
    threads: int = 1  # threads that rank a chunk (fast CSR path)


def _list_array(values: np.ndarray, offsets: np.ndarray) -> pa.ListArray:
    """A list<int32> array over ``values`` (no copy when they are int32 already)."""
    return pa.ListArray.from_arrays(
        pa.array(offsets.astype(np.int32)), pa.array(values.astype(np.int32, copy=False))
    )


def _select_rows(
    values: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, keep: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The rows ``keep`` of a ragged array (``sizes`` = ``np.diff(offsets)``)."""
    if keep.all():
        return values, offsets
    return values[np.repeat(keep, sizes)], np.concatenate([[0], np.cumsum(sizes[keep])])


def _obs_arrays(obs: pd.DataFrame, job: _Job) -> dict[str, np.ndarray]:
    out = {}
    for c, kind in job.obs_kinds.items():
        col = obs[c]
        out[c] = col.astype(str).to_numpy() if kind == "string" else col.to_numpy()
    return out


def _run_unit(job: _Job, on_chunk: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Tokenize one unit into ``<shard_dir>/<index>.arrow`` and mark it done; return its counts."""
    cfg, unit = job.config, job.unit
    shard = Path(job.shard_dir) / f"{unit.index:05d}.arrow"
    tmp = shard.with_name(f".{shard.name}.tmp")
    schema = _features(cfg, job.obs_kinds).arrow_schema
    counts = {
        "cells_in": 0,
        "cells_written": 0,
        "empty_after_vocab_filter": 0,
        "spots_without_neighbours": 0,
    }
    lengths_parts: list[np.ndarray] = []
    source = _CsrRankSource.open(job) or _GenericSource(job)
    try:
        obs = _obs_arrays(source.obs(), job) if job.obs_kinds else {}
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            for start, stop, ids, types, offsets, extra in source.chunks():
                sizes = np.diff(offsets)
                keep = sizes > 0
                counts["cells_in"] += stop - start
                counts["cells_written"] += int(keep.sum())
                counts["empty_after_vocab_filter"] += int((~keep).sum())
                if extra is not None:
                    counts["spots_without_neighbours"] += int((keep & ~extra).sum())
                rows = np.flatnonzero(keep)
                lengths = sizes[keep].astype(np.int32)
                lengths_parts.append(lengths)
                sel_ids, sel_off = _select_rows(ids, offsets, sizes, keep)
                arrays = {"input_ids": _list_array(sel_ids, sel_off), "length": pa.array(lengths)}
                if types is not None:
                    arrays["token_type_ids"] = _list_array(
                        _select_rows(types, offsets, sizes, keep)[0], sel_off
                    )
                arrays["file_index"] = pa.array(np.full(rows.size, unit.file_index, dtype=np.int32))
                arrays["cell_index"] = pa.array((start + rows).astype(np.int64))
                for c, values in obs.items():
                    arrays[c] = pa.array(values[start + rows], type=schema.field(c).type)
                writer.write_batch(
                    pa.RecordBatch.from_arrays([arrays[n] for n in schema.names], schema=schema)
                )
                if on_chunk is not None:
                    on_chunk(stop - start)
    finally:
        source.close()
    os.replace(tmp, shard)
    np.save(
        shard.with_suffix(".lengths.npy"),
        np.concatenate(lengths_parts) if lengths_parts else np.zeros(0, np.int32),
    )
    done = shard.with_suffix(".json")
    done_tmp = done.with_name(f".{done.name}.tmp")
    done_tmp.write_text(json.dumps({"unit": asdict(unit), "counts": counts}))
    os.replace(done_tmp, done)
    return {"unit": asdict(unit), "counts": counts}


class _GenericSource:
    """Any storage, scheme and mode: anndata-backed row chunks through the tokenizer classes."""

    def __init__(self, job: _Job) -> None:
        self.job = job
        self.adata = open_h5ad(job.path, lazy=True)

    def obs(self) -> pd.DataFrame:
        return self.adata.obs

    def close(self) -> None:
        self.adata.file.close()

    def chunks(self):
        job, cfg = self.job, self.job.config
        encode = _encoder(self.adata, job)
        for start, stop, block in iter_row_chunks(
            self.adata,
            cfg.chunk_size,
            layer=cfg.layer,
            path=job.path,
            start=job.unit.start,
            stop=job.unit.stop,
        ):
            check_counts(
                block, path=job.path, rows=(start, stop), allow_non_integer=cfg.allow_non_integer
            )
            yield (start, stop, *encode(start, stop, block))


_AHEAD = 3  # chunks ranked ahead of the one being written (the kernel threads never wait)


class _CsrRankSource:
    """Rank scheme, spot mode, CSR storage: the compiled kernel reads the file's ``data`` and
    ``indices`` where they lie (memory-mapped when uncompressed) and ranks each chunk on
    ``job.threads`` threads while the previous chunk is written."""

    def __init__(self, job: _Job, h5: h5py.File, node: h5py.Group) -> None:
        cfg = job.config
        self.job, self.h5 = job, h5
        self.indptr = np.asarray(node["indptr"][job.unit.start : job.unit.stop + 1], np.int64)
        self.data = _direct_view(Path(job.path), node["data"])
        self.indices = _direct_view(Path(job.path), node["indices"])
        self.n_vars = int(node.attrs["shape"][1])
        self.tokens = job.mapping.column_token.astype(np.int32)
        self.check = _kernel.CHECK_FINITE if cfg.allow_non_integer else _kernel.CHECK_COUNTS
        rank = cfg.rank
        self.limit = rank.model_input_size - int(rank.add_cls) - int(rank.add_eos)
        self.cls_id = job.vocab.cls_id if rank.add_cls else None
        self.eos_id = job.vocab.eos_id if rank.add_eos else None
        self.where = "X" if cfg.layer is None else f"layers/{cfg.layer}"

    @classmethod
    def open(cls, job: _Job) -> _CsrRankSource | None:
        """The fast source for this job, or ``None`` when it does not apply."""
        cfg = job.config
        if not (
            cfg.scheme == "rank"
            and cfg.mode == "spot"
            and job.factors is not None
            and job.mapping.representative is None  # duplicate gene ids: summed by the generic path
            and RankValueTokenizer.use_kernel
            and _kernel.compiled()
        ):
            return None
        try:
            h5 = h5py.File(job.path, "r")
        except OSError:
            return None  # the generic path reports unreadable files
        try:
            key = "X" if cfg.layer is None else f"layers/{cfg.layer}"
            node = h5.get(key)
            if isinstance(node, h5py.Group) and node.attrs.get("encoding-type") == "csr_matrix":
                return cls(job, h5, node)
        except (OSError, KeyError, ValueError):
            pass  # unusual layouts: the generic path reads them or reports the error
        h5.close()
        return None

    def obs(self) -> pd.DataFrame:
        try:
            return ad.io.read_elem(self.h5["obs"])
        except Exception as exc:
            raise _unreadable(self.job.path, "obs", exc) from exc

    def close(self) -> None:
        self.h5.close()
        self.data = self.indices = None  # unmaps the file

    def _submit(self, pool, a: int, b: int):
        unit = self.job.unit
        indptr = self.indptr[a - unit.start : b - unit.start + 1]
        p0, p1 = int(indptr[0]), int(indptr[-1])
        try:
            data, indices = self.data[p0:p1], self.indices[p0:p1]
            if data.size != p1 - p0 or indices.size != p1 - p0:
                raise OSError(f"read {data.size} of {p1 - p0} stored values")
        except Exception as exc:
            raise _unreadable(self.job.path, f"rows {a}:{b} of {self.where}", exc) from exc
        local = indptr - p0
        result = _kernel.rank_csr_async(
            pool,
            local,
            indices,
            data,
            self.job.factors,
            self.tokens,
            self.limit,
            self.check,
            self.job.threads,
        )
        return a, b, (local, indices, data), result

    def _finish(self, a: int, b: int, arrays, result):
        tokens, offsets, flags = result()
        if flags:
            tokens, offsets = self._redo(a, b, arrays, flags)
        p0, p1 = (
            int(self.indptr[a - self.job.unit.start]),
            int(self.indptr[b - self.job.unit.start]),
        )
        for stored in (self.data, self.indices):  # resident memory follows the chunks
            if isinstance(stored, _MappedSegments):
                stored.release(p0, p1)
        ids, offsets = add_specials(tokens, offsets, self.cls_id, self.eos_id)
        return a, b, ids, None, offsets, None

    def _redo(self, a: int, b: int, arrays, flags: int):
        """Chunks the kernel refused: raise the input error, or sort and sum their entries."""
        local, indices, data = arrays
        path = self.job.path
        if flags & _kernel.BAD_INDEX or (indices.size and int(indices.max()) >= self.n_vars):
            raise InputError(
                path,
                f"rows {a}:{b} of {self.where}",
                f"has column indices outside 0..{self.n_vars - 1}",
                "the file is corrupt; re-export it",
            )
        block = sp.csr_matrix((b - a, self.n_vars), dtype=np.float32)  # no index checks
        block.data, block.indices, block.indptr = (
            np.asarray(data, dtype=np.float32),
            np.asarray(indices),
            local,
        )
        check_counts(
            block,
            path=path,
            rows=(a, b),
            allow_non_integer=self.job.config.allow_non_integer,
        )
        block = block.copy()
        block.sum_duplicates()  # unsorted columns or repeated entries
        return _kernel.rank_block(block, self.job.factors, self.tokens, self.limit)

    def _bounds(self) -> list[int]:
        """Chunk boundaries: every ``chunk_size`` rows, and where the stored values cross from
        one mapped segment of the file to another (so that each chunk is read without a copy;
        a row that straddles two segments becomes a chunk of its own)."""
        unit, step = self.job.unit, self.job.config.chunk_size
        breaks = [a.breaks for a in (self.data, self.indices) if isinstance(a, _MappedSegments)]
        cuts = set(range(unit.start, unit.stop, step)) | {unit.stop}
        if breaks:
            e = np.unique(np.concatenate(breaks))
            r = np.searchsorted(self.indptr, e, side="right") - 1
            inside = (r >= 0) & (r < self.indptr.size - 1)
            e, r = e[inside], r[inside]
            straddle = r[self.indptr[r] != e] + 1
            cuts.update((np.concatenate([r, straddle]) + unit.start).tolist())
        return sorted(c for c in cuts if unit.start <= c <= unit.stop)

    def chunks(self):
        bounds = self._bounds()
        with ThreadPoolExecutor(self.job.threads) as pool:  # lives for this unit only
            pending: deque = deque()
            for a, b in zip(bounds[:-1], bounds[1:], strict=True):
                if b <= a:
                    continue
                pending.append(self._submit(pool, a, b))
                if len(pending) > _AHEAD:
                    yield self._finish(*pending.popleft())  # written while later chunks rank
            while pending:
                yield self._finish(*pending.popleft())


def _unreadable(path, where: str, exc: Exception) -> InputError:
    return InputError(
        path,
        where,
        f"cannot be read ({type(exc).__name__}: {exc})",
        "the file may be truncated or corrupt; re-export it",
    )


def _encoder(adata, job: _Job):
    """A function ``(start, stop, block) -> (ids, types | None, offsets, has_neighbours | None)``."""
    cfg, mapping = job.config, job.mapping
    if cfg.scheme == "binned":
        tok = BinnedTokenizer(job.vocab, job.token_vocab, cfg.binned)
        pheno = {
            c: tok.phenotype_ids(c, adata.obs[c].astype(str).to_numpy(), job.path)
            for c in cfg.binned.phenotypes
        }

        def encode_binned(start, stop, block):
            n_counts = library_sizes(
                adata, block, start, stop, n_counts_key=cfg.binned.n_counts_key, path=job.path
            )
            ph = (
                np.stack([pheno[c][start:stop] for c in cfg.binned.phenotypes], axis=1)
                if pheno
                else None
            )
            ids, types, offsets = tok.tokenize_block(block, n_counts, mapping, ph)
            return ids, types, offsets, None

        return encode_binned
    rank = RankValueTokenizer(job.vocab, job.medians, cfg.rank)
    factors = rank.column_factors(mapping)
    if cfg.mode == "spot":

        def encode_spot(start, stop, block):
            ids, offsets = rank.tokenize_block_flat(block, None, mapping, factors)
            return ids, None, offsets, None

        return encode_spot
    hood = NeighborhoodTokenizer(rank, cfg.neighborhood)
    graph = build_neighbor_graph(adata, cfg.neighborhood, job.path)
    library = _all_library_sizes(adata, cfg, job.path)

    def encode_hood(start, stop, block):
        return hood.tokenize_block(
            adata,
            graph,
            library,
            start,
            stop,
            block,
            mapping,
            factors,
            layer=cfg.layer,
            path=job.path,
        )

    return encode_hood


def _all_library_sizes(adata, cfg: TokenizeConfig, path) -> np.ndarray:
    key = cfg.rank.n_counts_key
    if key is not None and key in adata.obs.columns:
        return library_sizes(adata, None, 0, adata.n_obs, n_counts_key=key, path=path)
    parts = [
        np.asarray(b.sum(axis=1), dtype=np.float64).ravel()
        for _, _, b in iter_row_chunks(adata, cfg.chunk_size, layer=cfg.layer, path=path)
    ]
    return np.concatenate(parts) if parts else np.zeros(0)


# ------------------------------------------------------------------------------------------------
# The driver


def tokenize_files(
    files: Sequence[str | PathLike[str]],
    out_dir: str | PathLike[str],
    *,
    vocab: GeneVocab,
    medians: Mapping[str, float] | str | PathLike[str] | None = None,
    config: TokenizeConfig | None = None,
    name_to_id: Mapping[str, str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    resume: bool = True,
) -> Corpus:
    """Tokenize h5ad files into a corpus directory, atomically, resumably, in ``num_proc`` processes.

    Parameters
    ----------
    vocab
        The gene vocabulary (``rank``: the tokens; ``binned``: the genes behind ``token_type_ids``).
    medians
        Per-gene medians (a mapping or a ``.json`` path); required by the rank scheme.
    overwrite
        Replace a complete corpus at ``out_dir`` (only once the new one is complete).
    resume
        Reuse the finished units of an interrupted run with identical inputs and settings;
        ``False`` always redoes the work.
    """
    config = config or TokenizeConfig()
    out_dir = Path(out_dir)
    files = [Path(f) for f in files]
    if not files:
        raise ValueError("no input files given")
    if out_dir.exists() and not overwrite:
        what = (
            "a complete corpus"
            if is_complete_corpus(out_dir)
            else "a directory that is not a corpus"
        )
        raise InputError(
            out_dir,
            "output directory",
            f"already exists and holds {what}",
            "choose another --out or pass --overwrite",
        )
    if config.scheme == "rank":
        if medians is None:
            raise InputError(
                None,
                "gene medians",
                "are required by the rank scheme",
                "pass --medians (compute them with `stformer medians`)",
            )
        if not isinstance(medians, Mapping):
            medians = load_medians(medians)
        rank = RankValueTokenizer(vocab, medians, config.rank)  # checks cls/eos in the vocabulary
    medians = dict(medians or {})
    started = time.time()
    loading = None
    if config.scheme == "rank" and RankValueTokenizer.use_kernel:
        # numba's import and cache load (~0.5 s) overlap the planning; joined before any fork
        loading = threading.Thread(target=_kernel.warm_up, daemon=True)
        loading.start()
    try:
        plans, obs_kinds, phenotype_values = _plan_files(files, vocab, config, name_to_id)
    finally:
        if loading is not None:
            loading.join()
    token_vocab = (
        binned_vocab(config.binned.n_bins, phenotype_values) if config.scheme == "binned" else vocab
    )
    units = _units(plans, config)
    fingerprint = _fingerprint(config, vocab, token_vocab, medians, plans, obs_kinds)

    tmp = out_dir.with_name(f".{out_dir.name}.partial")
    shard_dir = tmp / "shards"
    plan_file = tmp / "plan.json"
    if tmp.exists() and not (
        resume
        and plan_file.is_file()
        and json.loads(plan_file.read_text()).get("fingerprint") == fingerprint
    ):
        shutil.rmtree(tmp)
    shard_dir.mkdir(parents=True, exist_ok=True)
    if not plan_file.is_file():
        plan_file.write_text(json.dumps({"fingerprint": fingerprint, "units": len(units)}))

    done = {
        u.index: json.loads((shard_dir / f"{u.index:05d}.json").read_text())
        for u in units
        if (shard_dir / f"{u.index:05d}.json").is_file()
    }
    todo = [u for u in units if u.index not in done]
    factors = (
        [rank.column_factors(p.mapping).astype(np.float32) for p in plans]
        if config.scheme == "rank"
        else [None] * len(plans)
    )
    threads = config.num_proc if config.uses_threads else 1
    jobs = [
        _Job(
            unit=u,
            path=plans[u.file_index].path,
            mapping=plans[u.file_index].mapping,
            config=config,
            vocab=vocab,
            token_vocab=token_vocab,
            medians=medians,
            obs_kinds=obs_kinds,
            shard_dir=str(shard_dir),
            factors=factors[u.file_index],
            threads=threads,
        )
        for u in todo
    ]
    sha = _run_jobs(jobs, units, done, plans, config, tmp, progress)
    _finalize(
        tmp,
        units,
        done,
        plans,
        config,
        vocab,
        token_vocab,
        medians,
        obs_kinds,
        started,
        fingerprint,
        sha,
    )
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


def _run_jobs(jobs, units, done, plans, config, tmp: Path, progress: bool) -> list[str]:
    """Run the jobs (filling ``done``) while the inputs are checksummed; return the checksums.

    On Ctrl-C the finished shards stay in ``tmp`` (the resume state) and the user is told so.
    """
    # checksums for the manifest, computed while the work runs (xxhash releases the GIL)
    hashing = ThreadPoolExecutor(max_workers=1)
    checksums: list = []

    def start_hashing() -> None:  # called once worker processes exist: never fork with it alive
        unique = {p.path: hashing.submit(checksum_file, p.path) for p in plans}
        checksums.extend(unique[p.path] for p in plans)

    bar = tqdm(
        total=sum(p.n_obs for p in plans),
        initial=sum(u.stop - u.start for u in units if u.index in done),
        desc="tokenize",
        unit="cell",
        disable=not progress,
    )
    workers = 1 if config.uses_threads else config.num_proc
    try:
        for result in _execute(jobs, workers, bar, start_hashing):
            done[result["unit"]["index"]] = result
    except KeyboardInterrupt:
        bar.close()
        print(
            f"interrupted; {len(done)} of {len(units)} shards done are kept in {tmp}; rerun the "
            f"same command to resume, or delete {tmp}",
            file=sys.stderr,
        )
        raise
    finally:
        bar.close()
        hashing.shutdown(wait=True, cancel_futures=True)
    return [c.result() for c in checksums]


def _fingerprint(config, vocab, token_vocab, medians, plans, obs_kinds) -> str:
    payload = {
        "format_version": FORMAT_VERSION,
        "config": {  # leaving out what does not change the output
            k: v for k, v in asdict(config).items() if k not in ("num_proc", "parallel")
        },
        "vocab": vocab.content_hash(),
        "token_vocab": token_vocab.content_hash(),
        "medians": hashlib.sha256(json.dumps(sorted(medians.items())).encode()).hexdigest(),
        "sources": [(p.path, p.size_bytes, p.mtime_ns) for p in plans],
        "obs_kinds": obs_kinds,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _execute(jobs: list[_Job], num_proc: int, bar, started: Callable[[], None]):
    if num_proc == 1 or len(jobs) <= 1:
        started()
        for job in jobs:
            yield _run_unit(job, on_chunk=bar.update)
        return
    # fork (Linux) starts workers at once and needs no `if __name__ == "__main__"` guard; no h5py
    # file is open in this process at that point. Elsewhere, spawn.
    method = "fork" if "fork" in get_all_start_methods() else "spawn"
    if method == "fork":
        _kernel.warm_up()  # compiled once here, inherited by the forked workers
    with ProcessPoolExecutor(
        max_workers=min(num_proc, len(jobs)), mp_context=get_context(method)
    ) as pool:
        futures = [pool.submit(_run_unit, job) for job in jobs]  # forks every worker now
        started()
        try:
            for fut, job in zip(futures, jobs, strict=True):
                result = fut.result()
                bar.update(job.unit.stop - job.unit.start)
                yield result
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise


def _finalize(
    tmp: Path,
    units,
    done,
    plans,
    config,
    vocab,
    token_vocab,
    medians,
    obs_kinds,
    started,
    fingerprint: str,
    sha: list[str],
) -> None:
    """Move the shards into datasets' save_to_disk layout and write the describing files."""
    shard_dir = tmp / "shards"
    data_dir = tmp / "dataset"
    if data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir()
    n = len(units)
    names = []
    lengths = []
    for u in units:
        name = f"data-{u.index:05d}-of-{n:05d}.arrow"
        os.link(shard_dir / f"{u.index:05d}.arrow", data_dir / name)
        lengths.append(np.load(shard_dir / f"{u.index:05d}.lengths.npy"))
        names.append({"filename": name})
    features = _features(config, obs_kinds)
    datasets.DatasetInfo(features=features).write_to_directory(str(data_dir))
    state = {
        "_data_files": names,
        "_fingerprint": fingerprint[:16],
        "_format_columns": None,
        "_format_kwargs": {},
        "_format_type": None,
        "_output_all_columns": False,
        "_split": None,
    }
    (data_dir / "state.json").write_text(json.dumps(state, indent=2))
    all_lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int32)
    with (tmp / "example_lengths.pkl").open("wb") as fh:
        pickle.dump(all_lengths.astype(int).tolist(), fh)
    token_vocab.save_json(tmp / "token_dictionary.json")
    token_vocab.save_pickle(tmp / "token_dictionary.pkl")
    if config.scheme == "binned":
        vocab.save_json(tmp / "gene_dictionary.json")
    if medians:
        save_medians(medians, tmp / "gene_medians.json")
    manifest = _manifest(units, done, plans, config, vocab, token_vocab, started)
    for source, digest in zip(manifest["sources"], sha, strict=True):
        source["xxh3_128"] = digest
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    shutil.rmtree(shard_dir)
    (tmp / "plan.json").unlink()


def _manifest(units, done, plans, config, vocab, token_vocab, started) -> dict[str, Any]:
    per_file = [
        {
            "cells_in": 0,
            "cells_written": 0,
            "empty_after_vocab_filter": 0,
            "spots_without_neighbours": 0,
        }
        for _ in plans
    ]
    for u in units:
        for k, v in done[u.index]["counts"].items():
            per_file[u.file_index][k] += v
    sources = []
    for p, c in zip(plans, per_file, strict=True):
        sources.append(
            {
                "path": p.path,
                "size_bytes": p.size_bytes,
                "n_obs": p.n_obs,
                "n_genes": p.n_genes,
                "n_genes_in_vocab": p.n_genes_in_vocab,
                "fraction_genes_in_vocab": round(p.n_genes_in_vocab / max(p.n_genes, 1), 4),
                "n_duplicate_gene_columns_summed": p.n_duplicate_gene_columns,
                **c,
            }
        )
    total = {k: sum(c[k] for c in per_file) for k in per_file[0]} if per_file else {}
    if config.scheme == "binned":
        max_length = config.binned.model_input_size
    else:
        max_length = config.rank.model_input_size * (2 if config.mode == "neighborhood" else 1)
    counts = {
        "cells_in": total.get("cells_in", 0),
        "cells_written": total.get("cells_written", 0),
        "cells_skipped": {"empty_after_vocab_filter": total.get("empty_after_vocab_filter", 0)},
    }
    if config.mode == "neighborhood":
        counts["spots_without_neighbours"] = total.get("spots_without_neighbours", 0)
    manifest = {
        "format_version": FORMAT_VERSION,
        "scheme": config.scheme,
        "mode": config.mode,
        "max_length": max_length,
        "settings": asdict(config),
        "vocab_size": len(token_vocab),
        "vocab_sha256": token_vocab.content_hash(),
        "sources": sources,
        "counts": counts,
        "seconds": round(time.time() - started, 3),
    }
    if config.scheme == "binned":
        manifest["gene_vocab_size"] = len(vocab)
        manifest["gene_vocab_sha256"] = vocab.content_hash()
        manifest["type_vocab_size"] = len(vocab) + len(config.binned.phenotypes)
        manifest["gene_order"] = config.binned.gene_order
    return manifest
