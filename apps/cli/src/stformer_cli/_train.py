"""``stformer pretrain | embed | evaluate | finetune``: training and using a model from a run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

console = Console()

#: ``--hidden-layer`` of embed, evaluate and demo
HiddenLayer = Annotated[
    int,
    typer.Option(
        help="Hidden layer pooled into cell embeddings: -1 last, -2 second-to-last (Geneformer), "
        "0 input embeddings."
    ),
]


def register(app: typer.Typer) -> None:
    app.command("pretrain")(pretrain)
    app.command("embed")(embed)
    app.command("evaluate")(evaluate)
    app.command("finetune")(finetune)


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


def embed(
    run: Annotated[Path, typer.Argument(help="Run directory (or its model/ folder).")],
    h5ad: Annotated[Path, typer.Argument(help="Raw-count .h5ad to embed.")],
    out: Annotated[Path, typer.Option("--out", help="Output .h5ad with obsm['X_stformer'].")],
    pooling: Annotated[
        str, typer.Option(help="mean (non-pad tokens) or cls (first token).")
    ] = "mean",
    hidden_layer: HiddenLayer = -1,
    batch_size: Annotated[int, typer.Option(help="Cells per forward pass.")] = 64,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Tokenize H5AD with the run's vocabulary and settings, and write cell embeddings."""
    from stformer_train.downstream import embed_h5ad

    path = embed_h5ad(
        run,
        h5ad,
        out,
        pooling=pooling,
        hidden_layer=hidden_layer,
        batch_size=batch_size,
        progress=progress,
    )
    console.print(f"obsm['X_stformer'] -> {path}")


def evaluate(
    run: Annotated[Path, typer.Argument(help="Run directory (or its model/ folder).")],
    h5ad: Annotated[Path, typer.Argument(help="Raw-count .h5ad with labels.")],
    label_key: Annotated[str, typer.Option(help="obs column with the labels.")] = "cell_type",
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder for evaluation.json and the plot.")
    ] = None,
    test_fraction: Annotated[float, typer.Option(help="Held-out fraction.")] = 0.2,
    k: Annotated[int, typer.Option(help="Neighbours of the kNN classifier.")] = 15,
    seed: Annotated[int, typer.Option(help="Seed of the split and the random-init baseline.")] = 0,
    hidden_layer: HiddenLayer = -1,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """kNN accuracy and macro-F1 on held-out cells: the model vs random init vs PCA, plus a 2-D plot."""
    from rich.table import Table

    from stformer_train.downstream import evaluate_run

    out = out or Path(run) / "evaluation"
    result = evaluate_run(
        run,
        h5ad,
        label_key=label_key,
        out_dir=out,
        test_fraction=test_fraction,
        k=k,
        seed=seed,
        hidden_layer=hidden_layer,
        progress=progress,
    )
    table = Table(
        title=f"{k}-NN {label_key} on {next(iter(result['scores'].values()))['n_test']} held-out cells"
    )
    for col in ("embedding", "accuracy", "macro-F1"):
        table.add_column(col)
    for name, s in result["scores"].items():
        table.add_row(name, f"{s['accuracy']:.3f}", f"{s['macro_f1']:.3f}")
    console.print(table)
    console.print(f"-> {out / 'evaluation.json'}, {result['plot']}")


def finetune(
    run: Annotated[Path, typer.Argument(help="Run directory (or its model/ folder).")],
    h5ad: Annotated[Path, typer.Argument(help="Raw-count .h5ad with labels.")],
    label_key: Annotated[str, typer.Option(help="obs column with the labels.")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder for the classifier and finetune.json.")
    ] = None,
    epochs: Annotated[float, typer.Option(help="Fine-tuning epochs.")] = 3.0,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 32,
    learning_rate: Annotated[float, typer.Option(help="Learning rate.")] = 5e-4,
    test_fraction: Annotated[float, typer.Option(help="Held-out fraction.")] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed of the split, head and order.")] = 0,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Fine-tune a cell-type classifier from the run's model; report held-out accuracy and macro-F1."""
    from stformer_train.downstream import finetune_classifier

    out = out or Path(run) / "finetune"
    r = finetune_classifier(
        run,
        h5ad,
        label_key=label_key,
        out_dir=out,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        test_fraction=test_fraction,
        seed=seed,
        progress=progress,
    )
    console.print(
        f"held-out accuracy {r['accuracy']:.3f}, macro-F1 {r['macro_f1']:.3f} "
        f"({r['n_test']} cells, {len(r['classes'])} classes) -> {out}"
    )
