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
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    yield
