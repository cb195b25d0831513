"""Masked-language-model collation of token sequences (BERT-style 80/10/10 masking)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from stformer_collate._spec import TokenSpec

IGNORE_INDEX = -100


@dataclass(kw_only=True)
class DataCollatorForMLM:
    """Pad a list of tokenized cells and mask them for masked-language modelling.

    Parameters
    ----------
    spec
        The vocabulary facts (pad id, mask id, special ids, size).
    mlm_probability
        Fraction of non-special tokens selected for prediction.
    mask_replace_prob, random_replace_prob
        Of the selected tokens, the fraction replaced by ``<mask>`` and by a random gene token; the
        rest are kept unchanged (defaults 0.8 / 0.1, so 0.1 kept).
    pad_to_multiple_of
        Round the padded length up to a multiple of this.
    seed
        Seed of the collator's own generator; ``None`` draws from torch's global generator.

    Each example is a mapping with ``input_ids`` and optionally ``token_type_ids``. The batch has
    ``input_ids``, ``attention_mask`` and ``labels`` (``-100`` where nothing is predicted), plus
    ``token_type_ids`` when the examples have them. Special and pad tokens are never selected, random
    replacements are drawn from non-special tokens only, and every sequence with at least one
    maskable token gets at least one prediction target.

    >>> from stformer_collate import SimpleTokenSpec
    >>> collate = DataCollatorForMLM(spec=SimpleTokenSpec(pad_id=0, mask_id=1, vocab_size=50), seed=0)
    >>> batch = collate([{"input_ids": [5, 6, 7]}, {"input_ids": [8, 9]}])
    >>> batch["input_ids"].shape
    torch.Size([2, 3])
    """

    spec: TokenSpec
    mlm_probability: float = 0.15
    mask_replace_prob: float = 0.8
    random_replace_prob: float = 0.1
    pad_to_multiple_of: int | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.mlm_probability < 1.0:
            raise ValueError(f"mlm_probability must be in (0, 1), got {self.mlm_probability}")
        if self.mask_replace_prob < 0 or self.random_replace_prob < 0:
            raise ValueError("mask_replace_prob and random_replace_prob must be >= 0")
        if self.mask_replace_prob + self.random_replace_prob > 1.0:
            raise ValueError(
                "mask_replace_prob + random_replace_prob must be <= 1, got "
                f"{self.mask_replace_prob} + {self.random_replace_prob}"
            )
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of <= 0:
            raise ValueError(f"pad_to_multiple_of must be > 0, got {self.pad_to_multiple_of}")
        special = sorted(self.spec.special_ids)
        self._special = torch.tensor(special, dtype=torch.long)
        candidates = np.setdiff1d(np.arange(len(self.spec)), np.asarray(special, dtype=np.int64))
        if candidates.size == 0:
            raise ValueError("the vocabulary has no non-special token to use as a random replacement")
        self._replacement_ids = torch.from_numpy(candidates.astype(np.int64))
        self._generator = None
        if self.seed is not None:
            self._generator = torch.Generator().manual_seed(self.seed)

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if len(examples) == 0:
            raise ValueError("cannot collate an empty list of examples")
        batch = pad_examples(examples, pad_id=self.spec.pad_id, pad_to_multiple_of=self.pad_to_multiple_of)
        input_ids, labels = self.mask_tokens(batch["input_ids"])
        batch["input_ids"] = input_ids
        batch["labels"] = labels
        return batch

    def mask_tokens(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return masked ``input_ids`` and ``labels`` for a padded ``(batch, length)`` tensor."""
        gen = self._generator
        maskable = ~torch.isin(input_ids, self._special)
        probs = torch.full(input_ids.shape, self.mlm_probability)
        selected = (torch.rand(input_ids.shape, generator=gen) < probs) & maskable
        # At least one target per sequence that has anything to predict.
        empty = ~selected.any(dim=1) & maskable.any(dim=1)
        if empty.any():
            scores = torch.rand(input_ids.shape, generator=gen).masked_fill(~maskable, -1.0)
            pick = scores.argmax(dim=1)
            rows = torch.nonzero(empty, as_tuple=True)[0]
            selected[rows, pick[rows]] = True
        labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
        draw = torch.rand(input_ids.shape, generator=gen)
        to_mask = selected & (draw < self.mask_replace_prob)
        to_random = selected & (draw >= self.mask_replace_prob) & (
            draw < self.mask_replace_prob + self.random_replace_prob
        )
        out = input_ids.clone()
        out[to_mask] = self.spec.mask_id
        n_random = int(to_random.sum())
        if n_random:
            idx = torch.randint(len(self._replacement_ids), (n_random,), generator=gen)
            out[to_random] = self._replacement_ids[idx]
        return out, labels


def pad_examples(
    examples: Sequence[Mapping[str, Any]],
    *,
    pad_id: int,
    pad_to_multiple_of: int | None = None,
    max_length: int | None = None,
) -> dict[str, torch.Tensor]:
    """Right-pad ``input_ids`` (and ``token_type_ids`` when present) to the longest example.

    Returns ``input_ids``, ``attention_mask`` and, when every example has them, ``token_type_ids``
    (padded with 0).
    """
    seqs = [np.asarray(ex["input_ids"], dtype=np.int64) for ex in examples]
    longest = max(len(s) for s in seqs)
    length = longest if max_length is None else max(max_length, longest)
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    n = len(seqs)
    ids = np.full((n, length), pad_id, dtype=np.int64)
    attn = np.zeros((n, length), dtype=np.int64)
    with_types = all("token_type_ids" in ex for ex in examples)
    types = np.zeros((n, length), dtype=np.int64) if with_types else None
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        attn[i, : len(s)] = 1
        if types is not None:
            t = np.asarray(examples[i]["token_type_ids"], dtype=np.int64)
            if len(t) != len(s):
                raise ValueError(
                    f"example {i}: token_type_ids has length {len(t)} but input_ids has {len(s)}"
                )
            types[i, : len(t)] = t
    batch = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(attn)}
    if types is not None:
        batch["token_type_ids"] = torch.from_numpy(types)
    return batch
