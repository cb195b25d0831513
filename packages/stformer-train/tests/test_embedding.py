"""Cell embeddings: mean and first-token pooling, padding-independent, in the input order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stformer_train import bert_config_from, build_mlm_model, embed_sequences

PAD = 0


@pytest.fixture(scope="module")
def model(tiny):
    return build_mlm_model(bert_config_from(tiny, vocab_size=40, pad_token_id=PAD), seed=0)


SEQS = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16], [17]]


def _alone(model, seq):
    """The last hidden layer of one sequence run on its own (no padding at all)."""
    with torch.inference_mode():
        out = model.base_model.eval()(input_ids=torch.tensor([seq]))
    return out.last_hidden_state[0].numpy()


def test_mean_pooling_is_the_mean_over_real_tokens_whatever_the_batching(model):
    emb = embed_sequences(model, SEQS, pad_id=PAD, batch_size=3, progress=False)
    assert emb.shape == (4, model.config.hidden_size) and emb.dtype == np.float32
    for i, seq in enumerate(SEQS):  # in input order, padding did not leak into the mean
        np.testing.assert_allclose(emb[i], _alone(model, seq).mean(0), atol=1e-5)
    one_by_one = embed_sequences(model, SEQS, pad_id=PAD, batch_size=1, progress=False)
    np.testing.assert_allclose(emb, one_by_one, atol=1e-5)


def test_cls_pooling_takes_the_first_token(model):
    emb = embed_sequences(model, SEQS, pad_id=PAD, pooling="cls", batch_size=4, progress=False)
    for i, seq in enumerate(SEQS):
        np.testing.assert_allclose(emb[i], _alone(model, seq)[0], atol=1e-5)
    mean = embed_sequences(model, SEQS, pad_id=PAD, pooling="mean", progress=False)
    assert not np.allclose(emb[0], mean[0])


def test_bad_pooling_and_batch_size_are_value_errors(model):
    with pytest.raises(ValueError, match="pooling"):
        embed_sequences(model, SEQS, pad_id=PAD, pooling="max", progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        embed_sequences(model, SEQS, pad_id=PAD, batch_size=0, progress=False)


def test_hidden_layer_picks_that_layer_of_the_encoder(model):
    with torch.inference_mode():
        states = model.base_model.eval()(
            input_ids=torch.tensor([SEQS[0]]), output_hidden_states=True
        ).hidden_states
    for layer in (0, 1, -2, -1):
        emb = embed_sequences(model, SEQS, pad_id=PAD, hidden_layer=layer, progress=False)
        np.testing.assert_allclose(emb[0], states[layer][0].numpy().mean(0), atol=1e-5)
    last = embed_sequences(model, SEQS, pad_id=PAD, progress=False)
    np.testing.assert_allclose(
        embed_sequences(model, SEQS, pad_id=PAD, hidden_layer=2, progress=False), last, atol=1e-6
    )
    for bad in (3, -4):  # a 2-layer model has 3 hidden states: embeddings + 2 layers
        with pytest.raises(ValueError, match="hidden_layer"):
            embed_sequences(model, SEQS, pad_id=PAD, hidden_layer=bad, progress=False)
