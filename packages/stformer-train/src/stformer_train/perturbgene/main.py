"""perturbgene's training script: ``python -m stformer_train.perturbgene.main [options] mlm|cls [options]``.

Also reachable as ``stformer perturbgene mlm|cls ...``. The shards are streamed with
:class:`~stformer_data.shards.IterableAnnDataset`, masked with
:class:`~stformer_collate.DataCollatorForPhenotypicMLM` (or padded with
:func:`~stformer_collate.collate_fn_wrapper` for classification), and the GeneBert is trained by
transformers' ``Trainer`` with stformer's precision policy. ``output_dir`` gets ``model/`` (the
weights and ``gene_tokenizer.json``), ``checkpoints/`` and ``log_history.json``.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stformer_train.perturbgene.configs import ClassificationConfig, MLMConfig, parse_args

log = logging.getLogger(__name__)

TOKENIZER_FILE = "gene_tokenizer.json"


def _tokenizer(cfg, files: list[str]):
    import anndata

    from stformer_data import GeneTokenizer

    first = anndata.io.read_h5ad(files[0], backed="r")
    genes = list(map(str, first.var_names))
    if cfg.vocab_path is not None:
        return GeneTokenizer(cfg, gene_names=genes)
    adatas = [first] + [anndata.io.read_h5ad(f, backed="r") for f in files[1:]]
    return GeneTokenizer.from_adata(adatas, cfg, gene_names=genes)


def _attn(cfg) -> str:
    if not cfg.use_flash_attn:
        return "sdpa"
    import importlib.util

    import torch

    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    warnings.warn(
        "--use_flash_attn needs a CUDA GPU and the flash-attn package; using SDPA attention",
        RuntimeWarning,
        stacklevel=2,
    )
    return "sdpa"


def _model_config(cfg, tokenizer, **extra: Any):
    """The GeneBert config: from ``--pretrained_model_path`` (a DistilBert/GeneBert json) or defaults."""
    from transformers import AutoConfig, DistilBertConfig

    from stformer_train.models import GeneBertConfig, as_genebert_config

    path = cfg.pretrained_model_path
    if path is None:
        base = GeneBertConfig(
            hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512
        )
    elif Path(path).is_file():
        raw = json.loads(Path(path).read_text())
        kind = raw.get("model_type", "distilbert")
        base = (
            DistilBertConfig.from_dict(raw) if kind == "distilbert" else AutoConfig.for_model(**raw)
        )
    else:
        base = AutoConfig.from_pretrained(path)
    for name in ("num_hidden_layers", "num_attention_heads", "hidden_size"):
        value = getattr(cfg, name)
        if value is not None:
            setattr(base, name, value)
    base.vocab_size = len(tokenizer)
    base.type_vocab_size = tokenizer.type_vocab_size
    base.pad_token_id = tokenizer.pad_id
    config = as_genebert_config(base)
    for k, v in extra.items():
        setattr(config, k, v)
    config._attn_implementation = _attn(cfg)
    return config


def _training_arguments(cfg, output: Path, evaluating: bool):
    import torch
    from transformers import TrainingArguments

    from stformer_train.precision import resolve_precision

    return TrainingArguments(
        output_dir=str(output / "checkpoints"),
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_eval_batch_size,
        dataloader_num_workers=cfg.dataloader_num_workers,
        dataloader_pin_memory=torch.cuda.is_available(),  # pinning without CUDA only warns
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        warmup_steps=float(
            cfg.warmup_ratio
        ),  # transformers 5: a float < 1 is a fraction of the steps
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        eval_strategy="steps" if evaluating else "no",
        eval_steps=(cfg.eval_steps or cfg.save_steps) if evaluating else None,
        save_steps=cfg.save_steps,
        logging_steps=cfg.logging_steps,
        seed=cfg.seed,
        report_to="none",
        remove_unused_columns=False,
        label_names=[
            "labels"
        ],  # the MLM forward also takes masked_labels, absent from these batches
        disable_tqdm=True,
        **resolve_precision(cfg.mixed_precision).hf_flags,
    )


def train(cfg: MLMConfig | ClassificationConfig) -> dict[str, Any]:
    """Run one perturbgene training job from its config; returns the final metrics and paths."""
    import torch
    from transformers import Trainer

    from stformer_collate import DataCollatorForPhenotypicMLM, collate_fn_wrapper
    from stformer_data import InputError
    from stformer_data.atomic import atomic_write_text
    from stformer_data.shards import IterableAnnDataset
    from stformer_train.models import GeneBertForClassification, GeneBertForPhenotypicMLM

    if not cfg.train_data_paths:
        raise InputError(None, "--train_data_paths", "is empty", "pass the training h5ad shards")
    output = Path(cfg.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer(cfg, cfg.train_data_paths + cfg.eval_data_paths)
    torch.manual_seed(cfg.seed)
    pretrained = cfg.pretrained_model_path
    from_weights = pretrained is not None and Path(pretrained).is_dir()
    if isinstance(cfg, MLMConfig):
        train_set = IterableAnnDataset(cfg.train_data_paths, tokenizer, shard_size=cfg.shard_size)
        eval_set = (
            IterableAnnDataset(cfg.eval_data_paths, tokenizer, shard_size=cfg.shard_size)
            if cfg.eval_data_paths
            else None
        )
        config = _model_config(cfg, tokenizer)
        model = (
            GeneBertForPhenotypicMLM.from_pretrained(pretrained)
            if from_weights
            else GeneBertForPhenotypicMLM(config)
        )
        collator = DataCollatorForPhenotypicMLM(
            tokenizer=tokenizer,
            gene_mask_prob=cfg.gene_mask_prob,
            phenotype_mask_prob=cfg.phenotype_mask_prob,
            seed=cfg.seed,
        )
        compute_metrics = None
    else:
        key = cfg.phenotype_category
        train_set = IterableAnnDataset(
            cfg.train_data_paths,
            tokenizer,
            key,
            regression=cfg.regression,
            shard_size=cfg.shard_size,
        )
        eval_set = (
            IterableAnnDataset(
                cfg.eval_data_paths,
                tokenizer,
                key,
                label_names=train_set.label_names,
                regression=cfg.regression,
                shard_size=cfg.shard_size,
            )
            if cfg.eval_data_paths
            else None
        )
        labels = {"num_labels": train_set.num_labels}
        if not cfg.regression:
            labels.update(id2label=train_set.id2label, label2id=train_set.label2id)
        config = _model_config(cfg, tokenizer, **labels)
        if from_weights:
            model = GeneBertForClassification.from_pretrained(pretrained, **labels)
        else:
            model = GeneBertForClassification(config)
        collator = collate_fn_wrapper(tokenizer)
        compute_metrics = None if cfg.regression else _accuracy
    trainer = Trainer(
        model=model,
        args=_training_arguments(cfg, output, eval_set is not None),
        data_collator=collator,
        train_dataset=train_set,
        eval_dataset=eval_set,
        compute_metrics=compute_metrics,
    )
    result = trainer.train()
    metrics = {
        "train_loss": float(result.training_loss),
        "global_step": int(trainer.state.global_step),
    }
    if eval_set is not None:
        metrics.update(
            {k: float(v) for k, v in trainer.evaluate().items() if isinstance(v, (int, float))}
        )
    trainer.save_model(str(output / "model"))
    tokenizer.save_vocab(output / "model" / TOKENIZER_FILE)
    _save_hub_files(output / "model", tokenizer, cfg, trainer.state.log_history)
    atomic_write_text(
        output / "log_history.json", json.dumps(trainer.state.log_history, indent=1, default=str)
    )
    atomic_write_text(output / "config.json", json.dumps(cfg.to_dict(), indent=1))
    metrics["model_dir"] = str(output / "model")
    return metrics


def _save_hub_files(model_dir: Path, tokenizer, cfg, history) -> None:
    """A fast tokenizer over the bin/phenotype tokens and a model card (:mod:`stformer_train.hub`)."""
    from stformer_train._hub import save_hub_files

    save_hub_files(
        model_dir,
        tokenizer.vocab,
        {
            "scheme": "binned",
            "model_input_size": tokenizer.max_length,
            "add_cls": True,
            "add_eos": True,
            "bin_edges": tokenizer.bin_edges.tolist(),
            "phenotypes": list(tokenizer.included_phenotypes),
        },
        corpus={
            "path": ", ".join(map(str, cfg.train_data_paths)),
            "n_genes": len(tokenizer.gene_names or ()),
        },
        run_config={"engine": "perturbgene", "train": cfg.to_dict()},
        log_history=history,
    )


def _accuracy(eval_pred) -> dict[str, float]:
    import numpy as np

    logits, labels = eval_pred
    return {"accuracy": float((np.asarray(logits).argmax(-1) == np.asarray(labels)).mean())}


def main(args: Sequence[str] | None = None) -> int:
    """Parse ``args`` (default ``sys.argv[1:]``), train, print the metrics as one JSON line."""
    cfg = parse_args(args)
    metrics = train(cfg)
    print(json.dumps(metrics))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
