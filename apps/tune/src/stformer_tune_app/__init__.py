"""stformer_tune_app."""
