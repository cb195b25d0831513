"""A tokenized corpus on disk as a source of cells (:class:`CorpusSource`), memory-mapped.

Every Arrow record batch of the corpus is one planning unit; a worker's reader
(:class:`CorpusSourceReader`) gathers a buffer's sequences straight from the memory-mapped Arrow
buffers, so the corpus is neither copied nor decoded row by row.
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import numpy as np
import pyarrow as pa

from stformer_data._errors import InputError, read_error
from stformer_data.corpus.format import (
    CELL_INDEX,
    DATASET_DIR,
    FILE_INDEX,
    INPUT_IDS,
    MANIFEST,
    TOKEN_DICTIONARY,
    TOKEN_TYPE_IDS,
    arrow_files,
    check_token_ids,
    is_complete_corpus,
    read_manifest,
    verify_shards,
)
from stformer_data.genes.vocab import GeneVocab
from stformer_data.stream.buffers import Buffer, Part, Recycler, assemble, locate


class CorpusSource:
    """A tokenized corpus on disk (see :func:`stformer_data.tokenize_files`), memory-mapped.

    Every Arrow record batch of the corpus is one planning unit ("file"); sequences are gathered
    from the memory-mapped buffers, so the corpus is neither copied nor decoded row by row.
    ``input_ids`` and, where the corpus has them (binned and neighbourhood corpora),
    ``token_type_ids`` are streamed, in the integer type they are stored in (``uint16`` token ids
    in format version 3, ``int32`` in version 2; padded batches are int64).

    On open every shard must exist with the size the manifest records, and (``verify=True``,
    the default: about 0.1 s for a 100,000-cell corpus in the page cache) match its XXH3-128
    checksum; each record batch's token ids are checked against the
    vocabulary when a reader first maps it. Either failure is an :class:`InputError` naming the
    shard and the fix.
    """

    def __init__(
        self, path: str | PathLike[str], *, obs_keys: Sequence[str] = (), verify: bool = True
    ) -> None:
        self.path = Path(path)
        if not is_complete_corpus(self.path):
            raise InputError(
                self.path,
                MANIFEST,
                "is missing: this is not a complete stformer corpus",
                "tokenize again with `stformer tokenize`",
            )
        manifest = read_manifest(self.path)
        verify_shards(self.path, manifest, checksums=verify)
        self.vocab = GeneVocab.load(self.path / TOKEN_DICTIONARY)
        self.obs_keys = tuple(obs_keys)
        self.arrow_files = arrow_files(self.path)
        self.pads = {INPUT_IDS: int(self.vocab.pad_id), TOKEN_TYPE_IDS: 0}
        self.fields: tuple[str, ...] = (INPUT_IDS,)
        counts = []
        self._batches: list[tuple[int, int]] = []  # (arrow file, record batch)
        for i, arrow in enumerate(self.arrow_files):
            try:
                reader = pa.ipc.open_stream(pa.memory_map(str(arrow), "r"))
                if i == 0 and TOKEN_TYPE_IDS in reader.schema.names:
                    self.fields = (INPUT_IDS, TOKEN_TYPE_IDS)
                for j, batch in enumerate(reader):
                    counts.append(batch.num_rows)
                    self._batches.append((i, j))
            except (OSError, pa.ArrowException) as exc:
                raise read_error(arrow, "Arrow shard", exc) from exc
            if self.obs_keys:
                missing = [k for k in self.obs_keys if k not in reader.schema.names]
                if missing:
                    raise InputError(
                        arrow,
                        f"columns {missing}",
                        "do not exist in the corpus",
                        f"choose among {reader.schema.names}",
                    )
        self.counts = np.array(counts, dtype=np.int64)
        if self.counts.sum() == 0:
            raise InputError(
                self.path,
                DATASET_DIR,
                "holds no sequences (every cell was empty after the vocabulary filter)",
                "tokenize files whose cells express genes of the vocabulary",
            )
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)])

    @property
    def n_cells(self) -> int:
        return int(self.offsets[-1])

    def open(self, *, threads: int = 1) -> CorpusSourceReader:
        """A reader for one worker (``threads`` is unused: the corpus is already tokenized)."""
        return CorpusSourceReader(self)


class CorpusSourceReader(Recycler):
    """Memory-mapped record batches of a :class:`CorpusSource`, opened in one worker."""

    def __init__(self, source: CorpusSource) -> None:
        super().__init__()
        self.source = source
        self._cols: list[dict[str, np.ndarray]] | None = None

    def __enter__(self) -> CorpusSourceReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._cols = None

    def close(self) -> None:
        self._cols = None

    def _columns(self) -> list[dict[str, np.ndarray]]:
        if self._cols is None:
            cols = []
            for arrow in self.source.arrow_files:
                if not arrow.exists():
                    raise InputError(
                        arrow,
                        "file",
                        "vanished after the dataset was created",
                        "restore the corpus or tokenize again",
                    )
                try:
                    for batch in pa.ipc.open_stream(pa.memory_map(str(arrow), "r")):
                        ids = batch.column(INPUT_IDS)
                        entry = {
                            "offsets": ids.offsets.to_numpy(),
                            FILE_INDEX: batch.column(FILE_INDEX).to_numpy(),
                            CELL_INDEX: batch.column(CELL_INDEX).to_numpy(),
                        }
                        for name in self.source.fields:
                            column = batch.column(name)
                            if not np.array_equal(column.offsets.to_numpy(), entry["offsets"]):
                                raise pa.ArrowInvalid(
                                    f"{name} and input_ids have different lengths"
                                )
                            entry[name] = column.values.to_numpy()
                        check_token_ids(entry[INPUT_IDS], len(self.source.vocab), arrow, INPUT_IDS)
                        for k in self.source.obs_keys:
                            entry[k] = np.asarray(batch.column(k).to_pylist(), dtype=object)
                        cols.append(entry)
                except (OSError, pa.ArrowException) as exc:
                    raise read_error(arrow, "record batches", exc) from exc
            if len(cols) != len(self.source.counts):
                raise InputError(
                    self.source.path,
                    DATASET_DIR,
                    "changed after the dataset was created",
                    "restore the corpus or rebuild the dataset",
                )
            self._cols = cols
        return self._cols

    def read(self, cells: np.ndarray) -> Buffer:
        cols = self._columns()
        batch_of, local = locate(np.asarray(cells), self.source.offsets)
        n = local.size
        file_index, cell_index = np.empty(n, np.int64), np.empty(n, np.int64)
        obs = {k: np.empty(n, dtype=object) for k in self.source.obs_keys}
        parts = []
        for b in np.unique(batch_of).tolist():  # one part per record batch
            sel = np.flatnonzero(batch_of == b)
            c, r = cols[b], local[sel]
            first = c["offsets"][r]
            file_index[sel], cell_index[sel] = c[FILE_INDEX][r], c[CELL_INDEX][r]
            for k in obs:
                obs[k][sel] = c[k][r]
            flats = {name: c[name] for name in self.source.fields}
            parts.append(Part(sel, flats, first, c["offsets"][r + 1] - first))
        dtypes = {name: cols[0][name].dtype for name in self.source.fields}
        fields, start, lengths, storage = assemble(parts, n, np.arange(n), dtypes, self)
        return Buffer(
            lengths=lengths,
            file_index=file_index,
            cell_index=cell_index,
            start=start,
            fields=fields,
            obs=obs,
            storage=storage,
        )
