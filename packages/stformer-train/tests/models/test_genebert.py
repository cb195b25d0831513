import torch
from transformers import AutoConfig, AutoModelForMaskedLM, AutoModelForSequenceClassification

from stformer_train.models import (
    GeneBertConfig,
    GeneBertForClassification,
    GeneBertForPhenotypicMLM,
    build_genebert_config,
    build_mlm_model,
)


def _cfg(**kw):
    return GeneBertConfig(
        vocab_size=20,
        type_vocab_size=50,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        **kw,
    )


def test_embedding_is_bin_plus_gene_without_positions():
    model = GeneBertForPhenotypicMLM(_cfg()).eval()
    emb = model.bert.embeddings
    assert not hasattr(emb, "position_embeddings")
    ids, genes = torch.tensor([[3, 4, 5]]), torch.tensor([[7, 8, 9]])
    expected = emb.LayerNorm(emb.word_embeddings(ids) + emb.token_type_embeddings(genes))
    assert torch.allclose(emb(input_ids=ids, token_type_ids=genes), expected)
    # a set, not a sequence: permuting tokens permutes the hidden states
    perm = torch.tensor([2, 0, 1])
    h = model.bert(input_ids=ids, token_type_ids=genes).last_hidden_state
    hp = model.bert(input_ids=ids[:, perm], token_type_ids=genes[:, perm]).last_hidden_state
    assert torch.allclose(h[:, perm], hp, atol=1e-5)


def test_masked_positions_loss_equals_dense_loss():
    model = build_mlm_model(_cfg(), seed=0).eval()
    ids = torch.tensor([[3, 4, 5, 6], [7, 8, 0, 0]])
    genes = torch.tensor([[1, 2, 3, 4], [5, 6, 0, 0]])
    mask = (ids != 0).long()
    labels = torch.full_like(ids, -100)
    labels[0, 1], labels[1, 0] = 11, 12
    dense = model(input_ids=ids, token_type_ids=genes, attention_mask=mask, labels=labels).loss
    sparse = model(
        input_ids=ids,
        token_type_ids=genes,
        attention_mask=mask,
        masked_positions=torch.tensor([1, 4]),
        masked_labels=torch.tensor([11, 12]),
    ).loss
    assert torch.allclose(dense, sparse, atol=1e-6)


def test_save_load_with_auto_classes(tmp_path):
    model = GeneBertForPhenotypicMLM(_cfg()).eval()
    model.save_pretrained(tmp_path)
    assert type(AutoConfig.from_pretrained(tmp_path)) is GeneBertConfig
    loaded = AutoModelForMaskedLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is GeneBertForPhenotypicMLM
    ids, genes = torch.tensor([[3, 4]]), torch.tensor([[7, 8]])
    assert torch.allclose(
        loaded(input_ids=ids, token_type_ids=genes).logits,
        model(input_ids=ids, token_type_ids=genes).logits,
    )
    clf = AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=4)
    assert type(clf) is GeneBertForClassification
    assert torch.equal(
        clf.bert.embeddings.token_type_embeddings.weight,
        model.bert.embeddings.token_type_embeddings.weight,
    )
    out = clf(input_ids=ids, token_type_ids=genes, labels=torch.tensor([1]))
    assert out.logits.shape == (1, 4) and out.loss.requires_grad


def test_build_genebert_config_defaults():
    cfg = build_genebert_config(vocab_size=30, n_genes=1000)
    assert (
        cfg.type_vocab_size,
        cfg.hidden_act,
        cfg.initializer_range,
        cfg.layer_norm_eps,
        cfg.hidden_dropout_prob,
    ) == (1000, "relu", 0.02, 1e-12, 0.02)
