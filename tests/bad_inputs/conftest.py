"""Builders for the bad-input suite: tiny h5ad files, corpora and vocabularies made on the spot.

Each test builds the damaged input it needs in ``tmp_path`` from these, runs the real command
in-process with :func:`run_cli` and checks the exit code, the message and what was left behind
with :func:`leftovers`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp


def _counts(n_cells: int, n_genes: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.poisson(rng.uniform(0.2, 3.0, n_genes), size=(n_cells, n_genes)).astype(np.float32)
    x[np.arange(n_cells), np.arange(n_cells) % n_genes] += 1  # no empty cell
    return x


@pytest.fixture
def write_h5ad(tmp_path):
    """Factory: write a tiny h5ad (raw counts, Ensembl-like gene ids) and return its path.

    ``counts`` replaces the simulated matrix (dense array or scipy sparse); ``obs`` / ``var`` /
    ``obsm`` columns are added as given; ``n_counts=True`` writes ``obs['n_counts']`` as the row sums.
    """

    def write(
        name: str = "cells.h5ad",
        *,
        n_cells: int = 12,
        n_genes: int = 20,
        counts=None,
        obs: Mapping[str, Sequence] | None = None,
        var: Mapping[str, Sequence] | None = None,
        obsm: Mapping[str, np.ndarray] | None = None,
        n_counts: bool = True,
        seed: int = 0,
    ) -> Path:
        x = _counts(n_cells, n_genes, seed) if counts is None else counts
        n_cells, n_genes = x.shape
        adata = ad.AnnData(
            X=sp.csr_matrix(x),
            obs=pd.DataFrame(index=[f"cell{i}" for i in range(n_cells)]),
            var=pd.DataFrame(index=[f"ENSG{i:011d}" for i in range(n_genes)]),
        )
        if n_counts:
            adata.obs["n_counts"] = np.asarray(adata.X.sum(axis=1)).ravel()
        for k, v in (obs or {}).items():
            adata.obs[k] = list(v)
        for k, v in (var or {}).items():
            adata.var[k] = list(v)
        for k, v in (obsm or {}).items():
            adata.obsm[k] = np.asarray(v)
        path = tmp_path / name
        adata.write_h5ad(path)
        return path

    return write


@pytest.fixture
def write_vocab(tmp_path):
    """Factory: write ``payload`` as JSON (any shape, valid or not) and return the path."""

    def write(payload, name: str = "vocab.json") -> Path:
        path = tmp_path / name
        path.write_text(json.dumps(payload))
        return path

    return write


@pytest.fixture
def make_corpus(tmp_path, write_h5ad):
    """Factory: tokenize a tiny h5ad (rank scheme) with the real command; return the corpus path."""

    def make(name: str = "corpus", **h5ad_kwargs) -> Path:
        from stformer_cli.main import cli

        src = write_h5ad(f"{name}_cells.h5ad", **h5ad_kwargs)
        out = tmp_path / name
        rc = cli(
            ["tokenize", str(src), "--out", str(out), "--no-progress", "--model-input-size", "16"]
        )
        assert rc == 0, "building the corpus failed"
        return out

    return make


@pytest.fixture
def run_cli(capsys):
    """Run ``stformer ARGS`` in-process; return ``(exit_code, stdout + stderr)``."""

    def run(*args) -> tuple[int, str]:
        from stformer_cli.main import cli

        rc = cli([str(a) for a in args])
        out = capsys.readouterr()
        return rc, " ".join((out.out + out.err).split())  # rich wraps long lines

    return run


@pytest.fixture
def leftovers():
    """``leftovers(folder)``: names in ``folder`` a failed command must not leave (hidden
    ``.NAME.partial`` folders, temporary ``.tmp`` files, ``.old`` replaced outputs)."""

    def find(folder: Path) -> list[str]:
        return sorted(
            p.name
            for p in Path(folder).iterdir()
            if p.name.startswith(".") and p.name.endswith((".partial", ".tmp", ".old"))
        )

    return find


@pytest.fixture
def assert_fix_is_an_option():
    """``check(command, message)``: every ``--option`` the message names exists on ``command``."""

    def check(command: str, message: str) -> None:
        import typer

        from stformer_cli.main import app

        cmd = typer.main.get_command(app).commands[command]
        known = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
        named = set(re.findall(r"--[a-z][a-z0-9-]*", message))
        assert named, f"the message names no option: {message}"
        assert named <= known, f"{sorted(named - known)} are not options of `stformer {command}`"

    return check
