"""The native MLM collator (src/stformer_collate/_mlm.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stformer_collate import IGNORE_INDEX, BatchForm, DataCollatorForMLM, SimpleTokenSpec

PAD, MASK, CLS = 0, 1, 2
VOCAB = 40
SPEC = SimpleTokenSpec(
    pad_id=PAD, mask_id=MASK, vocab_size=VOCAB, extra_special_ids=frozenset({CLS})
)
SPECIAL = {PAD, MASK, CLS}

# Cells: an optional <cls> first, then gene ids, sometimes with a stray special token inside.
token = st.one_of(st.integers(3, VOCAB - 1), st.sampled_from(sorted(SPECIAL)))
cell = st.tuples(st.booleans(), st.lists(token, max_size=25)).map(
    lambda t: ([CLS] if t[0] else []) + t[1]
)
cells = st.lists(cell, min_size=1, max_size=6)


def check_invariants(examples, batch, collate):
    """Every invariant of one padded batch, against the examples it came from."""
    ids, labels, attn = batch["input_ids"], batch["labels"], batch["attention_mask"]
    for b, ex in enumerate(examples):
        orig = np.asarray(ex["input_ids"], dtype=np.int64)
        n = orig.size
        out, lab = ids[b, :n].numpy(), labels[b, :n].numpy()
        selected = lab != IGNORE_INDEX
        special = np.isin(orig, sorted(SPECIAL))
        assert attn[b, :n].all() and not attn[b, n:].any()
        assert (ids[b, n:] == PAD).all() and (labels[b, n:] == IGNORE_INDEX).all()
        assert not (selected & special).any(), "a special token was selected"
        assert (lab[selected] == orig[selected]).all(), "labels must be the original ids"
        assert (out[~selected] == orig[~selected]).all(), "an unselected token changed"
        changed = selected & (out != orig) & (out != MASK)
        assert not np.isin(out[changed], sorted(SPECIAL)).any(), "special random replacement"
        if (~special).any():
            assert selected.any(), "a sequence with genes got no prediction target"
    if collate.return_masked_positions:
        flat_labels = labels.reshape(-1)
        where = torch.nonzero(flat_labels != IGNORE_INDEX).reshape(-1)
        assert batch["masked_positions"].tolist() == where.tolist()
        assert batch["masked_labels"].tolist() == flat_labels[where].tolist()


@settings(max_examples=80, deadline=None)
@given(
    examples=cells.map(lambda cs: [{"input_ids": c} for c in cs]),
    p=st.floats(0.01, 1.0),
    split=st.sampled_from([(0.8, 0.1), (1.0, 0.0), (0.0, 1.0), (0.5, 0.4), (0.0, 0.0)]),
    seed=st.integers(0, 2**31),
)
def test_masking_invariants_hold_for_any_batch(examples, p, split, seed):
    collate = DataCollatorForMLM(
        spec=SPEC,
        mlm_probability=p,
        mask_replace_prob=split[0],
        random_replace_prob=split[1],
        return_masked_positions=True,
        seed=seed,
    )
    check_invariants(examples, collate(examples), collate)


@settings(max_examples=50, deadline=None)
@given(
    examples=cells.map(lambda cs: [{"input_ids": c, "token_type_ids": [7] * len(c)} for c in cs]),
    seed=st.integers(0, 2**31),
    multiple=st.sampled_from([None, 8]),
)
def test_packed_and_padded_forms_carry_the_same_tokens_and_labels(examples, seed, multiple):
    common = dict(spec=SPEC, seed=seed, return_masked_positions=True, pad_to_multiple_of=multiple)
    padded = DataCollatorForMLM(form=BatchForm.PADDED, **common)(examples)
    packed = DataCollatorForMLM(form="packed", **common)(examples)
    real = padded["attention_mask"].bool()
    for key in ("input_ids", "labels", "token_type_ids"):
        assert packed[key].shape == (1, int(real.sum()))
        assert packed[key].reshape(-1).tolist() == padded[key][real].tolist()
    assert packed["masked_labels"].tolist() == padded["masked_labels"].tolist()
    flat_packed = packed["labels"].reshape(-1)
    assert flat_packed[packed["masked_positions"]].tolist() == packed["masked_labels"].tolist()
    assert "attention_mask" not in packed  # no padding, so no mask
    assert padded["input_ids"].shape[1] % (multiple or 1) == 0


def test_masking_rate_and_replacement_split_over_many_batches():
    collate = DataCollatorForMLM(spec=SPEC, mlm_probability=0.15, seed=123)
    rng = np.random.default_rng(0)
    n_genes = n_selected = n_mask = n_kept = n_random = 0
    for _ in range(40):
        examples = [{"input_ids": [CLS, *rng.integers(3, VOCAB, size=200)]} for _ in range(8)]
        batch = collate(examples)
        orig = torch.tensor([ex["input_ids"] for ex in examples])
        selected = batch["labels"] != IGNORE_INDEX
        n_genes += int((orig >= 3).sum())
        n_selected += int(selected.sum())
        out = batch["input_ids"][selected]
        n_mask += int((out == MASK).sum())
        n_kept += int((out == orig[selected]).sum())
        n_random += int(((out != MASK) & (out != orig[selected])).sum())
    rate = n_selected / n_genes
    assert abs(rate - 0.15) < 0.01, rate
    assert abs(n_mask / n_selected - 0.8) < 0.03
    # A random replacement can draw the original id (1 in 37 here); count those as kept.
    assert abs((n_random + n_kept) / n_selected - 0.2) < 0.03
    assert n_random / n_selected > 0.08


def test_same_seed_same_batches_other_seed_differs():
    rng = np.random.default_rng(1)
    examples = [{"input_ids": rng.integers(3, VOCAB, size=50).tolist()} for _ in range(4)]
    a, b, c = (DataCollatorForMLM(spec=SPEC, seed=s) for s in (7, 7, 8))
    for _ in range(3):
        ba, bb, bc = a(examples), b(examples), c(examples)
        assert torch.equal(ba["input_ids"], bb["input_ids"])
        assert torch.equal(ba["labels"], bb["labels"])
    assert not torch.equal(ba["labels"], bc["labels"])


def test_loader_workers_get_distinct_reproducible_streams(monkeypatch):
    class Info:
        def __init__(self, i):
            self.id = i

    examples = [{"input_ids": list(range(3, VOCAB)) * 3}]
    labels = {}
    for worker in (0, 1, 0):
        collate = DataCollatorForMLM(spec=SPEC, seed=5)
        monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda w=worker: Info(w))
        labels.setdefault(worker, []).append(collate(examples)["labels"])
    assert torch.equal(labels[0][0], labels[0][1])
    assert not torch.equal(labels[0][0], labels[1][0])


def test_only_special_tokens_and_empty_sequences_get_no_target():
    collate = DataCollatorForMLM(spec=SPEC, seed=0)
    batch = collate([{"input_ids": [CLS, PAD]}, {"input_ids": []}, {"input_ids": [5]}])
    assert batch["labels"].tolist() == [[-100, -100], [-100, -100], [5, -100]]


def test_mask_tokens_on_a_padded_tensor_never_touches_padding():
    collate = DataCollatorForMLM(spec=SPEC, mlm_probability=0.9, seed=0)
    ids = torch.tensor([[5, 6, 7, PAD], [8, PAD, PAD, PAD]])
    masked, labels = collate.mask_tokens(ids)
    assert (masked[ids == PAD] == PAD).all() and (labels[ids == PAD] == IGNORE_INDEX).all()
    assert ((labels != IGNORE_INDEX).sum(dim=1) >= 1).all()
    with pytest.raises(ValueError, match=r"\(batch, length\)"):
        collate.mask_tokens(ids[0])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mlm_probability": 0.0}, "mlm_probability must be in"),
        ({"mlm_probability": 1.5}, "mlm_probability must be in"),
        ({"mask_replace_prob": -0.1}, "mask_replace_prob must be in"),
        ({"mask_replace_prob": 0.8, "random_replace_prob": 0.3}, "must be <= 1"),
        ({"pad_to_multiple_of": 0}, "pad_to_multiple_of must be > 0"),
        ({"form": "ragged"}, "form must be one of"),
    ],
)
def test_invalid_settings_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DataCollatorForMLM(spec=SPEC, **kwargs)


def test_vocabulary_without_genes_and_out_of_vocabulary_ids_are_refused():
    with pytest.raises(ValueError, match="no gene token"):
        DataCollatorForMLM(spec=SimpleTokenSpec(pad_id=0, mask_id=1, vocab_size=2))
    collate = DataCollatorForMLM(spec=SPEC)
    with pytest.raises(ValueError, match=f"token id {VOCAB}, outside the vocabulary of {VOCAB}"):
        collate([{"input_ids": [3, VOCAB]}])
    with pytest.raises(ValueError, match="cannot collate an empty list"):
        collate([])


def test_config_is_frozen_and_accepts_numpy_rows():
    collate = DataCollatorForMLM(spec=SPEC, seed=0)
    with pytest.raises(AttributeError):
        collate.mlm_probability = 0.5  # type: ignore[misc]
    batch = collate([{"input_ids": np.arange(3, 20, dtype=np.int32), "length": 17}])
    assert batch["input_ids"].dtype == torch.int64 and set(batch) == {
        "input_ids",
        "labels",
        "attention_mask",
    }
