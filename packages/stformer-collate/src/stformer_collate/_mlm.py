"""Masked-language-model collation of token sequences (BERT-style 80/10/10 masking).

Masking is decided once on the flat token stream of the batch (see :mod:`._layout`) with numpy
vector operations, then laid out padded or packed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from stformer_collate._layout import (
    IGNORE_INDEX,
    BatchForm,
    FlatBatch,
    flatten_examples,
    layout_packed,
    layout_padded,
    padded_length,
)
from stformer_collate._spec import TokenSpec


class _RngState:
    """The mutable random state of a (frozen) collator, re-created per process / loader worker."""

    __slots__ = ("key", "rng")

    def __init__(self) -> None:
        self.key: tuple[int, int] | None = None
        self.rng: np.random.Generator | None = None


def _check_probability(name: str, value: float, *, low_open: bool = False) -> None:
    ok = (0.0 < value <= 1.0) if low_open else (0.0 <= value <= 1.0)
    if not ok:
        interval = "(0, 1]" if low_open else "[0, 1]"
        raise ValueError(f"{name} must be in {interval}, got {value}")


@dataclass(frozen=True, kw_only=True)
class DataCollatorForMLM:
    """Collate tokenized cells into masked-language-model batches.

    Parameters
    ----------
    spec
        The vocabulary facts (pad id, mask id, special ids, size); ``stformer_data.GeneVocab``
        works, as does :class:`~stformer_collate.SimpleTokenSpec`.
    mlm_probability
        Probability that a gene token is selected for prediction, in ``(0, 1]``.
    mask_replace_prob, random_replace_prob
        Of the selected tokens, the fraction replaced by ``<mask>`` and by a random *gene* token
        (never a special token); the rest are kept unchanged (defaults 0.8 / 0.1 / 0.1 kept).
    pad_to_multiple_of
        Round the padded length up to a multiple of this (padded form only; the packed form has
        no padding at all).
    form
        :class:`BatchForm` ``"padded"`` (default) or ``"packed"``.
    return_masked_positions
        Also return ``masked_positions``, the flat indices (into ``input_ids.reshape(-1)``) of the
        positions to predict, and ``masked_labels``, their original ids, so a model can compute
        MLM logits only there.
    token_fields
        Per-token fields laid out alongside ``input_ids`` (padded with 0) when the examples have
        them. Any other key of the examples (``length``, obs labels, ...) is ignored.
    seed
        Seed of the collator's generator. Draws are reproducible for a given seed and sequence
        of calls; each ``DataLoader`` worker gets its own stream (``seed``, worker id). ``None``
        seeds from the operating system.

    Notes
    -----
    The batch always has ``input_ids`` and ``labels`` (the original id where a token is to be
    predicted, ``-100`` everywhere else), and the per-token fields present. The padded form adds
    ``attention_mask``; the packed form adds ``position_ids``, ``cu_seqlens``, ``max_seqlen``,
    ``seq_idx`` and ``seq_lengths`` (see :class:`BatchForm`). Special and pad tokens are never
    selected and never used as random replacements, and every sequence with at least one
    maskable token has at least one prediction target.

    >>> from stformer_collate import SimpleTokenSpec
    >>> collate = DataCollatorForMLM(spec=SimpleTokenSpec(pad_id=0, mask_id=1, vocab_size=50), seed=0)
    >>> batch = collate([{"input_ids": [5, 6, 7]}, {"input_ids": [8, 9]}])
    >>> batch["input_ids"].shape, int((batch["labels"] != -100).sum(dim=1).min()) >= 1
    (torch.Size([2, 3]), True)
    """

    spec: TokenSpec
    mlm_probability: float = 0.15
    mask_replace_prob: float = 0.8
    random_replace_prob: float = 0.1
    pad_to_multiple_of: int | None = None
    form: BatchForm | str = BatchForm.PADDED
    return_masked_positions: bool = False
    token_fields: tuple[str, ...] = ("token_type_ids",)
    seed: int | None = None
    _state: _RngState = field(init=False, repr=False, compare=False, default_factory=_RngState)

    def __post_init__(self) -> None:
        self._check_probabilities()
        _check_probability("mask_replace_prob", self.mask_replace_prob)
        _check_probability("random_replace_prob", self.random_replace_prob)
        if self.mask_replace_prob + self.random_replace_prob > 1.0:
            raise ValueError(
                "mask_replace_prob + random_replace_prob must be <= 1, got "
                f"{self.mask_replace_prob} + {self.random_replace_prob}"
            )
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of <= 0:
            raise ValueError(f"pad_to_multiple_of must be > 0, got {self.pad_to_multiple_of}")
        try:
            object.__setattr__(self, "form", BatchForm(self.form))
        except ValueError:
            raise ValueError(
                f"form must be one of {[f.value for f in BatchForm]}, got {self.form!r}"
            ) from None
        object.__setattr__(self, "token_fields", tuple(self.token_fields))
        vocab_size = len(self.spec)
        special = np.asarray(sorted(self.spec.special_ids), dtype=np.int64)
        if special.size and (special.min() < 0 or special.max() >= vocab_size):
            raise ValueError(
                f"spec.special_ids must lie in [0, {vocab_size}), got {special.tolist()}"
            )
        is_special = np.zeros(vocab_size, dtype=bool)
        is_special[special] = True
        object.__setattr__(self, "_is_special", is_special)
        self._build_tables(is_special)

    # --- hooks for subclasses -----------------------------------------------------------------
    def _check_probabilities(self) -> None:
        _check_probability("mlm_probability", self.mlm_probability, low_open=True)

    def _build_tables(self, is_special: np.ndarray) -> None:
        """Per-id selection probability and the pool of random replacements."""
        prob = np.where(is_special, 0.0, self.mlm_probability).astype(np.float32)
        self._set_tables(prob, np.flatnonzero(~is_special))

    def _set_tables(self, prob_table: np.ndarray, replacement_ids: np.ndarray) -> None:
        if replacement_ids.size == 0 and self.random_replace_prob > 0:
            raise ValueError(
                "the vocabulary has no gene token to use as a random replacement: "
                "set random_replace_prob=0 or add gene tokens"
            )
        object.__setattr__(self, "_prob_table", prob_table)
        object.__setattr__(self, "_replacement_ids", replacement_ids.astype(np.int64))

    def _token_plan(self, flat: FlatBatch) -> tuple[np.ndarray, np.ndarray | None]:
        """Selection probability of every token, and which may get a random replacement."""
        return self._prob_table[flat.ids], None

    # --- public API ---------------------------------------------------------------------------
    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Collate ``examples`` (mappings with ``input_ids``) into a batch of tensors."""
        flat = flatten_examples(examples, fields=self.token_fields)
        self._check_ids(flat.ids)
        masked, labels, selected = self.mask_flat(flat)
        fields = {name: (values, 0) for name, values in flat.fields.items()}
        if self.form is BatchForm.PACKED:
            batch = layout_packed(
                flat,
                {"input_ids": masked, "labels": labels, **{k: v for k, (v, _) in fields.items()}},
            )
            where = selected
        else:
            length = padded_length(flat.lengths, pad_to_multiple_of=self.pad_to_multiple_of)
            arrays = {
                "input_ids": (masked, self.spec.pad_id),
                "labels": (labels, IGNORE_INDEX),
                **fields,
            }
            batch, token_pos = layout_padded(flat, arrays, length=length)
            where = token_pos[selected]
        if self.return_masked_positions:
            batch["masked_positions"] = torch.from_numpy(
                np.ascontiguousarray(where, dtype=np.int64)
            )
            batch["masked_labels"] = torch.from_numpy(flat.ids[selected])
        return batch

    def mask_flat(self, flat: FlatBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Mask a flat batch: return masked ids, labels and the indices of the selected tokens."""
        rng = self._rng()
        prob, random_ok = self._token_plan(flat)
        chosen = rng.random(flat.n_tokens, dtype=np.float32) < prob
        self._ensure_one_per_sequence(flat, chosen, prob > 0, rng)
        selected = np.flatnonzero(chosen)
        labels = np.full(flat.n_tokens, IGNORE_INDEX, dtype=np.int64)
        labels[selected] = flat.ids[selected]
        masked = flat.ids.copy()
        draw = rng.random(selected.size)
        to_mask = draw < self.mask_replace_prob
        masked[selected[to_mask]] = self.spec.mask_id
        to_random = ~to_mask & (draw < self.mask_replace_prob + self.random_replace_prob)
        if random_ok is not None:
            to_random &= random_ok[selected]
        n_random = int(to_random.sum())
        if n_random:
            pick = rng.integers(self._replacement_ids.size, size=n_random)
            masked[selected[to_random]] = self._replacement_ids[pick]
        return masked, labels, selected

    def mask_tokens(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return masked ``input_ids`` and ``labels`` for a padded ``(batch, length)`` tensor.

        Pad tokens are special, so they are never selected.
        """
        if input_ids.dim() != 2:
            raise ValueError(
                f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}"
            )
        n, length = input_ids.shape
        ids = input_ids.detach().cpu().numpy().astype(np.int64).reshape(-1)
        self._check_ids(ids)
        lengths = np.full(n, length, dtype=np.int64)
        offsets = np.arange(n + 1, dtype=np.int64) * length
        seq_idx = np.repeat(np.arange(n, dtype=np.int64), length)
        flat = FlatBatch(ids=ids, lengths=lengths, offsets=offsets, seq_idx=seq_idx, fields={})
        masked, labels, _ = self.mask_flat(flat)
        return (
            torch.from_numpy(masked.reshape(n, length)).to(input_ids.device),
            torch.from_numpy(labels.reshape(n, length)).to(input_ids.device),
        )

    # --- internals ----------------------------------------------------------------------------
    def _check_ids(self, ids: np.ndarray) -> None:
        if ids.size and (ids.min() < 0 or ids.max() >= self._prob_table.size):
            bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
            raise ValueError(
                f"input_ids holds token id {bad}, outside the vocabulary of {self._prob_table.size} "
                "tokens: collate with the vocabulary the corpus was tokenized with"
            )

    @staticmethod
    def _ensure_one_per_sequence(
        flat: FlatBatch, chosen: np.ndarray, maskable: np.ndarray, rng: np.random.Generator
    ) -> None:
        """Select one random maskable token in each sequence that has none selected."""
        n = flat.n_seqs
        n_chosen = np.bincount(flat.seq_idx[chosen], minlength=n)
        lacking = n_chosen == 0
        if not lacking.any():
            return
        n_maskable = np.bincount(flat.seq_idx[maskable], minlength=n)
        for b in np.flatnonzero(lacking & (n_maskable > 0)):  # rare: a loop over sequences
            start = flat.offsets[b]
            candidates = np.flatnonzero(maskable[start : flat.offsets[b + 1]])
            chosen[start + candidates[rng.integers(candidates.size)]] = True

    def _rng(self) -> np.random.Generator:
        info = torch.utils.data.get_worker_info()
        worker = -1 if info is None else int(info.id)
        key = (os.getpid(), worker)
        state = self._state
        if state.key != key:
            if self.seed is None:
                state.rng = np.random.default_rng()
            elif worker < 0:
                state.rng = np.random.default_rng(self.seed)
            else:
                state.rng = np.random.default_rng([self.seed, worker])
            state.key = key
        return state.rng  # type: ignore[return-value]  (set just above)
