"""``stformer perturb`` (in-silico perturbation) and ``stformer perturb-stats`` (genes ranked by shift)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from stformer_cli._options import AllowNonInteger, GeneIdKey, Layer, NCountsKey

console = Console()


def register(app: typer.Typer) -> None:
    app.command("perturb")(perturb)
    app.command("perturb-stats")(perturb_stats)


def perturb(
    model: Annotated[
        Path, typer.Argument(help="A stformer run (or its model/) or a Geneformer model folder.")
    ],
    h5ad: Annotated[Path, typer.Argument(help="Raw-count .h5ad with the cells to perturb.")],
    out: Annotated[
        Path, typer.Option("--out", help="Output folder (table, summary, resume state).")
    ],
    perturbation: Annotated[
        str,
        typer.Option(help="delete | overexpress | inhibit | activate (Geneformer's definitions)."),
    ] = "delete",
    genes: Annotated[
        str, typer.Option(help="'all' (each expressed gene alone) or comma-separated gene ids.")
    ] = "all",
    combine: Annotated[
        bool, typer.Option(help="Perturb the listed genes together, as one combination.")
    ] = False,
    rank_shift: Annotated[
        int, typer.Option(help="Quartiles moved by inhibit / activate (1-3).")
    ] = 1,
    filter_key: Annotated[
        str | None, typer.Option(help="obs column that selects the cells.")
    ] = None,
    filter_values: Annotated[
        str | None, typer.Option(help="Comma-separated values of --filter-key to keep.")
    ] = None,
    goal_key: Annotated[str | None, typer.Option(help="obs column of the goal state.")] = None,
    goal_value: Annotated[
        str | None, typer.Option(help="The goal state (its mean embedding is the target).")
    ] = None,
    gene_shifts: Annotated[
        bool, typer.Option(help="Also write every other gene's embedding shift.")
    ] = False,
    obs_columns: Annotated[
        str | None,
        typer.Option(help="Comma-separated obs columns copied into the table (e.g. cell_type)."),
    ] = None,
    max_cells: Annotated[int | None, typer.Option(help="Perturb at most this many cells.")] = None,
    hidden_layer: Annotated[
        int, typer.Option(help="Hidden state pooled (-2: second-to-last, as Geneformer).")
    ] = -2,
    cells_per_batch: Annotated[
        int, typer.Option(help="Cells per batch (the unit of resuming).")
    ] = 32,
    dictionaries: Annotated[
        Path | None,
        typer.Option(
            help="Folder of Geneformer's token/median dictionaries, if not beside the model."
        ),
    ] = None,
    gene_id_key: GeneIdKey = None,
    layer: Layer = None,
    allow_non_integer: AllowNonInteger = False,
    n_counts_key: NCountsKey = None,
    device: Annotated[
        str | None, typer.Option(help="cuda or cpu (default: the GPU when there is one).")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Forward passes at once on the CPU, each single-threaded (default: torch's thread count).",
        ),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Perturb genes in silico and write per (cell, gene) the cosine similarity of the cell embedding."""
    from stformer_train.api import open_for_input
    from stformer_train.geneformer import open_model
    from stformer_train.perturb import perturb_h5ad

    def split(v: str | None) -> list[str] | None:
        return None if v is None else [s.strip() for s in v.split(",") if s.strip()]

    folder = open_for_input(
        open_model(model, dictionaries=dictionaries, gene_id_key=gene_id_key),
        gene_id_key=gene_id_key,
        layer=layer,
        allow_non_integer=allow_non_integer or None,
        n_counts_key=n_counts_key,
    )
    result = perturb_h5ad(
        folder,
        h5ad,
        out,
        perturbation=perturbation,
        genes="all" if genes == "all" else split(genes),
        combine=combine,
        rank_shift=rank_shift,
        filter_key=filter_key,
        filter_values=split(filter_values),
        goal_key=goal_key,
        goal_value=goal_value,
        gene_shifts=gene_shifts,
        obs_columns=tuple(split(obs_columns) or ()),
        max_cells=max_cells,
        hidden_layer=hidden_layer,
        cells_per_batch=cells_per_batch,
        device=device,
        workers=workers,
        progress=progress,
    )
    console.print(
        f"{result['n_perturbations']} perturbations of {result['n_cells']} cells -> "
        f"{result['table']}, {result['summary']}"
    )


def perturb_stats(
    table: Annotated[
        Path, typer.Argument(help="perturbations.parquet or the folder of `stformer perturb`.")
    ],
    out: Annotated[
        Path | None, typer.Option("--out", help="CSV of the ranking (default: beside the table).")
    ] = None,
    groupby: Annotated[
        str | None, typer.Option(help="Rank within each value of this column (e.g. cell_type).")
    ] = None,
    metric: Annotated[
        str | None,
        typer.Option(help="shift or shift_to_goal (default: shift_to_goal when present)."),
    ] = None,
    confidence: Annotated[
        float, typer.Option(help="Level of the confidence interval of the mean.")
    ] = 0.95,
    min_cells: Annotated[int, typer.Option(help="Leave out genes perturbed in fewer cells.")] = 1,
    top: Annotated[int, typer.Option(help="Rows printed per group.")] = 10,
) -> None:
    """Rank perturbed genes by their mean shift, with confidence intervals."""
    from stformer_data.atomic import atomic_write_text
    from stformer_train.perturb import perturbation_stats

    stats = perturbation_stats(
        table, groupby=groupby, metric=metric, confidence=confidence, min_cells=min_cells
    )
    folder = table if table.is_dir() else table.parent
    out = out or folder / "perturbation_stats.csv"
    atomic_write_text(out, stats.to_csv(index=False))
    shown = stats.groupby(groupby, observed=True).head(top) if groupby else stats.head(top)
    console.print(shown.to_string(index=False))
    console.print(f"-> {out}")
