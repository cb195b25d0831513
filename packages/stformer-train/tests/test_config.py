import json

import pytest

from stformer_data import InputError
from stformer_train import ModelConfig, TrainConfig
from stformer_train.config import load_config_file


def test_yaml_and_json_sections_round_trip(tmp_path):
    model = ModelConfig(num_layers=2, hidden_size=32, num_heads=2, intermediate_size=64)
    (tmp_path / "c.yaml").write_text(
        "model:\n  num_layers: 2\n  hidden_size: 32\n  num_heads: 2\n"
        "  intermediate_size: 64\ntrain:\n  learning_rate: 0.0005\n"
    )
    data = load_config_file(tmp_path / "c.yaml")
    assert ModelConfig.from_dict(data["model"]) == model
    assert TrainConfig.from_dict(data["train"]).learning_rate == 0.0005
    (tmp_path / "c.json").write_text(json.dumps({"model": model.to_dict()}))
    assert ModelConfig.from_dict(load_config_file(tmp_path / "c.json")["model"]) == model


def test_unknown_section_and_missing_file_are_clear_errors(tmp_path):
    (tmp_path / "bad.yaml").write_text("optimiser:\n  lr: 1\n")
    with pytest.raises(InputError, match="top-level keys.*optimiser"):
        load_config_file(tmp_path / "bad.yaml")
    with pytest.raises(InputError, match="does not exist"):
        load_config_file(tmp_path / "absent.yaml")


def test_merge_config_explicit_wins_and_unknown_fields_name_the_closest():
    from stformer_train import merge_config

    base = TrainConfig(seed=1, learning_rate=0.01)
    merged = merge_config(base, {"seed": 2, "max_steps": 5, "eval_steps": None}, seed=3)
    assert (merged.seed, merged.max_steps, merged.learning_rate) == (3, 5, 0.01)
    assert base.seed == 1  # a copy; configs are frozen
    with pytest.raises(TypeError, match="no field 'learning_rat'.*'learning_rate'"):
        merge_config(base, learning_rat=0.1)
    with pytest.raises(ValueError, match="mlm_probability"):
        merge_config(base, mlm_probability=1.5)  # the merged config is validated


def test_one_default_set_for_stformer_and_the_seed_defaults_at_their_surface(tmp_path):
    import inspect

    from stformer_train import TRAIN_DEFAULTS
    from stformer_train.hf import PretrainML, training_arguments
    from stformer_train.lightning import MLMTrainingPlan

    assert TRAIN_DEFAULTS == TrainConfig()
    assert training_arguments(TrainConfig(), tmp_path).warmup_steps == TRAIN_DEFAULTS.warmup_steps
    plan = inspect.signature(MLMTrainingPlan).parameters
    for name in ("learning_rate", "weight_decay", "warmup_steps", "lr_scheduler_type"):
        assert plan[name].default == getattr(TRAIN_DEFAULTS, name)
    # stFormer's documented API keeps its documented defaults
    assert inspect.signature(PretrainML).parameters["warmup_steps"].default == 10_000
    assert inspect.signature(PretrainML).parameters["batch_size"].default == 12
