"""Ray Train: the Lightning runner (with a worker killed mid-run) and the HF path, on 2 local CPU workers."""

from __future__ import annotations

import json
import os
import sys
import time

import pytest
import pytorch_lightning as pl

import stformer_data as sd
from stformer_dist import RayPretrainRunner, ray_pretrain_mlm, scaling_config
from stformer_train import TrainConfig


class KillOnce(pl.Callback):
    """Kill world rank 1 (``os._exit``, like a lost node) at ``step``, on the first attempt only."""

    def __init__(self, step: int, marker: str):
        self.step, self.marker = step, marker

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if (
            trainer.global_step == self.step
            and trainer.global_rank == 1
            and not os.path.exists(self.marker)
        ):
            open(self.marker, "w").close()
            # the Ray controller registers reported checkpoints when it polls the workers (every 2 s);
            # a node lost later than that resumes from the last checkpoint
            time.sleep(8)
            os._exit(1)


def _by_value():
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(
        sys.modules[__name__]
    )  # the workers cannot import this test module


def test_scaling_config_falls_back_to_cpu_with_a_warning(local_ray):
    with pytest.warns(RuntimeWarning, match="no GPU"):
        cfg = scaling_config(2, is_gpu=True)
    assert (cfg.num_workers, cfg.use_gpu, cfg.resources_per_worker) == (2, False, {"CPU": 1})
    assert scaling_config(None, is_gpu=False, resources_per_worker={"CPU": 2}).num_workers == 1
    with pytest.raises(ValueError, match="num_workers"):
        scaling_config(0, is_gpu=False)


def test_runner_rejects_bad_inputs(tiny_corpus, tiny, tmp_path):
    runner = RayPretrainRunner(vocab=tiny_corpus.vocab, medians={}, model=tiny, model_input_size=48)
    with pytest.raises(sd.InputError, match="does not exist"):
        runner.train([tmp_path / "missing.h5ad"], is_gpu=False)
    with pytest.raises(ValueError, match="model_input_size"):
        RayPretrainRunner(vocab=tiny_corpus.vocab, medians={}, model=tiny, model_input_size=4096)


@pytest.mark.slow
@pytest.mark.distributed
def test_lightning_runner_survives_a_killed_worker(
    local_ray, tiny_h5ad, tiny_corpus, tiny, tmp_path
):
    _by_value()
    medians = json.loads((tiny_corpus.path / "gene_medians.json").read_text())
    runner = RayPretrainRunner(
        vocab=tiny_corpus.vocab,
        medians=medians,
        model=tiny,
        model_input_size=48,
        learning_rate=5e-3,
    )
    marker = tmp_path / "killed"
    result = runner.train(
        [tiny_h5ad],
        batch_size=16,
        val_size=0.1,
        max_steps=12,
        num_workers=2,
        is_gpu=False,
        result_storage_path=tmp_path / "ray",
        name="ft",
        checkpoint_every_n_steps=4,
        max_failures=1,
        callbacks=[KillOnce(6, str(marker))],
    )
    assert marker.exists()  # a worker really died at step 6
    assert result.error is None
    assert result.metrics["step"] == 12  # the run finished with the right number of steps
    assert (
        result.metrics["resumed_from_step"] == 4
    )  # ... after restarting from the step-4 checkpoint
    with result.checkpoint.as_directory() as folder:
        import torch

        state = torch.load(
            os.path.join(folder, "checkpoint.ckpt"), weights_only=False, map_location="cpu"
        )
    assert state["global_step"] == 12


@pytest.mark.slow
@pytest.mark.distributed
def test_hf_pretrainer_on_ray(local_ray, tiny_corpus, tiny, tmp_path):
    run = tmp_path / "run"
    train = TrainConfig(
        max_steps=8,
        save_steps=4,
        logging_steps=2,
        per_device_train_batch_size=8,
        learning_rate=5e-3,
        warmup_steps=0,
    )
    result = ray_pretrain_mlm(
        tiny_corpus.path,
        run,
        model=tiny,
        train=train,
        num_workers=2,
        is_gpu=False,
        storage_path=tmp_path / "ray",
        name="hf",
    )
    assert result.error is None and result.checkpoint is not None
    state = json.loads((run / "checkpoints" / "checkpoint-8" / "trainer_state.json").read_text())
    assert state["global_step"] == 8
    # 2 workers x 8 cells per step: the epoch advances twice as fast as on one process
    n_train = len(tiny_corpus.dataset)
    assert state["epoch"] == pytest.approx(8 / -(-n_train // 16), rel=0.05)
    assert (run / "model" / "model.safetensors").is_file()


class _CapturedTrainer:
    """Stands in for Ray's ``TorchTrainer``: keeps the worker function and its config."""

    seen: list = []

    def __init__(self, loop, *, train_loop_config, scaling_config, run_config):
        type(self).seen.append((loop, train_loop_config))

    def fit(self):
        return None


def _capture_jobs(monkeypatch):
    import ray.train.torch

    import stformer_dist._ray as ray_mod

    class _Scaling:
        use_gpu, resources_per_worker = False, {"CPU": 1}

    _CapturedTrainer.seen = []
    monkeypatch.setattr(ray_mod, "connect", lambda *a, **k: None)
    monkeypatch.setattr(ray_mod, "scaling_config", lambda *a, **k: _Scaling())
    monkeypatch.setattr(ray.train.torch, "TorchTrainer", _CapturedTrainer)
    return _CapturedTrainer.seen


def test_ray_runners_pass_the_configs_whole(monkeypatch, tiny_h5ad, tiny_corpus, tiny, tmp_path):
    from stformer_train import assemble, merge_config

    seen = _capture_jobs(monkeypatch)
    medians = sd.compute_medians_exact([tiny_h5ad])
    runner = RayPretrainRunner(
        vocab=tiny_corpus.vocab, medians=medians, model=tiny, model_input_size=48, warmup_steps=3
    )
    runner.train(
        [tiny_h5ad],
        batch_size=16,
        max_steps=12,
        checkpoint_every_n_steps=4,
        random_seed=7,
        result_storage_path=tmp_path / "ray",
    )
    _, job = seen[-1]
    assert job.model is tiny
    assert job.train == merge_config(
        TrainConfig(warmup_steps=3, mixed_precision="no"),
        per_device_train_batch_size=16,
        max_steps=12,
        save_steps=4,
        seed=7,
    )
    # the worker assembles from these configs exactly what the Lightning path would
    worker = assemble(job.data.vocab, job.model, job.train, monitor="val_loss")
    local = assemble(tiny_corpus.vocab, tiny, job.train, monitor="val_loss")
    assert worker.collator == local.collator and worker.precision is local.precision
    assert all(
        (a == b).all()
        for a, b in zip(
            worker.model.state_dict().values(), local.model.state_dict().values(), strict=True
        )
    )

    train = TrainConfig(max_steps=8, seed=2)
    ray_pretrain_mlm(
        tiny_corpus.path, tmp_path / "run", model=tiny, train=train, storage_path=tmp_path / "r2"
    )
    _, hf_job = seen[-1]
    assert hf_job["model"] is tiny and hf_job["train"] is train
