"""``stformer tune``: the stformer-tune app behind the main command, and its best config in ``pretrain``."""

from __future__ import annotations

import sys

import pytest

from stformer_cli import _tune
from stformer_cli.main import cli

BASE = """\
model: {num_layers: 2, hidden_size: 32, num_heads: 2, intermediate_size: 64}
train: {max_steps: 4, eval_fraction: 0.2, eval_steps: 2, logging_steps: 2, save_steps: 100, warmup_steps: 0}
"""


@pytest.fixture(scope="module")
def corpus(make_tiny_corpus):
    return make_tiny_corpus(n_cells=80, n_genes=60, seed=3).path


def test_stformer_tune_writes_a_best_config_that_pretrain_runs(corpus, tmp_path, capsys):
    (tmp_path / "base.yaml").write_text(BASE)
    (tmp_path / "space.yaml").write_text(
        "learning_rate: {type: loguniform, low: 1.0e-4, high: 1.0e-2}\n"
        "weight_decay: {type: uniform, low: 0.0, high: 0.1}\n"
    )
    out = tmp_path / "search"
    assert (
        cli(
            [
                "tune",
                str(corpus),
                "--out",
                str(out),
                "--space",
                str(tmp_path / "space.yaml"),
                "--config",
                str(tmp_path / "base.yaml"),
                "--trials",
                "2",
                "--backend",
                "optuna",
            ]
        )
        == 0
    )
    assert "best trial" in capsys.readouterr().out
    run = tmp_path / "run"
    assert (
        cli(
            [
                "pretrain",
                str(corpus),
                "--out",
                str(run),
                "--config",
                str(out / "best.yaml"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert (run / "model" / "config.json").is_file()
    assert (
        cli(
            [
                "pretrain",
                str(corpus),
                "--out",
                str(tmp_path / "run_json"),
                "--config",
                str(out / "best.json"),
                "--max-steps",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )


def test_stformer_tune_help_and_errors_come_from_the_app(tmp_path, capsys):
    assert cli(["tune", "--help"]) == 0
    assert "--backend" in capsys.readouterr().out
    assert (
        cli(
            [
                "tune",
                str(tmp_path),
                "--out",
                str(tmp_path / "s"),
                "--space",
                str(tmp_path / "none.yaml"),
            ]
        )
        == 2
    )
    assert "none.yaml" in capsys.readouterr().err


def test_missing_extra_is_one_line_with_the_uv_and_pip_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "stformer_tune_app.main", None)  # the extra not installed
    assert cli(["tune", "--help"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "uv sync --package stformer-cli --extra tune" in err
    assert 'pip install "stformer-cli[tune]"' in err
    with pytest.raises(ImportError):  # the loader itself lets the ImportError through
        _tune._load_tune_cli()
