"""stformer-tune-app: the ``stformer-tune`` command (also ``stformer tune``), a thin app over stformer_tune."""

__version__ = "0.1.0"
