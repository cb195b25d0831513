"""In-silico perturbation of an h5ad file with a trained model: a Parquet table, an .h5ad summary, resumable.

Layout of ``out_dir``::

    perturbations.parquet   one row per (cell, perturbation): cosine similarity and shift
    gene_shifts.parquet     with gene_shifts=True: one row per (cell, perturbation, other gene)
    summary.h5ad            cells x perturbed genes, X = shift (1 - cosine similarity), sparse
    perturb.json            the settings and counts of the run
    .parts/                 one finished cell batch per file (the resume state; removed at the end)
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

import stformer_data as sd
from stformer_data.atomic import atomic_write_bytes, atomic_write_json, partial_path
from stformer_train.perturb._core import PerturbResult, PerturbSpec, perturb_batch
from stformer_train.perturb._engine import PooledEncoder, plan_batches

if TYPE_CHECKING:
    from stformer_train.geneformer import FolderModel

TABLE = "perturbations.parquet"
GENE_SHIFTS = "gene_shifts.parquet"
SUMMARY = "summary.h5ad"
SETTINGS = "perturb.json"
PARTS = ".parts"


def _parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _fingerprint(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _file_stamp(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _select(labels: np.ndarray | None, values: Sequence[str] | None) -> np.ndarray:
    if labels is None or values is None:
        return np.ones(0 if labels is None else len(labels), dtype=bool)
    return np.isin(labels, [str(v) for v in values])


def perturb_h5ad(
    model: str | PathLike[str] | FolderModel,
    h5ad: str | PathLike[str],
    out_dir: str | PathLike[str],
    *,
    perturbation: str = "delete",
    genes: str | Sequence[str] = "all",
    combine: bool = False,
    rank_shift: int = 1,
    filter_key: str | None = None,
    filter_values: Sequence[str] | None = None,
    goal_key: str | None = None,
    goal_value: str | None = None,
    gene_shifts: bool = False,
    obs_columns: Sequence[str] = (),
    max_cells: int | None = None,
    hidden_layer: int = -2,
    cells_per_batch: int = 32,
    tokens_per_batch: int | None = None,
    device: str | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Perturb genes in the cells of ``h5ad`` and measure how far each cell's embedding moves.

    Parameters
    ----------
    model
        A model folder: a stformer run (``RUN`` or ``RUN/model``) or a Geneformer checkpoint with
        its token dictionary and medians (see :func:`stformer_train.geneformer.open_model`).
    h5ad
        Raw counts; tokenized with the model's vocabulary, medians and tokenizer settings.
    out_dir
        Where the table, the summary and the resume state are written (see the module docs).
    perturbation, rank_shift
        ``delete`` / ``overexpress`` / ``inhibit`` / ``activate`` (Geneformer's definitions).
    genes
        ``"all"`` (each expressed gene of each cell, alone) or gene ids of the vocabulary.
    combine
        Perturb the listed genes together, as one combination, instead of each alone.
    filter_key, filter_values
        Perturb only the cells whose ``obs[filter_key]`` is one of ``filter_values``.
    goal_key, goal_value
        The goal-state variant: the mean embedding of the cells with ``obs[goal_key] == goal_value``
        is the target; each perturbation also reports its cosine similarity to it before and after
        (``shift_to_goal`` > 0: the perturbation moves the cell toward the goal state).
    gene_shifts
        Also write, per perturbation, every other gene's embedding shift (``gene_shifts.parquet``).
    obs_columns
        Further ``obs`` columns copied into the table (e.g. ``cell_type`` for grouped statistics).
    max_cells
        Perturb at most this many (selected) cells, in file order.
    hidden_layer
        The encoder layer pooled into cell embeddings (``-2``: the second-to-last, as Geneformer).
    cells_per_batch
        Cells whose copies are batched together; the unit of resuming (one part file each).
    tokens_per_batch
        Tokens per forward pass (default 16,384 on CPU, 131,072 on a GPU).
    device
        ``"cuda"`` / ``"cpu"``; by default the GPU when there is one (bf16), else the CPU (fp32).
    workers
        Forward passes run at once on the CPU, each single-threaded (default: torch's thread
        count, ``torch.get_num_threads()``; 1 on a GPU). The results do not depend on it.

    Returns
    -------
    The settings and counts written to ``perturb.json``. A rerun with the same arguments continues
    after the last finished cell batch and writes the same table.
    """
    from stformer_train.geneformer import FolderModel, open_model

    spec_genes: str | tuple[str, ...] = genes if isinstance(genes, str) else tuple(genes)
    if filter_values is not None and filter_key is None:
        raise ValueError("filter_values needs filter_key")
    if filter_key is not None and not filter_values:
        raise ValueError(f"filter_key={filter_key!r} needs filter_values")
    if (goal_key is None) != (goal_value is None):
        raise ValueError("goal_key and goal_value go together")
    if cells_per_batch <= 0:
        raise ValueError(f"cells_per_batch must be > 0, got {cells_per_batch}")
    h5ad, out_dir = Path(h5ad), Path(out_dir)
    rm = model if isinstance(model, FolderModel) else open_model(model)
    vocab = rm.vocab
    if isinstance(spec_genes, str):
        if spec_genes != "all":
            raise ValueError(f"genes must be 'all' or a list of gene ids, got {spec_genes!r}")
        token_genes: str | tuple[int, ...] = "all"
    else:
        missing = [g for g in spec_genes if vocab.get(g) is None or vocab[g] in vocab.special_ids]
        if missing:
            raise sd.InputError(
                rm.model_dir,
                "token dictionary",
                f"has no gene {missing[:5]}",
                "pass gene ids of the model's vocabulary",
            )
        token_genes = tuple(vocab[g] for g in spec_genes)
    spec = PerturbSpec(
        perturbation=perturbation,
        genes=token_genes,
        combine=combine,
        rank_shift=rank_shift,
        gene_shifts=gene_shifts,
    )
    columns = tuple(
        dict.fromkeys([c for c in (filter_key, goal_key, *obs_columns) if c is not None])
    )
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tokens_per_batch = tokens_per_batch or (131_072 if dev.type == "cuda" else 16_384)
    settings = {
        "model": str(rm.model_dir),
        "h5ad": str(h5ad),
        "perturbation": perturbation,
        "genes": list(spec_genes) if not isinstance(spec_genes, str) else spec_genes,
        "combine": combine,
        "rank_shift": rank_shift,
        "filter": {filter_key: list(map(str, filter_values))} if filter_key else None,
        "goal": {goal_key: str(goal_value)} if goal_key else None,
        "gene_shifts": gene_shifts,
        "obs_columns": list(columns),
        "max_cells": max_cells,
        "hidden_layer": hidden_layer,
        "cells_per_batch": cells_per_batch,
    }
    fingerprint = _fingerprint(
        {
            **settings,
            "h5ad": _file_stamp(h5ad),
            "model": rm.fingerprint(),
            "vocab": vocab.content_hash(),
        }
    )
    parts_dir = out_dir / PARTS
    state = parts_dir / "state.json"
    if state.is_file() and json.loads(state.read_text()).get("fingerprint") != fingerprint:
        raise sd.InputError(
            out_dir,
            PARTS,
            "holds an unfinished run with other inputs or settings",
            "use another out_dir or delete it",
        )
    parts_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(state, {"fingerprint": fingerprint, "settings": settings})

    with tempfile.TemporaryDirectory() as tmp:
        corpus = rm.tokenize(h5ad, Path(tmp) / "corpus", obs_columns=columns, progress=False)
        ds = corpus.dataset
        seqs = [np.asarray(x, dtype=np.int64) for x in ds["input_ids"]]
        rows = np.asarray(ds["cell_index"], dtype=np.int64)
        obs = {c: np.asarray(ds[c]).astype(str) for c in columns}
    selected = np.ones(len(seqs), dtype=bool)
    if filter_key is not None:
        selected &= _select(obs[filter_key], filter_values)
        if not selected.any():
            present = sorted(set(obs[filter_key]))[:10]
            raise sd.InputError(
                h5ad,
                f"obs[{filter_key!r}]",
                f"has no cell with a value in {list(filter_values)}",
                f"values present: {present}",
            )
    chosen = np.flatnonzero(selected)
    if max_cells is not None:
        chosen = chosen[:max_cells]

    model_obj = rm.load_encoder()
    specials = sorted(vocab.special_ids)
    enc = PooledEncoder(
        model_obj, hidden_layer=hidden_layer, special_ids=specials, device=dev, workers=workers
    )
    goal = None
    if goal_key is not None:
        goal_cells = np.flatnonzero(obs[goal_key] == str(goal_value))
        if goal_cells.size == 0:
            raise sd.InputError(
                h5ad,
                f"obs[{goal_key!r}]",
                f"has no cell {goal_value!r}",
                "pass a goal state present in the file",
            )
        goal = _mean_embedding(enc, [seqs[i] for i in goal_cells], tokens_per_batch)

    batches = [chosen[s : s + cells_per_batch] for s in range(0, len(chosen), cells_per_batch)]
    part_paths = [parts_dir / f"batch-{b:06d}.parquet" for b in range(len(batches))]
    todo = [b for b, p in enumerate(part_paths) if not p.is_file()]
    bar = tqdm(
        total=len(chosen), desc=f"perturb ({perturbation})", unit="cell", disable=not progress
    )
    bar.update(sum(len(batches[b]) for b in range(len(batches)) if b not in set(todo)))
    max_length = int(rm.settings["settings"].get("rank", {}).get("model_input_size", 2048))
    for b in todo:
        idx = batches[b]
        res = perturb_batch(
            enc,
            [seqs[i] for i in idx],
            spec,
            cell_ids=idx.tolist(),
            cls_id=vocab.cls_id,
            eos_id=vocab.eos_id,
            max_length=max_length,
            goal=goal,
            tokens_per_batch=tokens_per_batch,
        )
        tables = _tables(res, rows, obs, vocab, goal is not None)
        if gene_shifts:
            atomic_write_bytes(
                part_paths[b].with_suffix(".genes.parquet"), _parquet_bytes(tables[1])
            )
        atomic_write_bytes(part_paths[b], _parquet_bytes(tables[0]))  # last: marks the batch done
        bar.update(len(idx))
    bar.close()
    return _finish(out_dir, part_paths, h5ad, settings, gene_shifts, chosen, rows)


