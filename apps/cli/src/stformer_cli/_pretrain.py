"""``stformer pretrain``: train a masked-language model into a run directory."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from stformer_cli._options import (
    LABEL_KEY,
    AllowNonInteger,
    GeneIdKey,
    Layer,
    MaxLength,
    NCountsKey,
)

console = Console()
err_console = Console(stderr=True)


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
    allow_non_integer = bool(tok.get("allow_non_integer", False))
    n_counts_key = tok.get("n_counts_key", "n_counts") or None
    genes: list[str] = []
    for f in files:
        adata = sd.open_h5ad(f)
        try:
            genes.extend(sd.resolve_gene_ids(adata.var, gene_id_key=gene_id_key, path=f))
        finally:
            adata.file.close()
    vocab = sd.GeneVocab.from_genes(dict.fromkeys(genes))
    medians = sd.compute_medians_exact(
        files,
        gene_id_key=gene_id_key,
        layer=layer,
        allow_non_integer=allow_non_integer,
        n_counts_key=n_counts_key,
    )
    config = sd.TokenizeConfig(
        gene_id_key=gene_id_key,
        layer=layer,
        allow_non_integer=allow_non_integer,
        rank=sd.RankTokenizerConfig(
            model_input_size=int(tok.get("max_length", 2048)), n_counts_key=n_counts_key
        ),
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
    path: Path,
    inputs: list[Path],
    out: Path,
    tok: dict[str, Any],
    model_d: dict,
    progress: bool,
    *,
    reuse: bool = False,
):
    """Tokenize with the checkpoint's vocabulary and settings; take its shape (``--init-from``)."""
    import stformer_data as sd
    from stformer_train.api import open_for_input
    from stformer_train.geneformer import model_config_of, open_model

    folder = open_for_input(
        open_model(path, gene_id_key=tok.get("gene_id_key")),
        gene_id_key=tok.get("gene_id_key"),
        layer=tok.get("layer"),
        allow_non_integer=tok.get("allow_non_integer"),
        n_counts_key=tok.get("n_counts_key"),
    )
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
    if reuse and (out / "corpus").is_dir():  # tokenized by the interrupted run
        return sd.load_corpus(out / "corpus")
    return folder.tokenize(inputs[0], out / "corpus", progress=progress)


