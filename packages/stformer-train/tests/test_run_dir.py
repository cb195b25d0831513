"""RunDir: refusal of a different run before any write, --overwrite of stformer runs only, the
writer lock, atomic checkpoints and a resume that skips incomplete ones, with the whole-run loss."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest
from safetensors.torch import load_file

from stformer_data import InputError
from stformer_train import TrainConfig
from stformer_train._lock import RunLockedError
from stformer_train.config import apply_overrides, load_config_file
from stformer_train.hf import last_checkpoint, pretrain_mlm
from stformer_train.run_dir import (
    RUN_MANIFEST,
    RunConflictError,
    RunDir,
    config_differences,
    scan_checkpoints,
)

CONFIG = {"engine": "hf", "model": {"hidden_size": 32, "num_layers": 2}, "train": {"seed": 1}}


def _open(root, config=CONFIG, **kw):
    with RunDir.open(root, config, **kw) as run:
        return run


def test_a_different_run_is_refused_before_anything_is_written(tmp_path):
    run = _open(tmp_path / "r")
    assert (run.root / RUN_MANIFEST).is_file()
    before = run.config_path.read_text()
    other = {**CONFIG, "model": {"hidden_size": 64, "num_layers": 2}}
    with pytest.raises(RunConflictError) as exc:
        _open(run.root, other)
    message = str(exc.value)
    assert "model.hidden_size: 32 there, 64 now" in message
    assert "--overwrite" in message and "--resume" in message
    assert run.config_path.read_text() == before
    # the same config, or one changing only how long it runs, resumes
    longer = {**CONFIG, "train": {"seed": 1, "max_steps": 99}}
    assert _open(run.root, longer).read_config()["train"]["max_steps"] == 99
    assert config_differences(CONFIG, longer) == []


def test_overwrite_removes_only_what_stformer_wrote(tmp_path):
    run = _open(tmp_path / "r")
    (run.checkpoints / "checkpoint-1").mkdir()
    (run.root / "notes.txt").write_text("mine")
    other = {**CONFIG, "model": {"hidden_size": 64, "num_layers": 2}}
    run = _open(run.root, other, overwrite=True)
    assert not (run.checkpoints / "checkpoint-1").exists()
    assert (run.root / "notes.txt").read_text() == "mine"
    assert run.read_config()["model"]["hidden_size"] == 64


def test_a_foreign_folder_is_refused_even_with_overwrite(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes(b"x")
    with pytest.raises(RunConflictError, match="not a stformer run"):
        _open(folder, overwrite=True)
    (folder / "config.json").write_text("{}")  # someone else's
    with pytest.raises(RunConflictError, match="holds config.json"):
        _open(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["cat.jpg", "config.json"]
    (folder / "config.json").unlink()
    run = _open(folder)  # beside the user's files (e.g. a demo folder), nothing collides
    assert (folder / "cat.jpg").exists() and run.is_stformer_run()
    with pytest.raises(RunConflictError, match="no stformer run to resume"):
        _open(tmp_path / "new", resume=True)


def test_a_second_writer_is_refused_naming_the_first_process(tmp_path):
    run = _open(tmp_path / "r")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import fcntl, os, sys, time
                fh = open({str(run.root / ".stformer.lock")!r}, "a+")
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
                fh.truncate(0); fh.write(f"{{os.getpid()}}\\n"); fh.flush()
                print("locked", flush=True)
                time.sleep(60)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=f"pid {holder.pid}"):
            _open(run.root)
    finally:
        holder.kill()
        holder.wait()
    _open(run.root)  # the lock dies with its process (also on kill -9)
    with RunDir.open(run.root, CONFIG), RunDir.open(run.root, CONFIG):
        pass  # re-entrant within one process


def test_incomplete_checkpoints_are_skipped_and_removed(tmp_path):
    ckpts = tmp_path / "checkpoints"
    good = ckpts / "checkpoint-2"
    good.mkdir(parents=True)
    (good / "trainer_state.json").write_text(json.dumps({"global_step": 2, "max_steps": 6}))
    (good / "model.safetensors").write_bytes(b"x")
    (ckpts / "checkpoint-4").mkdir()  # a kill by an older version: no trainer_state.json
    (ckpts / "checkpoint-6.partial").mkdir()  # a kill during a save
    assert last_checkpoint(ckpts) == good  # skips without removing
    point, skipped = scan_checkpoints(ckpts)
    assert (
        point.path == good and point.describe(tmp_path) == "checkpoints/checkpoint-2 (step 2 of 6)"
    )
    assert [s.split()[0] for s in skipped] == ["checkpoint-6.partial", "checkpoint-4"]
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint-2"]


def test_resume_after_an_interrupted_save_gives_the_same_weights_and_whole_run_loss(
    tiny_corpus, tiny, tmp_path
):
    train = TrainConfig(
        max_steps=6,
        save_steps=2,
        logging_steps=1,
        per_device_train_batch_size=16,
        seed=3,
        save_total_limit=5,
    )
    full = pretrain_mlm(tiny_corpus, tmp_path / "full", model=tiny, train=train, progress=False)
    assert sorted(p.name for p in full.run.checkpoints.iterdir()) == [
        "checkpoint-2",
        "checkpoint-4",
        "checkpoint-6",
    ]  # no .partial staging folder left
    # an interrupted run: its checkpoints up to step 2, a half-written save of step 4
    cut = tmp_path / "cut"
    shutil.copytree(full.run.root, cut, ignore=shutil.ignore_patterns(".stformer.lock"))
    for name in ("checkpoint-4", "checkpoint-6"):
        (cut / "checkpoints" / name).rename(cut / "checkpoints" / f"{name}.partial")
    (cut / "checkpoints" / "checkpoint-4.partial" / "trainer_state.json").unlink()
    (cut / "model").rename(cut / "old-model")
    resumed = pretrain_mlm(tiny_corpus, cut, model=tiny, train=train, progress=False)
    a = load_file(full.model_dir / "model.safetensors")
    b = load_file(resumed.model_dir / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert resumed.train_loss == pytest.approx(full.train_loss, rel=1e-5)
    assert resumed.log_history[-1]["train_loss"] == pytest.approx(full.train_loss, rel=1e-5)


def test_flags_win_over_a_config_file(tmp_path):
    path = tmp_path / "best.yaml"
    path.write_text(
        "model:\n  hidden_size: 64\n  intermediate_size: 128\ntrain:\n  max_steps: 10\n"
    )
    sections = apply_overrides(
        load_config_file(path),
        {
            "train": {"num_train_epochs": 2, "max_steps": None, "seed": None},
            "model": {"hidden_size": 32},
        },
    )
    assert sections["train"] == {"max_steps": -1, "num_train_epochs": 2}
    assert sections["model"] == {"hidden_size": 32}
    assert TrainConfig.from_dict(sections["train"]).max_steps == -1


@pytest.mark.parametrize(
    ("text", "field", "fix"),
    [
        ("train:\n  learning_rate: fast\n", "train.learning_rate", "a number"),
        ("train:\n  learning_rat: 0.1\n", "train.learning_rat", "did you mean 'learning_rate'"),
        ("model:\n  num_layers: 2.5\n", "model.num_layers", "an integer"),
        ("train: !!python/object/apply:os.system ['echo hi']\n", "line 1", "!!python"),
        ("train: [1\n", "line", "YAML syntax"),
        ("model: 3\n", "model:", "indented"),
    ],
)
def test_bad_config_files_are_one_message_naming_file_and_field(tmp_path, text, field, fix):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as exc:
        load_config_file(path)
    assert str(exc.value).startswith(f"{path}: {field}") and fix in str(exc.value)


def test_config_values_are_read_as_their_fields_types(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  learning_rate: 1e-3\n  warmup_steps: 10\n  eval_steps: null\n")
    train = load_config_file(path)["train"]
    assert train == {"learning_rate": 0.001, "warmup_steps": 10.0, "eval_steps": None}


def test_from_dict_checks_the_types_of_its_fields():
    assert TrainConfig.from_dict({"learning_rate": "2e-4"}).learning_rate == 0.0002
    with pytest.raises(ValueError, match="TrainConfig.learning_rate must be a number, got 'fast'"):
        TrainConfig.from_dict({"learning_rate": "fast"})
    with pytest.raises(ValueError, match="TrainConfig.max_steps must be an integer"):
        TrainConfig.from_dict({"max_steps": True})
