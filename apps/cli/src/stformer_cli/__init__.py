"""stformer_cli."""
