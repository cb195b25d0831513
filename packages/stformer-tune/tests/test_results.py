from __future__ import annotations

import json

import pytest
import yaml

from stformer_train import ModelConfig, TrainConfig
from stformer_tune import SearchSpace, TrialRecord, best_trial, write_results

SPACE = SearchSpace.from_dict(
    {
        "learning_rate": {"type": "loguniform", "low": 1e-5, "high": 1e-2},
        "per_device_train_batch_size": {"type": "categorical", "values": [4, 8]},
        "num_layers": {"type": "int", "low": 1, "high": 3},
    }
)


def _trials():
    return [
        TrialRecord(
            number=0,
            state="COMPLETE",
            eval_loss=4.2,
            params={"learning_rate": 1e-3, "per_device_train_batch_size": 4, "num_layers": 2},
            steps=6,
            intermediate=[(2, 4.5), (6, 4.2)],
        ),
        # a pruned trial with a lower loss at its last evaluation is not a candidate
        TrialRecord(
            number=1,
            state="PRUNED",
            eval_loss=3.9,
            params={"learning_rate": 1e-2, "per_device_train_batch_size": 8, "num_layers": 1},
            steps=2,
            intermediate=[(2, 3.9)],
        ),
        TrialRecord(
            number=2,
            state="COMPLETE",
            eval_loss=4.1,
            params={"learning_rate": 3e-4, "per_device_train_batch_size": 8, "num_layers": 3},
            steps=6,
        ),
        TrialRecord(
            number=3,
            state="FAIL",
            eval_loss=None,
            params={"learning_rate": 1e-4, "per_device_train_batch_size": 4, "num_layers": 1},
        ),
    ]


def test_best_trial_is_the_lowest_final_eval_loss_among_complete_trials():
    assert best_trial(_trials()).number == 2
    with pytest.raises(RuntimeError, match="no trial completed"):
        best_trial([t for t in _trials() if t.state != "COMPLETE"])


def test_write_results_gives_a_config_the_pretrain_command_reads(tmp_path):
    model = ModelConfig(
        num_layers=2, hidden_size=32, num_heads=2, intermediate_size=64, max_position_embeddings=64
    )
    train = TrainConfig(max_steps=6, eval_fraction=0.2, eval_steps=2)
    result = write_results(_trials(), SPACE, model, train, tmp_path, backend="optuna")
    assert result.best.number == 2 and result.best_params["num_layers"] == 3
    best = yaml.safe_load(result.best_config.read_text())
    assert best == json.loads(result.best_config_json.read_text())
    assert ModelConfig.from_dict(best["model"]).num_layers == 3
    loaded = TrainConfig.from_dict(best["train"])
    assert (loaded.learning_rate, loaded.per_device_train_batch_size) == (3e-4, 8)
    assert loaded.eval_fraction == 0.2 and loaded.max_steps == -1  # the budget is no result
    assert "max_steps" not in best["train"] and "eval_steps" not in best["train"]
    assert result.best_config.read_text().startswith(
        "# best trial 2 of a stformer-tune search (optuna)"
    )
    lines = result.trials_csv.read_text().splitlines()
    assert (
        lines[0]
        == "number,state,eval_loss,steps,duration_s,learning_rate,per_device_train_batch_size,num_layers"
    )
    assert lines[4].startswith("3,FAIL,,")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (
        summary["states"] == {"COMPLETE": 2, "PRUNED": 1, "FAIL": 1}
        and summary["best_eval_loss"] == 4.1
    )
    assert result.plot.read_bytes()[:4] == b"\x89PNG"
