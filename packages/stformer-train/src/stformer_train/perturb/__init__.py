"""In-silico perturbation of rank-value tokenized cells (Geneformer's analysis, on a faster path).

* :func:`perturb_h5ad`: an h5ad file and a model folder in, a Parquet table and an .h5ad summary out
  (resumable per cell batch);
* :func:`perturbation_stats`: genes ranked by mean shift (or shift toward a goal state) with
  confidence intervals;
* the parts: :func:`perturb_tokens` perturbs one cell's tokens, :class:`PooledEncoder` runs copies
  through the encoder up to the pooled layer, :func:`perturb_batch` perturbs a batch of cells.
"""

from stformer_train.perturb._core import PerturbResult, PerturbSpec, perturb_batch
from stformer_train.perturb._engine import PooledEncoder, plan_batches
from stformer_train.perturb._ops import PERTURB_TYPES, perturb_tokens
from stformer_train.perturb._run import perturb_h5ad
from stformer_train.perturb._stats import perturbation_stats

__all__ = [
    "PERTURB_TYPES",
    "PerturbResult",
    "PerturbSpec",
    "PooledEncoder",
    "perturb_batch",
    "perturb_h5ad",
    "perturb_tokens",
    "perturbation_stats",
    "plan_batches",
]
