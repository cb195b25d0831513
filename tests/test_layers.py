"""The package layers hold, and the checker really catches violations.

Contracts live in the root ``pyproject.toml`` under ``[tool.importlinter]``; import-linter reads
the imports of the source trees statically.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC_DIRS = sorted(p for p in [*ROOT.glob("packages/*/src"), *ROOT.glob("apps/*/src")])


def _lint(config: Path, pythonpath: list[Path], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(map(str, pythonpath)))
    env.pop("GRIMP_CACHE_DIR", None)
    lint = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(lint), "--config", str(config), "--no-cache"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _copy_sources(tmp_path: Path) -> list[Path]:
    copies = []
    for src in SRC_DIRS:
        dest = tmp_path / src.relative_to(ROOT)
        shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__"))
        copies.append(dest)
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return copies


def test_layers_hold():
    result = _lint(ROOT / "pyproject.toml", SRC_DIRS, ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout
    assert " KEPT" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        (
            "packages/stformer-data/src/stformer_data/genes/vocab.py",
            "import transformers\n",
            "free of heavy training",
        ),
        (
            "packages/stformer-collate/src/stformer_collate/_spec.py",
            "import stformer_train\n",
            "Layers",
        ),
        (
            "packages/stformer-data/src/stformer_data/h5ad/rows.py",
            "import stformer_data.stream.buffers\n",
            "each stage imports only the stages before it",
        ),
        ("packages/stformer-train/src/stformer_train/config.py", "import ray\n", "neither Ray"),
        (
            "packages/stformer-dist/src/stformer_dist/__init__.py",
            "import stformer_tune\n",
            "Layers",
        ),
    ],
)
def test_checker_catches_a_violation(tmp_path, module, line, contract):
    copies = _copy_sources(tmp_path)
    target = tmp_path / module
    target.write_text(line + target.read_text())
    result = _lint(tmp_path / "pyproject.toml", copies, tmp_path)
    assert result.returncode != 0, "a deliberate violation was not reported:\n" + result.stdout
    broken = [ln for ln in result.stdout.splitlines() if "BROKEN" in ln]
    assert any(contract in ln for ln in broken), result.stdout
