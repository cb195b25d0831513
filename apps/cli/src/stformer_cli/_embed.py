"""``stformer embed | evaluate``: cell embeddings from a run's model, and their kNN evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from stformer_cli._options import (
    LABEL_KEY,
    AllowNonInteger,
    BatchSize,
    GeneIdKey,
    HiddenLayer,
    K,
    LabelKey,
    Layer,
    NCountsKey,
    Progress,
    Seed,
)

console = Console()


def register(app: typer.Typer) -> None:
    app.command("embed")(embed)
    app.command("evaluate")(evaluate)


Pooling = Annotated[str, typer.Option(help="mean (non-pad tokens) or cls (first token).")]


def _open(run: Path, gene_id_key: str | None, allow_non_integer: bool, n_counts_key: str | None):
    from stformer_train.api import open_for_input

    return open_for_input(
        run,
        gene_id_key=gene_id_key,
        allow_non_integer=allow_non_integer or None,
        n_counts_key=n_counts_key,
    )


def embed(
    run: Annotated[Path, typer.Argument(help="Run directory (or its model/ folder).")],
    h5ad: Annotated[Path, typer.Argument(help="Raw-count .h5ad to embed.")],
    out: Annotated[Path, typer.Option("--out", help="Output .h5ad with obsm['X_stformer'].")],
    gene_id_key: GeneIdKey = None,
    layer: Layer = None,
    allow_non_integer: AllowNonInteger = False,
    n_counts_key: NCountsKey = None,
    pooling: Pooling = "mean",
    hidden_layer: HiddenLayer = -1,
    batch_size: BatchSize = 64,
    progress: Progress = True,
) -> None:
    """Tokenize H5AD with the run's vocabulary and settings, and write cell embeddings."""
    from stformer_train.downstream import embed_h5ad

    path = embed_h5ad(
        _open(run, gene_id_key, allow_non_integer, n_counts_key),
        h5ad,
        out,
        layer=layer,
        pooling=pooling,
        hidden_layer=hidden_layer,
        batch_size=batch_size,
        progress=progress,
    )
    console.print(f"obsm['X_stformer'] -> {path}")


def evaluate(
    run: Annotated[Path, typer.Argument(help="Run directory (or its model/ folder).")],
    h5ad: Annotated[Path, typer.Argument(help="Raw-count .h5ad with labels.")],
    label_key: LabelKey = LABEL_KEY,
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder for evaluation.json and the plot.")
    ] = None,
    gene_id_key: GeneIdKey = None,
    layer: Layer = None,
    allow_non_integer: AllowNonInteger = False,
    n_counts_key: NCountsKey = None,
    test_fraction: Annotated[
        float,
        typer.Option(
            "--test-fraction",
            help="Held-out fraction when H5AD is not a pretraining file of the run "
            "(otherwise the run's own held-out cells, split.json, are used).",
        ),
    ] = 0.2,
    k: K = 15,
    seed: Seed = 0,
    pooling: Pooling = "mean",
    hidden_layer: HiddenLayer = -1,
    batch_size: BatchSize = 64,
    progress: Progress = True,
) -> None:
    """kNN accuracy and macro-F1 on held-out cells: the model vs random init vs PCA, plus a 2-D plot."""
    from rich.table import Table

    from stformer_train.downstream import evaluate_run

    out = out or Path(run) / "evaluation"
    result = evaluate_run(
        _open(run, gene_id_key, allow_non_integer, n_counts_key),
        h5ad,
        label_key=label_key,
        out_dir=out,
        layer=layer,
        test_fraction=test_fraction,
        k=k,
        seed=seed,
        pooling=pooling,
        hidden_layer=hidden_layer,
        batch_size=batch_size,
        progress=progress,
    )
    console.print(result["split_note"])
    table = Table(
        title=f"{k}-NN {label_key} on {next(iter(result['scores'].values()))['n_test']} held-out cells"
    )
    for col in ("embedding", "accuracy", "macro-F1"):
        table.add_column(col)
    for name, s in result["scores"].items():
        table.add_row(name, f"{s['accuracy']:.3f}", f"{s['macro_f1']:.3f}")
    console.print(table)
    console.print(f"-> {out / 'evaluation.json'}, {result['plot']}")
