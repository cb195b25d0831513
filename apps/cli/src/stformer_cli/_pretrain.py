"""``stformer pretrain``: train a masked-language model into a run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

console = Console()


def register(app: typer.Typer) -> None:
    app.command("pretrain")(pretrain)


def _corpus_from_inputs(inputs: list[Path], out: Path, tok: dict[str, Any], progress: bool):
    import stformer_data as sd

    corpora = [p for p in inputs if p.is_dir()]
    files = [p for p in inputs if not p.is_dir()]
    if corpora and files or len(corpora) > 1:
        raise sd.InputError(
            inputs[0],
            "INPUTS",
            "mixes corpora and h5ad files or names several corpora",
            "pass one tokenized corpus folder, or one or more .h5ad files",
        )
    if corpora:
        return sd.load_corpus(corpora[0])
    for f in files:
        if not f.is_file():
            raise sd.InputError(
                f, "INPUTS", "does not exist", "pass existing .h5ad files or a corpus folder"
            )
    gene_id_key, layer = tok.get("gene_id_key"), tok.get("layer")
    genes: list[str] = []
    for f in files:
        adata = sd.open_h5ad(f)
        try:
            genes.extend(sd.resolve_gene_ids(adata.var, gene_id_key=gene_id_key, path=f))
        finally:
            adata.file.close()
    vocab = sd.GeneVocab.from_genes(dict.fromkeys(genes))
    medians = sd.compute_medians_exact(files, gene_id_key=gene_id_key, layer=layer)
    config = sd.TokenizeConfig(
        gene_id_key=gene_id_key,
        layer=layer,
        rank=sd.RankTokenizerConfig(model_input_size=int(tok.get("max_length", 2048))),
    )
    return sd.tokenize_files(
        files,
        out / "corpus",
        vocab=vocab,
        medians=medians,
        config=config,
        overwrite=True,
        progress=progress,
    )


def _init_from(
    path: Path, inputs: list[Path], out: Path, tok: dict[str, Any], model_d: dict, progress: bool
):
    """Tokenize with the checkpoint's vocabulary and settings; take its shape (``--init-from``)."""
    import stformer_data as sd
    from stformer_train.geneformer import model_config_of, open_model

    folder = open_model(path, gene_id_key=tok.get("gene_id_key"))
    model_d.update(model_config_of(folder.model_dir), init_from=str(folder.model_dir))
    if len(inputs) == 1 and inputs[0].is_dir():
        corpus = sd.load_corpus(inputs[0])
        if corpus.vocab.content_hash() != folder.vocab.content_hash():
            raise sd.InputError(
                inputs[0],
                "vocabulary",
                f"is not the vocabulary of {folder.model_dir}",
                "tokenize the cells with the checkpoint's dictionary (or pass .h5ad files)",
            )
        return corpus
    if any(p.is_dir() for p in inputs):
        raise sd.InputError(
            inputs[0], "inputs", "mix corpus folders and files", "pass one corpus or .h5ad files"
        )
    if len(inputs) != 1:
        raise sd.InputError(
            inputs[1], "inputs", "holds several .h5ad files", "pass one .h5ad file with --init-from"
        )
    return folder.tokenize(inputs[0], out / "corpus", progress=progress)


