"""stformer_train."""