def _mean_embedding(
    enc: PooledEncoder, seqs: list[np.ndarray], tokens_per_batch: int
) -> np.ndarray:
    total = torch.zeros(enc.hidden_size, dtype=torch.float32, device=enc.device)
    lengths = np.array([len(s) for s in seqs])
    for b in plan_batches(lengths, tokens_per_batch):
        h, keep = enc.hidden([seqs[i] for i in b])
        total += enc.pool(h, keep).sum(0)
    return (total / len(seqs)).cpu().numpy()


def _label(vocab: sd.GeneVocab, tokens: tuple[int, ...]) -> str:
    return "+".join(vocab.id_to_token(t) or str(t) for t in tokens)


def _tables(res: PerturbResult, rows: np.ndarray, obs: dict[str, np.ndarray], vocab, goal: bool):
    cell = np.asarray(res.cell, dtype=np.int64)
    cos = np.asarray(res.cos_sim, dtype=np.float32)
    cols: dict[str, Any] = {"cell_index": rows[cell] if cell.size else np.zeros(0, np.int64)}
    for c, v in obs.items():
        cols[c] = pa.array(v[cell] if cell.size else np.zeros(0, dtype=str), type=pa.string())
    cols["perturbed"] = pa.array([_label(vocab, t) for t in res.perturbed], type=pa.string())
    cols["perturbed_token"] = np.asarray(
        [t[0] if len(t) == 1 else -1 for t in res.perturbed], dtype=np.int32
    )
    cols["n_genes"] = np.asarray(res.n_genes, dtype=np.int32)
    cols["cos_sim"] = cos
    cols["shift"] = (1.0 - cos).astype(np.float32)
    if goal:
        before = np.asarray(res.goal_cos_before, dtype=np.float32)
        after = np.asarray(res.goal_cos_after, dtype=np.float32)
        cols["goal_cos_before"] = before
        cols["goal_cos_after"] = after
        cols["shift_to_goal"] = (after - before).astype(np.float32)
    table = pa.table(cols)
    genes = None
    if res.shift_row:
        r = np.concatenate(res.shift_row)
        g = np.concatenate(res.shift_gene)
        cg = np.concatenate(res.shift_cos)
    else:
        r = g = np.zeros(0, np.int64)
        cg = np.zeros(0, np.float32)
    tokens = sorted(set(g.tolist()))
    names = {t: vocab.id_to_token(t) for t in tokens}
    genes = pa.table(
        {
            "cell_index": rows[cell[r]] if r.size else np.zeros(0, np.int64),
            "perturbed": pa.array([_label(vocab, res.perturbed[i]) for i in r], type=pa.string()),
            "gene": pa.array([names[t] for t in g.tolist()], type=pa.string()),
            "cos_sim": cg,
            "shift": (1.0 - cg).astype(np.float32),
        }
    )
    return table, genes