def pretrain(
    inputs: Annotated[
        list[Path], typer.Argument(help="A tokenized corpus folder, or raw-count .h5ad files.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Run directory (started again, it resumes).")],
    config: Annotated[
        Path | None, typer.Option(help="YAML/JSON with model:, train:, tokenize: sections.")
    ] = None,
    engine: Annotated[str, typer.Option(help="hf (transformers Trainer) or lightning.")] = "hf",
    max_steps: Annotated[
        int | None, typer.Option(help="Stop after this many optimiser steps.")
    ] = None,
    epochs: Annotated[
        float | None, typer.Option(help="Training epochs (when --max-steps is not set).")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Per-device batch size.")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    eval_fraction: Annotated[
        float | None, typer.Option(help="Held-out fraction for validation loss.")
    ] = None,
    layers: Annotated[int | None, typer.Option(help="Transformer layers.")] = None,
    hidden: Annotated[int | None, typer.Option(help="Hidden size.")] = None,
    heads: Annotated[int | None, typer.Option(help="Attention heads.")] = None,
    max_length: Annotated[
        int | None, typer.Option(help="Longest sequence when tokenizing .h5ad inputs.")
    ] = None,
    gene_id_key: Annotated[
        str | None, typer.Option(help="var column with gene ids (h5ad inputs).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of model, masking and sampling.")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    report_to: Annotated[
        str | None,
        typer.Option(
            help="Experiment trackers: tensorboard, wandb, mlflow (comma-separated), none, or auto "
            "(TensorBoard when installed)."
        ),
    ] = None,
    deepspeed: Annotated[
        str | None,
        typer.Option(
            help="DeepSpeed ZeRO (hf engine): zero0..zero3, zero2-offload, zero3-offload or a DeepSpeed .json. "
            "Launch with torchrun for several processes."
        ),
    ] = None,
    init_from: Annotated[
        Path | None,
        typer.Option(
            help="Continue pretraining a saved model: a stformer run or a Geneformer folder (its "
            "vocabulary, medians, tokenizer settings and shape are used)."
        ),
    ] = None,
) -> None:
    """Pretrain a masked-language model; the run directory gets config, logs, checkpoints and model/."""
    from stformer_train import ModelConfig, TrainConfig

    if engine not in ("hf", "lightning"):
        raise ValueError(f"--engine must be 'hf' or 'lightning', got {engine!r}")
    overrides = _deepspeed_overrides(deepspeed, engine) if deepspeed else {}
    from stformer_train.config import load_config_file

    data = load_config_file(config) if config else {}
    model_d, train_d, tok = (
        dict(data.get("model") or {}),
        dict(data.get("train") or {}),
        dict(data.get("tokenize") or {}),
    )
    for d, key, value in (
        (train_d, "max_steps", max_steps),
        (train_d, "num_train_epochs", epochs),
        (train_d, "per_device_train_batch_size", batch_size),
        (train_d, "learning_rate", learning_rate),
        (train_d, "eval_fraction", eval_fraction),
        (train_d, "seed", seed),
        (train_d, "report_to", report_to),
        (model_d, "num_layers", layers),
        (model_d, "hidden_size", hidden),
        (model_d, "num_heads", heads),
        (tok, "max_length", max_length),
        (tok, "gene_id_key", gene_id_key),
    ):
        if value is not None:
            d[key] = value
    if hidden is not None and "intermediate_size" not in model_d:
        model_d["intermediate_size"] = 2 * hidden
    train_cfg = TrainConfig.from_dict(train_d)
    out.mkdir(parents=True, exist_ok=True)
    if init_from is not None:
        corpus = _init_from(init_from, list(inputs), out, tok, model_d, progress)
    else:
        corpus = _corpus_from_inputs(list(inputs), out, tok, progress)
    longest = max(corpus.lengths) if corpus.lengths else 1
    model_d.setdefault("max_position_embeddings", max(longest, 8))
    model_cfg = ModelConfig.from_dict(model_d)
    console.print(
        f"pretraining ({engine}) on {len(corpus.dataset)} cells from {corpus.path} -> {out}"
    )
    if engine == "hf":
        from stformer_train.hf import pretrain_mlm

        result = pretrain_mlm(
            corpus, out, model=model_cfg, train=train_cfg, progress=progress, **overrides
        )
        step, model_dir = result.global_step, result.model_dir
    else:
        from stformer_train.lightning import pretrain_lightning

        res = pretrain_lightning(corpus, out, model=model_cfg, train=train_cfg, progress=progress)
        step, model_dir = res["global_step"], res["model_dir"]
    console.print(f"{step} steps; model: {model_dir}; logs: {out / 'logs'}")


def _deepspeed_overrides(spec: str, engine: str) -> dict[str, Any]:
    """``--deepspeed`` as ``TrainingArguments`` fields (stformer_dist prepares the process for DeepSpeed)."""
    if engine != "hf":
        raise ValueError("--deepspeed runs on the Hugging Face engine; use --engine hf")
    try:
        from stformer_dist import deepspeed_overrides, resolve_deepspeed
    except ImportError as exc:  # pragma: no cover - stformer-dist is part of the workspace
        raise ImportError(
            '--deepspeed needs stformer-dist: pip install "stformer-cli[dist]"'
        ) from exc
    resolve_deepspeed(spec)  # a bad spec fails before anything starts
    return deepspeed_overrides(spec)
