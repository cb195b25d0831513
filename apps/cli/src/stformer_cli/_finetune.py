"""``stformer finetune | predict``: a cell classifier from a model folder, and labels for new cells."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from stformer_cli._options import (
    LABEL_KEY,
    AllowNonInteger,
    GeneIdKey,
    K,
    LabelKey,
    Layer,
    NCountsKey,
    Progress,
)

console = Console()


def register(app: typer.Typer) -> None:
    app.command("finetune")(finetune)
    app.command("predict")(predict)


def finetune(
    run: Annotated[
        Path,
        typer.Argument(help="Run directory (or its model/ folder), or a Geneformer model folder."),
    ],
    h5ad: Annotated[Path, typer.Argument(help="Raw-count .h5ad with labels.")],
    label_key: LabelKey = LABEL_KEY,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Folder for the classifier and finetune.json (default RUN/finetune)."
        ),
    ] = None,
    epochs: Annotated[float, typer.Option(help="Fine-tuning epochs.")] = 3.0,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 32,
    learning_rate: Annotated[float, typer.Option(help="Learning rate.")] = 5e-4,
    test_fraction: Annotated[float, typer.Option(help="Held-out fraction.")] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed of the split, head and order.")] = 0,
    pooling: Annotated[
        str,
        typer.Option(
            help="auto (cls when the cells start with <cls>, else mean), mean (non-pad tokens) or cls."
        ),
    ] = "auto",
    k: K = 15,
    head_init: Annotated[
        str,
        typer.Option(
            help="linear-probe (the head starts as a logistic regression on the frozen features) or random."
        ),
    ] = "linear-probe",
    gene_id_key: GeneIdKey = None,
    layer: Layer = None,
    allow_non_integer: AllowNonInteger = False,
    n_counts_key: NCountsKey = None,
    progress: Progress = True,
) -> None:
    """Fine-tune a cell classifier; report held-out accuracy and macro-F1 beside baselines.

    The baselines, on the same held-out cells: the majority class of the training cells and a kNN
    on the frozen embeddings of the starting model.
    """
    from stformer_train.finetune import NoBetterThanMajorityWarning, finetune_classifier

    out = out or Path(run) / "finetune"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoBetterThanMajorityWarning)  # printed below
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
            pooling=pooling,  # type: ignore[arg-type]
            k=k,
            head_init=head_init.replace("-", "_"),  # type: ignore[arg-type]
            gene_id_key=gene_id_key,
            layer=layer,
            allow_non_integer=allow_non_integer or None,
            n_counts_key=n_counts_key,
            progress=progress,
        )
    console.print(r["split_note"], highlight=False)
    b = r["baselines"]
    rows = [("fine-tuned", r), ("majority class", b["majority"])]
    rows.append((f"kNN (k={b['knn']['k']}, frozen)", b["knn"]))
    if "linear_probe" in b:
        rows.append(("linear probe (frozen)", b["linear_probe"]))
    lines = [
        f"  {name:<24} accuracy {s['accuracy']:.3f}  macro-F1 {s['macro_f1']:.3f}"
        for name, s in rows
    ]
    console.print(
        f"held-out ({r['n_test']} cells, {len(r['classes'])} classes, {r['pooling']} pooling):\n"
        + "\n".join(lines)
        + f"\n-> {out}",
        highlight=False,
    )
    if r["warning"]:
        console.print(f"[bold yellow]warning:[/] {r['warning']}", highlight=False)


def predict(
    model: Annotated[
        Path,
        typer.Argument(
            help="Folder `stformer finetune` wrote (or its model/, or a run with finetune/), "
            "or a Geneformer BertForSequenceClassification folder."
        ),
    ],
    h5ad: Annotated[Path, typer.Argument(help="Raw-count .h5ad to label.")],
    out: Annotated[Path, typer.Option("--out", help="Output .h5ad with the labels.")],
    key_added: Annotated[
        str,
        typer.Option(help="obs column of the predicted class (its probability: *_confidence)."),
    ] = "stformer_label",
    dictionaries: Annotated[
        Path | None,
        typer.Option(
            help="Folder with Geneformer's token and median dictionaries, if not beside the model."
        ),
    ] = None,
    gene_id_key: GeneIdKey = None,
    layer: Layer = None,
    allow_non_integer: AllowNonInteger = False,
    n_counts_key: NCountsKey = None,
    batch_size: Annotated[int, typer.Option(help="Cells per forward pass.")] = 64,
    progress: Progress = True,
) -> None:
    """Label every cell of H5AD: obs[KEY_ADDED], its confidence, obsm['stformer_proba']."""
    from stformer_train.finetune import confidence_key, predict_h5ad

    path = predict_h5ad(
        model,
        h5ad,
        out,
        key_added=key_added,
        dictionaries=dictionaries,
        gene_id_key=gene_id_key,
        layer=layer,
        allow_non_integer=allow_non_integer or None,
        n_counts_key=n_counts_key,
        batch_size=batch_size,
        progress=progress,
    )
    console.print(
        f"obs[{key_added!r}], obs[{confidence_key(key_added)!r}], obsm['stformer_proba'] -> {path}",
        highlight=False,
    )
