"""The tokenizer-like pre-collator (src/stformer_collate/_precollator.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stformer_collate import DataCollatorForMLM, PreCollator, TokenSpec

GENES = [f"ENSG{i:05d}" for i in range(20)]
TOKENS = {"<pad>": 0, "<mask>": 1, "<cls>": 2, **{g: i + 3 for i, g in enumerate(GENES)}}


@pytest.fixture
def pre():
    return PreCollator(TOKENS)


def test_vocabulary_api(pre):
    assert len(pre) == pre.vocab_size == 23
    assert (pre.pad_token, pre.pad_token_id, pre.mask_token, pre.mask_token_id) == (
        "<pad>",
        0,
        "<mask>",
        1,
    )
    assert (pre.cls_token_id, pre.eos_token, pre.eos_token_id) == (2, None, None)
    assert pre.all_special_ids == [0, 1, 2] and pre.padding_side == "right"
    assert pre.convert_tokens_to_ids("ENSG00001") == 4
    assert pre.convert_tokens_to_ids(["ENSG00001", "unknown"]) == [4, None]
    assert pre.convert_ids_to_tokens(4) == "ENSG00001"
    assert pre.convert_ids_to_tokens(np.int64(99)) is None
    assert pre.convert_ids_to_tokens([0, 4, 99]) == ["<pad>", "ENSG00001", None]
    assert pre.convert_ids_to_tokens([0, 4], skip_special_tokens=True) == ["ENSG00001"]
    assert pre.get_special_tokens_mask([2, 5, 1, 0], already_has_special_tokens=True) == [
        1,
        0,
        1,
        1,
    ]
    assert isinstance(pre, TokenSpec) and pre.special_ids == frozenset({0, 1, 2})


def test_pad_strategies_and_return_types(pre):
    examples = [{"input_ids": [3, 4, 5], "length": 3}, {"input_ids": [6], "length": 1}]
    out = pre.pad(examples)
    assert out["input_ids"] == [[3, 4, 5], [6, 0, 0]] and out["attention_mask"] == [
        [1, 1, 1],
        [1, 0, 0],
    ]
    assert out["length"] == [3, 1]
    out = pre.pad(examples, padding="max_length", max_length=5, return_tensors="pt")
    assert isinstance(out["input_ids"], torch.Tensor) and out["input_ids"].shape == (2, 5)
    assert out["length"].tolist() == [3, 1]
    out = pre.pad(examples, padding="longest", pad_to_multiple_of=4, return_tensors="np")
    assert isinstance(out["input_ids"], np.ndarray) and out["input_ids"].shape == (2, 4)
    out = pre.pad(examples, padding=False)
    assert out["input_ids"] == [[3, 4, 5], [6]]
    out = pre.pad({"input_ids": [[3, 4], [5]]}, return_attention_mask=False)
    assert out == {"input_ids": [[3, 4], [5, 0]]}
    single = pre.pad({"input_ids": [3, 4]}, padding="max_length", max_length=3)
    assert single == {"input_ids": [3, 4, 0], "attention_mask": [1, 1, 0]}


def test_pad_keeps_strings_and_pads_special_tokens_mask(pre):
    examples = [
        {"input_ids": [2, 4], "special_tokens_mask": [1, 0], "cell_type": "B"},
        {"input_ids": [2], "special_tokens_mask": [1], "cell_type": "T"},
    ]
    out = pre.pad(examples, return_tensors="pt")
    assert out["special_tokens_mask"].tolist() == [[1, 0], [1, 1]]
    assert out["cell_type"] == ["B", "T"]


def test_left_padding(pre):
    pre.padding_side = "left"
    out = pre.pad(
        [
            {"input_ids": [3, 4, 5], "token_type_ids": [1, 1, 1]},
            {"input_ids": [6], "token_type_ids": [1]},
        ]
    )
    assert out["input_ids"] == [[3, 4, 5], [0, 0, 6]]
    assert out["attention_mask"] == [[1, 1, 1], [0, 0, 1]]
    assert out["token_type_ids"] == [[1, 1, 1], [0, 0, 1]]


def test_pad_errors(pre):
    with pytest.raises(ValueError, match="needs max_length"):
        pre.pad([{"input_ids": [3]}], padding="max_length")
    with pytest.raises(ValueError, match="more than max_length=1"):
        pre.pad([{"input_ids": [3, 4]}], padding="max_length", max_length=1)
    with pytest.raises(ValueError, match="padding must be"):
        pre.pad([{"input_ids": [3]}], padding="sometimes")
    with pytest.raises(ValueError, match="equal length"):
        pre.pad([{"input_ids": [3]}, {"input_ids": [3, 4]}], padding=False, return_tensors="pt")
    with pytest.raises(ValueError, match="return_tensors must be"):
        pre.pad([{"input_ids": [3]}], return_tensors="tf")
    with pytest.raises(ValueError, match="pad_token '<pad>' is not in token_dict"):
        PreCollator({"<mask>": 0, "g": 1})
    with pytest.raises(ValueError, match="ids must be unique"):
        PreCollator({"<pad>": 0, "<mask>": 0})


def test_call_encodes_gene_tokens(pre):
    assert pre(["ENSG00000", "ENSG00002"]) == {"input_ids": [3, 5], "attention_mask": [1, 1]}
    out = pre([["ENSG00000", "ENSG00002"], ["ENSG00001"]], padding=True, return_tensors="pt")
    assert out["input_ids"].tolist() == [[3, 5], [4, 0]]
    assert pre([["ENSG00000"], ["ENSG00001", "ENSG00002"]])["input_ids"] == [[3], [4, 5]]
    with pytest.raises(ValueError, match=r"cell 0: tokens \['nope'\] are not in the vocabulary"):
        pre(["nope"])


@settings(max_examples=40, deadline=None)
@given(seqs=st.lists(st.lists(st.integers(0, 22), max_size=10), min_size=1, max_size=5))
def test_pad_matches_the_native_padded_layout(seqs):
    pre = PreCollator(TOKENS)
    out = pre.pad([{"input_ids": s} for s in seqs], return_tensors="pt")
    longest = max(len(s) for s in seqs)
    assert out["input_ids"].tolist() == [s + [0] * (longest - len(s)) for s in seqs]
    assert out["attention_mask"].sum().item() == sum(len(s) for s in seqs)
    assert pre.get_special_tokens_mask(seqs[0]) == [int(t in (0, 1, 2)) for t in seqs[0]]


def test_native_collator_takes_the_precollator_as_its_spec(pre):
    collate = DataCollatorForMLM(spec=pre, seed=0)
    batch = collate([{"input_ids": [2, 3, 4, 5]}])
    assert batch["labels"][0, 0].item() == -100 and (batch["labels"] != -100).any()


def test_works_as_the_tokenizer_of_transformers_mlm_collator(pre):
    transformers = pytest.importorskip("transformers")
    collator = transformers.DataCollatorForLanguageModeling(
        tokenizer=pre, mlm=True, mlm_probability=0.5, pad_to_multiple_of=8, seed=0
    )
    rng = np.random.default_rng(0)
    examples = [
        {"input_ids": [2, *rng.integers(3, 23, size=n).tolist()], "length": n + 1}
        for n in (30, 12, 5)
    ]
    batch = collator(examples)
    ids, labels, attn = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert ids.shape == labels.shape == attn.shape == (3, 32)
    assert attn.sum().item() == 31 + 13 + 6
    selected = labels != -100
    assert selected.any() and not selected[:, 0].any(), "<cls> must never be masked"
    assert not selected[attn == 0].any(), "padding must never be masked"
    assert (ids[attn == 0] == pre.pad_token_id).all()
    assert (ids[selected] == pre.mask_token_id).any()
    orig = pre.pad(examples, pad_to_multiple_of=8, return_tensors="pt")["input_ids"]
    assert torch.equal(labels[selected], orig[selected])
