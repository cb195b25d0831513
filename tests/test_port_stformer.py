"""The acceptance script for stFormer's API: written from its documents, one import line changed.

It pretrains in spot and neighborhood mode and runs both search back-ends (its ``--deepspeed`` part
runs on 2 processes in ``stformer-dist/tests/test_stformer_documented_deepspeed.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import BertConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.shared_data
def test_port_stformer_script_runs_end_to_end(shared_data, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "port_stformer.py"), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "Best trial (ray, 2 trials)" in proc.stdout
    assert "Best trial (optuna, 2 trials)" in proc.stdout
    for mode, positions in (("spot", 16), ("neighborhood", 32)):
        (model_dir,) = (tmp_path / mode).glob("models/*/models")
        cfg = BertConfig.from_pretrained(model_dir)
        assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.hidden_size) == (2, 2, 32)
        assert cfg.max_position_embeddings == positions  # neighborhood doubles max_input
