"""One unit of work (a file's row range) tokenized into one Arrow shard, in this process or a worker.

:func:`run_unit` writes ``<shard_dir>/<index>.arrow`` (under a temporary name, renamed when
complete), its lengths, and then a small JSON that marks the unit done: the resume state of an
interrupted run.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from stformer_data.atomic import atomic_path, atomic_write_text
from stformer_data.corpus.chunks import open_chunks
from stformer_data.corpus.format import (
    CELL_INDEX,
    FILE_INDEX,
    INPUT_IDS,
    LENGTH,
    TOKEN_TYPE_IDS,
    features,
)
from stformer_data.corpus.plan import Job
from stformer_data.tokenize.contract import TokenBlock

#: what a unit counts, summed per source file in the manifest
COUNTS = ("cells_in", "cells_written", "empty_after_vocab_filter", "spots_without_neighbours")


def shard_path(shard_dir: str | Path, index: int) -> Path:
    """The Arrow shard of unit ``index`` (its lengths and done marker sit beside it)."""
    return Path(shard_dir) / f"{index:05d}.arrow"


def _list_array(values: np.ndarray, offsets: np.ndarray, field: pa.Field) -> pa.ListArray:
    """A list array of ``field``'s value type over ``values`` (no copy when they have it already;
    the values were checked to fit: ids within the vocabulary)."""
    kind = field.type.value_type.to_pandas_dtype()
    return pa.ListArray.from_arrays(
        pa.array(offsets.astype(np.int32)), pa.array(values.astype(kind, copy=False))
    )


def _array(values: np.ndarray, field: pa.Field) -> pa.Array:
    return pa.array(values.astype(field.type.to_pandas_dtype(), copy=False))


def _select_rows(
    values: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, keep: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The rows ``keep`` of a ragged array (``sizes`` = ``np.diff(offsets)``)."""
    if keep.all():
        return values, offsets
    return values[np.repeat(keep, sizes)], np.concatenate([[0], np.cumsum(sizes[keep])])


def _obs_arrays(obs: pd.DataFrame, job: Job) -> dict[str, np.ndarray]:
    out = {}
    for c, kind in job.obs_kinds.items():
        col = obs[c]
        out[c] = col.astype(str).to_numpy() if kind == "string" else col.to_numpy()
    return out


def _record_batch(
    job: Job,
    schema: pa.Schema,
    obs: Mapping[str, np.ndarray],
    start: int,
    tokens: TokenBlock,
    counts: dict[str, int],
) -> tuple[pa.RecordBatch, np.ndarray]:
    """The non-empty cells of a chunk as a record batch, and their lengths; ``counts`` updated."""
    offsets = tokens.offsets
    sizes = tokens.lengths
    keep = sizes > 0
    counts["cells_in"] += tokens.n_rows
    counts["cells_written"] += int(keep.sum())
    counts["empty_after_vocab_filter"] += int((~keep).sum())
    if tokens.has_neighbours is not None:
        counts["spots_without_neighbours"] += int((keep & ~tokens.has_neighbours).sum())
    rows = np.flatnonzero(keep)
    lengths = sizes[keep].astype(np.int32)
    sel_ids, sel_off = _select_rows(tokens.fields[INPUT_IDS], offsets, sizes, keep)
    f = schema.field
    arrays = {
        INPUT_IDS: _list_array(sel_ids, sel_off, f(INPUT_IDS)),
        LENGTH: _array(lengths, f(LENGTH)),
    }
    if TOKEN_TYPE_IDS in tokens.fields:
        types = _select_rows(tokens.fields[TOKEN_TYPE_IDS], offsets, sizes, keep)[0]
        arrays[TOKEN_TYPE_IDS] = _list_array(types, sel_off, f(TOKEN_TYPE_IDS))
    arrays[FILE_INDEX] = _array(np.full(rows.size, job.unit.file_index), f(FILE_INDEX))
    arrays[CELL_INDEX] = _array(start + rows, f(CELL_INDEX))
    for c, values in obs.items():
        arrays[c] = pa.array(values[start + rows], type=schema.field(c).type)
    batch = pa.RecordBatch.from_arrays([arrays[n] for n in schema.names], schema=schema)
    return batch, lengths


def run_unit(job: Job, on_chunk: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Tokenize one unit into ``<shard_dir>/<index>.arrow`` and mark it done; return its counts."""
    cfg, unit = job.config, job.unit
    shard = shard_path(job.shard_dir, unit.index)
    schema = features(cfg.token_types, job.obs_kinds, job.dtypes).arrow_schema
    counts = dict.fromkeys(COUNTS, 0)
    lengths_parts: list[np.ndarray] = []
    source = open_chunks(job, job.tokenizer())
    try:
        obs = _obs_arrays(source.obs(), job) if job.obs_kinds else {}
        with (
            atomic_path(shard) as tmp,
            pa.OSFile(str(tmp), "wb") as sink,
            pa.ipc.new_stream(sink, schema) as writer,
        ):
            for start, stop, tokens in source.chunks():
                batch, lengths = _record_batch(job, schema, obs, start, tokens, counts)
                lengths_parts.append(lengths)
                writer.write_batch(batch)
                if on_chunk is not None:
                    on_chunk(stop - start)
    finally:
        source.close()
    with atomic_path(shard.with_suffix(".lengths.npy")) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.concatenate(lengths_parts) if lengths_parts else np.zeros(0, np.int32))
    result = {"unit": asdict(unit), "counts": counts}
    atomic_write_text(shard.with_suffix(".json"), json.dumps(result))
    return result
