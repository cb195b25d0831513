from __future__ import annotations

from types import SimpleNamespace

import pytest

from stformer_train import ModelConfig, TrainConfig
from stformer_tune import EvalLossReporter, apply_params
from stformer_tune._trial import require_eval_split


def test_apply_params_routes_each_name_to_its_config():
    model, train = apply_params(
        ModelConfig(),
        TrainConfig(eval_fraction=0.1),
        {"learning_rate": 3e-4, "num_layers": 2, "hidden_size": 512, "num_heads": 8},
    )
    assert train.learning_rate == 3e-4 and train.eval_fraction == 0.1
    assert (model.num_layers, model.hidden_size, model.num_heads) == (2, 512, 8)
    assert model.intermediate_size == 1024  # widened with hidden_size when not searched itself
    with pytest.raises(
        ValueError, match="hidden_size \\(32\\) must be divisible by num_heads \\(3\\)"
    ):
        apply_params(
            ModelConfig(hidden_size=32, num_heads=2, intermediate_size=64),
            TrainConfig(),
            {"num_heads": 3},
        )
    with pytest.raises(ValueError, match="'lr' is not a TrainConfig or ModelConfig field"):
        apply_params(ModelConfig(), TrainConfig(), {"lr": 1.0})


def test_the_objective_requires_a_held_out_split():
    with pytest.raises(ValueError, match="set train.eval_fraction > 0"):
        require_eval_split(TrainConfig())
    require_eval_split(TrainConfig(eval_fraction=0.1))


def test_reporter_evaluates_at_the_last_step_and_reports_each_evaluation_once():
    seen = []
    reporter = EvalLossReporter(lambda step, loss, final: seen.append((step, loss, final)))
    control = SimpleNamespace(should_evaluate=False)
    reporter.on_step_end(None, SimpleNamespace(global_step=3, max_steps=6), control)
    assert control.should_evaluate is False
    reporter.on_step_end(None, SimpleNamespace(global_step=6, max_steps=6), control)
    assert control.should_evaluate is True
    reporter.on_evaluate(
        None, SimpleNamespace(global_step=4, max_steps=6), control, metrics={"eval_loss": 4.5}
    )
    reporter.on_evaluate(
        None, SimpleNamespace(global_step=6, max_steps=6), control, metrics={"eval_loss": 4.2}
    )
    reporter.on_evaluate(
        None, SimpleNamespace(global_step=6, max_steps=6), control, metrics={"eval_loss": 4.2}
    )
    reporter.on_evaluate(
        None, SimpleNamespace(global_step=6, max_steps=6), control, metrics={"loss": 1.0}
    )
    assert seen == [(4, 4.5, False), (6, 4.2, True)]
    assert reporter.losses == [(4, 4.5), (6, 4.2)]
