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
    return PretrainML(
        dataset_path=corpus.path,
        example_lengths_file=corpus.path / "example_lengths.pkl",
        token_dictionary_file=corpus.path / "token_dictionary.json",
        output_dir=out,
        run_name="tiny",
        max_input=64,
        num_layers=2,
        num_embed_dim=32,
        num_attn_heads=2,
        intermed_size=64,
        batch_size=8,
        warmup_steps=0,
        training_overrides={
            "max_steps": 4,
            "eval_fraction": 0.2,
            "eval_steps": 2,
            "logging_steps": 2,
            "save_steps": 100,
            **overrides,
        },
    )


def test_pretrainml_run_hyperparameter_train_accepts_optuma_with_a_warning(tiny_corpus, tmp_path):
    ml = _pretrainer(tiny_corpus, tmp_path)
    with pytest.warns(DeprecationWarning, match="optuma"):
        result = ml.run_hyperparameter_train(
            {"learning_rate": {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
            {"cpu": 1},
            n_trials=2,
            backend="optuma",
        )
    assert result.out_dir == tmp_path / "hyperparameter_search" / "tiny"
    assert result.backend == "optuna" and len(result.trials) == 2
    assert (result.out_dir / "study.db").is_file() and result.best_config.is_file()
    assert ml.base_train_config().max_steps == 4


def test_pretrainml_rejects_overrides_that_are_not_train_config_fields(
    tiny_corpus, tmp_path, space
):
    ml = _pretrainer(tiny_corpus, tmp_path, fp16_opt_level="O2")
    with pytest.raises(ValueError, match=r"\['fp16_opt_level'\] are not TrainConfig fields"):
        ml.run_hyperparameter_train(space, None, n_trials=1, backend="optuna")
