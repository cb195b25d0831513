"""stformer-dist: distributed pretraining on DeepSpeed and Ray Train (API arrives with issue 7)."""

__version__ = "0.1.0"
