"""Planning a corpus before anything is written: check every file, map its genes, cut the work
into units (a file's row range, one Arrow shard each), and fingerprint the job for resuming."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stformer_data._errors import InputError
from stformer_data.corpus.config import TokenizeConfig
from stformer_data.corpus.format import FORMAT_VERSION
from stformer_data.genes.mapping import GeneMapping, map_genes, resolve_gene_ids
from stformer_data.genes.vocab import GeneVocab
from stformer_data.h5ad.open import open_h5ad
from stformer_data.tokenize.contract import Tokenizer


@dataclass
class FilePlan:
    path: str
    size_bytes: int
    mtime_ns: int
    n_obs: int
    n_genes: int
    n_genes_in_vocab: int
    n_duplicate_gene_columns: int
    mapping: GeneMapping = field(repr=False)


@dataclass(frozen=True)
class Unit:
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


def plan_files(
    files: list[Path],
    vocab: GeneVocab,
    config: TokenizeConfig,
    name_to_id: Mapping[str, str] | None,
) -> tuple[list[FilePlan], dict[str, str], dict[str, set]]:
    """Check every file and map its genes; returns the plans (one per listed file), the kind of
    each obs column over all files, and the values of each phenotype column (binned)."""
    plans: list[FilePlan] = []
    kinds: dict[str, set[str]] = {c: set() for c in config.obs_columns}
    phenotype_values: dict[str, set] = {c: set() for c in config.binned.phenotypes}
    seen: dict[Path, FilePlan] = {}
    for f in files:
        if f.resolve() in seen:  # a file listed again: the same plan
            plans.append(seen[f.resolve()])
            continue
        adata = open_h5ad(f, lazy=True)
        try:
            _check_file(f, adata, config)
            for c in config.obs_columns:
                kinds[c].add(_obs_kind(adata.obs[c]))
            if config.scheme == "binned":
                for c in config.binned.phenotypes:
                    phenotype_values[c].update(adata.obs[c].astype(str).unique().tolist())
            seen[f.resolve()] = _file_plan(f, adata, vocab, config, name_to_id)
            plans.append(seen[f.resolve()])
        finally:
            adata.file.close()
    obs_kinds = {c: (k.pop() if len(k) == 1 else "string") for c, k in kinds.items()}
    return plans, obs_kinds, phenotype_values


def _file_plan(
    f: Path, adata: Any, vocab: GeneVocab, config: TokenizeConfig, name_to_id
) -> FilePlan:
    ids = resolve_gene_ids(adata.var, gene_id_key=config.gene_id_key, name_to_id=name_to_id, path=f)
    mapping = map_genes(ids, vocab, vocab.special_ids, path=f)
    stat = f.stat()
    return FilePlan(
        path=str(f.resolve()),
        size_bytes=stat.st_size,
        mtime_ns=stat.st_mtime_ns,
        n_obs=adata.n_obs,
        n_genes=mapping.n_genes,
        n_genes_in_vocab=mapping.n_in_vocab,
        n_duplicate_gene_columns=mapping.n_duplicate_columns,
        mapping=mapping,
    )


def _check_file(f: Path, adata: Any, config: TokenizeConfig) -> None:
    """The obs columns, layer and (neighbourhood mode) spatial keys the config names exist."""
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
    if config.mode != "neighborhood":
        return
    nb = config.neighborhood
    use_obsp = nb.graph == "obsp" or (nb.graph == "auto" and nb.connectivities_key in adata.obsp)
    if not use_obsp and nb.section_key is not None and nb.section_key not in adata.obs.columns:
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


def units_of(plans: list[FilePlan], config: TokenizeConfig) -> list[Unit]:
    units: list[Unit] = []
    for fi, p in enumerate(plans):
        step = p.n_obs if config.mode == "neighborhood" else config.rows_per_unit
        for start in range(0, p.n_obs, max(step, 1)):
            units.append(
                Unit(index=len(units), file_index=fi, start=start, stop=min(start + step, p.n_obs))
            )
    return units


def fingerprint(config, vocab, token_vocab, medians, plans, obs_kinds) -> str:
    """What makes two runs the same job: a rerun resumes only when this matches."""
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


@dataclass(frozen=True)
class Job:
    """Everything a worker needs to tokenize one unit (pickled to worker processes)."""

    unit: Unit
    path: str
    mapping: GeneMapping
    config: TokenizeConfig
    vocab: GeneVocab
    token_vocab: GeneVocab
    medians: Mapping[str, float]
    obs_kinds: Mapping[str, str]
    shard_dir: str
    factors: np.ndarray | None = None  # rank scheme: float32 target_sum / median per column
    dtypes: Mapping[str, str] | None = None  # the columns' types (format.column_dtypes)
    threads: int = 1  # threads that rank a chunk (fast CSR path)

    def tokenizer(self) -> Tokenizer:
        return self.config.tokenizer(self.vocab, self.medians, self.token_vocab)
