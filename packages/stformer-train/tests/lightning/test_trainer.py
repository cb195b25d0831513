import pytest
import pytorch_lightning as pl

from stformer_train import TrainConfig
from stformer_train.early_stopping import PatienceStopping
from stformer_train.lightning import LightningEarlyStopping, pretrain_lightning


class _KillAt(pl.Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            trainer.should_stop = True


def _loss_at(history, step):
    return next(h["loss"] for h in history if h.get("step") == step and "loss" in h)


def test_lightning_resume_continues_the_same_loss_curve(tiny_corpus, tiny, tmp_path):
    # 120 cells / batch 8 = 15 batches per epoch: step 10 is mid-epoch, step 20 in the second epoch
    train = TrainConfig(
        max_steps=20,
        per_device_train_batch_size=8,
        logging_steps=1,
        save_steps=10,
        warmup_steps=2,
        seed=3,
    )
    straight = pretrain_lightning(
        tiny_corpus, tmp_path / "a", model=tiny, train=train, progress=False, accelerator="cpu"
    )
    first = pretrain_lightning(
        tiny_corpus,
        tmp_path / "b",
        model=tiny,
        train=train,
        progress=False,
        callbacks=[_KillAt(10)],
        accelerator="cpu",
    )
    assert first["global_step"] == 10
    resumed = pretrain_lightning(
        tiny_corpus, tmp_path / "b", model=tiny, train=train, progress=False, accelerator="cpu"
    )
    assert resumed["global_step"] == 20
    for step in (11, 15, 20):
        assert _loss_at(resumed["log_history"], step) == pytest.approx(
            _loss_at(straight["log_history"], step), rel=1e-4
        )
    logs = resumed["run"].logs
    assert (logs / "loss_curve.png").stat().st_size > 0 and (logs / "metrics.csv").is_file()
    assert any((logs / "tensorboard").rglob("events.out.tfevents*"))
    assert (resumed["model_dir"] / "config.json").is_file()


def test_lightning_validation_and_early_stopping(tiny_corpus, tiny, tmp_path):
    train = TrainConfig(
        max_steps=40,
        per_device_train_batch_size=8,
        logging_steps=5,
        save_steps=5,
        eval_fraction=0.2,
        early_stopping_patience=1,
        early_stopping_min_delta=10.0,
        learning_rate=1e-3,
    )
    out = pretrain_lightning(
        tiny_corpus, tmp_path / "r", model=tiny, train=train, progress=False, accelerator="cpu"
    )
    evals = [h for h in out["log_history"] if "eval_loss" in h]
    # min_delta 10 never counts as an improvement after the first evaluation: stop at the second
    assert len(evals) == 2 and out["global_step"] == 10
    assert (out["run"].root / "best_model" / "config.json").is_file()


def test_lightning_early_stopping_adapter_state():
    cb = LightningEarlyStopping(PatienceStopping(monitor="val_loss", patience=2))
    cb.core.update(1.0)
    restored = LightningEarlyStopping(PatienceStopping(monitor="val_loss", patience=2))
    restored.load_state_dict(cb.state_dict())
    assert restored.core.best == 1.0 and restored.state_key == "LightningEarlyStopping[val_loss]"


class _CtrlCAt(pl.Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            raise KeyboardInterrupt


def test_lightning_ctrl_c_is_a_keyboard_interrupt_and_a_truncated_ckpt_is_skipped(
    tiny_corpus, tiny, tmp_path
):
    import signal

    from stformer_train.lightning._trainer import lightning_resume_point

    train = TrainConfig(max_steps=4, per_device_train_batch_size=16, save_steps=2, seed=1)
    run = tmp_path / "r"
    with pytest.raises(KeyboardInterrupt):  # Lightning's own handler would sys.exit(1)
        pretrain_lightning(
            tiny_corpus,
            run,
            model=tiny,
            train=train,
            progress=False,
            callbacks=[_CtrlCAt(3)],
            accelerator="cpu",
        )
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    ckpts = run / "checkpoints"
    assert lightning_resume_point(ckpts) == ckpts / "last.ckpt"
    (ckpts / "last.ckpt").write_bytes((ckpts / "last.ckpt").read_bytes()[:100])  # an old kill
    assert lightning_resume_point(ckpts).name.startswith("step")
    resumed = pretrain_lightning(
        tiny_corpus, run, model=tiny, train=train, progress=False, accelerator="cpu"
    )
    assert resumed["global_step"] == 4
