"""A saved model is a Hugging Face model: fast tokenizer, Auto classes, model card (issue 18.1).

A tiny model is pretrained a few steps on 40 real PBMC cells through the normal path
(``tokenize_files`` -> ``pretrain_mlm``); then ``AutoTokenizer`` + ``AutoModelForMaskedLM`` from
``RUN/model`` must give exactly what stformer's own embed path gives on the same cells.
"""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer, PreTrainedTokenizerFast

import stformer_data as sd
from stformer_collate import pad_examples
from stformer_train import ModelConfig, TrainConfig
from stformer_train.embedding import embed_sequences
from stformer_train.geneformer import open_model
from stformer_train.hf import pretrain_mlm
from stformer_train.hub import encode_cells, gene_tokenizer_fast, update_model_card
from stformer_train.models import GeneBertConfig, GeneBertForPhenotypicMLM

TINY = ModelConfig(
    num_layers=2,
    hidden_size=32,
    num_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)
STEPS = TrainConfig(
    max_steps=3,
    per_device_train_batch_size=8,
    logging_steps=1,
    eval_fraction=0.25,
    eval_steps=3,
    save_steps=3,
    seed=0,
)


@pytest.fixture(scope="module")
def pbmc40(shared_data, tmp_path_factory):
    adata = ad.io.read_h5ad(shared_data / "sc" / "pbmc68k_reduced_700_counts.h5ad")[:40].copy()
    path = tmp_path_factory.mktemp("pbmc") / "pbmc40.h5ad"
    adata.write_h5ad(path)
    return adata, path


def _pretrain(tmp_path_factory, path, vocab, config, medians=None):
    root = tmp_path_factory.mktemp("run")
    corpus = sd.tokenize_files(
        [path], root / "corpus", vocab=vocab, medians=medians, config=config, progress=False
    )
    pretrain_mlm(corpus, root / "run", model=TINY, train=STEPS, progress=False)
    return corpus, root / "run"


@pytest.fixture(scope="module")
def rank_run(pbmc40, tmp_path_factory):
    _, path = pbmc40
    vocab = sd.GeneVocab.from_files([path], cls_token=True, eos_token=True)
    config = sd.TokenizeConfig(
        rank=sd.RankTokenizerConfig(model_input_size=48, add_cls=True, add_eos=True)
    )
    medians = sd.compute_medians_exact([path])
    return _pretrain(tmp_path_factory, path, vocab, config, medians)


def test_auto_tokenizer_is_the_models_vocabulary(rank_run):
    corpus, run = rank_run
    tok = AutoTokenizer.from_pretrained(run / "model")
    vocab = corpus.vocab
    assert isinstance(tok, PreTrainedTokenizerFast)
    assert tok.get_vocab() == dict(vocab) and len(tok) == len(vocab)
    config = AutoConfig.from_pretrained(run / "model")
    assert config.vocab_size == len(tok)
    assert (tok.pad_token_id, tok.mask_token_id) == (vocab.pad_id, vocab.mask_id) == (0, 1)
    assert (tok.cls_token_id, tok.eos_token_id) == (vocab.cls_id, vocab.eos_id)
    assert tok.pad_token_id == config.pad_token_id
    assert tok.model_max_length == 48
    # gene ids in rank order -> exactly the corpus's ids, <cls> and <eos> added as the corpus did
    for seq in corpus.dataset["input_ids"][:5]:
        genes = " ".join(vocab.id_to_token(i) for i in seq[1:-1])
        assert tok(genes)["input_ids"] == list(seq)
    # truncation keeps the highest-ranked genes and the special tokens
    longer = " ".join(vocab.genes[:100])
    ids = tok(longer, truncation=True)["input_ids"]
    assert len(ids) == 48 and ids[0] == vocab.cls_id and ids[-1] == vocab.eos_id
    assert ids[1:-1] == [vocab[g] for g in vocab.genes[:46]]


def test_auto_classes_give_the_embed_paths_logits_and_hidden_states(rank_run, pbmc40):
    corpus, run = rank_run
    adata, path = pbmc40
    # stformer's own path: the run's tokenizer settings on the h5ad, its model, its padding
    rm = open_model(run)
    own = rm.tokenize(path, run.parent / "embed_corpus", progress=False)
    seqs, _ = rm.sequences(own)
    stformer_model = rm.load_mlm().eval()
    embedded = embed_sequences(stformer_model, seqs, pad_id=rm.vocab.pad_id, progress=False)
    padded = pad_examples([{"input_ids": s} for s in seqs], pad_id=rm.vocab.pad_id)
    with torch.no_grad():
        own_logits = stformer_model(
            input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]
        ).logits

    # the Hugging Face path: AutoTokenizer on the ranked gene ids, AutoModelForMaskedLM
    tok = AutoTokenizer.from_pretrained(run / "model")
    model = AutoModelForMaskedLM.from_pretrained(run / "model").eval()
    strings = [" ".join(rm.vocab.id_to_token(i) for i in s[1:-1]) for s in seqs]
    batch = tok(strings, padding=True, return_tensors="pt")
    assert torch.equal(batch["input_ids"], padded["input_ids"])
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (out.hidden_states[-1] * mask).sum(1) / mask.sum(1)
    real = padded["attention_mask"].bool()
    assert torch.allclose(out.logits[real], own_logits[real], atol=1e-5)
    assert np.allclose(pooled.numpy(), embedded, atol=1e-5)

    # AnnData in memory -> ids through stformer's rank tokenizer: the same batch
    enc = encode_cells(run, adata)
    assert torch.equal(enc["input_ids"], padded["input_ids"])
    assert np.array_equal(enc.cell_index, np.asarray(own.dataset["cell_index"]))
    assert set(enc) == {"input_ids", "attention_mask"}


