"""A perturbgene-style run, written from the Transformeromics document (seed 003).

The only line changed from a perturbgene script is the import:

    from perturbgene... import GeneTokenizer, IterableAnnDataset, ...  (data_utils, model, configs)
becomes
    from stformer_train.perturbgene import GeneTokenizer, IterableAnnDataset, ...

Tokenize with bin edges and phenotypes, pretrain a phenotypic-MLM GeneBert, then fine-tune it for
classification. The same run from the command line:
    stformer perturbgene --bin_edges 0.1 ... mlm --gene_mask_prob 0.15 ...

Run: uv run python examples/port_perturbgene.py [path/to/pbmc68k_reduced_700_counts.h5ad]
"""

import sys
import tempfile
from pathlib import Path

import anndata
import torch
from transformers import DistilBertConfig, Trainer, TrainingArguments

from stformer_train.perturbgene import (
    DataCollatorForPhenotypicMLM,
    GeneBertForClassification,
    GeneBertForPhenotypicMLM,
    GeneTokenizer,
    IterableAnnDataset,
    collate_fn_wrapper,
    parse_args,
)

torch.set_num_threads(1)  # a small model: one thread is fastest on a shared CPU
path = sys.argv[1] if len(sys.argv) > 1 else "../shared/data/sc/pbmc68k_reduced_700_counts.h5ad"
work = Path(tempfile.mkdtemp(prefix="port_perturbgene_"))
adata = anndata.io.read_h5ad(path)
shards = []
for i, (a, b) in enumerate([(0, 300), (300, 600), (600, 700)]):  # perturbgene reads h5ad shards
    shards.append(str(work / f"shard_{i}.h5ad"))
    adata[a:b].copy().write_h5ad(shards[-1])

config = parse_args(
    [
        "--bin_edges",
        "0.1",
        "--max_length",
        "128",
        "--included_phenotypes",
        "bulk_labels",
        "--output_dir",
        str(work / "out"),
        "mlm",
        "--gene_mask_prob",
        "0.15",
        "--phenotype_mask_prob",
        "0.5",
        "--train_data_paths",
        *shards[:2],
    ]
)
tokenizer = GeneTokenizer.from_adata(adata, config)
cell = tokenizer(adata[0])
print(
    "cell 0:",
    tokenizer.convert_ids_to_tokens(cell["input_ids"][:4].tolist()),
    "... token types",
    cell["token_type_ids"][:4].tolist(),
    f"({len(cell['input_ids'])} tokens)",
)

model_config = DistilBertConfig(
    vocab_size=len(tokenizer),
    dim=64,
    n_layers=2,
    n_heads=2,
    hidden_dim=128,
    pad_token_id=tokenizer.pad_id,
)
model_config.type_vocab_size = tokenizer.type_vocab_size
torch.manual_seed(0)
mlm = GeneBertForPhenotypicMLM(model_config)
args = dict(
    per_device_train_batch_size=32,
    learning_rate=1e-3,
    report_to="none",
    disable_tqdm=True,
    remove_unused_columns=False,
    label_names=["labels"],
    use_cpu=True,
    logging_steps=10,
)
trainer = Trainer(
    model=mlm,
    args=TrainingArguments(output_dir=str(work / "mlm"), max_steps=30, **args),
    data_collator=DataCollatorForPhenotypicMLM(
        tokenizer=tokenizer,
        gene_mask_prob=config.gene_mask_prob,
        phenotype_mask_prob=config.phenotype_mask_prob,
        seed=0,
    ),
    train_dataset=IterableAnnDataset(config.train_data_paths, tokenizer),
    eval_dataset=IterableAnnDataset(shards[2:], tokenizer),
)
first = trainer.evaluate()["eval_loss"]
trainer.train()
print(f"phenotypic MLM: eval loss {first:.3f} -> {trainer.evaluate()['eval_loss']:.3f}")
trainer.save_model(str(work / "mlm_model"))

train_set = IterableAnnDataset(shards[:2], tokenizer, label_key="louvain")
eval_set = IterableAnnDataset(
    shards[2:], tokenizer, label_key="louvain", label_names=train_set.label_names
)
clf = GeneBertForClassification.from_pretrained(
    str(work / "mlm_model"), num_labels=train_set.num_labels
)


def accuracy(pred):
    return {"accuracy": float((pred.predictions.argmax(-1) == pred.label_ids).mean())}


trainer = Trainer(
    model=clf,
    args=TrainingArguments(output_dir=str(work / "cls"), max_steps=40, **args),
    data_collator=collate_fn_wrapper(tokenizer),
    train_dataset=train_set,
    eval_dataset=eval_set,
    compute_metrics=accuracy,
)
trainer.train()
metrics = trainer.evaluate()
print(
    f"classification of louvain ({train_set.num_labels} classes): held-out accuracy {metrics['eval_accuracy']:.3f}"
)
