"""Pieces both trainers share: resumable masking, length-grouped sampling, and run-directory logs."""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers.trainer_pt_utils import LengthGroupedSampler

from stformer_data.atomic import atomic_write_text
from stformer_train.plots import loss_rows, plot_loss_curve  # noqa: F401 - moved to plots.py; kept here


class StepSeededCollator:
    """Wrap an MLM collator so that batch ``i`` is masked with the seed ``(seed, i)``.

    The batch counter is the only state: a resumed run sets ``step`` to the number of batches
    already consumed and then masks exactly like the uninterrupted run (with
    ``num_workers=0``; DataLoader workers keep the wrapped collator's per-worker streams).

    >>> from stformer_collate import DataCollatorForMLM, SimpleTokenSpec
    >>> c = StepSeededCollator(DataCollatorForMLM(spec=SimpleTokenSpec(pad_id=0, mask_id=1, vocab_size=50)), seed=3)
    >>> a = c([{"input_ids": list(range(5, 30))}]); c.step = 0
    >>> bool((c([{"input_ids": list(range(5, 30))}])["labels"] == a["labels"]).all())
    True
    """

    def __init__(self, collator: Any, *, seed: int = 0):
        if not dataclasses.is_dataclass(collator) or not hasattr(collator, "seed"):
            raise ValueError(
                "StepSeededCollator wraps a stformer_collate DataCollatorFor... (a dataclass with a seed)"
            )
        self.collator = collator
        self.seed = int(seed)
        self.step = 0

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        info = torch.utils.data.get_worker_info()
        if info is None:
            seeded = dataclasses.replace(self.collator, seed=self.seed * 1_000_003 + self.step)
            self.step += 1
            return seeded(examples)
        return self.collator(examples)


class EpochLengthGroupedSampler(LengthGroupedSampler):
    """transformers' ``LengthGroupedSampler`` with a reproducible order per epoch (``set_epoch``).

    Batches of similar length (megabatches of 50 batches sorted by length, longest first) keep
    padding low; seeding by ``(seed, epoch)`` lets a resumed run replay the same order.
    """

    def __init__(self, batch_size: int, lengths: Sequence[int], *, seed: int = 0):
        self.seed = int(seed)
        self.epoch = 0
        super().__init__(batch_size, lengths=[int(x) for x in lengths], generator=torch.Generator())
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.generator.manual_seed(self.seed * 1_000_003 + self.epoch)

    def __iter__(self) -> Iterator[int]:
        self.generator.manual_seed(self.seed * 1_000_003 + self.epoch)
        return super().__iter__()


def write_csv_log(history: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Write the log history as CSV (one row per logging step), atomically."""
    rows = loss_rows(history)
    columns = sorted({k for r in rows for k in r}, key=lambda k: (k != "step", k != "epoch", k))
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, text.getvalue())
