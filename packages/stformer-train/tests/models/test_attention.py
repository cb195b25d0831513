"""Packed (unpadded) batches through PACKED_ATTENTION give what padded batches give, on CPU."""

import pytest
import torch

from stformer_collate import BatchForm, DataCollatorForMLM, SimpleTokenSpec
from stformer_train import ModelConfig
from stformer_train.models import (
    PACKED_ATTENTION,
    _attention,
    bert_config_from,
    build_genebert_config,
    build_mlm_model,
    mlm_loss,
    packed_attention_backend,
    use_packed_backend,
)
from stformer_train.models._mlm import encoder_inputs, runs_packed

SPEC = SimpleTokenSpec(pad_id=0, mask_id=1, vocab_size=60)
LENGTHS = (12, 5, 40, 9, 30, 1)


def _examples(lengths=LENGTHS, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(2, 60, (n,), generator=g).tolist()} for n in lengths]


def _batches(examples, seed=3, **kw):
    common = dict(spec=SPEC, seed=seed, **kw)
    padded = DataCollatorForMLM(form=BatchForm.PADDED, **common)(examples)
    packed = DataCollatorForMLM(form=BatchForm.PACKED, **common)(examples)
    return padded, packed


def _model(tiny, **kw):
    config = bert_config_from(tiny, vocab_size=60)
    return build_mlm_model(config, seed=0, **kw).eval()


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _hidden(model, batch):
    kwargs, _ = encoder_inputs(model, batch)
    return model.bert(**kwargs).last_hidden_state


