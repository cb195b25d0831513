"""Transformeromics (perturbgene) as document 003 specifies it, on PBMC shards."""

from __future__ import annotations

import json

import anndata
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from transformers import DistilBertConfig

from stformer_train.perturbgene import (
    BaseConfig,
    ClassificationConfig,
    DataCollatorForPhenotypicMLM,
    GeneBertForClassification,
    GeneBertForPhenotypicMLM,
    GeneBertModel,
    GeneTokenizer,
    IterableAnnDataset,
    MLMConfig,
    PositionlessEmbeddings,
    collate_fn_wrapper,
    parse_args,
)

PBMC = "sc/pbmc68k_reduced_700_counts.h5ad"


@pytest.fixture(scope="module")
def pbmc(shared_data):
    return anndata.io.read_h5ad(shared_data / PBMC)


@pytest.fixture(scope="module")
def shards(pbmc, tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    paths = []
    for i, (a, b) in enumerate([(0, 300), (300, 600), (600, 700)]):
        path = folder / f"pbmc_{i}.h5ad"
        pbmc[a:b].copy().write_h5ad(path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def tok(pbmc):
    return GeneTokenizer.from_adata(
        pbmc, bin_edges=[0.1], max_length=256, included_phenotypes=["bulk_labels", "phase"]
    )


def distil(tok, **kw):
    cfg = DistilBertConfig(
        vocab_size=len(tok),
        dim=32,
        n_layers=1,
        n_heads=2,
        hidden_dim=64,
        pad_token_id=tok.pad_id,
        **kw,
    )
    cfg.type_vocab_size = tok.type_vocab_size
    return cfg


def test_tokenizer_on_a_cell(pbmc, tok):
    out = tok(pbmc[0])
    ids, types = out["input_ids"], out["token_type_ids"]
    tokens = tok.convert_ids_to_tokens(ids.tolist())
    assert tokens[0] == "[CLS]" and tokens[-1] == "[EOS]"
    assert tokens[1] == f"bulk_labels={pbmc.obs['bulk_labels'].iloc[0]}" and tokens[2].startswith(
        "phase="
    )
    assert set(tokens[3:-1]) == {"bin_1"}  # a single edge: one expression bin
    assert (
        types[0] == 0 and types[-1] == 0 and types[1:3].tolist() == [1, 2]
    )  # one type per phenotype category
    expressed = np.flatnonzero(pbmc.X[0].toarray().ravel() >= 0.1)
    assert (
        types[3:-1] - tok.gene_token_type_offset
    ).tolist() == expressed.tolist()  # only expressed genes
    assert tok.special_tokens == ("[CLS]", "[EOS]", "[MASK]", "[PAD]")
    assert tok.convert_tokens_to_ids(["[CLS]", "[EOS]", "[MASK]", "[PAD]"]) == [0, 1, 2, 3]


def test_bin_edges_drop_genes_below_the_first_edge(pbmc):
    tok = GeneTokenizer(bin_edges=[2.0, 5.0], max_length=1024)
    out = tok(pbmc[1])
    row = pbmc.X[1].toarray().ravel()
    kept = np.flatnonzero(row >= 2.0)
    assert (out["token_type_ids"][1:-1] - 1).tolist() == kept.tolist()
    bins = [tok.convert_ids_to_tokens(int(i)) for i in out["input_ids"][1:-1]]
    assert bins == [("bin_2" if row[g] >= 5.0 else "bin_1") for g in kept]


def test_num_top_genes_and_max_length(pbmc):
    tok = GeneTokenizer(bin_edges=[0.1], num_top_genes=100, max_length=20)
    out = tok(pbmc[2])
    assert len(out["input_ids"]) <= 20
    assert (out["token_type_ids"][1:-1] - 1).max() < 100 and tok.type_vocab_size == 101


def test_dataset_yields_tensors_and_splits_by_file(shards, tok):
    ds = IterableAnnDataset(shards[:2], tok, label_key="bulk_labels")
    item = next(iter(ds))
    assert set(item) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    assert all(isinstance(v, torch.Tensor) for v in item.values())
    assert (
        item["labels"].dtype == torch.int64
        and item["attention_mask"].sum() == item["input_ids"].numel()
    )
    assert len(ds) == 600
    assert ds.worker_files(0, 2) == [ds.filenames[0]] and ds.worker_files(1, 2) == [ds.filenames[1]]
    loader = DataLoader(ds, batch_size=None, num_workers=2)
    n = sum(1 for _ in loader)
    assert n == 600  # both workers got a whole shard; every cell once


def test_collate_fn_wrapper_pads(shards, tok):
    ds = IterableAnnDataset(shards[2:], tok, label_key="bulk_labels")
    items = [x for _, x in zip(range(4), ds, strict=False)]
    batch = collate_fn_wrapper(tok)(items)
    longest = max(len(x["input_ids"]) for x in items)
    assert batch["input_ids"].shape == (4, longest) and batch["labels"].shape == (4,)
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tok.pad_id).all()


def test_phenotypic_mlm_collator_rates(shards, tok):
    ds = IterableAnnDataset(shards[:1], tok)
    items = list(ds)
    collate = DataCollatorForPhenotypicMLM(
        tokenizer=tok, gene_mask_prob=0.0, phenotype_mask_prob=0.3, seed=0
    )
    batch = collate(items)
    types = batch["token_type_ids"]
    pheno = (types >= 1) & (types <= 2)
    selected = batch["labels"] != -100
    assert not (selected & ~pheno).any()
    rate = float(selected[pheno].float().mean())
    assert abs(rate - 0.3) < 0.05  # the requested rate, no forced token per cell
    assert (
        batch["input_ids"][selected] == tok.mask_id
    ).all()  # a selected phenotype is always masked
    assert "attention_mask" in batch


def test_models_with_distilbert_config(shards, tok):
    emb = PositionlessEmbeddings(distil(tok))
    assert not any("position" in n for n, _ in emb.named_parameters())
    batch = DataCollatorForPhenotypicMLM(
        tokenizer=tok, gene_mask_prob=0.15, phenotype_mask_prob=0.5, seed=1
    )(list(IterableAnnDataset(shards[2:], tok))[:8])
    assert (
        GeneBertModel(distil(tok))(
            input_ids=batch["input_ids"],
            token_type_ids=batch["token_type_ids"],
            attention_mask=batch["attention_mask"],
        ).last_hidden_state.shape[-1]
        == 32
    )
    out = GeneBertForPhenotypicMLM(distil(tok))(**batch)
    assert out.loss is not None and torch.isfinite(out.loss)


def test_classification_pools_first_token_and_regresses(tok):
    torch.manual_seed(0)
    model = GeneBertForClassification(distil(tok, num_labels=1))
    assert hasattr(model, "pre_classifier")
    ids = torch.tensor([[0, 4, 4, 1], [0, 4, 1, 3]])
    types = torch.tensor([[0, 3, 4, 0], [0, 5, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    y = torch.tensor([0.5, 2.0])
    out = model(input_ids=ids, token_type_ids=types, attention_mask=mask, labels=y)
    expected = torch.nn.functional.mse_loss(out.logits.squeeze(-1), y)
    assert float(out.loss) > 0 and torch.allclose(out.loss, expected)
    # the first token decides: change a later token's type, the first-token state changes only via attention
    model.eval()
    hidden = model.bert(input_ids=ids, token_type_ids=types, attention_mask=mask).last_hidden_state[
        :, 0
    ]
    manual = model.classifier(torch.relu(model.pre_classifier(hidden)))
    assert torch.allclose(
        manual, model(input_ids=ids, token_type_ids=types, attention_mask=mask).logits, atol=1e-6
    )
    clf = GeneBertForClassification(distil(tok, num_labels=3))
    assert clf(input_ids=ids, token_type_ids=types, labels=torch.tensor([2, 0])).loss > 0


EXAMPLE = (
    "--bin_edges 0.1 --pretrained_model_path perturbgene/model_configs/distilbert_base.json --shard_size 10000 "
    "--eval_data_paths /home/shared_folder/TabulaSapiens/ranked/Tabula_Sapiens_ranked_47.h5ad --max_length 1024 "
    "--num_top_genes 58604 --vocab_path perturbgene/data/phenotypic_tokens_map.json --included_phenotypes cell_type sex tissue "
    "--use_flash_attn --per_device_eval_batch_size 256 --dataloader_num_workers 4 --output_dir output_v10_base_gene000 mlm "
    "--gene_mask_prob 0.00 --phenotype_mask_prob 0.5 --train_data_paths "
    + " ".join(
        f"/home/shared_folder/TabulaSapiens/ranked/Tabula_Sapiens_ranked_{i}.h5ad"
        for i in range(44)
    )
    + " --num_hidden_layers 12 --num_attention_heads 12 --per_device_train_batch_size 128 --learning_rate 1e-4 "
    "--weight_decay 5e-2 --warmup_ratio 0.1 --num_train_epochs 10 --eval_steps 1000 --save_steps 8000"
)


def test_the_documents_command_line_parses():
    cfg = parse_args(EXAMPLE.split())
    assert isinstance(cfg, MLMConfig) and isinstance(cfg, BaseConfig)
    assert cfg.bin_edges == [0.1] and cfg.max_length == 1024 and cfg.num_top_genes == 58604
    assert cfg.shard_size == 10000 and cfg.included_phenotypes == ["cell_type", "sex", "tissue"]
    assert cfg.use_flash_attn and cfg.gene_mask_prob == 0.0 and cfg.phenotype_mask_prob == 0.5
    assert (
        len(cfg.train_data_paths) == 44 and cfg.num_hidden_layers == 12 and cfg.save_steps == 8000
    )
    assert cfg.per_device_eval_batch_size == 256 and cfg.output_dir == "output_v10_base_gene000"
    cls = parse_args(
        [
            "--bin_edges",
            "0.1",
            "cls",
            "--phenotype_category",
            "cell_type",
            "--train_data_paths",
            "a.h5ad",
        ]
    )
    assert isinstance(cls, ClassificationConfig) and cls.phenotype_category == "cell_type"


def test_mlm_then_classification_from_the_command_line(shards, tmp_path, capsys):
    from stformer_cli.main import cli

    model_json = tmp_path / "distilbert_small.json"
    model_json.write_text(
        json.dumps(
            {"model_type": "distilbert", "dim": 32, "n_layers": 1, "n_heads": 2, "hidden_dim": 64}
        )
    )
    common = [
        "--bin_edges",
        "0.1",
        "--max_length",
        "128",
        "--pretrained_model_path",
        str(model_json),
        "--included_phenotypes",
        "bulk_labels",
        "--eval_data_paths",
        shards[2],
        "--mixed_precision",
        "no",
    ]
    out = tmp_path / "mlm"
    assert (
        cli(
            [
                "perturbgene",
                *common,
                "--output_dir",
                str(out),
                "mlm",
                "--gene_mask_prob",
                "0.15",
                "--phenotype_mask_prob",
                "0.5",
                "--train_data_paths",
                *shards[:2],
                "--max_steps",
                "3",
                "--per_device_train_batch_size",
                "16",
                "--per_device_eval_batch_size",
                "64",
            ]
        )
        == 0
    )
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["global_step"] == 3 and np.isfinite(metrics["eval_loss"])
    assert (out / "model" / "config.json").is_file()
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out / "model")  # the bin / phenotype tokens, model's ids
    assert (tok.pad_token, tok.mask_token, tok.cls_token) == ("[PAD]", "[MASK]", "[CLS]")
    assert tok("bin_1")["input_ids"] == [
        tok.cls_token_id,
        tok.convert_tokens_to_ids("bin_1"),
        tok.eos_token_id,
    ]
    assert type(AutoModelForMaskedLM.from_pretrained(out / "model")) is GeneBertForPhenotypicMLM
    from stformer_train.perturbgene.main import main

    cls_out = tmp_path / "cls"
    assert (
        main(
            [
                *common[:4],
                "--pretrained_model_path",
                str(out / "model"),
                "--included_phenotypes",
                "bulk_labels",
                "--eval_data_paths",
                shards[2],
                "--mixed_precision",
                "no",
                "--output_dir",
                str(cls_out),
                "cls",
                "--phenotype_category",
                "louvain",
                "--train_data_paths",
                *shards[:2],
                "--max_steps",
                "3",
                "--per_device_train_batch_size",
                "16",
            ]
        )
        == 0
    )
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
