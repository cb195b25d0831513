"""Phenotype-aware masking (src/stformer_collate/_phenotype.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stformer_collate import IGNORE_INDEX, DataCollatorForPhenotypicMLM, SimpleTokenSpec

PAD, MASK = 0, 1
PHENO = (2, 3, 4, 5)  # e.g. two cell types and two diseases
VOCAB = 30
SPEC = SimpleTokenSpec(pad_id=PAD, mask_id=MASK, vocab_size=VOCAB)
GENE_TYPE, CELL_TYPE, DISEASE = 0, 1, 2


def make_cell(cell_type, disease, genes):
    return {
        "input_ids": [cell_type, disease, *genes],
        "token_type_ids": [CELL_TYPE, DISEASE] + [GENE_TYPE] * len(genes),
    }


cells = st.lists(
    st.builds(
        make_cell,
        st.sampled_from(PHENO[:2]),
        st.sampled_from(PHENO[2:]),
        st.lists(st.integers(6, VOCAB - 1), max_size=20),
    ),
    min_size=1,
    max_size=5,
)


@settings(max_examples=60, deadline=None)
@given(
    examples=cells,
    gene_p=st.floats(0.0, 1.0),
    pheno_p=st.floats(0.05, 1.0),
    by=st.sampled_from(["ids", "types", "both"]),
    form=st.sampled_from(["padded", "packed"]),
    seed=st.integers(0, 2**31),
)
def test_phenotype_masking_invariants(examples, gene_p, pheno_p, by, form, seed):
    ids = frozenset(PHENO) if by in ("ids", "both") else frozenset()
    types = frozenset({CELL_TYPE, DISEASE}) if by in ("types", "both") else frozenset()
    collate = DataCollatorForPhenotypicMLM(
        spec=SPEC,
        phenotype_ids=ids,
        phenotype_type_ids=types,
        mlm_probability=gene_p,
        phenotype_mlm_probability=pheno_p,
        form=form,
        seed=seed,
    )
    batch = collate(examples)
    orig = np.concatenate([ex["input_ids"] for ex in examples])
    otypes = np.concatenate([ex["token_type_ids"] for ex in examples])
    if form == "padded":
        real = batch["attention_mask"].bool()
        out, labels, types_out = (
            batch[k][real].numpy() for k in ("input_ids", "labels", "token_type_ids")
        )
    else:
        out, labels, types_out = (
            batch[k].reshape(-1).numpy() for k in ("input_ids", "labels", "token_type_ids")
        )
    selected = labels != IGNORE_INDEX
    pheno = otypes != GENE_TYPE
    assert (types_out == otypes).all(), (
        "token types must never change (a masked phenotype keeps its type)"
    )
    assert (labels[selected] == orig[selected]).all() and (out[~selected] == orig[~selected]).all()
    if gene_p == 0:
        assert not (selected & ~pheno).any(), "gene tokens masked with mlm_probability=0"
    # A selected phenotype token always becomes the mask token (Transformeromics, issue 16).
    assert (out[selected & pheno] == MASK).all()
    # Random replacements come from genes; phenotype ids are excluded when they are known as ids.
    pool = set(range(6, VOCAB)) | (set(PHENO) if by == "types" else set())
    gene_out = out[selected & ~pheno]
    assert all(t == MASK or t in pool for t in gene_out.tolist())


def test_separate_rates_for_genes_and_phenotypes():
    collate = DataCollatorForPhenotypicMLM(
        spec=SPEC,
        phenotype_ids=frozenset(PHENO),
        mlm_probability=0.1,
        phenotype_mlm_probability=0.6,
        seed=3,
    )
    rng = np.random.default_rng(0)
    n_pheno = n_gene = sel_pheno = sel_gene = 0
    for _ in range(30):
        examples = [make_cell(2, 4, rng.integers(6, VOCAB, size=100).tolist()) for _ in range(16)]
        sel = (collate(examples)["labels"] != IGNORE_INDEX).numpy()
        sel_pheno += int(sel[:, :2].sum())
        sel_gene += int(sel[:, 2:].sum())
        n_pheno += 2 * len(examples)
        n_gene += 100 * len(examples)
    assert abs(sel_pheno / n_pheno - 0.6) < 0.05
    assert abs(sel_gene / n_gene - 0.1) < 0.01


def test_masked_phenotype_keeps_its_category_type_id():
    collate = DataCollatorForPhenotypicMLM(
        spec=SPEC,
        phenotype_type_ids=frozenset({CELL_TYPE, DISEASE}),
        mlm_probability=0.0,
        phenotype_mlm_probability=1.0,
        mask_replace_prob=1.0,
        random_replace_prob=0.0,
        seed=0,
    )
    batch = collate([make_cell(3, 5, [7, 8, 9])])
    assert batch["input_ids"].tolist() == [[MASK, MASK, 7, 8, 9]]
    assert batch["labels"].tolist() == [[3, 5, -100, -100, -100]]
    assert batch["token_type_ids"].tolist() == [[CELL_TYPE, DISEASE, 0, 0, 0]]


def test_invalid_phenotype_settings():
    with pytest.raises(ValueError, match="give phenotype_ids"):
        DataCollatorForPhenotypicMLM(spec=SPEC)
    with pytest.raises(ValueError, match="special tokens"):
        DataCollatorForPhenotypicMLM(spec=SPEC, phenotype_ids=frozenset({MASK, 2}))
    with pytest.raises(ValueError, match="phenotype_ids must lie in"):
        DataCollatorForPhenotypicMLM(spec=SPEC, phenotype_ids=frozenset({VOCAB}))
    with pytest.raises(ValueError, match="both 0"):
        DataCollatorForPhenotypicMLM(
            spec=SPEC,
            phenotype_ids=frozenset(PHENO),
            mlm_probability=0.0,
            phenotype_mlm_probability=0.0,
        )
    with pytest.raises(ValueError, match="phenotype_mlm_probability must be in"):
        DataCollatorForPhenotypicMLM(
            spec=SPEC, phenotype_ids=frozenset(PHENO), phenotype_mlm_probability=2.0
        )
    collate = DataCollatorForPhenotypicMLM(spec=SPEC, phenotype_type_ids=frozenset({CELL_TYPE}))
    with pytest.raises(ValueError, match="no 'token_type_ids'"):
        collate([{"input_ids": [2, 7]}])


def test_collate_fn_wrapper_pads_and_stacks_labels():
    from stformer_collate import collate_fn_wrapper

    class Tok:
        pad_id = 3

    batch = collate_fn_wrapper(Tok())(
        [
            {"input_ids": [0, 7, 8, 1], "token_type_ids": [0, 5, 6, 0], "labels": 1},
            {"input_ids": [0, 1], "token_type_ids": [0, 0], "labels": 0},
        ]
    )
    assert batch["input_ids"].tolist() == [[0, 7, 8, 1], [0, 1, 3, 3]]
    assert batch["token_type_ids"].tolist() == [[0, 5, 6, 0], [0, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["labels"].tolist() == [1, 0]
    with pytest.raises(KeyError, match="extra"):
        collate_fn_wrapper()([{"input_ids": [0], "extra": 1}])


def test_tokenizer_form_requested_rate_and_always_masked():
    class Tok:
        pad_id, mask_id = 3, 2
        special_ids = frozenset({0, 1, 2, 3})
        phenotype_type_ids = frozenset({1})
        phenotype_token_ids = frozenset({10, 11})

        def __len__(self):
            return 30

    examples = [
        {"input_ids": [0, 10 + i % 2, 20, 21, 1], "token_type_ids": [0, 1, 7, 8, 0]}
        for i in range(4000)
    ]
    collate = DataCollatorForPhenotypicMLM(
        tokenizer=Tok(), gene_mask_prob=0.0, phenotype_mask_prob=0.25, seed=0
    )
    batch = collate(examples)
    selected = batch["labels"] != -100
    assert not selected[:, 2:].any()
    assert abs(float(selected[:, 1].float().mean()) - 0.25) < 0.03
    assert (batch["input_ids"][:, 1][selected[:, 1]] == 2).all()
