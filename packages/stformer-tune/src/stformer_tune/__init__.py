"""stformer-tune: hyperparameter search with Optuna and Ray Tune (API arrives with issue 8)."""

__version__ = "0.1.0"
