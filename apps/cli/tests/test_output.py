"""What the commands print: one bar, numeric metrics, no third-party noise; trackers; install hints."""

from __future__ import annotations

import re
import sys

import pytest

from stformer_cli._errors import missing_backend_hint
from stformer_cli.main import cli
from stformer_train.progress import MissingBackend, resolve_report_to

CONFIG = """\
model: {intermediate_size: 32}
train: {eval_steps: 2, logging_steps: 2, save_steps: 100, warmup_steps: 0, per_device_train_batch_size: 8}
"""
NOISE = (
    "Setting accelerator",
    "Epoch 0/-2",
    "Epoch 1/-2",
    "pin_memory",
    "litlogger",
    "LOAD REPORT",
    "GPU available",
)


@pytest.fixture(scope="module")
def corpus(make_tiny_corpus):
    return make_tiny_corpus(n_cells=40, n_genes=60, seed=5, model_input_size=16).path


@pytest.mark.parametrize(("engine", "report_to"), [("hf", "none"), ("lightning", "tensorboard")])
def test_tiny_pretrain_prints_numbers_once_and_no_noise(corpus, tmp_path, capfd, engine, report_to):
    (tmp_path / "c.yaml").write_text(CONFIG)
    run = tmp_path / "run"
    args = ["pretrain", str(corpus), "--out", str(run), "--config", str(tmp_path / "c.yaml")]
    args += ["--engine", engine, "--max-steps", "4", "--layers", "1", "--hidden", "16"]
    args += ["--heads", "2", "--eval-fraction", "0.25", "--report-to", report_to, "--no-progress"]
    assert cli(args) == 0
    out = "".join(capfd.readouterr())
    assert not re.search(r"\{'\w*loss': '", out), out  # no dicts of numbers as strings
    for noise in NOISE:
        assert noise not in out, (noise, out)
    assert re.search(r"step 2 +loss \d+\.\d+", out), out  # one numeric line per logging step
    assert re.search(r"step \d+ +(eval|val)_loss \d+\.\d+", out), out  # one line per evaluation
    assert "Writing model shards" not in out and "Loading weights" not in out
    events = list((run / "logs").rglob("events.out.tfevents*"))
    assert bool(events) == (report_to == "tensorboard")


def test_report_to_resolution_and_a_missing_tracker(monkeypatch):
    assert resolve_report_to("none") == []
    assert resolve_report_to("auto") == ["tensorboard"]  # tensorboardX is a dependency
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(MissingBackend) as info:
        resolve_report_to("tensorboard,wandb")
    assert str(info.value) == (
        "--report-to wandb needs wandb: uv pip install wandb  (pip: pip install wandb)"
    )
    with pytest.raises(ValueError, match="unknown tracker 'comet'"):
        resolve_report_to("comet")


def test_deepspeed_without_stformer_dist_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "stformer_dist", None)
    code = cli(["pretrain", str(tmp_path), "--out", str(tmp_path / "r"), "--deepspeed", "zero2"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1, err
    assert "--deepspeed needs stformer-dist: uv sync --package stformer-cli --extra dist" in err
    assert 'pip install "stformer-cli[dist]"' in err


def test_only_optional_backends_get_a_hint():
    assert missing_backend_hint(ModuleNotFoundError("x", name="not_a_backend")) is None
    hint = missing_backend_hint(ModuleNotFoundError("x", name="mlflow.tracking"))
    assert (
        hint == "--report-to mlflow needs mlflow: uv pip install mlflow  (pip: pip install mlflow)"
    )
