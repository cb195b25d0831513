from __future__ import annotations

import json

import optuna
import pytest

from stformer_data import InputError
from stformer_tune import SEARCHABLE, SearchSpace, load_search_space


def test_valid_space_keeps_order_and_maps_to_optuna_distributions():
    space = SearchSpace.from_dict(
        {
            "learning_rate": {"type": "loguniform", "low": 1e-5, "high": 1e-3},
            "weight_decay": {"type": "uniform", "low": 0.0, "high": 0.1},
            "warmup_steps": {"type": "int", "low": 0, "high": 20},
            "per_device_train_batch_size": {"type": "categorical", "values": [4, 8, 16]},
            "num_layers": {
                "type": "categorical",
                "choices": [2, 4],
            },  # Optuna's word is accepted too
        }
    )
    assert space.names == (
        "learning_rate",
        "weight_decay",
        "warmup_steps",
        "per_device_train_batch_size",
        "num_layers",
    )
    dists = space.distributions()
    assert dists["learning_rate"] == optuna.distributions.FloatDistribution(1e-5, 1e-3, log=True)
    assert dists["weight_decay"] == optuna.distributions.FloatDistribution(0.0, 0.1)
    assert dists["warmup_steps"] == optuna.distributions.IntDistribution(0, 20)
    assert dists["per_device_train_batch_size"].choices == (4, 8, 16)
    assert SearchSpace.from_dict(space.to_dict()) == space


def test_suggest_draws_inside_the_bounds():
    space = SearchSpace.from_dict(
        {
            "learning_rate": {"type": "loguniform", "low": 1e-5, "high": 1e-3},
            "warmup_steps": {"type": "int", "low": 2, "high": 5},
        }
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        values = {p.name: p.suggest(trial) for p in space.params}
        assert 1e-5 <= values["learning_rate"] <= 1e-3
        assert isinstance(values["warmup_steps"], int) and 2 <= values["warmup_steps"] <= 5
        study.tell(trial, 0.0)


@pytest.mark.parametrize(
    ("space", "message"),
    [
        (
            {"learning_rate": {"type": "normal", "low": 0, "high": 1}},
            "'learning_rate': unknown type 'normal'",
        ),
        (
            {"learning_rate": {"type": "uniform", "low": 1e-3, "high": 1e-3}},
            "'learning_rate': 'low' (0.001) must be < 'high'",
        ),
        (
            {"warmup_steps": {"type": "int", "low": 10, "high": 2}},
            "'warmup_steps': 'low' (10) must be < 'high'",
        ),
        (
            {"per_device_train_batch_size": {"type": "categorical", "values": []}},
            "'per_device_train_batch_size': categorical needs a non-empty",
        ),
        ({"lr": {"type": "uniform", "low": 0, "high": 1}}, "'lr': unknown hyperparameter"),
        (
            {"eval_fraction": {"type": "uniform", "low": 0.1, "high": 0.2}},
            "'eval_fraction': unknown hyperparameter, it is not searched",
        ),
        (
            {"learning_rate": {"type": "loguniform", "low": 0.0, "high": 1e-3}},
            "'learning_rate': a log scale needs 'low' > 0",
        ),
        ({"learning_rate": {"low": 1e-5, "high": 1e-3}}, "'learning_rate': missing 'type'"),
        (
            {"learning_rate": {"type": "uniform", "low": 1e-5, "high": 1e-3, "step": 2}},
            "'learning_rate': unknown key(s) ['step']",
        ),
        (
            {"learning_rate": {"type": "uniform", "low": "a", "high": 1e-3}},
            "'learning_rate': 'low' must be a finite number",
        ),
        (
            {"warmup_steps": {"type": "int", "low": 0.5, "high": 3}},
            "'warmup_steps': type 'int' needs integer bounds",
        ),
        ({"learning_rate": 0.001}, "'learning_rate': must be a mapping"),
        ({}, "search space is empty"),
    ],
)
def test_bad_spaces_are_rejected_naming_the_key(space, message):
    with pytest.raises(ValueError) as info:
        SearchSpace.from_dict(space)
    assert message in str(info.value)


def test_searchable_names_are_config_fields_without_the_objective():
    assert {
        "learning_rate",
        "per_device_train_batch_size",
        "num_layers",
        "hidden_size",
    } <= SEARCHABLE
    assert "eval_fraction" not in SEARCHABLE and "seed" not in SEARCHABLE


def test_load_search_space_reads_yaml_and_json(tmp_path):
    yml = tmp_path / "space.yaml"
    yml.write_text("learning_rate:\n  type: loguniform\n  low: 1.0e-5\n  high: 1.0e-3\n")
    assert load_search_space(yml).names == ("learning_rate",)
    js = tmp_path / "space.json"
    js.write_text(
        json.dumps({"search_space": {"weight_decay": {"type": "uniform", "low": 0, "high": 0.1}}})
    )
    assert load_search_space(js).names == ("weight_decay",)
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: {type: uniform, low: 1, high: 0}\n")
    with pytest.raises(
        InputError, match=r"bad.yaml: search space .*'learning_rate': 'low' \(1\) must be < 'high'"
    ):
        load_search_space(bad)
    with pytest.raises(InputError, match="does not exist"):
        load_search_space(tmp_path / "missing.yaml")
