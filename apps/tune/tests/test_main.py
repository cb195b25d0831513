from __future__ import annotations

import csv
import json

import pytest
import yaml

from stformer_tune_app.main import cli, parse_resources


def test_parse_resources():
    assert parse_resources(None) is None
    assert parse_resources("0.5") == {"cpu": 0.5}
    assert parse_resources("cpu=0.25, gpu=0") == {"cpu": 0.25, "gpu": 0.0}
    with pytest.raises(ValueError, match="--resources: cannot read 'cpu'"):
        parse_resources("cpu")


def test_help_is_instant_and_lists_the_options(capsys):
    assert cli(["--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--backend", "--space", "--trials", "--resources", "--resume"):
        assert option in out


def test_bad_inputs_exit_2_with_a_clear_message(tune_inputs, tmp_path, capsys):
    corpus, base, space = tune_inputs
    bad_space = tmp_path / "space.yaml"
    bad_space.write_text("learning_rate: {type: loguniform, low: 1.0e-3, high: 1.0e-4}\n")
    args = ["--out", str(tmp_path / "s"), "--config", str(base)]
    assert cli([str(corpus), *args, "--space", str(bad_space)]) == 2
    assert "'learning_rate': 'low' (0.001) must be < 'high'" in capsys.readouterr().err
    bad_space.write_text("lr: {type: uniform, low: 0, high: 1}\n")
    assert cli([str(corpus), *args, "--space", str(bad_space)]) == 2
    assert "'lr': unknown hyperparameter" in capsys.readouterr().err
    assert cli([str(corpus), *args, "--space", str(space), "--eval-fraction", "0"]) == 2
    assert (
        "the search objective is the evaluation loss on a held-out split" in capsys.readouterr().err
    )
    assert cli([str(tmp_path / "nope"), *args, "--space", str(space)]) == 2
    assert "is not a corpus folder" in capsys.readouterr().err
    assert cli([str(corpus), *args, "--space", str(space), "--backend", "hyperopt"]) == 2
    assert "backend must be one of" in capsys.readouterr().err
    assert cli([str(corpus), *args, "--space", str(space), "--resources", "cpu=0"]) == 2
    assert "must be > 0" in capsys.readouterr().err


def test_optuna_search_then_resume_continues_to_the_requested_trials(tune_inputs, tmp_path, capsys):
    corpus, base, space = tune_inputs
    out = tmp_path / "search"
    args = [
        str(corpus),
        "--out",
        str(out),
        "--space",
        str(space),
        "--config",
        str(base),
        "--backend",
        "optuna",
        "--resources",
        "cpu=1",
    ]
    assert cli([*args, "--trials", "2"]) == 0
    assert cli([*args, "--trials", "3"]) == 2  # an existing search needs --resume
    assert "pass --resume" in capsys.readouterr().err
    assert cli([*args, "--trials", "3", "--resume"]) == 0
    rows = list(csv.DictReader((out / "trials.csv").read_text().splitlines()))
    assert [int(r["number"]) for r in rows] == [0, 1, 2]
    summary = json.loads((out / "summary.json").read_text())
    assert (
        summary["n_trials"] == 3 and summary["metric"] == "eval_loss" and summary["mode"] == "min"
    )
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["train"]["learning_rate"] == summary["best_params"]["learning_rate"]
    assert best["model"]["hidden_size"] == 32 and best["model"]["max_position_embeddings"] >= 8
    assert (out / "trials.png").stat().st_size > 0
