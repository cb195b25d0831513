"""stformer_tune."""
