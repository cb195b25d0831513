"""``stformer demo``: the whole pipeline once, end to end, on simulated data or a user's h5ad."""

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

from stformer_cli._options import HiddenLayer
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
    ] = "cell_type",
    out: Annotated[
        Path, typer.Option(help="Run directory; a previous demo there is replaced.")
    ] = Path("runs/demo"),
    gene_id_key: Annotated[
        str | None, typer.Option(help="var column with gene ids (default: var_names).")
    ] = None,
    layer: Annotated[str | None, typer.Option(help="Layer with raw counts (default: X).")] = None,
    cells: Annotated[int, typer.Option(help="Simulated cells.")] = 2000,
    genes: Annotated[int, typer.Option(help="Simulated genes.")] = 500,
    max_length: Annotated[
        int, typer.Option(help="Longest token sequence (model_input_size).")
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
    hidden_layer: HiddenLayer = -1,
    test_fraction: Annotated[
        float, typer.Option(help="Fraction of cells held out for evaluation.")
    ] = 0.2,
    seed: Annotated[
        int, typer.Option(help="Seed of the simulation, split, model and masking.")
    ] = 0,
    report_to: Annotated[
        str,
        typer.Option(
            help="Experiment trackers of the pretraining: tensorboard, wandb, mlflow, none or auto."
        ),
    ] = "auto",
) -> None:
    """Simulate (or read) cells, tokenize, pretrain a small BERT, embed, and evaluate the embeddings."""
    import anndata as ad
    import numpy as np

    import stformer_data as sd
    from stformer_train import (
        ModelConfig,
        TrainConfig,
        bert_config_from,
        build_mlm_model,
        embed_sequences,
        holdout_split,
        knn_score,
        pca_of_counts,
    )
    from stformer_train.hf import pretrain_mlm

    t0 = time.time()
    user_adata = None
    if h5ad is not None:  # validate the input before touching the output folder
        user_adata = sd.open_h5ad(h5ad, backed=False)
        if label_key not in user_adata.obs.columns:
            raise sd.InputError(
                h5ad,
                f"obs[{label_key!r}]",
                "does not exist",
                f"pass --label-key with one of {list(user_adata.obs.columns)}",
            )
    _prepare_out(out)
    atomic_write_text(
        out / MARKER,
        json.dumps({"source": str(h5ad) if h5ad else "simulated", "finished": False}),
    )
    steps = 5

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
        adata = user_adata
        console.print(f"  read {adata.n_obs} cells x {adata.n_vars} genes from {h5ad}")

    console.print(f"[bold cyan][2/{steps}] Tokenize[/] (rank-value, max {max_length} tokens)")
    gene_ids = sd.resolve_gene_ids(adata.var, gene_id_key=gene_id_key, path=h5ad)
    vocab = sd.GeneVocab.from_genes(gene_ids)
    medians = sd.compute_medians_exact([h5ad], gene_id_key=gene_id_key, layer=layer)
    config = sd.TokenizeConfig(
        gene_id_key=gene_id_key,
        layer=layer,
        obs_columns=(label_key,),
        rank=sd.RankTokenizerConfig(model_input_size=max_length),
    )
    corpus = sd.tokenize_files(
        [h5ad], out / "corpus", vocab=vocab, medians=medians, config=config, overwrite=True
    )
    counts = corpus.manifest["counts"]
    console.print(
        f"  {counts['cells_written']} cells written, {sum(counts['cells_skipped'].values())} skipped "
        f"(empty); vocabulary {len(vocab)} tokens -> {corpus.path}"
    )

    labels = np.asarray(corpus.dataset[label_key])
    valid = ~np.isin(labels, ["nan", "NA", "None", ""])
    test_mask = np.zeros(len(labels), dtype=bool)
    test_mask[
        np.flatnonzero(valid)[holdout_split(labels[valid], test_fraction=test_fraction, seed=seed)]
    ] = True
    train_idx = np.flatnonzero(~test_mask).tolist()

    console.print(
        f"[bold cyan][3/{steps}] Pretrain[/] (masked-language model on {len(train_idx)} training cells)"
    )
    # Untied input/output gene embeddings: with tied ones, a few hundred CPU steps leave the
    # mean-pooled embeddings below a random-init model (measured on the simulated default data).
    model_cfg = ModelConfig(
        num_layers=layers,
        hidden_size=hidden,
        num_heads=heads,
        intermediate_size=2 * hidden,
        max_position_embeddings=max(max_length, 8),
        tie_word_embeddings=False,
    )
    train_cfg = TrainConfig(
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        mlm_probability=mlm_probability,
        seed=seed,
        logging_steps=10,
        report_to=report_to,
    )
    result = pretrain_mlm(corpus, out, model=model_cfg, train=train_cfg, train_indices=train_idx)
    console.print(
        f"  {result.global_step} steps, mean training loss {result.train_loss:.3f} -> {result.model_dir}"
    )

    console.print(f"[bold cyan][4/{steps}] Embed[/]")
    from transformers import AutoModelForMaskedLM

    sequences = corpus.dataset["input_ids"]
    trained = AutoModelForMaskedLM.from_pretrained(result.model_dir)
    emb = embed_sequences(
        trained,
        sequences,
        pad_id=vocab.pad_id,
        hidden_layer=hidden_layer,
        desc="embed (pretrained)",
    )
    random_model = build_mlm_model(
        bert_config_from(model_cfg, vocab_size=len(vocab), pad_token_id=vocab.pad_id),
        seed=seed + 1,
    )
    emb_random = embed_sequences(
        random_model,
        sequences,
        pad_id=vocab.pad_id,
        hidden_layer=hidden_layer,
        desc="embed (random init)",
    )
    cell_index = np.asarray(corpus.dataset["cell_index"])
    counts_matrix = adata.X if layer is None else adata.layers[layer]
    pca = pca_of_counts(counts_matrix[cell_index], seed=seed)
    emb_path = out / "embeddings.h5ad"
    emb_adata = ad.AnnData(obs=adata.obs.iloc[cell_index].copy())
    emb_adata.obs["stformer_split"] = np.where(test_mask, "test", "train")
    emb_adata.obsm["X_stformer"] = emb
    emb_adata.obsm["X_pca"] = pca
    _write_h5ad(emb_adata, emb_path)
    console.print(f"  obsm['X_stformer'] {emb.shape} -> {emb_path}")

    console.print(
        f"[bold cyan][5/{steps}] Evaluate[/] (15-NN {label_key} accuracy on {int(test_mask.sum())} held-out cells)"
    )
    ev = valid
    scores = {
        "stformer (pretrained)": knn_score(emb[ev], labels[ev], test_mask[ev]),
        "random-init model (same shape)": knn_score(emb_random[ev], labels[ev], test_mask[ev]),
        "PCA of log-normalised counts": knn_score(pca[ev], labels[ev], test_mask[ev]),
    }
    table = Table(title="kNN cell-type accuracy on held-out cells")
    table.add_column("embedding")
    table.add_column("accuracy", justify="right")
    table.add_column("macro-F1", justify="right")
    for name, s in scores.items():
        table.add_row(name, f"{s.accuracy:.3f}", f"{s.macro_f1:.3f}")
    console.print(table)
    metrics = {name: s.__dict__ for name, s in scores.items()}
    metrics_path = out / "metrics.json"
    atomic_write_text(
        metrics_path,
        json.dumps(
            {"label_key": label_key, "scores": metrics, "seconds": round(time.time() - t0, 1)},
            indent=1,
        ),
    )
    atomic_write_text(out / MARKER, json.dumps({"source": str(h5ad), "finished": True}))
    console.print(f"Done in {time.time() - t0:.0f} s. Run directory: [bold]{out}[/]")
    for what, path in [
        ("corpus", corpus.path),
        ("model (AutoModelForMaskedLM.from_pretrained)", result.model_dir),
        ("embeddings", emb_path),
        ("metrics", metrics_path),
        ("logs", result.run.logs),
    ]:
        console.print(f"  {what}: {path}")


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
