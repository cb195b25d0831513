"""stformer-tune: hyperparameter search over stformer pretraining with Optuna and Ray Tune.

``run_search(corpus, out, space, backend="optuna"|"ray")`` and stFormer's
``PretrainML(...).run_hyperparameter_train(search_space, resources_per_trial, n_trials, backend)``.
The objective is the evaluation loss on a held-out split (``TrainConfig.eval_fraction`` > 0).
It does not import stformer-dist.
"""

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
from stformer_tune._search import BACKENDS, PretrainML, resolve_backend, run_search
from stformer_tune._space import SEARCHABLE, SPACE_TYPES, ParamSpec, SearchSpace, load_search_space
from stformer_tune._trial import METRIC, EvalLossReporter, apply_params

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "METRIC",
    "SEARCHABLE",
    "SPACE_TYPES",
    "EvalLossReporter",
    "NoTrialCompleted",
    "ParamSpec",
    "PretrainML",
    "SearchResult",
    "SearchInterrupted",
    "SearchSpace",
    "TrialRecord",
    "apply_params",
    "best_trial",
    "default_pruner",
    "ensure_ray",
    "load_search_space",
    "plot_trials",
    "resolve_backend",
    "run_search",
    "validate_resources",
    "write_results",
]
