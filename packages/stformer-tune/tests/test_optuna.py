"""The Optuna back-end: a 3-trial search, pruning, and resuming an interrupted study."""

from __future__ import annotations

import csv

import optuna
import pytest
import yaml

import stformer_tune._optuna as tune_optuna
from stformer_train import ModelConfig, TrainConfig
from stformer_tune import run_search


def test_three_trial_search_writes_study_table_plot_and_best_config(
    tiny_corpus, tmp_path, tiny, few_steps, space
):
    out = tmp_path / "search"
    result = run_search(
        tiny_corpus.path,
        out,
        space,
        model=tiny,
        train=few_steps,
        backend="optuna",
        n_trials=3,
        pruner=optuna.pruners.NopPruner(),
    )
    assert [t.number for t in result.trials] == [0, 1, 2]
    assert all(t.state == "COMPLETE" and t.steps == 6 for t in result.trials)
    # the objective is the last evaluation's loss; every evaluation (steps 2, 4, 6) was reported
    assert all([s for s, _ in t.intermediate] == [2, 4, 6] for t in result.trials)
    assert all(t.eval_loss == t.intermediate[-1][1] for t in result.trials)
    assert result.best.eval_loss == min(t.eval_loss for t in result.trials)
    study = optuna.load_study(study_name="stformer", storage=f"sqlite:///{out / 'study.db'}")
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert study.best_trial.number == result.best.number
    rows = list(csv.DictReader(result.trials_csv.read_text().splitlines()))
    assert [r["state"] for r in rows] == ["COMPLETE"] * 3
    assert {"eval_loss", "learning_rate", "per_device_train_batch_size"} <= set(rows[0])
    assert result.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best = yaml.safe_load(result.best_config.read_text())
    assert set(best) == {"model", "train"}
    train = TrainConfig.from_dict(best["train"])
    assert train.learning_rate == result.best.params["learning_rate"]
    assert train.per_device_train_batch_size == result.best.params["per_device_train_batch_size"]
    assert ModelConfig.from_dict(best["model"]) == tiny
    for t in result.trials:
        assert (out / "trials" / f"trial_{t.number:04d}" / "model" / "config.json").is_file()


class _PruneFromSecondTrial(optuna.pruners.BasePruner):
    def prune(self, study, trial):
        return trial.number >= 1 and bool(trial.intermediate_values)


def test_pruning_stops_a_trial_at_its_first_evaluation(
    tiny_corpus, tmp_path, tiny, few_steps, space
):
    result = run_search(
        tiny_corpus.path,
        tmp_path / "s",
        space,
        model=tiny,
        train=few_steps,
        n_trials=2,
        pruner=_PruneFromSecondTrial(),
    )
    first, second = result.trials
    assert first.state == "COMPLETE" and second.state == "PRUNED"
    assert second.intermediate and second.intermediate[0][0] == 2 and len(second.intermediate) == 1
    assert result.best.number == 0  # best trial chosen among complete trials on the same metric
    assert not (tmp_path / "s" / "trials" / "trial_0001" / "model").exists()


def test_default_pruner_is_median_on_evaluation_losses():
    assert isinstance(tune_optuna.default_pruner(), optuna.pruners.MedianPruner)


def test_resume_after_an_interruption_continues_the_trial_count(
    tiny_corpus, tmp_path, monkeypatch, tiny, few_steps, space
):
    out = tmp_path / "search"
    real = tune_optuna.run_trial

    def interrupted_at_trial_1(corpus, trial_dir, model, train, report, **kw):
        def report_then_stop(step, loss, final):
            report(step, loss, final)
            if trial_dir.name == "trial_0001":
                raise KeyboardInterrupt  # Ctrl-C in the middle of the second trial

        return real(corpus, trial_dir, model, train, report_then_stop, **kw)

    monkeypatch.setattr(tune_optuna, "run_trial", interrupted_at_trial_1)
    with pytest.raises(KeyboardInterrupt):
        run_search(
            tiny_corpus.path,
            out,
            space,
            model=tiny,
            train=few_steps,
            n_trials=3,
            pruner=optuna.pruners.NopPruner(),
        )
    monkeypatch.setattr(tune_optuna, "run_trial", real)
    # a killed process leaves its trial RUNNING in the database
    storage = f"sqlite:///{out / 'study.db'}"
    optuna.load_study(study_name="stformer", storage=storage).ask()

    with pytest.raises(FileExistsError, match="pass --resume"):
        run_search(tiny_corpus.path, out, space, model=tiny, train=few_steps, n_trials=3)
    result = run_search(
        tiny_corpus.path,
        out,
        space,
        model=tiny,
        train=few_steps,
        n_trials=3,
        resume=True,
        pruner=optuna.pruners.NopPruner(),
    )
    states = {t.number: t.state for t in result.trials}
    assert states == {0: "COMPLETE", 1: "FAIL", 2: "FAIL", 3: "COMPLETE", 4: "COMPLETE"}
    assert not (
        out / "trials" / "trial_0001"
    ).exists()  # the interrupted trial's partial run is removed
    # the count continues: a further resume with the same total has nothing left to do
    again = run_search(
        tiny_corpus.path, out, space, model=tiny, train=few_steps, n_trials=3, resume=True
    )
    assert len(again.trials) == 5
    with pytest.raises(ValueError, match="different search_space"):
        run_search(
            tiny_corpus.path,
            out,
            {"weight_decay": {"type": "uniform", "low": 0, "high": 0.1}},
            model=tiny,
            train=few_steps,
            n_trials=4,
            resume=True,
        )


def test_a_failing_trial_is_recorded_and_no_complete_trial_is_an_error(
    tiny_corpus, tmp_path, tiny, few_steps
):
    # num_heads=3 does not divide hidden_size=32: every trial's ModelConfig is invalid
    space = {"num_heads": {"type": "categorical", "values": [3]}}
    with pytest.raises(
        RuntimeError, match=r"no trial completed \(states: \{0: 'FAIL', 1: 'FAIL'\}\)"
    ):
        run_search(tiny_corpus.path, tmp_path / "s", space, model=tiny, train=few_steps, n_trials=2)
    rows = list(csv.DictReader((tmp_path / "s" / "trials.csv").read_text().splitlines()))
    assert [(r["state"], r["num_heads"]) for r in rows] == [("FAIL", "3"), ("FAIL", "3")]