def pretrain(
    inputs: Annotated[
        list[Path], typer.Argument(help="A tokenized corpus folder, or raw-count .h5ad files.")
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out", help="Run directory (started again with the same settings, it resumes)."
        ),
    ],
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
    mlm_probability: Annotated[
        float | None,
        typer.Option(help="Fraction of tokens masked per cell (TrainConfig default 0.15)."),
    ] = None,
    eval_fraction: Annotated[
        float | None,
        typer.Option(help="Fraction of the training cells kept for the validation loss."),
    ] = None,
    test_fraction: Annotated[
        float,
        typer.Option(
            help="Fraction of cells held out and never trained on; RUN/split.json names them, "
            "and evaluate/finetune score on them (0: train on every cell)."
        ),
    ] = 0.1,
    label_key: Annotated[
        str,
        typer.Option(
            help="obs column the held-out split is stratified by, when the cells have it."
        ),
    ] = LABEL_KEY,
    layers: Annotated[int | None, typer.Option(help="Transformer layers.")] = None,
    hidden: Annotated[int | None, typer.Option(help="Hidden size.")] = None,
    heads: Annotated[int | None, typer.Option(help="Attention heads.")] = None,
    tie_embeddings: Annotated[
        bool | None,
        typer.Option(
            "--tie-embeddings/--no-tie-embeddings",
            help="Share the gene embeddings between input and MLM output (BERT's and "
            "Geneformer's choice, the default); untied learn faster on short CPU runs (the demo).",
        ),
    ] = None,
    max_length: MaxLength = None,
    gene_id_key: GeneIdKey = None,
    layer: Layer = None,
    allow_non_integer: AllowNonInteger = False,
    n_counts_key: NCountsKey = None,
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
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Start again in an existing run directory: removes what stformer wrote there.",
        ),
    ] = False,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the run in --out from its last complete checkpoint (the default when "
            "its settings match).",
        ),
    ] = False,
) -> None:
    """Pretrain a masked-language model; the run directory gets config, logs, checkpoints and model/.

    Flags win over the ``--config`` file. An existing run directory with other settings is
    refused before anything is written (``--overwrite`` starts again); with the same settings
    the run resumes from its last complete checkpoint. Ctrl-C keeps the last checkpoint and
    prints the command that resumes.
    """
    import stformer_data as sd
    from stformer_train import ModelConfig, TrainConfig
    from stformer_train.config import apply_overrides, load_config_file
    from stformer_train.run_dir import RunDir

    if engine not in ("hf", "lightning"):
        raise ValueError(f"--engine must be 'hf' or 'lightning', got {engine!r}")
    if overwrite and resume:
        raise sd.InputError(
            out, "--overwrite/--resume", "are both given", "pass --overwrite or --resume, not both"
        )
    overrides = _deepspeed_overrides(deepspeed, engine) if deepspeed else {}
    sections = apply_overrides(
        load_config_file(config) if config else {},
        {
            "train": {
                "max_steps": max_steps,
                "num_train_epochs": epochs,
                "per_device_train_batch_size": batch_size,
                "learning_rate": learning_rate,
                "mlm_probability": mlm_probability,
                "eval_fraction": eval_fraction,
                "seed": seed,
                "report_to": report_to,
            },
            "model": {
                "num_layers": layers,
                "hidden_size": hidden,
                "num_heads": heads,
                "tie_word_embeddings": tie_embeddings,
            },
            "tokenize": {
                "max_length": max_length,
                "gene_id_key": gene_id_key,
                "layer": layer,
                "allow_non_integer": allow_non_integer or None,
                "n_counts_key": n_counts_key,
            },
        },
    )
    model_d, train_d, tok = sections["model"], sections["train"], sections["tokenize"]
    if hidden is not None and "intermediate_size" not in model_d:
        model_d["intermediate_size"] = 2 * hidden
    train_cfg = TrainConfig.from_dict(train_d)
    inputs = list(inputs)
    corpus_input = len(inputs) == 1 and inputs[0].is_dir()
    request: dict[str, Any] = {
        "engine": engine,
        "train": train_cfg.to_dict(),
        "inputs": {
            "paths": [str(p.resolve()) for p in inputs],
            "tokenize": {} if corpus_input else tok,
            "init_from": str(init_from.resolve()) if init_from else None,
        },
        "split": {"test_fraction": test_fraction, "label_key": label_key},
    }
    if init_from is None:  # the model's shape (but a length taken from the corpus) is known now
        shape = {**ModelConfig.from_dict({}).to_dict(), **model_d}
        if "max_position_embeddings" not in model_d:
            del shape["max_position_embeddings"]
        request["model"] = shape
    resuming = not overwrite and RunDir(out).read_config() is not None
    try:
        with RunDir.open(out, request, overwrite=overwrite, resume=resume or None) as run:
            _say_where_it_resumes(run, engine, resuming)
            model_dir, step = _train(
                inputs=inputs,
                out=out,
                tok=tok,
                model_d=model_d,
                train_cfg=train_cfg,
                engine=engine,
                init_from=init_from,
                progress=progress,
                resuming=resuming,
                overrides=overrides,
                test_fraction=test_fraction,
                label_key=label_key,
            )
    except KeyboardInterrupt:
        _interrupted(out, engine)
        raise typer.Exit(130) from None
    console.print(f"{step} steps; model: {model_dir}; logs: {out / 'logs'}")


def _train(
    *,
    inputs: list[Path],
    out: Path,
    tok: dict[str, Any],
    model_d: dict[str, Any],
    train_cfg: Any,
    engine: str,
    init_from: Path | None,
    progress: bool,
    resuming: bool,
    overrides: dict[str, Any],
    test_fraction: float,
    label_key: str,
) -> tuple[Path, int]:
    """Tokenize (or reuse the run's corpus when resuming), then train; returns (model dir, step)."""
    import stformer_data as sd
    from stformer_train import ModelConfig

    kept = out / "corpus"
    if init_from is not None:
        corpus = _init_from(init_from, inputs, out, tok, model_d, progress, reuse=resuming)
    elif resuming and not (len(inputs) == 1 and inputs[0].is_dir()) and kept.is_dir():
        corpus = sd.load_corpus(kept)  # tokenized by the interrupted run, same inputs and settings
    else:
        corpus = _corpus_from_inputs(inputs, out, tok, progress)
    longest = max(corpus.lengths) if corpus.lengths else 1
    model_d.setdefault("max_position_embeddings", max(longest, 8))
    model_cfg = ModelConfig.from_dict(model_d)
    train_indices = held_out_split(corpus, out, train_cfg, test_fraction, label_key)
    n_train = len(corpus.dataset) if train_indices is None else len(train_indices)
    console.print(f"pretraining ({engine}) on {n_train} cells from {corpus.path} -> {out}")
    if engine == "hf":
        from stformer_train.hf import pretrain_mlm

        result = pretrain_mlm(
            corpus,
            out,
            model=model_cfg,
            train=train_cfg,
            train_indices=train_indices,
            progress=progress,
            **overrides,
        )
        return result.model_dir, result.global_step
    from stformer_train.lightning import pretrain_lightning

    res = pretrain_lightning(
        corpus,
        out,
        model=model_cfg,
        train=train_cfg,
        train_indices=train_indices,
        progress=progress,
    )
    return res["model_dir"], res["global_step"]


