"""``PretrainML`` with ``deepspeed=True`` or a preset: stFormer's entry point on DeepSpeed."""

from __future__ import annotations

from typing import Any

from stformer_dist._deepspeed import DeepSpeedSpec, deepspeed_overrides, resolve_deepspeed
from stformer_train.hf import PretrainML as _PretrainML


class PretrainML(_PretrainML):
    """:class:`stformer_train.hf.PretrainML` whose ``deepspeed`` also takes ``True`` (ZeRO-2), a preset
    (``"zero0"`` … ``"zero3-offload"``), a JSON file, a dict or a :class:`DeepSpeedConfig`.

    The config is built with :func:`resolve_deepspeed` (``"auto"`` values filled from the training
    arguments); :func:`deepspeed_overrides` prepares the process (single-process environment
    without a launcher; DeepSpeed over gloo on CPU). Launch several processes with ``torchrun`` or ``deepspeed``.

    >>> PretrainML(dataset_path="d", example_lengths_file="l.pkl", token_dictionary_file="t.json",
    ...            output_dir="o", deepspeed=True).training_overrides["deepspeed"]["zero_optimization"]["stage"]
    2
    """

    def __init__(self, *, deepspeed: DeepSpeedSpec | None = None, **kwargs: Any):
        config = None if deepspeed is None or deepspeed is False else resolve_deepspeed(deepspeed)
        super().__init__(deepspeed=config, **kwargs)

    def run_pretraining(self):
        if "deepspeed" in self.training_overrides:  # on CPU: DeepSpeed's process state with gloo
            self.training_overrides.update(
                deepspeed_overrides(self.training_overrides["deepspeed"])
            )
        return super().run_pretraining()
