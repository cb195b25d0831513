"""The fast forward path agrees with transformers' BERT: fused layers, padding masks, deletion gathers."""

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel

from stformer_train.perturb import PooledEncoder
from stformer_train.perturb._engine import FusedBertLayer


def _model(act: str) -> BertModel:
    torch.manual_seed(3)
    cfg = BertConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=48,
        hidden_act=act,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    return BertModel(cfg, add_pooling_layer=False).eval()


@pytest.mark.parametrize("act", ["relu", "gelu"])
def test_pooled_hidden_states_match_transformers_with_padding(act):
    model = _model(act)
    seqs = [np.array([5, 9, 7, 11, 3]), np.array([8, 4]), np.array([6, 12, 13])]
    enc = PooledEncoder(model, hidden_layer=-2, device="cpu", dtype=torch.float32)
    assert all(isinstance(layer, FusedBertLayer) for layer in enc.layers)
    h, keep = enc.hidden(seqs)
    ids = torch.zeros((3, 5), dtype=torch.long)
    mask = torch.zeros((3, 5), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(s)
        mask[i, : len(s)] = 1
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[
            -2
        ]
    m = mask.bool()
    assert torch.equal(keep, m)
    torch.testing.assert_close(h[m], want[m], atol=1e-5, rtol=1e-5)


def test_deletion_copies_match_the_copies_run_whole():
    model = _model("relu")
    enc = PooledEncoder(model, hidden_layer=-1, special_ids=[1, 2], device="cpu")
    seq = np.array([1, 5, 9, 7, 11, 3, 2])  # <cls>-like and <eos>-like frame
    positions = np.arange(1, 6)
    h, keep = enc.deletions(seq, positions)
    h_ref, keep_ref = enc.hidden([np.delete(seq, p) for p in positions])
    assert torch.equal(keep, keep_ref)
    torch.testing.assert_close(enc.pool(h, keep), enc.pool(h_ref, keep_ref), atol=1e-5, rtol=1e-5)
