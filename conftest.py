"""Fixtures shared by every test in the workspace."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent


def _shared_data_dir() -> Path:
    env = os.environ.get("STFORMER_SHARED_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (or ``$STFORMER_SHARED_DATA``); the test is skipped when it is absent."""
    path = _shared_data_dir()
    if not path.is_dir():
        pytest.skip(
            f"real test data not found at {path} (set STFORMER_SHARED_DATA or place shared/data beside the repo)"
        )
    return path


@pytest.fixture(autouse=True, scope="session")
def _quiet_threads():
    """Keep torch to 2 threads so tests behave the same on CI's 2-core machine."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    yield


@pytest.fixture(scope="session")
def make_tiny_corpus(tmp_path_factory):
    """Factory: simulate a few cells, tokenize them (rank-value) and return the :class:`Corpus`."""
    import stformer_data as sd

    def make(*, n_cells: int = 100, n_genes: int = 60, seed: int = 0, model_input_size: int = 48):
        root = tmp_path_factory.mktemp(f"corpus_{n_cells}x{n_genes}_s{seed}")
        h5ad = root / "cells.h5ad"
        adata = sd.simulate_counts(n_cells=n_cells, n_genes=n_genes, seed=seed)
        adata.write_h5ad(h5ad)
        config = sd.TokenizeConfig(rank=sd.RankTokenizerConfig(model_input_size=model_input_size))
        return sd.tokenize_files(
            [h5ad],
            root / "corpus",
            config=config,
            progress=False,
            vocab=sd.GeneVocab.from_genes(sd.resolve_gene_ids(adata.var)),
            medians=sd.compute_medians_exact([h5ad]),
        )

    return make
