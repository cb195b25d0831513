"""The Ray back-end: Tune + OptunaSearch + ASHA on a local 2-CPU Ray (started once for the module)."""

from __future__ import annotations

import os

import pytest
import yaml

from stformer_train import TrainConfig
from stformer_tune import run_search, validate_resources


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
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
@pytest.mark.distributed
def test_three_trial_ray_search_with_fractional_cpus(local_ray, tiny_corpus, tmp_path, tiny, few_steps, space):
    out = tmp_path / "search"
    result = run_search(tiny_corpus.path, out, space, model=tiny, train=few_steps, backend="ray", n_trials=3,
                        resources_per_trial={"cpu": 0.5})
    assert local_ray.is_initialized()  # a Ray started by the caller is left running for the caller
    assert len(result.trials) == 3
    assert {t.state for t in result.trials} <= {"COMPLETE", "PRUNED"}
    done = [t for t in result.trials if t.state == "COMPLETE"]
    assert done and all(t.steps == 6 and [s for s, _ in t.intermediate] == [2, 4, 6] for t in done)
    assert result.best.eval_loss == min(t.eval_loss for t in done)
    assert all(set(t.params) == {"learning_rate", "per_device_train_batch_size"} for t in result.trials)
    best = yaml.safe_load(result.best_config.read_text())
    assert TrainConfig.from_dict(best["train"]).learning_rate == result.best.params["learning_rate"]
    assert (out / "ray_results" / "ray_tune").is_dir() and result.trials_csv.is_file() and result.plot.is_file()
    assert len(list((out / "trials").iterdir())) == 3
    with pytest.raises(FileExistsError, match="pass --resume"):
        run_search(tiny_corpus.path, out, space, model=tiny, train=few_steps, backend="ray", n_trials=3)
    # resume restores the finished Tune experiment: the same trials, none run again
    again = run_search(tiny_corpus.path, out, space, model=tiny, train=few_steps, backend="ray", n_trials=3,
                       resources_per_trial={"cpu": 0.5}, resume=True)
    assert [(t.state, t.eval_loss, t.params) for t in again.trials] == \
        [(t.state, t.eval_loss, t.params) for t in result.trials]
    assert len(list((out / "trials").iterdir())) == 3
