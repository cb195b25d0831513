"""The example search space, the default space, --layers/--hidden and what best.yaml holds."""

from __future__ import annotations

from pathlib import Path

import yaml

from stformer_train import TrainConfig, merge_config
from stformer_tune import DEFAULT_SPACE, default_search_space, load_search_space
from stformer_tune_app.main import cli

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "space.yaml"


def test_the_example_space_loads_and_the_default_space_covers_training_and_model_size():
    example = load_search_space(EXAMPLE)
    assert {"learning_rate", "per_device_train_batch_size", "num_layers"} <= set(example.names)
    assert example["learning_rate"].type == "loguniform"
    default = default_search_space()
    assert default.names == tuple(DEFAULT_SPACE)
    assert {"learning_rate", "warmup_steps", "weight_decay", "hidden_size"} <= set(default.names)
    assert "num_layers" not in default.without(["num_layers"]).names


def test_best_yaml_holds_the_base_config_and_the_searched_values_not_the_budget(
    tune_inputs, tmp_path, capsys
):
    corpus, base, _ = tune_inputs
    out = tmp_path / "search"
    args = [str(corpus), "--out", str(out), "--config", str(base), "--space", str(EXAMPLE)]
    args += ["--layers", "1", "--hidden", "32", "--heads", "2", "--trials", "1"]
    assert cli([*args, "--max-steps", "2", "--report-to", "none"]) == 0
    assert "not searched (fixed on the command line): num_layers, hidden_size" in (
        capsys.readouterr().out
    )
    best = yaml.safe_load((out / "best.yaml").read_text())
    train, model = best["train"], best["model"]
    assert "max_steps" not in train and "eval_steps" not in train  # the trial budget
    assert train["logging_steps"] == 2 and train["save_steps"] == 100  # from base.yaml
    assert model["num_layers"] == 1 and model["hidden_size"] == 32 and model["num_heads"] == 2
    params = yaml.safe_load((out / "best.yaml").read_text().splitlines()[1].split(":", 1)[1])
    assert train["learning_rate"] == params["learning_rate"]
    # `stformer pretrain --config best.yaml --epochs 2` then trains two epochs, not two steps
    resolved = merge_config(TrainConfig.from_dict(train), num_train_epochs=2.0)
    assert resolved.max_steps == -1 and resolved.num_train_epochs == 2.0
