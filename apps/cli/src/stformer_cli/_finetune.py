"""``stformer finetune``: a cell-type classifier from a run's model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from stformer_cli._options import (
    LABEL_KEY,
    AllowNonInteger,
    GeneIdKey,
    LabelKey,
    Layer,
    NCountsKey,
)

console = Console()


def register(app: typer.Typer) -> None:
    app.command("finetune")(finetune)


def finetune(
    run: Annotated[Path, typer.Argument(help="Run directory (or its model/ folder).")],
    h5ad: Annotated[Path, typer.Argument(help="Raw-count .h5ad with labels.")],
    label_key: LabelKey = LABEL_KEY,
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder for the classifier and finetune.json.")
    ] = None,
    epochs: Annotated[float, typer.Option(help="Fine-tuning epochs.")] = 3.0,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 32,
    learning_rate: Annotated[float, typer.Option(help="Learning rate.")] = 5e-4,
    test_fraction: Annotated[float, typer.Option(help="Held-out fraction.")] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed of the split, head and order.")] = 0,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    gene_id_key: GeneIdKey = None,
    layer: Layer = None,
    allow_non_integer: AllowNonInteger = False,
    n_counts_key: NCountsKey = None,
) -> None:
    """Fine-tune a cell-type classifier from the run's model; report held-out accuracy and macro-F1."""
    from stformer_train.downstream import finetune_classifier

    out = out or Path(run) / "finetune"
    # where the new file keeps its gene ids and counts; passed on only when given
    inputs = {
        k: v
        for k, v in (
            ("gene_id_key", gene_id_key),
            ("layer", layer),
            ("allow_non_integer", allow_non_integer or None),
            ("n_counts_key", n_counts_key),
        )
        if v is not None
    }
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
        **inputs,
    )
    console.print(
        f"held-out accuracy {r['accuracy']:.3f}, macro-F1 {r['macro_f1']:.3f} "
        f"({r['n_test']} cells, {len(r['classes'])} classes) -> {out}"
    )
