"""Each bottom-layer package installs alone, without the heavy training frameworks.

Uses ``uv sync --package NAME`` into a separate environment (UV_PROJECT_ENVIRONMENT), from the
committed lock file, exactly as a user installing one package would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = [
    "transformers",
    "lightning",
    "pytorch_lightning",
    "ray",
    "deepspeed",
    "optuna",
    "accelerate",
]

PROBE = """
import importlib.util, json, sys
mod = sys.argv[1]
importlib.import_module(mod)
print(json.dumps({"present": [m for m in sys.argv[2:] if importlib.util.find_spec(m) is not None],
                  "loaded": sorted(k for k in sys.modules if k.split('.')[0] in sys.argv[2:])}))
"""


def _uv() -> str:
    uv = os.environ.get("UV") or shutil.which("uv")
    if uv is None:
        pytest.fail("uv is required for this test (pip install uv)")
    return uv


@pytest.mark.slow
@pytest.mark.parametrize(
    ("package", "module"),
    [("stformer-data", "stformer_data"), ("stformer-collate", "stformer_collate")],
)
def test_package_installs_alone(tmp_path, package, module):
    env = dict(os.environ, UV_PROJECT_ENVIRONMENT=str(tmp_path / "venv"))
    env.pop("VIRTUAL_ENV", None)
    sync = subprocess.run(
        [_uv(), "sync", "--frozen", "--package", package, "--no-dev", "--quiet"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert sync.returncode == 0, sync.stderr
    python = tmp_path / "venv" / "bin" / "python"
    probe = subprocess.run(
        [str(python), "-c", PROBE, module, *HEAVY, "stformer_train"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    assert found["present"] == [], f"{package} pulled in {found['present']}"
    assert found["loaded"] == []
