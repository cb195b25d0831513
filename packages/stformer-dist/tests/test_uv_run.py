"""Ray Train under `uv run`, as a user runs it: a subprocess with no RAY_* variable set.

Under `uv run`, Ray's uv hook would rebuild the environment for every worker (which then finds no
Ray); stformer_dist switches it off in the process before Ray is imported. No conftest sets Ray's
environment, so this is what a user's first run sees.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]

pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.shared_data]


def test_protoplast_script_under_uv_run(shared_data, tmp_path):
    uv = os.environ.get("UV") or shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not on PATH")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.pop("VIRTUAL_ENV", None)
    data = shared_data / "sc" / "pbmc68k_reduced_700_counts.h5ad"
    proc = subprocess.run(
        [
            uv,
            "run",
            "--frozen",
            "python",
            "examples/port_protoplast.py",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "results"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "No module named 'ray'" not in out
    assert "checkpoint files: ['checkpoint.ckpt']" in proc.stdout
