import json
import os

import pytest

import stformer_data as sd
from stformer_dist import (
    DEEPSPEED_OPTIMIZERS,
    DEEPSPEED_SCHEDULERS,
    DeepSpeedConfig,
    PretrainML,
    build_deepspeed,
    check_deepspeed_optimizer,
    check_deepspeed_scheduler,
    choose_closest,
    deepspeed_overrides,
    deepspeed_training_arguments,
    ensure_distributed_env,
    resolve_deepspeed,
)
from stformer_train import TrainConfig

DIST_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def no_launcher():
    """No launcher variables during the test; afterwards the environment, Accelerate's state and any
    process group are as before, so later tests in this process are unaffected."""
    import torch
    from accelerate.state import AcceleratorState

    saved = {k: os.environ.pop(k) for k in DIST_ENV if k in os.environ}
    yield
    for k in DIST_ENV:
        os.environ.pop(k, None)
    os.environ.update(saved)
    AcceleratorState._reset_state(reset_partial_state=True)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def test_choose_closest_exact_close_unsupported_and_none(caplog):
    assert choose_closest("ADAMW", ["Adam", "AdamW"]) == "AdamW"
    assert choose_closest("adam_w", ["Adam", "AdamW", "Lamb"]) == "AdamW"
    assert "closest" in caplog.text
    with pytest.raises(ValueError, match="'OneBitAdam' is not supported"):
        choose_closest("onebitadam", ["Adam"], unsupported=["OneBitAdam"])
    with pytest.raises(ValueError, match="closest to 'OneBitAdam'"):
        choose_closest("one_bit_adam", ["Adam", "Lamb"], unsupported=["OneBitAdam"])
    with pytest.raises(ValueError, match="matches none of"):
        choose_closest("sgd-nesterov", ["Adam", "Lamb"])
    with pytest.raises(ValueError, match="cutoff"):
        choose_closest("adam", ["Adam"], cutoff=2)


def test_optimizer_and_scheduler_names_are_deepspeeds():
    from deepspeed.runtime.config import DEEPSPEED_OPTIMIZERS as ds_optimizers
    from deepspeed.runtime.lr_schedules import VALID_LR_SCHEDULES

    assert sorted(n.lower() for n in DEEPSPEED_OPTIMIZERS) == sorted(ds_optimizers)
    assert sorted(DEEPSPEED_SCHEDULERS) == sorted(VALID_LR_SCHEDULES)
    assert check_deepspeed_optimizer("adamw") == "AdamW"
    assert check_deepspeed_optimizer("lamb") == "Lamb"
    assert check_deepspeed_scheduler("warmup_decay_lr") == "WarmupDecayLR"
    with pytest.raises(ValueError, match="not supported"):
        check_deepspeed_optimizer("ZeroOneAdam")


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_config_per_stage(stage):
    cfg = DeepSpeedConfig(stage=stage).to_dict()
    assert cfg["zero_optimization"]["stage"] == stage
    assert cfg["gradient_accumulation_steps"] == cfg["gradient_clipping"] == "auto"
    assert cfg["bf16"] == cfg["fp16"] == {"enabled": "auto"}
    assert cfg["optimizer"] == {
        "type": "AdamW",
        "params": {
            "lr": "auto",
            "betas": "auto",
            "eps": "auto",
            "weight_decay": "auto",
            "torch_adam": True,
            "adam_w_mode": True,
        },
    }
    assert ("stage3_prefetch_bucket_size" in cfg["zero_optimization"]) == (stage == 3)
    json.dumps(cfg)  # a DeepSpeed JSON file


