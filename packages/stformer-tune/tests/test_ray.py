"""The Ray back-end: Tune + OptunaSearch + ASHA on a local 2-CPU Ray (started once for the module)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import yaml

from stformer_train import TrainConfig
from stformer_tune import run_search, validate_resources
from stformer_tune._ray import _import_ray


def test_resources_per_trial_are_validated():
    assert validate_resources(None) == {"cpu": 1.0}
    assert validate_resources(0.5) == {"cpu": 0.5}
    assert validate_resources({"CPU": 0.25, "gpu": 0}) == {"cpu": 0.25, "gpu": 0.0}
    with pytest.raises(ValueError, match=r"'cpu'\] must be > 0 \(Ray needs a CPU share"):
        validate_resources({"cpu": 0})
    with pytest.raises(ValueError, match=r"resources_per_trial\['gpu'\] must be a number >= 0"):
        validate_resources({"gpu": -1})


@pytest.fixture(scope="module")
def local_ray():
    ray, _ = _import_ray()  # stformer_tune sets what Ray needs, as it does for a user

    ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
@pytest.mark.distributed
def test_three_trial_ray_search_with_fractional_cpus(
    local_ray, tiny_corpus, tmp_path, tiny, few_steps, space
):
    out = tmp_path / "search"
    result = run_search(
        tiny_corpus.path,
        out,
        space,
        model=tiny,
        train=few_steps,
        backend="ray",
        n_trials=3,
        resources_per_trial={"cpu": 0.5},
    )
    assert local_ray.is_initialized()  # a Ray started by the caller is left running for the caller
    assert len(result.trials) == 3
    assert {t.state for t in result.trials} <= {"COMPLETE", "PRUNED"}
    done = [t for t in result.trials if t.state == "COMPLETE"]
    assert done and all(t.steps == 6 and [s for s, _ in t.intermediate] == [2, 4, 6] for t in done)
    assert result.best.eval_loss == min(t.eval_loss for t in done)
    assert all(
        set(t.params) == {"learning_rate", "per_device_train_batch_size"} for t in result.trials
    )
    best = yaml.safe_load(result.best_config.read_text())
    assert TrainConfig.from_dict(best["train"]).learning_rate == result.best.params["learning_rate"]
    assert (
        (out / "ray_results" / "ray_tune").is_dir()
        and result.trials_csv.is_file()
        and result.plot.is_file()
    )
    assert len(list((out / "trials").iterdir())) == 3
    with pytest.raises(FileExistsError, match="pass --resume"):
        run_search(
            tiny_corpus.path, out, space, model=tiny, train=few_steps, backend="ray", n_trials=3
        )
    # resume restores the finished Tune experiment: the same trials, none run again
    again = run_search(
        tiny_corpus.path,
        out,
        space,
        model=tiny,
        train=few_steps,
        backend="ray",
        n_trials=3,
        resources_per_trial={"cpu": 0.5},
        resume=True,
    )
    assert [(t.state, t.eval_loss, t.params) for t in again.trials] == [
        (t.state, t.eval_loss, t.params) for t in result.trials
    ]
    assert len(list((out / "trials").iterdir())) == 3


class _Results(list):
    """The parts of a Ray ``ResultGrid`` that the back-end reads."""

    def __init__(self, items, terminated, errors=0):
        super().__init__(items)
        self.num_terminated, self.num_errors = terminated, errors


def _result(name, losses, *, final, error=None, config=None):
    import pandas as pd

    df = (
        pd.DataFrame({"step": [s for s, _ in losses], "eval_loss": [v for _, v in losses]})
        if losses
        else None
    )
    metrics = {"eval_loss": losses[-1][1], "step": losses[-1][0], "final": final} if losses else {}
    return SimpleNamespace(
        path=name,
        metrics_dataframe=df,
        metrics=metrics,
        error=error,
        config=config or {"learning_rate": 1e-3},
    )


def test_trial_states_from_ray_results():
    from stformer_tune._ray import _interrupted, _records

    # Tune's folder names: <trainable>_<random trial id>_<creation index>_<params>_<date>
    results = _Results(
        [
            _result(
                "/x/_ray_trainable_0bc9ab12_2_learning_rate=0.01_2026", [(2, 4.4)], final=False
            ),
            _result(
                "/x/_ray_trainable_fde765c2_1_learning_rate=0.001_2026",
                [(2, 4.5), (6, 4.2)],
                final=True,
            ),
            _result(
                "/x/_ray_trainable_00aa11bb_10_learning_rate=0.1_2026",
                [],
                final=False,
                error=ValueError("bad"),
            ),
        ],
        terminated=2,
        errors=1,
    )
    assert not _interrupted(results, 3)
    records = _records(results)
    assert [(r.number, r.state, r.eval_loss, r.steps) for r in records] == [
        (0, "COMPLETE", 4.2, 6),
        (1, "PRUNED", 4.4, 2),
        (2, "FAIL", None, None),
    ]
    assert records[0].intermediate == [(2, 4.5), (6, 4.2)]
    # Ctrl-C: one trial still running, one never started
    cut = _Results(
        [
            _result("/x/_t_0a0a0a0a_1_", [(2, 4.5), (6, 4.2)], final=True),
            _result("/x/_t_0b0b0b0b_2_", [(2, 4.4)], final=False),
        ],
        terminated=1,
    )
    assert _interrupted(cut, 3)
    assert [r.state for r in _records(cut, interrupted=True)] == ["COMPLETE", "RUNNING"]
