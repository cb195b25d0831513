"""``stformer tokenize`` and ``stformer medians``: h5ad files to a token corpus / gene medians."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stformer_cli._options import AllowNonInteger, GeneIdKey, Layer, Progress

_INPUTS = typer.Argument(help="Input .h5ad files (raw counts).", exists=False)


def _split(values: list[str] | None) -> tuple[str, ...]:
    """Repeated options and comma-separated lists both work: --obs-columns a,b --obs-columns c."""
    out: list[str] = []
    for v in values or []:
        out += [x.strip() for x in v.split(",") if x.strip()]
    return tuple(out)


def _name_to_id(path: Path | None, allow_pickle: bool):
    if path is None:
        return None
    from stformer_data import load_name_to_id

    return load_name_to_id(path, allow_pickle=allow_pickle)


def tokenize(
    inputs: Annotated[list[Path], _INPUTS],
    out: Annotated[Path, typer.Option("--out", help="Corpus directory to write (atomically).")],
    scheme: Annotated[
        str, typer.Option(help="rank (Geneformer rank-value) or binned (expression bins).")
    ] = "rank",
    mode: Annotated[
        str, typer.Option(help="spot, or neighborhood (stFormer: spot + neighbours).")
    ] = "spot",
    vocab: Annotated[
        Path | None,
        typer.Option(
            help="Gene vocabulary .json (or Geneformer .pkl with "
            "--allow-pickle); default: built from the inputs."
        ),
    ] = None,
    medians: Annotated[
        Path | None,
        typer.Option(
            help="Gene medians .json (or .pkl with --allow-pickle); "
            "default for rank: computed from the inputs (deterministic sketch)."
        ),
    ] = None,
    drop_invalid_medians: Annotated[
        bool,
        typer.Option(
            help="Leave out genes whose --medians value is 0, negative or NaN (reported) "
            "instead of refusing the file."
        ),
    ] = False,
    name_to_id: Annotated[
        Path | None, typer.Option(help="Gene symbol -> Ensembl id dictionary (.json/.pkl).")
    ] = None,
    allow_pickle: Annotated[
        bool,
        typer.Option(
            help="Allow loading .pkl dictionaries (this runs code from "
            "the file: only for files you trust)."
        ),
    ] = False,
    gene_id_key: GeneIdKey = None,
    layer: Layer = None,
    obs_columns: Annotated[
        list[str] | None, typer.Option(help="obs columns to copy (repeat or comma-list).")
    ] = None,
    phenotypes: Annotated[
        list[str] | None,
        typer.Option(
            help="binned: obs columns written as phenotype tokens (repeat or comma-list)."
        ),
    ] = None,
    model_version: Annotated[
        str | None,
        typer.Option(
            help="Geneformer preset (rank): V1 (2,048, no specials) or V2 (<cls> first, <eos> last, 4,096)."
        ),
    ] = None,
    max_length: Annotated[
        int | None,
        typer.Option(
            "--max-length",
            help="Longest token sequence, special tokens included (Geneformer's "
            "model_input_size; per half in neighborhood mode; default 2,048, V2 4,096).",
        ),
    ] = None,
    model_input_size: Annotated[
        int | None,
        typer.Option(
            "--model-input-size",
            hidden=True,
            help="Deprecated: Geneformer's name of --max-length.",
        ),
    ] = None,
    add_cls: Annotated[
        bool, typer.Option(help="Prepend <cls> (added to the vocabulary if missing).")
    ] = False,
    add_eos: Annotated[
        bool, typer.Option(help="Append <eos> (added to the vocabulary if missing).")
    ] = False,
    n_bins: Annotated[int, typer.Option(help="binned: number of bins (bin 0 = unexpressed).")] = 51,
    gene_order: Annotated[str, typer.Option(help="binned: ranked or index.")] = "ranked",
    n_counts_key: Annotated[
        str, typer.Option(help="obs column with library sizes ('' = row sums).")
    ] = "n_counts",
    graph: Annotated[
        str, typer.Option(help="neighborhood: auto, obsp, delaunay, knn or radius.")
    ] = "auto",
    section_key: Annotated[
        str | None, typer.Option(help="neighborhood: obs column of tissue sections.")
    ] = None,
    spatial_key: Annotated[
        str, typer.Option(help="neighborhood: obsm key of coordinates.")
    ] = "spatial",
    n_neighbors: Annotated[int, typer.Option(help="neighborhood: k for knn.")] = 6,
    radius: Annotated[
        float | None, typer.Option(help="neighborhood: radius for graph=radius.")
    ] = None,
    aggregate: Annotated[str, typer.Option(help="neighborhood: sum or mean.")] = "sum",
    distance_weighting: Annotated[
        str, typer.Option(help="neighborhood: none, inverse or gaussian.")
    ] = "none",
    num_proc: Annotated[
        int,
        typer.Option(
            help="Parallel workers: threads of the rank kernel (rank/spot), else worker "
            "processes over files x row ranges."
        ),
    ] = 1,
    chunk_size: Annotated[int, typer.Option(help="Rows read at a time (bounds memory).")] = 2048,
    allow_non_integer: AllowNonInteger = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing corpus at --out.")] = False,
    progress: Progress = True,
):
    """Tokenize h5ad files into a corpus (datasets Arrow + lengths + vocabulary + manifest).

    Called from Python (``stformer demo`` does) it returns the :class:`~stformer_data.Corpus`.
    """
    from stformer_data import (
        BinnedTokenizerConfig,
        GeneVocab,
        NeighborhoodConfig,
        RankTokenizerConfig,
        TokenizeConfig,
        compute_medians,
        load_medians,
        tokenize_files,
    )

    n_key = n_counts_key or None
    if model_version not in (None, "V1", "V2"):
        raise typer.BadParameter(f"--model-version must be V1 or V2, got {model_version!r}")
    if model_version == "V2":
        add_cls = add_eos = True
    if model_input_size is not None:
        if max_length is not None and max_length != model_input_size:
            raise typer.BadParameter(
                f"--max-length {max_length} and --model-input-size {model_input_size} disagree; "
                "pass only --max-length (--model-input-size is its deprecated Geneformer name)"
            )
        max_length = model_input_size
    if max_length is None:
        max_length = 4096 if model_version == "V2" else 2048
    model_input_size = max_length
    config = TokenizeConfig(
        scheme=scheme,
        mode=mode,
        gene_id_key=gene_id_key,
        layer=layer,
        obs_columns=_split(obs_columns),
        chunk_size=chunk_size,
        num_proc=num_proc,
        allow_non_integer=allow_non_integer,
        rank=RankTokenizerConfig(
            model_input_size=model_input_size, add_cls=add_cls, add_eos=add_eos, n_counts_key=n_key
        ),
        binned=BinnedTokenizerConfig(
            n_bins=n_bins,
            gene_order=gene_order,
            model_input_size=model_input_size,
            phenotypes=_split(phenotypes),
            n_counts_key=n_key,
        ),
        neighborhood=NeighborhoodConfig(
            graph=graph,
            section_key=section_key,
            spatial_key=spatial_key,
            n_neighbors=n_neighbors,
            radius=radius,
            aggregate=aggregate,
            distance_weighting=distance_weighting,
        ),
    )
    names = _name_to_id(name_to_id, allow_pickle)
    if vocab is None:
        gene_vocab = GeneVocab.from_files(inputs, gene_id_key=gene_id_key, name_to_id=names)
    else:
        gene_vocab = GeneVocab.load(vocab, allow_pickle=allow_pickle)
    if scheme == "rank":
        gene_vocab = gene_vocab.with_special_tokens(cls_token=add_cls, eos_token=add_eos)
    med = None
    if scheme == "rank":
        if medians is not None:
            med = load_medians(
                medians, allow_pickle=allow_pickle, drop_invalid=drop_invalid_medians
            )
        else:
            typer.echo(
                "no --medians given: computing them from the inputs (deterministic sketch, 0.5% relative accuracy)",
                err=True,
            )
            med = compute_medians(
                inputs,
                gene_id_key=gene_id_key,
                name_to_id=names,
                n_counts_key=n_key,
                layer=layer,
                allow_non_integer=allow_non_integer,
                num_proc=num_proc,
            )
    corpus = tokenize_files(
        inputs,
        out,
        vocab=gene_vocab,
        medians=med,
        config=config,
        name_to_id=names,
        overwrite=overwrite,
        progress=progress,
    )
    counts = corpus.manifest["counts"]
    for src in corpus.manifest["sources"]:
        typer.echo(
            f"{src['path']}: {src['n_genes_in_vocab']}/{src['n_genes']} genes in the vocabulary, "
            f"{src['cells_written']}/{src['cells_in']} cells written",
            err=True,
        )
    extra = (
        f"; {counts['spots_without_neighbours']} spots without neighbours"
        if "spots_without_neighbours" in counts
        else ""
    )
    typer.echo(
        f"wrote {counts['cells_written']} sequences ({counts['cells_in']} cells in; skipped "
        f"{counts['cells_skipped']}{extra}) to {corpus.path}"
    )
    return corpus


def medians(
    inputs: Annotated[list[Path], _INPUTS],
    out: Annotated[Path, typer.Option("--out", help="Medians .json file to write.")],
    exact: Annotated[
        bool, typer.Option(help="Exact medians (holds every non-zero value: small data only).")
    ] = False,
    relative_accuracy: Annotated[
        float, typer.Option(help="Sketch: relative accuracy of each median (0.005 = 0.5%).")
    ] = 0.005,
    gene_id_key: GeneIdKey = None,
    name_to_id: Annotated[
        Path | None, typer.Option(help="Gene symbol -> Ensembl id dictionary.")
    ] = None,
    allow_pickle: Annotated[
        bool, typer.Option(help="Allow loading a .pkl name dictionary.")
    ] = False,
    layer: Layer = None,
    n_counts_key: Annotated[
        str, typer.Option(help="obs column with library sizes ('' = row sums).")
    ] = "n_counts",
    num_proc: Annotated[int, typer.Option(help="Worker processes.")] = 1,
    allow_non_integer: AllowNonInteger = False,
) -> None:
    """Per-gene medians of non-zero normalised expression over INPUT files (one pass, mergeable)."""
    from stformer_data import compute_medians, save_medians

    result = compute_medians(
        inputs,
        exact=exact,
        relative_accuracy=relative_accuracy,
        gene_id_key=gene_id_key,
        name_to_id=_name_to_id(name_to_id, allow_pickle),
        n_counts_key=n_counts_key or None,
        layer=layer,
        num_proc=num_proc,
        allow_non_integer=allow_non_integer,
    )
    save_medians(result, out)
    typer.echo(f"wrote medians of {len(result)} genes to {out}")


def register(app: typer.Typer) -> None:
    app.command("tokenize")(tokenize)
    app.command("medians")(medians)
