"""A scverse-style API: cell embeddings from a trained model, written into an AnnData in memory.

>>> import stformer_train as st  # doctest: +SKIP
>>> st.embed(adata, "runs/pbmc")  # doctest: +SKIP
>>> adata.obsm["X_stformer"].shape, adata.uns["X_stformer"]["params"]["pooling"]  # doctest: +SKIP
((700, 256), 'mean')

Like ``scanpy.pp.pca`` or ``scanpy.tl.umap``, :func:`embed` writes ``adata.obsm[key_added]`` and
``adata.uns[key_added]["params"]`` in place and returns ``None`` (``copy=True``: a new AnnData is
returned and ``adata`` is left alone). Cells are tokenized with the model's own vocabulary, gene
medians and tokenizer settings (a stformer run or a Geneformer folder, see
:func:`stformer_train.geneformer.open_model`); ``layer`` and ``gene_id_key`` say where the counts
and the gene ids of *this* AnnData are, whatever the pretraining files used.
"""

from __future__ import annotations

import dataclasses
import tempfile
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

import stformer_data as sd
from stformer_train.embedding import Pooling, embed_sequences
from stformer_train.geneformer import FolderModel, open_model

__all__ = ["embed", "open_for_input"]


def open_for_input(
    run: str | PathLike[str] | FolderModel,
    *,
    gene_id_key: str | None = None,
    layer: str | None = None,
    allow_non_integer: bool | None = None,
    n_counts_key: str | None = None,
) -> FolderModel:
    """The model of ``run`` with its tokenizer settings adapted to new input files.

    ``gene_id_key`` (``var`` column with the gene ids of the new files; ``None`` keeps the
    model's setting: for a Geneformer folder ``var["ensembl_id"]`` when present, else
    ``var_names``), ``layer`` (their raw counts; ``None`` is ``X``, scanpy's convention, whatever
    layer the pretraining files had), ``allow_non_integer`` and ``n_counts_key`` (``obs`` column
    with library sizes, ``""`` for the row sums; ``None`` keeps the model's) replace the
    pretraining files' settings. Everything that decides the tokens (vocabulary,
    medians, lengths, special tokens) stays the model's.
    """
    folder = run if isinstance(run, FolderModel) else open_model(run, gene_id_key=gene_id_key)
    changes: dict[str, Any] = {"layer": layer}
    if gene_id_key is not None:
        changes["gene_id_key"] = gene_id_key
    if allow_non_integer is not None:
        changes["allow_non_integer"] = allow_non_integer
    inner = {**folder.settings["settings"], **changes}
    if n_counts_key is not None:
        for scheme in ("rank", "binned"):
            inner[scheme] = {**(inner.get(scheme) or {}), "n_counts_key": n_counts_key or None}
    return dataclasses.replace(folder, settings={**folder.settings, "settings": inner})


def _as_file(adata: Any, folder: FolderModel, layer: str | None, tmp: Path) -> tuple[Path, bool]:
    """A file with ``adata``'s counts for the corpus writer; True when it is a temporary copy.

    A backed AnnData is read where it is. An in-memory one is written with only what the
    tokenizer reads: the counts (as ``X``), ``var``, and the ``obs`` / ``obsm`` / ``obsp`` entries
    named by the model's settings.
    """
    import anndata as ad

    if adata.isbacked and adata.filename is not None:
        return Path(adata.filename), False
    if layer is not None and layer not in adata.layers:
        raise sd.InputError(
            None,
            f"layers[{layer!r}]",
            "does not exist in the AnnData",
            f"choose one of {list(adata.layers.keys())} or layer=None to use X",
        )
    s = folder.settings["settings"]
    wanted_obs = {
        (s.get("rank") or {}).get("n_counts_key"),
        (s.get("binned") or {}).get("n_counts_key"),
        (s.get("neighborhood") or {}).get("section_key"),
        *((s.get("binned") or {}).get("phenotypes") or ()),
    }
    obs = adata.obs[[c for c in adata.obs.columns if c in wanted_obs]].copy()
    spatial = s.get("mode") == "neighborhood"
    light = ad.AnnData(
        X=adata.X if layer is None else adata.layers[layer],
        obs=obs,
        var=adata.var.copy(),
        obsm={k: v for k, v in adata.obsm.items() if spatial},
        obsp={k: v for k, v in adata.obsp.items() if spatial},
    )
    path = tmp / "cells.h5ad"
    light.write_h5ad(path)
    return path, True


