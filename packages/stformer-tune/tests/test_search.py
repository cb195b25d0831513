from __future__ import annotations

import pytest

from stformer_train import TrainConfig
from stformer_tune import PretrainML, resolve_backend, run_search


def test_backend_names_and_the_stformer_misspelling():
    assert resolve_backend("Optuna") == "optuna" and resolve_backend("ray") == "ray"
    with pytest.warns(DeprecationWarning, match="misspelling"):
        assert resolve_backend("optuma") == "optuna"
    with pytest.raises(
        ValueError, match=r"backend must be one of \['optuna', 'ray'\], got 'hyperopt'"
    ):
        resolve_backend("hyperopt")


def test_objective_needs_a_held_out_split(tiny_corpus, tmp_path, tiny, space):
    with pytest.raises(
        ValueError, match="eval_fraction is 0: the search objective is the evaluation loss"
    ):
        run_search(
            tiny_corpus.path, tmp_path / "s", space, model=tiny, train=TrainConfig(max_steps=4)
        )
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_trials": 0}, "n_trials must be an int >= 1"),
        ({"resources_per_trial": {"cpu": 0}}, r"resources_per_trial\['cpu'\] must be > 0"),
        ({"resources_per_trial": {"tpu": 1}}, "unknown resource 'tpu'"),
    ],
)
def test_bad_arguments_are_rejected(tiny_corpus, tmp_path, kwargs, message, tiny, few_steps, space):
    with pytest.raises(ValueError, match=message):
        run_search(tiny_corpus.path, tmp_path / "s", space, model=tiny, train=few_steps, **kwargs)


def _pretrainer(corpus, out, **overrides):
    ml = PretrainML(
        dataset_path=str(corpus.path),
        token_dict_path=str(corpus.path / "token_dictionary.json"),
        example_lengths_path=str(corpus.path / "example_lengths.pkl"),
        mode="spot",
        output_dir=str(out),
        max_input=64,
        num_layers=2,
        embed_dim=32,
        num_heads=2,
        batch_size=8,
        warmup_steps=0,
        fp16=False,
        training_args_overrides={
            "max_steps": 4,
            "eval_steps": 2,
            "logging_steps": 2,
            "save_steps": 100,
            **overrides,
        },
    )
    ml.run_name = "tiny"
    return ml


def test_pretrainml_run_hyperparameter_train_accepts_optuma_with_a_warning(
    tiny_corpus, tmp_path, capsys
):
    ml = _pretrainer(tiny_corpus, tmp_path)
    with pytest.warns(DeprecationWarning, match="optuma"):
        assert (
            ml.run_hyperparameter_train(
                {"learning_rate": {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
                {"cpu": 1},
                n_trials=2,
                backend="optuma",
                eval_fraction=0.2,
            )
            is None
        )
    result = ml.search_result
    assert result.out_dir == tmp_path / "hyperparameter_search" / "tiny"
    assert result.backend == "optuna" and len(result.trials) == 2
    assert (result.out_dir / "study.db").is_file() and result.best_config.is_file()
    assert "Best trial (optuna, 2 trials)" in capsys.readouterr().out


def test_pretrainml_rejects_overrides_that_a_search_sets_itself(tiny_corpus, tmp_path, space):
    ml = _pretrainer(tiny_corpus, tmp_path, report_to="none")
    with pytest.raises(
        ValueError, match=r"training_args_overrides\['report_to'\] is set by the search"
    ):
        ml.run_hyperparameter_train(space, None, n_trials=1, backend="optuna")
