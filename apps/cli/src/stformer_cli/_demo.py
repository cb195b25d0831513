"""``stformer demo``: the whole pipeline once, end to end, on simulated data or a user's h5ad.

It runs the commands' own code (``tokenize``, ``pretrain``, ``evaluate``) with the demo's small
CPU recipe, so the step-by-step commands with the same options give the same held-out figures:
the same corpus, the same held-out split (``RUN/split.json``), the same model and scores.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from stformer_cli._options import (
    LABEL_KEY,
    AllowNonInteger,
    GeneIdKey,
    HiddenLayer,
    K,
    Layer,
    NCountsKey,
    Progress,
    TestFraction,
)
from stformer_data.atomic import atomic_write_text, partial_path

console = Console()
MARKER = "demo.json"


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


def demo(
    h5ad: Annotated[
        Path | None, typer.Option(help="Run on this raw-count .h5ad instead of simulated data.")
    ] = None,
    label_key: Annotated[
        str, typer.Option(help="obs column with the cell labels used for evaluation.")
    ] = LABEL_KEY,
    out: Annotated[
        Path, typer.Option(help="Run directory; a previous demo there is replaced.")
    ] = Path("runs/demo"),
    gene_id_key: GeneIdKey = None,
    layer: Layer = None,
    allow_non_integer: AllowNonInteger = False,
    n_counts_key: NCountsKey = None,
    cells: Annotated[int, typer.Option(help="Simulated cells.")] = 2000,
    genes: Annotated[int, typer.Option(help="Simulated genes.")] = 500,
    max_length: Annotated[
        int,
        typer.Option(
            "--max-length",
            help="Longest token sequence, special tokens included (Geneformer's model_input_size).",
        ),
    ] = 64,
    layers: Annotated[int, typer.Option(help="Transformer layers.")] = 2,
    hidden: Annotated[int, typer.Option(help="Hidden size.")] = 128,
    heads: Annotated[int, typer.Option(help="Attention heads.")] = 4,
    epochs: Annotated[float, typer.Option(help="Pretraining epochs.")] = 20.0,
    batch_size: Annotated[int, typer.Option(help="Per-device batch size.")] = 32,
    learning_rate: Annotated[float, typer.Option(help="Peak learning rate.")] = 1e-3,
    mlm_probability: Annotated[
        float,
        typer.Option(
            help="Fraction of tokens masked per cell (0.3 learns faster on short runs of real data)."
        ),
    ] = 0.15,
    tie_embeddings: Annotated[
        bool,
        typer.Option(
            "--tie-embeddings/--no-tie-embeddings",
            help="Share input and output gene embeddings (untied: better embeddings in a few "
            "hundred CPU steps, measured on the simulated default data).",
        ),
    ] = False,
    hidden_layer: HiddenLayer = -1,
    test_fraction: TestFraction = 0.2,
    k: K = 15,
    seed: Annotated[
        int, typer.Option(help="Seed of the simulation, split, model and masking.")
    ] = 0,
    progress: Progress = True,
    report_to: Annotated[
        str,
        typer.Option(
            help="Experiment trackers of the pretraining: tensorboard, wandb, mlflow, none or auto."
        ),
    ] = "auto",
) -> None:
    """Simulate (or read) cells, tokenize, pretrain a small BERT, embed, and evaluate the embeddings.

    The steps are the commands' own (tokenize, pretrain, evaluate); `stformer demo --help` lists
    the equivalent options, and docs/cli.md the commands that reproduce a demo step by step.
    """
    import stformer_data as sd
    from stformer_cli._pretrain import pretrain
    from stformer_cli._tokenize import medians, tokenize
    from stformer_train.downstream import evaluate_run

    t0 = time.time()
    shape = None
    if h5ad is not None:  # validate the input before touching the output folder
        user_adata = sd.open_h5ad(h5ad, backed=True)
        shape = user_adata.shape
        try:
            if label_key not in user_adata.obs.columns:
                raise sd.InputError(
                    h5ad,
                    f"obs[{label_key!r}]",
                    "does not exist",
                    f"pass --label-key with one of {list(user_adata.obs.columns)}",
                )
        finally:
            user_adata.file.close()
    _prepare_out(out)
    atomic_write_text(
        out / MARKER,
        json.dumps({"source": str(h5ad) if h5ad else "simulated", "finished": False}),
    )
    steps = 4

    console.rule("[bold]stformer demo")
    console.print(f"[bold cyan][1/{steps}] Data[/]")
    if h5ad is None:
        adata = sd.simulate_counts(n_cells=cells, n_genes=genes, seed=seed)
        h5ad = out / "data.h5ad"
        _write_h5ad(adata, h5ad)
        label_key = "cell_type"
        console.print(
            f"  simulated {adata.n_obs} cells x {adata.n_vars} genes "
            f"({adata.obs['cell_type'].nunique()} cell types) -> {h5ad}"
        )
    else:
        console.print(f"  read {shape[0]} cells x {shape[1]} genes from {h5ad}")

    console.print(f"[bold cyan][2/{steps}] Tokenize[/] (rank-value, max {max_length} tokens)")
    n_key = "n_counts" if n_counts_key is None else n_counts_key
    # exact medians (`stformer medians --exact`): a demo-sized file fits in memory (the default
    # sketch is deterministic too, within 0.5% of each median)
    medians_path = out / "gene_medians.json"
    medians(
        [h5ad],
        medians_path,
        exact=True,
        gene_id_key=gene_id_key,
        layer=layer,
        n_counts_key=n_key,
        allow_non_integer=allow_non_integer,
    )
    corpus = tokenize(
        [h5ad],
        out / "corpus",
        medians=medians_path,
        gene_id_key=gene_id_key,
        layer=layer,
        obs_columns=[label_key],
        max_length=max_length,
        allow_non_integer=allow_non_integer,
        n_counts_key=n_key,
        overwrite=True,
        progress=progress,
    )

    console.print(f"[bold cyan][3/{steps}] Pretrain[/] (masked-language model)")
    pretrain(
        [corpus.path],
        out,
        layers=layers,
        hidden=hidden,
        heads=heads,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        mlm_probability=mlm_probability,
        tie_embeddings=tie_embeddings,
        test_fraction=test_fraction,
        label_key=label_key,
        seed=seed,
        progress=progress,
        report_to=report_to,
    )

    console.print(
        f"[bold cyan][4/{steps}] Embed and evaluate[/] ({k}-NN {label_key} on the held-out cells)"
    )
    emb_path = out / "embeddings.h5ad"
    result = evaluate_run(
        out,
        h5ad,
        label_key=label_key,
        out_dir=out / "evaluation",
        layer=layer,
        gene_id_key=gene_id_key,
        test_fraction=test_fraction,
        seed=seed,
        k=k,
        hidden_layer=hidden_layer,
        embeddings_path=emb_path,
        progress=progress,
    )
    console.print(f"  {result['split_note']}")
    scores = {DISPLAY[name]: s for name, s in result["scores"].items()}
    table = Table(title="kNN cell-type accuracy on held-out cells")
    table.add_column("embedding")
    table.add_column("accuracy", justify="right")
    table.add_column("macro-F1", justify="right")
    for name, s in scores.items():
        table.add_row(name, f"{s['accuracy']:.3f}", f"{s['macro_f1']:.3f}")
    console.print(table)
    metrics_path = out / "metrics.json"
    atomic_write_text(
        metrics_path,
        json.dumps(
            {
                "label_key": label_key,
                "k": k,
                "split": result["split"],
                "scores": scores,
                "seconds": round(time.time() - t0, 1),
            },
            indent=1,
        ),
    )
    atomic_write_text(out / MARKER, json.dumps({"source": str(h5ad), "finished": True}))
    console.print(f"Done in {time.time() - t0:.0f} s. Run directory: [bold]{out}[/]")
    for what, path in [
        ("corpus", corpus.path),
        ("model (AutoModelForMaskedLM.from_pretrained)", out / "model"),
        ("held-out split", out / "split.json"),
        ("embeddings", emb_path),
        ("metrics", metrics_path),
        ("logs", out / "logs"),
    ]:
        console.print(f"  {what}: {path}")


#: the demo's names of evaluate_run's embeddings
DISPLAY = {
    "stformer": "stformer (pretrained)",
    "random_init": "random-init model (same shape)",
    "pca": "PCA of log-normalised counts",
}


def _prepare_out(out: Path) -> None:
    """A previous demo run (or an interrupted one) is replaced; any other non-empty folder is refused."""
    if out.exists() and any(out.iterdir()):
        if (out / MARKER).exists():
            shutil.rmtree(out)
        else:
            from stformer_data import InputError

            raise InputError(
                out,
                "--out",
                "is a non-empty folder that is not a demo run",
                "choose another --out or empty that folder",
            )
    out.mkdir(parents=True, exist_ok=True)


def _write_h5ad(adata, path: Path) -> None:
    tmp = partial_path(path)  # anndata writes to a path, so the rename is ours
    try:
        adata.write_h5ad(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
