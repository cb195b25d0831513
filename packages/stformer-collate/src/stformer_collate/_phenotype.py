"""Transformeromics' collators: ``collate_fn_wrapper`` (padding) and ``DataCollatorForPhenotypicMLM``."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from stformer_collate._layout import FlatBatch
from stformer_collate._mlm import DataCollatorForMLM, _check_probability
from stformer_collate._spec import TokenSpec

#: ``[PAD]`` of Transformeromics' ``GeneTokenizer`` (``[CLS] [EOS] [MASK] [PAD]`` are ids 0-3)
DEFAULT_PAD_ID = 3


def collate_fn_wrapper(tokenizer: Any = None) -> Callable[[Sequence[Mapping[str, Any]]], dict]:
    """A function padding examples of ``IterableAnnDataset`` into one dict of tensors.

    ``input_ids`` are padded with the tokenizer's pad id, ``token_type_ids`` and
    ``attention_mask`` with 0 (an example without ``attention_mask`` gets ones); ``labels``
    (one per example) are stacked. Any other key is an error, so nothing is dropped silently.

    >>> import torch
    >>> collate = collate_fn_wrapper()
    >>> batch = collate([{"input_ids": torch.tensor([0, 5, 1]), "token_type_ids": torch.tensor([0, 9, 0]), "labels": torch.tensor(2)},
    ...                  {"input_ids": torch.tensor([0, 1]), "token_type_ids": torch.tensor([0, 0]), "labels": torch.tensor(0)}])
    >>> batch["input_ids"].tolist(), batch["attention_mask"].tolist(), batch["labels"].tolist()
    ([[0, 5, 1], [0, 1, 3]], [[1, 1, 1], [1, 1, 0]], [2, 0])
    """
    pad_id = DEFAULT_PAD_ID if tokenizer is None else int(tokenizer.pad_id)
    known = {"input_ids", "token_type_ids", "attention_mask", "labels", "length"}

    def collate(examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("collate_fn got no examples")
        extra = set().union(*(e.keys() for e in examples)) - known
        if extra:
            raise KeyError(
                f"examples have fields {sorted(extra)} that collate_fn does not pad; drop them"
            )
        ids = [torch.as_tensor(e["input_ids"], dtype=torch.long) for e in examples]
        length = max(t.numel() for t in ids)
        n = len(ids)
        batch = {
            "input_ids": torch.full((n, length), pad_id, dtype=torch.long),
            "attention_mask": torch.zeros((n, length), dtype=torch.long),
        }
        if any("token_type_ids" in e for e in examples):
            batch["token_type_ids"] = torch.zeros((n, length), dtype=torch.long)
        for i, (e, t) in enumerate(zip(examples, ids, strict=True)):
            batch["input_ids"][i, : t.numel()] = t
            mask = e.get("attention_mask")
            batch["attention_mask"][i, : t.numel()] = 1 if mask is None else torch.as_tensor(mask)
            if "token_type_ids" in batch:
                batch["token_type_ids"][i, : t.numel()] = torch.as_tensor(e["token_type_ids"])
        if any("labels" in e for e in examples):
            if not all("labels" in e for e in examples):
                raise KeyError("some examples have labels and others not")
            batch["labels"] = torch.stack([torch.as_tensor(e["labels"]) for e in examples])
        return batch

    return collate


@dataclass(frozen=True, kw_only=True)
class DataCollatorForPhenotypicMLM(DataCollatorForMLM):
    """MLM collator for cells whose sequences carry phenotype tokens besides gene tokens.

    A cell is tokenized as phenotype tokens (a cell type, a disease, a perturbation, ...) followed
    or preceded by its gene tokens; ``token_type_ids`` tell which category each token belongs to.
    Gene tokens are selected with ``mlm_probability`` and phenotype tokens with
    ``phenotype_mlm_probability``. A phenotype token is recognised in either (or both) of two ways:

    * by its id, listed in ``phenotype_ids`` (the vocabulary's phenotype tokens); or
    * by its category, when its ``token_type_ids`` value is in ``phenotype_type_ids``.

    ``token_type_ids`` are never altered, so a masked phenotype keeps its category type id and the
    model knows which kind of token to predict. A selected phenotype token is **always** replaced
    by the mask token (Transformeromics: a phenotype left visible would give its answer away); a
    selected gene token follows ``mask_replace_prob`` / ``random_replace_prob`` (random
    replacements are gene tokens). Tokens are selected independently at the requested rates: no
    token is forced in a cell that drew none (unlike :class:`DataCollatorForMLM`), so the
    phenotype rate is ``phenotype_mlm_probability`` exactly. Forms, fields and seed are as in
    :class:`DataCollatorForMLM`.

    Transformeromics' form: ``DataCollatorForPhenotypicMLM(tokenizer=GeneTokenizer(...),
    gene_mask_prob=..., phenotype_mask_prob=...)`` takes the vocabulary and the phenotype
    categories (``tokenizer.phenotype_type_ids``) from the tokenizer. The batch then also has
    ``attention_mask`` and keeps ``token_type_ids``.

    Parameters
    ----------
    tokenizer
        A ``GeneTokenizer`` (or any :class:`TokenSpec` with ``phenotype_type_ids``); replaces
        ``spec`` and ``phenotype_type_ids``.
    gene_mask_prob, phenotype_mask_prob
        Transformeromics' names of ``mlm_probability`` and ``phenotype_mlm_probability``.
    phenotype_ids
        Token ids of phenotype tokens; none may be special.
    phenotype_type_ids
        ``token_type_ids`` values that mark phenotype positions; the examples must then have
        ``token_type_ids``.
    phenotype_mlm_probability
        Probability that a phenotype token is selected, in ``[0, 1]``.

    >>> from stformer_collate import SimpleTokenSpec
    >>> spec = SimpleTokenSpec(pad_id=0, mask_id=1, vocab_size=20)
    >>> collate = DataCollatorForPhenotypicMLM(
    ...     spec=spec, phenotype_ids=frozenset({2, 3}), phenotype_mlm_probability=1.0,
    ...     mask_replace_prob=1.0, random_replace_prob=0.0, mlm_probability=0.0, seed=0)
    >>> batch = collate([{"input_ids": [2, 7, 8], "token_type_ids": [1, 0, 0]}])
    >>> batch["input_ids"].tolist(), batch["labels"].tolist(), batch["token_type_ids"].tolist()
    ([[1, 7, 8]], [[2, -100, -100]], [[1, 0, 0]])
    """

    spec: TokenSpec | None = None
    tokenizer: Any = None
    gene_mask_prob: float | None = None
    phenotype_mask_prob: float | None = None
    phenotype_ids: frozenset[int] = field(default_factory=frozenset)
    phenotype_type_ids: frozenset[int] = field(default_factory=frozenset)
    phenotype_mlm_probability: float = 0.15

    def __post_init__(self) -> None:
        if self.tokenizer is not None:
            if self.spec is not None and self.spec is not self.tokenizer:
                raise TypeError("give tokenizer= or spec=, not both")
            object.__setattr__(self, "spec", self.tokenizer)
            if not self.phenotype_type_ids:
                object.__setattr__(
                    self,
                    "phenotype_type_ids",
                    frozenset(getattr(self.tokenizer, "phenotype_type_ids", ())),
                )
            if not self.phenotype_ids:
                object.__setattr__(
                    self,
                    "phenotype_ids",
                    frozenset(getattr(self.tokenizer, "phenotype_token_ids", ())),
                )
        if self.spec is None:
            raise TypeError("DataCollatorForPhenotypicMLM needs tokenizer= (or spec=)")
        for alias, name in (
            ("gene_mask_prob", "mlm_probability"),
            ("phenotype_mask_prob", "phenotype_mlm_probability"),
        ):
            value = getattr(self, alias)
            if value is not None:
                object.__setattr__(self, name, float(value))
        super().__post_init__()

    def mask_flat(self, flat: FlatBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        masked, labels, selected = super().mask_flat(flat)
        phenotype = self.phenotype_mask(flat)
        masked[selected[phenotype[selected]]] = (
            self.spec.mask_id
        )  # a selected phenotype is always masked
        return masked, labels, selected

    @staticmethod
    def _ensure_one_per_sequence(flat, chosen, maskable, rng) -> None:
        """No forced target: tokens are drawn at the requested rates only."""

    def _check_probabilities(self) -> None:
        _check_probability("mlm_probability", self.mlm_probability)
        _check_probability("phenotype_mlm_probability", self.phenotype_mlm_probability)
        if self.mlm_probability == 0 and self.phenotype_mlm_probability == 0:
            raise ValueError(
                "mlm_probability and phenotype_mlm_probability are both 0: nothing would be masked"
            )
        object.__setattr__(self, "phenotype_ids", frozenset(int(i) for i in self.phenotype_ids))
        object.__setattr__(
            self, "phenotype_type_ids", frozenset(int(i) for i in self.phenotype_type_ids)
        )
        if (
            not self.phenotype_ids
            and not self.phenotype_type_ids
            and self.phenotype_mlm_probability > 0
        ):
            raise ValueError(
                "give phenotype_ids (the phenotype token ids) or phenotype_type_ids (the "
                "token_type_ids values of phenotype positions), or use DataCollatorForMLM"
            )
        if self.phenotype_type_ids and "token_type_ids" not in self.token_fields:
            raise ValueError("phenotype_type_ids needs 'token_type_ids' in token_fields")

    def _build_tables(self, is_special: np.ndarray) -> None:
        vocab_size = is_special.size
        ids = np.asarray(sorted(self.phenotype_ids), dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
            raise ValueError(f"phenotype_ids must lie in [0, {vocab_size}), got {ids.tolist()}")
        if is_special[ids].any():
            raise ValueError(
                f"phenotype_ids {sorted(set(ids[is_special[ids]].tolist()))} are special tokens, "
                "which are never masked: remove them from phenotype_ids"
            )
        is_phenotype = np.zeros(vocab_size, dtype=bool)
        is_phenotype[ids] = True
        gene_prob = np.where(is_special | is_phenotype, 0.0, self.mlm_probability)
        object.__setattr__(self, "_is_phenotype_id", is_phenotype)
        object.__setattr__(self, "_gene_prob_table", gene_prob.astype(np.float32))
        prob = np.where(is_phenotype, self.phenotype_mlm_probability, gene_prob)
        self._set_tables(prob.astype(np.float32), np.flatnonzero(~is_special & ~is_phenotype))

    def _token_plan(self, flat: FlatBatch) -> tuple[np.ndarray, np.ndarray]:
        phenotype = self.phenotype_mask(flat)
        prob = np.where(
            phenotype, np.float32(self.phenotype_mlm_probability), self._gene_prob_table[flat.ids]
        )
        return prob, ~phenotype

    def phenotype_mask(self, flat: FlatBatch) -> np.ndarray:
        """Which tokens of a flat batch are phenotype tokens (special tokens never are)."""
        phenotype = self._is_phenotype_id[flat.ids]
        if self.phenotype_type_ids:
            types = flat.fields.get("token_type_ids")
            if types is None:
                raise ValueError(
                    "phenotype_type_ids is set but the examples have no 'token_type_ids': "
                    "tokenize with token types, or identify phenotypes by phenotype_ids"
                )
            marked = np.isin(types, np.fromiter(self.phenotype_type_ids, dtype=np.int64))
            phenotype = phenotype | (marked & ~self._is_special[flat.ids])
        return phenotype
