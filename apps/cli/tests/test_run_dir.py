"""`stformer pretrain --out RUN`: a run directory is never left inconsistent.

A different run is refused before anything is written; `--overwrite` starts again (stformer runs
only); the same command resumes and says from where; flags win over `--config`; a bad config is
one message; kill -9 and Ctrl-C followed by the same command give the weights of an
uninterrupted run.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import stformer_data as sd
from stformer_cli.main import cli

TINY = [
    "--layers",
    "2",
    "--hidden",
    "32",
    "--heads",
    "2",
    "--max-length",
    "32",
    "--batch-size",
    "8",
    "--seed",
    "0",
    "--no-progress",
]


@pytest.fixture(scope="module")
def h5ad(tmp_path_factory):
    path = tmp_path_factory.mktemp("rundir") / "cells.h5ad"
    sd.simulate_counts(n_cells=40, n_genes=60, seed=2).write_h5ad(path)
    return path


def _weights(run):
    return load_file(run / "model" / "model.safetensors")


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_different_run_is_refused_before_writing_and_overwrite_starts_again(
    h5ad, tmp_path, capsys
):
    run = tmp_path / "run"
    assert cli(["pretrain", str(h5ad), "--out", str(run), "--max-steps", "2", *TINY]) == 0
    config = (run / "config.json").read_text()
    model = _weights(run)
    wider = [*TINY[:2], "--hidden", "16", *TINY[4:]]
    capsys.readouterr()
    assert cli(["pretrain", str(h5ad), "--out", str(run), "--max-steps", "2", *wider]) == 2
    err = capsys.readouterr().err
    assert "model.hidden_size: 32 there, 16 now" in err
    assert "--overwrite" in err and "--resume" in err and "Traceback" not in err
    assert (run / "config.json").read_text() == config and _same(_weights(run), model)
    # the same command resumes (and says so); --resume says it explicitly
    args = ["pretrain", str(h5ad), "--out", str(run), "--max-steps", "2", "--resume", *TINY]
    assert cli(args) == 0
    assert "resuming from checkpoints/checkpoint-2 (step 2 of 2)" in capsys.readouterr().out
    (run / "mine.txt").write_text("kept")
    assert (
        cli(["pretrain", str(h5ad), "--out", str(run), "--max-steps", "2", "--overwrite", *wider])
        == 0
    )
    assert json.loads((run / "config.json").read_text())["model"]["hidden_size"] == 16
    assert (run / "mine.txt").read_text() == "kept"
    # --overwrite never deletes a folder stformer did not write
    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "chapter1.tex").write_text("...")
    capsys.readouterr()
    assert cli(["pretrain", str(h5ad), "--out", str(foreign), "--overwrite", *TINY]) == 2
    assert "thesis" in capsys.readouterr().err and (foreign / "chapter1.tex").exists()


def test_flags_win_over_the_config_file_and_bad_files_are_one_message(h5ad, tmp_path, capsys):
    best = tmp_path / "best.yaml"
    best.write_text("train:\n  max_steps: 1\n  learning_rate: 0.002\n")
    run = tmp_path / "run"
    assert (
        cli(
            [
                "pretrain",
                str(h5ad),
                "--out",
                str(run),
                "--config",
                str(best),
                "--epochs",
                "1",
                *TINY,
            ]
        )
        == 0
    )
    history = json.loads((run / "logs" / "log_history.json").read_text())
    assert history[-1]["step"] == 5  # one epoch of 40 cells in batches of 8, not the file's 1 step
    stored = json.loads((run / "config.json").read_text())["train"]
    assert stored["max_steps"] == -1 and stored["learning_rate"] == 0.002
    for text, field in (
        ("train:\n  learning_rate: fast\n", "train.learning_rate"),
        ("train: !!python/object/apply:os.system ['echo planted']\n", "line 1"),
        ("train:\n  epochs: 2\n", "train.epochs"),
    ):
        best.write_text(text)
        out = tmp_path / "never"
        assert cli(["pretrain", str(h5ad), "--out", str(out), "--config", str(best), *TINY]) == 2
        err = capsys.readouterr().err
        assert f"{best}: {field}" in err and "Fix:" in err and "Traceback" not in err
        assert not out.exists()


def test_a_second_writer_is_refused_naming_the_first(h5ad, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time; fh = open(os.path.join(sys.argv[1], '.stformer.lock'), 'a+'); "
            "fcntl.flock(fh.fileno(), fcntl.LOCK_EX); fh.write(f'{os.getpid()}\\n'); fh.flush(); "
            "print('locked', flush=True); time.sleep(60)",
            str(run),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert cli(["pretrain", str(h5ad), "--out", str(run), *TINY]) == 2
        assert f"pid {holder.pid}" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()


def test_kill_and_ctrl_c_then_the_same_command_give_the_uninterrupted_weights(
    h5ad, tmp_path, capsys
):
    config = tmp_path / "run.yaml"
    config.write_text(
        "train:\n  max_steps: 10\n  save_steps: 2\n  logging_steps: 1\n  save_total_limit: 3\n"
    )
    args = ["pretrain", str(h5ad), "--config", str(config), *TINY]
    # every run, interrupted, resumed or not, is a fresh process with one thread count: the
    # weights are compared bit for bit, and global torch state left by earlier tests in this
    # process (thread pools, backend flags) must not enter one side only
    threads = torch.get_num_threads()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    code = (
        f"import sys, torch; torch.set_num_threads({threads}); "
        "from stformer_cli.main import cli; sys.exit(cli(sys.argv[1:]))"
    )
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-c", code, *args, "--out", str(tmp_path / name)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("killed", "interrupted")
    }
    # interrupt each as soon as its checkpoint appears (one loop watching both: waiting for one
    # first let the other finish on a fast machine), then run the uninterrupted reference
    stop = {
        "killed": (tmp_path / "killed" / "checkpoints" / "checkpoint-4", signal.SIGKILL),
        "interrupted": (tmp_path / "interrupted" / "checkpoints" / "checkpoint-2", signal.SIGINT),
    }
    err = ""
    try:
        end = time.monotonic() + 240.0
        while stop:
            for name, (path, sig) in list(stop.items()):
                if path.exists():
                    procs[name].send_signal(sig)
                    del stop[name]
                else:
                    assert procs[name].poll() is None, procs[name].communicate()
            assert time.monotonic() < end, f"{sorted(stop)} did not reach their checkpoint"
            time.sleep(0.005)
        _, err = procs["interrupted"].communicate(timeout=120)
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()

    def run(command):
        done = subprocess.run(
            [sys.executable, "-c", code, *command], env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        return done

    run([*args, "--out", str(tmp_path / "full")])
    assert procs["interrupted"].returncode == 130, err
    assert "interrupted: kept" in err and "checkpoint-" in err
    resume = shlex.split(err.split("Resume with:")[1].strip())
    assert resume[:2] == ["stformer", "pretrain"] and "--overwrite" not in resume
    assert not (tmp_path / "killed" / "model").exists()
    # a kill during a later save leaves a staging folder; an older version left a checkpoint
    # without trainer_state.json: both are skipped
    killed = tmp_path / "killed" / "checkpoints"
    (killed / "checkpoint-10.partial").mkdir()
    (killed / "checkpoint-8").mkdir(exist_ok=True)
    (killed / "checkpoint-8" / "trainer_state.json").unlink(missing_ok=True)
    full = _weights(tmp_path / "full")
    out = run([*args, "--out", str(tmp_path / "killed")])
    assert "resuming from checkpoints/checkpoint-" in out.stdout
    assert "checkpoint-10.partial" in out.stderr and "checkpoint-8 (incomplete" in out.stderr
    assert _same(_weights(tmp_path / "killed"), full)
    assert "resuming from checkpoints/checkpoint-" in run(resume[1:]).stdout
    assert _same(_weights(tmp_path / "interrupted"), full)
    loss = [
        json.loads((tmp_path / r / "logs" / "log_history.json").read_text())[-1]["train_loss"]
        for r in ("full", "killed")
    ]
    assert loss[1] == pytest.approx(loss[0], rel=1e-5)