def test_unknown_genes_have_no_invented_id(rank_run):
    _, run = rank_run
    tok = AutoTokenizer.from_pretrained(run / "model")
    assert tok.unk_token is None  # stformer vocabularies have none: the rank tokenizer drops them
    with pytest.raises(Exception, match="UNK"):
        tok("NOT_A_GENE")
    with_unk = gene_tokenizer_fast(
        {"<pad>": 0, "<mask>": 1, "<unk>": 2, "ENSG01": 3, "cell_type=T cell": 4}
    )
    assert with_unk.unk_token_id == 2
    assert with_unk("ENSG01 NOT_A_GENE ENSG01")["input_ids"] == [3, 2, 3]
    # tokens with spaces (phenotype values) are matched whole
    assert with_unk("cell_type=T cell ENSG01")["input_ids"] == [4, 3]


def test_model_card(rank_run):
    corpus, run = rank_run
    card = ModelCard.load(run / "model" / "README.md")
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "fill-mask"
    assert {"single-cell", "transcriptomics"} <= set(card.data.tags)
    assert card.data.license is None and "License:** none is set" in card.text
    history = json.loads((run / "logs" / "log_history.json").read_text())
    eval_loss = [h["eval_loss"] for h in history if "eval_loss" in h][-1]
    assert f"{eval_loss:.4f}" in card.text
    assert str(corpus.path) in card.text and f"| `cells` | {len(corpus.dataset)} |" in card.text
    assert "`mlm_probability`" in card.text and "`hidden_size` | 32" in card.text
    assert "AutoModelForMaskedLM.from_pretrained" in card.text
    update_model_card(run / "model", "Evaluation", "kNN accuracy: 0.50")
    update_model_card(run / "model", "Evaluation", "kNN accuracy: 0.75")
    again = ModelCard.load(run / "model" / "README.md")
    assert again.text.count("## Evaluation") == 1 and "0.75" in again.text
    assert "0.50" not in again.text and "## How to use" in again.text
    assert again.data.pipeline_tag == "fill-mask"


def test_genebert_run_loads_with_the_auto_classes(pbmc40, tmp_path_factory):
    adata, path = pbmc40
    genes = sd.GeneVocab.from_files([path])
    config = sd.TokenizeConfig(
        scheme="binned", binned=sd.BinnedTokenizerConfig(n_bins=5, model_input_size=48)
    )
    corpus, run = _pretrain(tmp_path_factory, path, genes, config)
    model = AutoModelForMaskedLM.from_pretrained(run / "model").eval()
    assert type(model) is GeneBertForPhenotypicMLM
    assert type(AutoConfig.from_pretrained(run / "model")) is GeneBertConfig
    tok = AutoTokenizer.from_pretrained(run / "model")
    assert tok.get_vocab() == dict(corpus.vocab)
    assert tok("bin_1 bin_4")["input_ids"] == [
        corpus.vocab["<cls>"],
        corpus.vocab["bin_1"],
        corpus.vocab["bin_4"],
        corpus.vocab["<eos>"],
    ]
    enc = encode_cells(run, adata)
    assert set(enc) == {"input_ids", "attention_mask", "token_type_ids"}
    rm = open_model(run)
    seqs, types = rm.sequences(corpus)
    padded = pad_examples(
        [{"input_ids": s, "token_type_ids": t} for s, t in zip(seqs, types, strict=True)],
        pad_id=rm.vocab.pad_id,
    )
    assert torch.equal(enc["input_ids"], padded["input_ids"])
    assert torch.equal(enc["token_type_ids"], padded["token_type_ids"])
    with torch.no_grad():
        auto = model(**enc).logits
        own = rm.load_mlm().eval()(**padded).logits
    real = padded["attention_mask"].bool()
    assert torch.allclose(auto[real], own[real], atol=1e-5)
    card = ModelCard.load(run / "model" / "README.md")
    assert "genebert" in card.data.tags and "import stformer_train" in card.text


def test_evaluate_writes_its_scores_into_the_model_card(rank_run, pbmc40, tmp_path):
    from stformer_train.downstream import evaluate_run

    _, run = rank_run
    _, path = pbmc40
    result = evaluate_run(run, path, label_key="bulk_labels", out_dir=tmp_path, k=5, progress=False)
    card = ModelCard.load(run / "model" / "README.md")
    assert "## Evaluation" in card.text and "`bulk_labels`" in card.text
    accuracy = result["scores"]["stformer"]["accuracy"]
    assert f"| stformer | {accuracy:.3f} |" in card.text
    assert card.data.library_name == "transformers"  # the front matter survives


def test_a_geneformer_folder_gets_a_tokenizer_from_its_dictionaries(tmp_path):
    """A Geneformer checkpoint has no tokenizer.json: one is built from its V2 dictionary."""
    from transformers import BertConfig, BertForMaskedLM

    from stformer_train.hub import tokenizer_for

    genes = [f"ENSG{i:011d}" for i in range(20)]
    vocab = sd.GeneVocab.from_genes(genes, cls_token=True, eos_token=True)  # V2: <cls>, <eos>
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=4096,
    )
    BertForMaskedLM(config).save_pretrained(tmp_path)
    vocab.save_json(tmp_path / "token_dictionary.json")
    (tmp_path / "gene_medians.json").write_text(json.dumps(dict.fromkeys(genes, 1.0)))
    tok = tokenizer_for(tmp_path)
    assert tok.get_vocab() == dict(vocab) and tok.model_max_length == 4096
    assert tok(f"{genes[3]} {genes[0]}")["input_ids"] == [
        vocab.cls_id,
        vocab[genes[3]],
        vocab[genes[0]],
        vocab.eos_id,
    ]
    assert not (tmp_path / "tokenizer.json").exists()  # nothing written into a foreign folder