def _resume_point(run, engine: str, *, clean: bool):
    """``(description of the checkpoint a rerun starts from or None, skipped checkpoints)``."""
    if engine == "hf":
        from stformer_train.run_dir import scan_checkpoints

        point, skipped = scan_checkpoints(run.checkpoints, clean=clean)
        return (point.describe(run.root) if point else None), skipped
    from stformer_train.lightning._trainer import (
        lightning_checkpoint_step,
        lightning_resume_point,
    )

    path = lightning_resume_point(run.checkpoints)
    if path is None:
        return None, []
    step = lightning_checkpoint_step(path)
    where = path.relative_to(run.root)
    return (f"{where} (step {step})" if step is not None else str(where)), []


def _say_where_it_resumes(run, engine: str, resuming: bool) -> None:
    where, skipped = _resume_point(run, engine, clean=True)
    for what in skipped:
        err_console.print(f"skipped and removed checkpoint {what}", highlight=False)
    if where is not None:
        console.print(f"resuming from {where}", highlight=False)
    elif resuming:
        console.print(
            f"{run.root} holds this run but no complete checkpoint yet: starting from step 0",
            highlight=False,
        )


def _interrupted(out: Path, engine: str) -> None:
    """After Ctrl-C: what the run directory kept and the command that resumes."""
    import shlex

    from stformer_train.run_dir import RunDir

    run = RunDir(out)
    where, _ = _resume_point(run, engine, clean=False) if run.checkpoints.is_dir() else (None, [])
    kept = (
        f"kept {out / where}" if where else "no checkpoint was complete yet (the run starts again)"
    )
    command = shlex.join(["stformer", *_command_line()])
    err_console.print(
        f"interrupted: {kept}. Resume with:\n  {command}", highlight=False, soft_wrap=True
    )


def _command_line() -> list[str]:
    """This command's arguments as typed, less ``--overwrite`` (rerun, it would start again)."""
    import click

    ctx = click.get_current_context(silent=True)
    if ctx is None:  # pragma: no cover - always inside the typer command
        return [a for a in sys.argv[1:] if a != "--overwrite"]
    args = [ctx.info_name or "pretrain"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if isinstance(param, click.Argument):
            args.extend(str(v) for v in (value if isinstance(value, list | tuple) else [value]))
            continue
        if value == param.default or param.name == "overwrite" or value is None:
            continue
        if isinstance(value, bool):
            flags = param.opts if value else param.secondary_opts
            if flags:
                args.append(flags[0])
            continue
        for v in value if isinstance(value, list | tuple) else [value]:
            args.extend([param.opts[0], str(v)])
    return args


def held_out_split(corpus, out: Path, train_cfg, test_fraction: float, label_key: str | None):
    """Split the corpus (test cells never trained on, then validation), write ``OUT/split.json``
    and return the rows to train on (``None``: every row). ``stformer demo`` splits the same way."""
    import os

    from stformer_train.run_dir import corpus_labels, plan_split, write_split

    labels = corpus_labels(corpus, label_key)
    split = plan_split(
        corpus,
        test_fraction=test_fraction,
        eval_fraction=train_cfg.eval_fraction,
        seed=train_cfg.seed,
        labels=labels,
    )
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one process writes
        write_split(
            out,
            corpus,
            split,
            test_fraction=test_fraction,
            eval_fraction=train_cfg.eval_fraction,
            seed=train_cfg.seed,
            label_key=label_key if labels is not None else None,
        )
    if test_fraction:
        console.print(
            f"held out {len(split.test)} of {len(corpus.dataset)} cells (never trained on"
            + (f", stratified by {label_key}" if labels is not None else "")
            + f") -> {out / 'split.json'}"
        )
        return split.trained_on.tolist()
    return None


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
