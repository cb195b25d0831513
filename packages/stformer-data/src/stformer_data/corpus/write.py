"""Writing a corpus: :func:`tokenize_files`, the driver (plan, run the units, finalize).

Crash safety: the work is split into units (a file's row range); each unit's Arrow shard is
written under a temporary name inside the hidden ``.<name>.partial`` folder
(:func:`stformer_data.atomic.atomic_dir`) and renamed when complete, then a small JSON marks the
unit done (:mod:`stformer_data.corpus.shard`). A rerun with the same inputs and settings resumes
from the done units (``resume=True``) or redoes everything; the corpus folder itself appears only
by one final rename, after ``manifest.json`` is written, so a folder named like the corpus is
always a whole corpus. The layout is :mod:`stformer_data.corpus.format`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_all_start_methods, get_context
from os import PathLike
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from tqdm.auto import tqdm

from stformer_data._errors import InputError
from stformer_data.atomic import atomic_dir, atomic_write_json, partial_path
from stformer_data.corpus.config import TokenizeConfig
from stformer_data.corpus.format import (
    DATASET_DIR,
    FORMAT_VERSION,
    GENE_DICTIONARY,
    GENE_MEDIANS,
    PARTIAL_PLAN,
    PARTIAL_SHARDS,
    TOKEN_DICTIONARY,
    TOKEN_DICTIONARY_PICKLE,
    arrow_name,
    checksum_file,
    column_dtypes,
    features,
    is_stformer_corpus,
    shard_records,
    write_dataset_state,
    write_lengths,
    write_manifest,
)
from stformer_data.corpus.plan import (
    FilePlan,
    Job,
    Unit,
    fingerprint,
    plan_files,
    units_of,
)
from stformer_data.corpus.read import Corpus, load_corpus
from stformer_data.corpus.shard import COUNTS, shard_path
from stformer_data.corpus.shard import run_unit as _run_unit
from stformer_data.genes.medians import load_medians, save_medians
from stformer_data.genes.vocab import GeneVocab
from stformer_data.tokenize import rank_kernel as _kernel
from stformer_data.tokenize.binned import binned_vocab
from stformer_data.tokenize.rank import RankValueTokenizer


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
        Replace a stformer corpus at ``out_dir`` (only once the new one is complete). A folder
        that is not a stformer corpus (:func:`~stformer_data.corpus.format.is_stformer_corpus`)
        is never replaced; an empty folder is used as it is.
    resume
        Reuse the finished units of an interrupted run with identical inputs and settings;
        ``False`` always redoes the work.

    Raises
    ------
    InputError
        Bad input (a file with no cells, no cell left with a gene of the vocabulary, unreadable
        rows, ...), or ``out_dir`` exists and may not be replaced. The hidden
        ``.<name>.partial`` folder is then removed; an interrupted run (Ctrl-C, a killed process)
        keeps it, and the same command resumes from its finished shards.
    """
    config = config or TokenizeConfig()
    out_dir = Path(out_dir)
    files = [Path(f) for f in files]
    if not files:
        raise ValueError("no input files given")
    _check_out_dir(out_dir, overwrite)
    medians, rank = _rank_medians(vocab, medians, config)
    started = time.time()
    plans, obs_kinds, phenotype_values = _plan(files, vocab, config, name_to_id, rank)
    _check_cells(plans)
    token_vocab = (
        binned_vocab(config.binned.n_bins, phenotype_values) if config.scheme == "binned" else vocab
    )
    units = units_of(plans, config)
    job_fingerprint = fingerprint(config, vocab, token_vocab, medians, plans, obs_kinds)
    tmp = partial_path(out_dir)
    plan_file = tmp / PARTIAL_PLAN
    if tmp.exists() and not (resume and _plan_fingerprint(plan_file) == job_fingerprint):
        shutil.rmtree(tmp)
    try:
        _write(
            out_dir,
            units=units,
            plans=plans,
            config=config,
            rank=rank,
            vocab=vocab,
            token_vocab=token_vocab,
            medians=medians,
            obs_kinds=obs_kinds,
            started=started,
            job_fingerprint=job_fingerprint,
            progress=progress,
        )
    except InputError:
        shutil.rmtree(tmp, ignore_errors=True)  # bad input: nothing to resume from
        raise
    return load_corpus(out_dir)


def _plan_fingerprint(plan_file: Path) -> str | None:
    try:
        return json.loads(plan_file.read_text()).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        return None


def _check_cells(plans: list[FilePlan]) -> None:
    for p in plans:
        if p.n_obs == 0:
            raise InputError(
                p.path,
                "X",
                "has 0 cells: there is nothing to tokenize",
                "remove this file from the inputs (or pass the file that holds the cells)",
            )


