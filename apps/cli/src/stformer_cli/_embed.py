"""``stformer embed | evaluate``: cell embeddings from a run's model, and their kNN evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from stformer_cli._options import HiddenLayer

console = Console()


def register(app: typer.Typer) -> None:
    app.command("embed")(embed)
    app.command("evaluate")(evaluate)


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