def test_config_offload_precision_scheduler_and_validation():
    off = DeepSpeedConfig.preset("zero3-offload").to_dict()
    assert off["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert off["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert off["zero_force_ds_cpu_optimizer"] is False
    bf = DeepSpeedConfig(precision="bf16", scheduler="warmupdecaylr", optimizer="lamb").to_dict()
    assert bf["bf16"] == {"enabled": True} and bf["fp16"] == {"enabled": False}
    assert (
        bf["scheduler"]["type"] == "WarmupDecayLR"
        and bf["scheduler"]["params"]["total_num_steps"] == "auto"
    )
    assert "torch_adam" not in bf["optimizer"]["params"]
    assert "optimizer" not in DeepSpeedConfig(optimizer=None).to_dict()
    for kwargs, field in [
        ({"stage": 4}, "stage"),
        ({"offload_param": True}, "offload_param"),
        ({"stage": 0, "offload_optimizer": True}, "offload_optimizer"),
        ({"precision": "fp8"}, "precision"),
        ({"scheduler": "OneCycle"}, "scheduler_params"),
        ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps"),
        ({"gradient_clipping": -1.0}, "gradient_clipping"),
    ]:
        with pytest.raises(ValueError, match=field):
            DeepSpeedConfig(**kwargs)


def test_resolve_deepspeed_specs(tmp_path):
    assert resolve_deepspeed(True)["zero_optimization"]["stage"] == 2
    assert resolve_deepspeed("ZERO3")["zero_optimization"]["stage"] == 3
    assert "offload_optimizer" in resolve_deepspeed("zero2-offload")["zero_optimization"]
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 1}, "train_batch_size": "auto"}))
    assert resolve_deepspeed(path) == {"zero_optimization": {"stage": 1}}
    assert resolve_deepspeed(DeepSpeedConfig(stage=1))["zero_optimization"]["stage"] == 1
    with pytest.raises(sd.InputError, match="does not exist"):
        resolve_deepspeed(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(sd.InputError, match="not valid JSON"):
        resolve_deepspeed(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="zero2"):
        resolve_deepspeed("zero9")
    with pytest.raises(ValueError, match="off"):
        resolve_deepspeed(False)


def test_build_deepspeed_fills_auto_from_training_arguments(tmp_path, no_launcher):
    args = deepspeed_training_arguments(
        tmp_path,
        deepspeed="zero2",
        train=TrainConfig(per_device_train_batch_size=4, learning_rate=3e-4),
        gradient_accumulation_steps=3,
        max_grad_norm=0.5,
    )
    ds = args.hf_deepspeed_config.config
    assert (
        ds["train_micro_batch_size_per_gpu"],
        ds["gradient_accumulation_steps"],
        ds["gradient_clipping"],
    ) == (4, 3, 0.5)
    assert (
        ds["optimizer"]["params"]["lr"] == 3e-4 and "train_batch_size" not in ds
    )  # DeepSpeed derives it
    assert args.gradient_accumulation_steps == 3
    assert (
        args.distributed_state.distributed_type == "DEEPSPEED"
    )  # on CPU too (gloo), not one lone process
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        deepspeed_training_arguments(
            tmp_path,
            deepspeed=DeepSpeedConfig(gradient_accumulation_steps=2),
            gradient_accumulation_steps=3,
        )


def test_ensure_distributed_env_keeps_a_launchers_values(no_launcher, monkeypatch):
    env = ensure_distributed_env()
    assert (env["RANK"], env["WORLD_SIZE"], env["MASTER_ADDR"]) == ("0", "1", "127.0.0.1")
    assert int(env["MASTER_PORT"]) > 0
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_PORT", "29511")
    monkeypatch.delenv("LOCAL_RANK")
    assert ensure_distributed_env() == {
        "RANK": "1",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29511",
    }


def test_the_documented_names_are_stformer_train_hfs():
    import stformer_train.hf as hf

    assert PretrainML is hf.PretrainML and build_deepspeed is hf.build_deepspeed
    assert choose_closest is hf.choose_closest


def test_pretrain_ml_deepspeed_true_builds_the_deepspeed_arguments(tmp_path, no_launcher):
    ml = PretrainML("d", "t.pkl", "l.pkl", "spot", str(tmp_path), deepspeed=True, fp16=False)
    args = ml.training_arguments(tmp_path / "ck", tmp_path / "logs", 96)
    ds = args.hf_deepspeed_config.config
    assert ds["zero_optimization"]["stage"] == 2
    assert ds["optimizer"]["type"] == "AdamW" and ds["scheduler"]["type"] == "WarmupDecayLR"
    assert ds["train_micro_batch_size_per_gpu"] == 12  # PretrainML's documented batch_size


@pytest.mark.slow
def test_zero3_in_one_process_trains_and_saves_gathered_weights(
    tiny_corpus, tiny, tmp_path, no_launcher
):
    from safetensors.torch import load_file

    from stformer_train.hf import pretrain_mlm

    train = TrainConfig(
        max_steps=4, save_steps=4, logging_steps=2, per_device_train_batch_size=8, warmup_steps=0
    )
    result = pretrain_mlm(
        tiny_corpus,
        tmp_path / "run",
        model=tiny,
        train=train,
        progress=False,
        **deepspeed_overrides("zero3"),
    )
    assert result.global_step == 4
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-4" / "global_step4").is_dir()
    weights = load_file(tmp_path / "run" / "model" / "model.safetensors")
    # ZeRO-3 keeps only placeholders in the module; the saved model has the full, gathered tensors
    assert weights["bert.embeddings.word_embeddings.weight"].shape == (
        len(tiny_corpus.vocab),
        tiny.hidden_size,
    )
