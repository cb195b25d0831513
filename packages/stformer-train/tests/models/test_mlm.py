import torch
from transformers import AutoModelForMaskedLM

from stformer_collate import BatchForm, DataCollatorForMLM, SimpleTokenSpec
from stformer_train.models import (
    PACKED_ATTENTION,
    SparseBertForMaskedLM,
    bert_config_from,
    build_mlm_model,
    dense_mlm_loss,
    mlm_loss,
    unpack_to_padded,
)

SPEC = SimpleTokenSpec(pad_id=0, mask_id=1, vocab_size=60)
EXAMPLES = [{"input_ids": list(range(2, 2 + n))} for n in (12, 5, 9, 30)]


def _model(tiny):
    return build_mlm_model(bert_config_from(tiny, vocab_size=60), seed=0).eval()


def test_masked_only_logits_give_the_dense_loss(tiny):
    model = _model(tiny)
    assert (
        isinstance(model, SparseBertForMaskedLM)
        and model.config._attn_implementation == PACKED_ATTENTION
    )
    batch = DataCollatorForMLM(spec=SPEC, seed=1, return_masked_positions=True)(EXAMPLES)
    sparse, n = mlm_loss(model, batch)
    assert n == int((batch["labels"] != -100).sum())
    assert torch.allclose(sparse, dense_mlm_loss(model, batch), atol=1e-5)
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        masked_positions=batch["masked_positions"],
        masked_labels=batch["masked_labels"],
    )
    assert out.logits.shape == (n, 60)  # no (batch, length, vocab) tensor


def test_packed_batches_match_padded_batches(tiny):
    model = _model(tiny)
    padded = DataCollatorForMLM(spec=SPEC, seed=4, return_masked_positions=True)(EXAMPLES)
    packed = DataCollatorForMLM(
        spec=SPEC, seed=4, form=BatchForm.PACKED, return_masked_positions=True
    )(EXAMPLES)
    back = unpack_to_padded(packed, pad_id=0)
    assert torch.equal(back["input_ids"], padded["input_ids"])
    assert torch.equal(back["masked_positions"], padded["masked_positions"])
    assert torch.allclose(mlm_loss(model, packed)[0], mlm_loss(model, padded)[0], atol=1e-5)


def test_gradient_checkpointing_option(tiny):
    model = build_mlm_model(bert_config_from(tiny, vocab_size=60), gradient_checkpointing=True)
    assert getattr(model, "is_activation_checkpointing", None) or model.is_gradient_checkpointing
    model.train()
    loss, _ = mlm_loss(
        model, DataCollatorForMLM(spec=SPEC, seed=0, return_masked_positions=True)(EXAMPLES)
    )
    loss.backward()
    assert model.bert.embeddings.word_embeddings.weight.grad is not None


def test_saved_rank_model_loads_as_bert(tiny, tmp_path):
    model = _model(tiny)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForMaskedLM.from_pretrained(tmp_path).eval()
    ids = torch.tensor([[5, 6, 7]])
    assert torch.allclose(loaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-6)
