"""`stformer pretrain --deepspeed zero2` under torchrun: 2 CPU processes (gloo), ZeRO-2, for real."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

WORKER = "import sys\nfrom stformer_cli.main import cli\nsys.exit(cli(sys.argv[1:]))\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def corpus(make_tiny_corpus):
    return make_tiny_corpus(n_cells=200, n_genes=80, seed=0).path


@pytest.mark.slow
@pytest.mark.distributed
def test_two_process_zero2_run_learns_and_checkpoints(corpus, tmp_path):
    (tmp_path / "worker.py").write_text(WORKER)
    (tmp_path / "cfg.yaml").write_text(
        "train:\n  logging_steps: 5\n  save_steps: 20\n  warmup_steps: 0\n"
    )
    run = tmp_path / "run"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        str(tmp_path / "worker.py"),
        "pretrain",
        str(corpus),
        "--out",
        str(run),
        "--config",
        str(tmp_path / "cfg.yaml"),
        "--deepspeed",
        "zero2",
        "--max-steps",
        "40",
        "--learning-rate",
        "0.01",
        "--batch-size",
        "16",
        "--layers",
        "2",
        "--hidden",
        "32",
        "--heads",
        "2",
        "--no-progress",
    ]
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=420)
    finally:
        if proc.poll() is None:  # never leave the launcher or its workers behind
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, out[-4000:]
    assert "mpi4py" not in out
    history = json.loads((run / "logs" / "log_history.json").read_text())
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) == 8
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.02  # the loss falls
    state = json.loads((run / "checkpoints" / "checkpoint-40" / "trainer_state.json").read_text())
    assert state["global_step"] == 40
    shards = sorted(
        p.name for p in (run / "checkpoints" / "checkpoint-40" / "global_step40").iterdir()
    )
    # ZeRO-2 over 2 ranks: each rank saved its own shard of the optimizer state
    assert shards == [
        "mp_rank_00_model_states.pt",
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt",
    ]
    assert (run / "model" / "model.safetensors").is_file()
    assert out.count("40 steps; model:") == 2  # both ranks finished
