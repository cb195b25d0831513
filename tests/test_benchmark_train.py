"""benchmarks/train.py's GPU code path runs on the CPU (tiny shape) and its cuda plan parses."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train.py"


def _run(*args, env_out=None):
    env = None
    if env_out is not None:
        import os

        env = {**os.environ, "OUT": str(env_out)}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_cuda_plan_parses_without_a_gpu():
    report = _run("--device", "cuda", "--dry-run")
    assert report["v1"]["model"].startswith("bert 6x256") and report["v1"]["cells_per_step"] == 32
    assert report["v2"]["model"].startswith("bert 12x768, 12 heads, ffn 3072, input 4096")
    assert "12*L*H*sum(s_i^2)" in report["flop_formula"] and report["peak_tflops"] == 989.0


@pytest.mark.slow
def test_synthetic_path_trains_every_setup_on_cpu(tmp_path):
    report = _run(
        "--device",
        "cpu",
        "--synthetic",
        "--shapes",
        "tiny",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--embed-cells",
        "16",
        "--embed-batch",
        "8",
        "--vocab",
        "300",
        "--peak-tflops",
        "1",
        env_out=tmp_path,
    )
    assert json.loads((tmp_path / "train_cuda.json").read_text()) == report
    parity = report["parity"]["fp32"]
    assert parity["blocks"]["loss_abs_diff"] < 1e-5 and parity["blocks"]["grad_rel_diff"] < 1e-4
    tiny = report["tiny"]
    assert 0 < tiny["padding_fraction_padded"] < 0.9  # cells of many lengths
    for setup in ("padded", "length_grouped", "packed", "packed_no_attn_dropout"):
        assert "error" not in tiny[setup], tiny[setup]
        assert tiny[setup]["real_tokens_per_s"] > 0 and tiny[setup]["mfu"] > 0
    assert tiny["packed"]["packed_backend"] == "blocks"
    assert tiny["embed"]["packed_cells_per_s"] > 0 and tiny["embed"]["padded_cells_per_s"] > 0
    # the same cells and masks: the first losses agree up to the dropout draws
    first = [tiny[s]["loss_first_step"] for s in ("padded", "packed", "packed_no_attn_dropout")]
    assert max(first) - min(first) < 0.05
