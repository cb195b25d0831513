"""Flattening and layouts (src/stformer_collate/_layout.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stformer_collate import BatchForm, flatten_examples, pad_examples
from stformer_collate._layout import layout_packed, layout_padded, padded_length


def test_pad_examples_pads_ids_types_and_ignores_other_keys():
    examples = [
        {"input_ids": [5, 6, 7], "token_type_ids": [1, 0, 0], "length": 3, "cell_type": "B"},
        {
            "input_ids": np.array([8]),
            "token_type_ids": np.array([2]),
            "length": 1,
            "cell_type": "T",
        },
    ]
    batch = pad_examples(examples, pad_id=0, pad_to_multiple_of=4)
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids"}
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0], [8, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    assert batch["token_type_ids"].tolist() == [[1, 0, 0, 0], [2, 0, 0, 0]]
    assert batch["input_ids"].dtype == torch.int64


def test_pad_examples_max_length_and_empty_sequence():
    batch = pad_examples([{"input_ids": []}, {"input_ids": [4, 4]}], pad_id=9, max_length=5)
    assert batch["input_ids"].tolist() == [[9] * 5, [4, 4, 9, 9, 9]]
    assert batch["attention_mask"].sum().item() == 2


def test_flatten_accepts_tensors_and_reports_bad_examples():
    flat = flatten_examples([{"input_ids": torch.tensor([3, 4])}, {"input_ids": torch.tensor([5])}])
    assert flat.ids.tolist() == [3, 4, 5] and flat.offsets.tolist() == [0, 2, 3]
    assert flat.seq_idx.tolist() == [0, 0, 1] and flat.positions().tolist() == [0, 1, 0]
    with pytest.raises(ValueError, match="cannot collate an empty list"):
        flatten_examples([])
    with pytest.raises(ValueError, match="example 1 has no 'input_ids'"):
        flatten_examples([{"input_ids": [1]}, {"ids": [2]}])
    with pytest.raises(ValueError, match="example 1 has no 'token_type_ids'"):
        flatten_examples([{"input_ids": [1], "token_type_ids": [0]}, {"input_ids": [2]}])
    with pytest.raises(ValueError, match="example 0: 'token_type_ids' has 2 values"):
        flatten_examples([{"input_ids": [1], "token_type_ids": [0, 0]}])


def test_padded_length_rounds_up():
    assert padded_length(np.array([3, 5]), pad_to_multiple_of=8) == 8
    assert padded_length(np.array([3, 5]), max_length=7) == 7
    assert padded_length(np.array([16]), pad_to_multiple_of=8) == 16
    assert BatchForm("packed") is BatchForm.PACKED


sequences = st.lists(st.lists(st.integers(2, 30), max_size=12), min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(seqs=sequences, multiple=st.sampled_from([None, 1, 4, 8]))
def test_padded_and_packed_layouts_hold_the_same_tokens(seqs, multiple):
    flat = flatten_examples([{"input_ids": s} for s in seqs])
    length = padded_length(flat.lengths, pad_to_multiple_of=multiple)
    padded, where = layout_padded(flat, {"input_ids": (flat.ids, 0)}, length=length)
    packed = layout_packed(flat, {"input_ids": flat.ids})
    ids, attn = padded["input_ids"], padded["attention_mask"]
    assert ids.shape == (len(seqs), length) and (multiple is None or length % multiple == 0)
    for b, s in enumerate(seqs):
        assert ids[b, : len(s)].tolist() == s and attn[b].sum().item() == len(s)
        assert not ids[b, len(s) :].any()
    # The packed row is exactly the real tokens of the padded form, in order, with no padding.
    assert packed["input_ids"].reshape(-1).tolist() == ids[attn.bool()].tolist()
    assert ids.reshape(-1)[torch.from_numpy(where)].tolist() == flat.ids.tolist()
    cu = packed["cu_seqlens"]
    assert cu.dtype == torch.int32 and cu.tolist() == [0, *np.cumsum([len(s) for s in seqs])]
    assert packed["max_seqlen"] == max(len(s) for s in seqs)
    pos = packed["position_ids"].reshape(-1).tolist()
    assert pos == [i for s in seqs for i in range(len(s))]
    assert packed["seq_idx"].reshape(-1).tolist() == [b for b, s in enumerate(seqs) for _ in s]