@pytest.mark.parametrize("masked_only", [True, False])
def test_packed_loss_and_gradients_equal_padded(tiny, masked_only):
    model = _model(tiny)
    padded, packed = _batches(_examples(), return_masked_positions=masked_only)
    assert "attention_mask" not in packed and packed["input_ids"].shape == (1, sum(LENGTHS))
    loss_padded, n_padded = mlm_loss(model, padded)
    loss_padded.backward()
    grads_padded = _grads(model)
    model.zero_grad(set_to_none=True)
    loss_packed, n_packed = mlm_loss(model, packed)
    loss_packed.backward()
    grads_packed = _grads(model)
    assert n_packed == n_padded > 0
    torch.testing.assert_close(loss_packed, loss_padded, rtol=1e-5, atol=1e-6)
    assert grads_packed.keys() == grads_padded.keys() and len(grads_packed) > 10
    for name, grad in grads_padded.items():
        torch.testing.assert_close(grads_packed[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_packed_rows_equal_each_cell_run_alone(tiny):
    """Positions restart per cell: every cell's hidden states equal those of the cell run alone."""
    model = _model(tiny)
    examples = _examples()
    _, packed = _batches(examples)
    cu = packed["cu_seqlens"].tolist()
    for b, n in enumerate(LENGTHS):
        assert packed["position_ids"][0, cu[b] : cu[b + 1]].tolist() == list(range(n))
    with torch.no_grad():
        rows = _hidden(model, packed)[0]
        for b in range(len(LENGTHS)):
            ids = packed["input_ids"][:, cu[b] : cu[b + 1]]
            alone = model.bert(input_ids=ids).last_hidden_state[0]
            torch.testing.assert_close(rows[cu[b] : cu[b + 1]], alone, rtol=1e-5, atol=1e-5)


def test_packed_forward_under_inference_mode(tiny):
    model = _model(tiny)
    padded, packed = _batches(_examples(), return_masked_positions=True)
    with torch.no_grad():
        expected = mlm_loss(model, padded)[0]
    with torch.inference_mode():
        batch = {k: v.clone() if torch.is_tensor(v) else v for k, v in packed.items()}
        torch.testing.assert_close(mlm_loss(model, batch)[0], expected, rtol=1e-5, atol=1e-6)


def test_no_attention_across_cells(tiny):
    """Changing one cell's tokens changes that cell's outputs and no other cell's."""
    model = _model(tiny)
    examples = _examples()
    changed = [dict(e) for e in examples]
    changed[2] = {"input_ids": [(t + 7) % 58 + 2 for t in examples[2]["input_ids"]]}
    _, packed = _batches(examples, mlm_probability=0.2)
    _, packed2 = _batches(changed, mlm_probability=0.2)
    cu = packed["cu_seqlens"].tolist()
    with torch.no_grad():
        before, after = _hidden(model, packed)[0], _hidden(model, packed2)[0]
    for b in range(len(LENGTHS)):
        same = torch.equal(before[cu[b] : cu[b + 1]], after[cu[b] : cu[b + 1]])
        assert same == (b != 2), b


@pytest.mark.parametrize("span_tokens", [0, 16, 10_000])
def test_span_grouping_does_not_change_the_result(tiny, monkeypatch, span_tokens):
    """One SDPA per cell, spans of short cells, or one block-diagonal span: the same numbers."""
    model = _model(tiny)
    padded, packed = _batches(_examples(), return_masked_positions=True)
    monkeypatch.setattr(_attention, "CPU_SPAN_TOKENS", span_tokens)
    with torch.no_grad():
        loss = mlm_loss(model, packed)[0]
        torch.testing.assert_close(loss, mlm_loss(model, padded)[0], rtol=1e-5, atol=1e-6)
    spans = _attention._spans(tuple(packed["cu_seqlens"].tolist()), span_tokens)
    assert spans[0][0] == 0 and spans[-1][1] == sum(LENGTHS)
    assert all(a[1] == b[0] for a, b in zip(spans[:-1], spans[1:], strict=True))
    if span_tokens == 0:
        assert len(spans) == len(LENGTHS)
    elif span_tokens == 10_000:
        assert len(spans) == 1


def test_padded_batches_are_exactly_sdpa(tiny):
    packed_model, sdpa_model = _model(tiny), _model(tiny, attn_implementation="sdpa")
    assert runs_packed(packed_model) and not runs_packed(sdpa_model)
    padded, packed = _batches(_examples(), return_masked_positions=True)
    with torch.no_grad():
        ours = packed_model(**encoder_inputs(packed_model, padded)[0]).logits
        theirs = sdpa_model(**encoder_inputs(sdpa_model, padded)[0]).logits
        assert torch.equal(ours, theirs)
        # an SDPA model cannot keep cells apart in one row: mlm_loss re-pads the packed batch
        torch.testing.assert_close(
            mlm_loss(sdpa_model, packed)[0], mlm_loss(packed_model, packed)[0]
        )


def test_genebert_packed_equals_padded():
    config = build_genebert_config(
        vocab_size=60,
        n_genes=90,
        model=ModelConfig(
            num_layers=2,
            hidden_size=32,
            num_heads=2,
            intermediate_size=64,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        ),
    )
    model = build_mlm_model(config, seed=0).eval()
    examples = [
        {"input_ids": e["input_ids"], "token_type_ids": list(range(1, len(e["input_ids"]) + 1))}
        for e in _examples()
    ]
    padded, packed = _batches(examples, return_masked_positions=True)
    assert packed["token_type_ids"].shape == packed["input_ids"].shape
    torch.testing.assert_close(
        mlm_loss(model, packed)[0], mlm_loss(model, padded)[0], rtol=1e-5, atol=1e-6
    )


def test_packed_training_step_with_dropout():
    shape = ModelConfig(num_layers=2, hidden_size=32, num_heads=2, intermediate_size=64)
    model = build_mlm_model(bert_config_from(shape, vocab_size=60), seed=0).train()
    _, packed = _batches(_examples(), return_masked_positions=True)
    loss, _ = mlm_loss(model, packed)
    loss.backward()
    assert torch.isfinite(loss)
    assert model.bert.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0


def test_backend_choice_and_errors(tiny):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert packed_attention_backend(cpu, torch.float32, 0.02) == "blocks"
    assert packed_attention_backend(cuda, torch.float32, 0.0) == "nested"
    assert packed_attention_backend(cuda, torch.bfloat16, 0.02) == "nested"
    if _attention._has_varlen():
        assert packed_attention_backend(cuda, torch.bfloat16, 0.0) == "varlen"
    with pytest.raises(ValueError, match="one of"):
        use_packed_backend("flex").__enter__()
    model = _model(tiny)
    assert model.config._attn_implementation == PACKED_ATTENTION
    _, packed = _batches(_examples())
    kwargs, _ = encoder_inputs(model, packed)
    two_rows = {
        k: v.expand(2, -1) if k in ("input_ids", "position_ids") else v for k, v in kwargs.items()
    }
    with pytest.raises(ValueError, match="one row"):
        model(**two_rows)
    short = dict(kwargs, cu_seq_lens_q=kwargs["cu_seq_lens_q"] - 1)
    short["cu_seq_lens_q"][0] = 0
    short["cu_seq_lens_k"] = short["cu_seq_lens_q"]
    with pytest.raises(ValueError, match="must run from 0"):
        model(**short)
    empty = dict(
        kwargs, cu_seq_lens_q=torch.cat([kwargs["cu_seq_lens_q"][:1], kwargs["cu_seq_lens_q"]])
    )
    empty["cu_seq_lens_k"] = empty["cu_seq_lens_q"]
    with pytest.raises(ValueError, match="strictly increasing"):
        model(**empty)
    model.train()
    model.config.attention_probs_dropout_prob = 0.1
    for layer in model.bert.encoder.layer:
        layer.attention.self.dropout.p = 0.1
    with use_packed_backend("varlen"), pytest.raises(ValueError, match="no attention dropout"):
        model(**kwargs)