def _write(
    out_dir: Path,
    *,
    units,
    plans,
    config,
    rank,
    vocab,
    token_vocab,
    medians,
    obs_kinds,
    started,
    job_fingerprint,
    progress,
) -> None:
    """Run the units into the hidden partial folder and rename it to ``out_dir`` when complete."""
    plan_file = partial_path(out_dir) / PARTIAL_PLAN
    dtypes = _dtypes(config, plans, vocab, token_vocab)
    # kept on error: the finished shards are the resume state; renamed to out_dir when complete
    with atomic_dir(out_dir, keep_on_error=True, reuse=True) as tmp:
        shard_dir = tmp / PARTIAL_SHARDS
        shard_dir.mkdir(parents=True, exist_ok=True)
        if not plan_file.is_file():
            atomic_write_json(plan_file, {"fingerprint": job_fingerprint, "units": len(units)})
        done = _done_units(shard_dir, units)
        if done:
            print(
                f"resuming: reusing {len(done)} of {len(units)} finished shards in {tmp}",
                file=sys.stderr,
            )
        jobs = _jobs(
            [u for u in units if u.index not in done],
            plans,
            config,
            rank,
            vocab=vocab,
            token_vocab=token_vocab,
            medians=medians,
            obs_kinds=obs_kinds,
            shard_dir=shard_dir,
            dtypes=dtypes,
        )
        sha = _run_jobs(jobs, units, done, plans, config, tmp, progress)
        _check_written(units, done, plans)
        _finalize(
            _Finished(
                tmp=tmp,
                units=units,
                done=done,
                plans=plans,
                config=config,
                vocab=vocab,
                token_vocab=token_vocab,
                medians=medians,
                obs_kinds=obs_kinds,
                started=started,
                fingerprint=job_fingerprint,
                checksums=sha,
                dtypes=dtypes,
            )
        )


def _max_length(config: TokenizeConfig) -> int:
    if config.scheme == "binned":
        return config.binned.model_input_size
    return config.rank.model_input_size * (2 if config.mode == "neighborhood" else 1)


def _type_vocab_size(config: TokenizeConfig, vocab: GeneVocab) -> int | None:
    if config.scheme == "binned":
        return len(vocab) + len(config.binned.phenotypes)
    return 2 if config.mode == "neighborhood" else None


def _dtypes(config, plans, vocab, token_vocab) -> dict[str, str]:
    """The column types of this corpus, each as small as its values allow."""
    return column_dtypes(
        vocab_size=len(token_vocab),
        type_vocab_size=_type_vocab_size(config, vocab),
        max_length=_max_length(config),
        n_files=len(plans),
        max_rows=max(p.n_obs for p in plans),
    )


def _check_written(units: list[Unit], done: dict[int, dict[str, Any]], plans) -> None:
    """A corpus with no sequence means nothing: refuse it, naming the files and the counts."""
    written = sum(done[u.index]["counts"]["cells_written"] for u in units)
    if written == 0:
        cells = sum(done[u.index]["counts"]["cells_in"] for u in units)
        raise InputError(
            ", ".join(p.path for p in plans),
            "cells",
            f"are all empty after the vocabulary filter ({cells} cells read, 0 with a count on a "
            "gene of the vocabulary): the corpus would hold no sequences",
            "check that X (or --layer) holds raw counts that are not all zero, and that the gene "
            "ids match the vocabulary (--gene-id-key, --name-to-id)",
        )


def _done_units(shard_dir: Path, units: list[Unit]) -> dict[int, dict[str, Any]]:
    """The results of the units an earlier, interrupted run finished (their done markers)."""
    markers = {u.index: shard_path(shard_dir, u.index).with_suffix(".json") for u in units}
    return {i: json.loads(m.read_text()) for i, m in markers.items() if m.is_file()}


