"""Perturbations of one token sequence, against Geneformer's definitions written out by hand."""

import numpy as np
import pytest

from stformer_train.perturb import perturb_tokens

GENES = np.arange(10, 18)  # 8 genes, rank order: 10 highest


def test_delete_removes_the_gene_and_keeps_the_order():
    assert perturb_tokens(GENES, [13], "delete").tolist() == [10, 11, 12, 14, 15, 16, 17]
    assert perturb_tokens(GENES, [11, 16], "delete").tolist() == [10, 12, 13, 14, 15, 17]
    assert perturb_tokens(GENES, [99], "delete") is None


def test_overexpress_moves_to_the_front_and_inserts_absent_genes():
    assert perturb_tokens(GENES, [15], "overexpress").tolist() == [15, 10, 11, 12, 13, 14, 16, 17]
    # an absent gene is inserted first; the longest sequence is kept
    assert perturb_tokens(GENES, [99], "overexpress", max_genes=8).tolist() == [
        99,
        10,
        11,
        12,
        13,
        14,
        15,
        16,
    ]


def test_activate_and_inhibit_move_by_quartiles():
    # 8 genes: quartiles are positions {0,1} {2,3} {4,5} {6,7}; the middle of quartile q is 2q+1
    assert (
        perturb_tokens(GENES, [16], "activate", rank_shift=1).tolist().index(16) == 5
    )  # q3 -> middle of q2
    assert (
        perturb_tokens(GENES, [12], "activate", rank_shift=1).tolist().index(12) == 1
    )  # q1 -> middle of q0
    assert (
        perturb_tokens(GENES, [11], "activate", rank_shift=1).tolist().index(11) == 0
    )  # q0 -> front
    assert (
        perturb_tokens(GENES, [10], "inhibit", rank_shift=2).tolist().index(10) == 5
    )  # q0 -> middle of q2
    assert (
        perturb_tokens(GENES, [14], "inhibit", rank_shift=2).tolist().index(14) == 7
    )  # q2 -> bottom
    out = perturb_tokens(GENES, [14], "inhibit", rank_shift=1)
    assert sorted(out.tolist()) == GENES.tolist()


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="perturbation must be one of"):
        perturb_tokens(GENES, [10], "knockout")
    with pytest.raises(ValueError, match="rank_shift"):
        perturb_tokens(GENES, [10], "inhibit", rank_shift=4)