def _concat_parts(paths: list[Path], out: Path) -> pa.Table:
    tables = [pq.read_table(p) for p in paths]
    table = pa.concat_tables(tables) if tables else pa.table({})
    atomic_write_bytes(out, _parquet_bytes(table))
    return table


def _finish(out_dir, part_paths, h5ad, settings, gene_shifts, chosen, rows) -> dict[str, Any]:
    table = _concat_parts(part_paths, out_dir / TABLE)
    if gene_shifts:
        _concat_parts([p.with_suffix(".genes.parquet") for p in part_paths], out_dir / GENE_SHIFTS)
    _write_summary(table, out_dir / SUMMARY, h5ad, rows[chosen])
    result = {
        **settings,
        "n_cells": int(len(chosen)),
        "n_perturbations": int(table.num_rows),
        "table": str(out_dir / TABLE),
        "summary": str(out_dir / SUMMARY),
    }
    atomic_write_json(out_dir / SETTINGS, result)
    for p in part_paths:
        p.unlink(missing_ok=True)
        p.with_suffix(".genes.parquet").unlink(missing_ok=True)
    (out_dir / PARTS / "state.json").unlink(missing_ok=True)
    try:
        (out_dir / PARTS).rmdir()
    except OSError:
        pass
    return result


def _write_summary(table: pa.Table, path: Path, h5ad: Path, cell_rows: np.ndarray) -> None:
    """Cells x perturbed genes, X = shift (sparse; absent = not perturbed), obs from the input file."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    src = sd.open_h5ad(h5ad, backed=True)
    obs = (
        src.obs.iloc[np.asarray(cell_rows)].copy()
        if hasattr(src, "obs")
        else pd.DataFrame(index=cell_rows.astype(str))
    )
    df = table.select(["cell_index", "perturbed", "shift"]).to_pandas() if table.num_rows else None
    genes = sorted(set(df["perturbed"])) if df is not None else []
    g_index = {g: i for i, g in enumerate(genes)}
    c_index = {int(c): i for i, c in enumerate(cell_rows)}
    if df is not None:
        x = sp.csr_matrix(
            (
                df["shift"].to_numpy(np.float32),
                (df["cell_index"].map(c_index).to_numpy(), df["perturbed"].map(g_index).to_numpy()),
            ),
            shape=(len(cell_rows), len(genes)),
        )
    else:
        x = sp.csr_matrix((len(cell_rows), 0), dtype=np.float32)
    obs.index = obs.index.astype(str)
    adata = ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=pd.Index(genes, dtype=str)))
    adata.var["n_cells"] = np.diff(x.tocsc().indptr)
    adata.uns["stformer_perturb"] = {"value": "shift = 1 - cosine similarity of the cell embedding"}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    try:
        adata.write_h5ad(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
