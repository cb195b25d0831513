"""protoplast's scRNA training API, from one import location.

A protoplast script ports by changing its imports to ``from stformer_dist.protoplast import ...``
(see ``docs/porting.md``):

* :class:`RayTrainRunner` -- a user's LightningModule and dataset class on a Ray cluster;
* :class:`DistributedAnnDataset` -- the dataset base class (override ``transform``);
* :class:`AnnDataModule` -- the Lightning data module (densify callbacks);
* :class:`ShuffleStrategy`, :class:`SequentialShuffleStrategy`, :class:`SplitInfo`,
  :func:`ann_split_data` -- splitting files into row ranges;
* :func:`cell_line_metadata_cb` -- the default metadata callback.

stformer's own masked-LM BERT is one such model + dataset pair, exported here too:
:class:`BertMLMModule` (the LightningModule), :class:`RankValueAnnDataset` (rank-value tokens of
the rows) and :func:`rank_value_metadata_cb` (vocabulary, medians and configs in the metadata).

The parts live in their layers (``stformer_data``, ``stformer_data.torch``,
``stformer_train.lightning``, ``stformer_dist``) and are re-exported here.
"""

from stformer_dist._ray_env import prepare_ray_environment  # noqa: I001  (before anything imports ray)
from stformer_data import (
    SequentialShuffleStrategy,
    ShuffleStrategy,
    SplitInfo,
    ann_split_data,
    cell_line_metadata_cb,
    rank_value_metadata_cb,
)
from stformer_data.torch import DistributedAnnDataset, RankValueAnnDataset
from stformer_dist._ray_train import RayTrainRunner
from stformer_train.lightning import AnnDataModule, BertMLMModule

__all__ = [
    "AnnDataModule",
    "BertMLMModule",
    "DistributedAnnDataset",
    "RankValueAnnDataset",
    "RayTrainRunner",
    "SequentialShuffleStrategy",
    "ShuffleStrategy",
    "SplitInfo",
    "ann_split_data",
    "cell_line_metadata_cb",
    "prepare_ray_environment",
    "rank_value_metadata_cb",
]