def _jobs(
    todo: list[Unit],
    plans: list[FilePlan],
    config: TokenizeConfig,
    rank: RankValueTokenizer | None,
    **shared: Any,
) -> list[Job]:
    """One job per unit to do; ``shared`` are the fields every job has (vocabularies, medians,
    obs kinds, the shard folder)."""
    factors = (
        [rank.column_factors(p.mapping).astype(np.float32) for p in plans]
        if rank is not None
        else [None] * len(plans)
    )
    threads = config.num_proc if config.uses_threads else 1
    shared["shard_dir"] = str(shared["shard_dir"])
    return [
        Job(
            unit=u,
            path=plans[u.file_index].path,
            mapping=plans[u.file_index].mapping,
            config=config,
            factors=factors[u.file_index],
            threads=threads,
            **shared,
        )
        for u in todo
    ]


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """``out_dir`` may be written: absent, an empty folder, or (``overwrite``) a stformer corpus.

    Anything else is refused and never deleted: ``--overwrite`` replaces only what stformer wrote.
    """
    if not out_dir.exists() and not out_dir.is_symlink():
        return
    if out_dir.is_dir() and not out_dir.is_symlink() and not any(out_dir.iterdir()):
        return  # an empty folder: nothing to lose
    if is_stformer_corpus(out_dir) and not out_dir.is_symlink():
        if overwrite:
            return
        raise InputError(
            out_dir,
            "output directory",
            "already holds a stformer corpus",
            "choose another --out, or pass --overwrite to replace it",
        )
    if out_dir.is_symlink():
        what = "a symbolic link (stformer does not replace links)"
    elif not out_dir.is_dir():
        what = "a file, not a stformer corpus"
    else:
        what = "a folder that is not a stformer corpus (no readable stformer manifest.json)"
    raise InputError(
        out_dir,
        "output directory",
        f"already exists and is {what}; stformer replaces only corpora it wrote, so it was "
        "left untouched",
        "choose another --out (or move that folder away yourself)",
    )


def _rank_medians(
    vocab: GeneVocab, medians: Any, config: TokenizeConfig
) -> tuple[dict[str, float], RankValueTokenizer | None]:
    """The medians as a dict, and the rank tokenizer (rank scheme: checks cls/eos in ``vocab``)."""
    rank = None
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
        rank = RankValueTokenizer(vocab, medians, config.rank)
    return dict(medians or {}), rank


def _plan(files, vocab, config, name_to_id, rank: RankValueTokenizer | None):
    """:func:`plan_files`, with the compiled kernel loading meanwhile (rank scheme)."""
    loading = None
    if rank is not None and rank.use_kernel:
        # numba's import and cache load (~0.5 s) overlap the planning; joined before any fork
        loading = threading.Thread(target=_kernel.warm_up, daemon=True)
        loading.start()
    try:
        return plan_files(files, vocab, config, name_to_id)
    finally:
        if loading is not None:
            loading.join()


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


def _execute(jobs: list[Job], num_proc: int, bar, started: Callable[[], None]):
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


@dataclass(frozen=True)
class _Finished:
    """A run whose units are all done, as :func:`_finalize` turns it into a corpus."""

    tmp: Path
    units: list[Unit]
    done: dict[int, dict[str, Any]]
    plans: list[FilePlan]
    config: TokenizeConfig
    vocab: GeneVocab
    token_vocab: GeneVocab
    medians: Mapping[str, float]
    obs_kinds: Mapping[str, str]
    started: float
    fingerprint: str
    checksums: list[str]
    dtypes: dict[str, str]


def _finalize(run: _Finished) -> None:
    """Move the shards into datasets' save_to_disk layout and write the describing files."""
    tmp, units, config = run.tmp, run.units, run.config
    shard_dir = tmp / PARTIAL_SHARDS
    data_dir = tmp / DATASET_DIR
    if data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir()
    names = []
    lengths = []
    for u in units:
        name = arrow_name(u.index, len(units))
        shard = shard_path(shard_dir, u.index)
        os.link(shard, data_dir / name)
        lengths.append(np.load(shard.with_suffix(".lengths.npy")))
        names.append(name)
    feats = features(config.token_types, run.obs_kinds, run.dtypes)
    datasets.DatasetInfo(features=feats).write_to_directory(str(data_dir))
    write_dataset_state(data_dir, names, run.fingerprint)
    all_lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int32)
    write_lengths(tmp, all_lengths)
    run.token_vocab.save_json(tmp / TOKEN_DICTIONARY)
    run.token_vocab.save_pickle(tmp / TOKEN_DICTIONARY_PICKLE)
    if config.scheme == "binned":
        run.vocab.save_json(tmp / GENE_DICTIONARY)
    if run.medians:
        save_medians(run.medians, tmp / GENE_MEDIANS)
    manifest = _manifest(run)
    for source, digest in zip(manifest["sources"], run.checksums, strict=True):
        source["xxh3_128"] = digest
    manifest["dtypes"] = run.dtypes
    manifest["shards"] = shard_records(data_dir, names)
    write_manifest(tmp, manifest)
    shutil.rmtree(shard_dir)
    (tmp / PARTIAL_PLAN).unlink()


def _manifest(run: _Finished) -> dict[str, Any]:
    """``manifest.json``: settings, vocabularies, every source with its counts, the totals."""
    units, done, plans, config = run.units, run.done, run.plans, run.config
    vocab, token_vocab, started = run.vocab, run.token_vocab, run.started
    per_file = [dict.fromkeys(COUNTS, 0) for _ in plans]
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
    max_length = _max_length(config)
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
