"""Masking with separate probabilities for gene tokens and phenotype tokens (Transformeromics)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from stformer_collate._layout import FlatBatch
from stformer_collate._mlm import DataCollatorForMLM, _check_probability


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
    model knows which kind of token to predict. A selected phenotype token is replaced by
    ``<mask>`` with ``mask_replace_prob`` and otherwise kept: random replacements come from gene
    tokens only (ids neither special nor in ``phenotype_ids``) and are used for gene tokens only.
    Everything else (forms, fields, seed, the at-least-one-target rule over genes and phenotypes
    together) is as in :class:`DataCollatorForMLM`.

    Parameters
    ----------
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

    phenotype_ids: frozenset[int] = field(default_factory=frozenset)
    phenotype_type_ids: frozenset[int] = field(default_factory=frozenset)
    phenotype_mlm_probability: float = 0.15

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
        if not self.phenotype_ids and not self.phenotype_type_ids:
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
