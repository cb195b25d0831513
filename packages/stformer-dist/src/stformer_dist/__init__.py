"""stformer_dist."""
