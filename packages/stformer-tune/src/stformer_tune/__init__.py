"""stformer-tune: hyperparameter search over stformer pretraining with Optuna and Ray Tune.

``run_search(corpus, out, space, backend="optuna"|"ray")``; stFormer's
``PretrainML(...).run_hyperparameter_train(search_space, resources_per_trial, n_trials, backend)``
(:mod:`stformer_train.hf`, re-exported here with the same meaning) runs it.
The objective is the evaluation loss on a held-out split (``TrainConfig.eval_fraction`` > 0).
It does not import stformer-dist.
"""

from stformer_train.hf import PretrainML
from stformer_tune._optuna import default_pruner
from stformer_tune._ray import SearchInterrupted, ensure_ray, validate_resources
from stformer_tune._results import (
    NoTrialCompleted,
    SearchResult,
    TrialRecord,
    best_trial,
    plot_trials,
    write_results,
)
from stformer_tune._search import BACKENDS, resolve_backend, run_search
from stformer_tune._space import (
    DEFAULT_SPACE,
    SEARCHABLE,
    SPACE_TYPES,
    ParamSpec,
    SearchSpace,
    default_search_space,
    load_search_space,
)
from stformer_tune._trial import METRIC, EvalLossReporter, apply_params

__version__ = "0.1.0"

__all__ = [
    # the search space
    "DEFAULT_SPACE",
    "SEARCHABLE",
    "SPACE_TYPES",
    "ParamSpec",
    "SearchSpace",
    "default_search_space",
    "load_search_space",
    # one trial
    "METRIC",
    "EvalLossReporter",
    "apply_params",
    # back-ends
    "BACKENDS",
    "SearchInterrupted",
    "default_pruner",
    "ensure_ray",
    "resolve_backend",
    "validate_resources",
    # the search and its results
    "NoTrialCompleted",
    "PretrainML",
    "SearchResult",
    "TrialRecord",
    "best_trial",
    "plot_trials",
    "run_search",
    "write_results",
]
