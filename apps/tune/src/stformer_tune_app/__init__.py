"""stformer-tune-app: the hyperparameter-search command (arrives with issue 8)."""

__version__ = "0.1.0"