def _embed_cells(
    folder: FolderModel,
    file: Path,
    n_obs: int,
    *,
    pooling: Pooling,
    hidden_layer: int,
    batch_size: int,
    progress: bool,
    tmp: Path,
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of every cell of ``file`` (NaN rows for cells with no gene of the vocabulary)."""
    corpus = folder.tokenize(file, tmp / "corpus", progress=progress)
    seqs, types = folder.sequences(corpus)
    emb = embed_sequences(
        folder.load_mlm(),
        seqs,
        token_type_ids=types,
        pad_id=folder.vocab.pad_id,
        pooling=pooling,
        hidden_layer=hidden_layer,
        batch_size=batch_size,
        progress=progress,
    )
    rows = np.asarray(corpus.dataset["cell_index"], dtype=np.int64)
    full = np.full((n_obs, emb.shape[1] if emb.ndim == 2 else 0), np.nan, dtype=np.float32)
    full[rows] = emb
    embedded = np.zeros(n_obs, dtype=bool)
    embedded[rows] = True
    return full, embedded


def embed(
    adata: Any,
    run: str | PathLike[str] | FolderModel,
    *,
    key_added: str = "X_stformer",
    layer: str | None = None,
    gene_id_key: str | None = None,
    pooling: Pooling = "mean",
    hidden_layer: int = -1,
    batch_size: int = 64,
    copy: bool = False,
    progress: bool = False,
) -> Any:
    """Embed the cells of ``adata`` with a trained model, scanpy-style.

    Parameters
    ----------
    adata
        An ``AnnData`` with raw counts (in memory or backed), or the path of an ``.h5ad`` file
        (read into memory; the file is not changed and the new AnnData is returned).
    run
        A stformer run directory (or its ``model/``), a Geneformer model folder, or an open
        :class:`~stformer_train.geneformer.FolderModel`.
    key_added
        ``adata.obsm[key_added]`` gets the embeddings (cells x hidden size, float32; a row of NaN
        for a cell with no gene in the model's vocabulary) and ``adata.uns[key_added]["params"]``
        the settings; ``adata.obs["stformer_embedded"]`` (``key_added`` without its ``X_``, then
        ``_embedded``) says which cells have an embedding.
    layer
        Layer of ``adata`` with the raw counts (``None``: ``X``).
    gene_id_key
        ``var`` column with the gene ids of the model's vocabulary (``None``: ``var_names``; for a
        Geneformer folder ``var["ensembl_id"]`` when present).
    pooling, hidden_layer
        How cell embeddings are pooled (see :func:`~stformer_train.embed_sequences`): ``"mean"``
        over genes or ``"cls"`` (the first token); ``-1`` the last layer, ``-2`` the
        second-to-last (Geneformer's choice), ``0`` the input embeddings.
    batch_size
        Cells per forward pass.
    copy
        Return a new AnnData with the embeddings instead of writing into ``adata``.
    progress
        Show progress bars (off by default, as in scanpy).

    Returns
    -------
    ``None`` (``adata`` is changed in place), or the new AnnData when ``copy=True`` or ``adata``
    is a path.

    Notes
    -----
    An in-memory AnnData is written to a temporary ``.h5ad`` (counts, ``var`` and the entries the
    tokenizer reads) so that new cells pass through exactly the corpus writer, its input checks
    and its tokens that pretraining used.
    """
    import anndata as ad

    folder = open_for_input(run, gene_id_key=gene_id_key)
    returns = copy
    if isinstance(adata, str | PathLike):
        path = Path(adata)
        adata, returns = ad.io.read_h5ad(path), True
        source: Path | None = path
    else:
        if not isinstance(adata, ad.AnnData):
            raise TypeError(
                f"adata must be an AnnData or an .h5ad path, got {type(adata).__name__}"
            )
        source = None
        if copy:
            adata = adata.copy()
    with tempfile.TemporaryDirectory(prefix="stformer-embed-") as tmp:
        tmp_dir = Path(tmp)
        if source is not None:
            file, temporary = source, False
        else:
            file, temporary = _as_file(adata, folder, layer, tmp_dir)
        # layer=None reads X (scanpy's convention), whatever layer the pretraining files had;
        # a temporary copy holds the counts in X
        model = open_for_input(folder, layer=None if temporary else layer)
        try:
            emb, embedded = _embed_cells(
                model,
                file,
                adata.n_obs,
                pooling=pooling,
                hidden_layer=hidden_layer,
                batch_size=batch_size,
                progress=progress,
                tmp=tmp_dir,
            )
        except sd.InputError as exc:
            if not temporary:
                raise
            where = "the AnnData" + (f" (layer {layer!r})" if layer else "")
            raise sd.InputError(where, exc.field, exc.problem, exc.fix) from None
    adata.obsm[key_added] = emb
    adata.obs[f"{key_added.removeprefix('X_')}_embedded"] = embedded
    adata.uns[key_added] = {
        "params": {
            "model": str(folder.model_dir),
            "model_kind": folder.kind,
            "pooling": pooling,
            "hidden_layer": hidden_layer,
            "layer": layer,
            "gene_id_key": model.settings["settings"].get("gene_id_key"),
            "n_embedded": int(embedded.sum()),
        }
    }
    return adata if returns else None
