"""The Hugging Face side of a saved model: a real fast tokenizer and a Hub model card.

Every model stformer saves (a run's ``model/``, PretrainML's and perturbgene's model folders)
gets, next to its weights and ``token_dictionary.json``:

* ``tokenizer.json`` / ``tokenizer_config.json``: a ``transformers.PreTrainedTokenizerFast`` built
  on the ``tokenizers`` library (:func:`gene_tokenizer_fast`), so that
  ``AutoTokenizer.from_pretrained(folder)`` returns a tokenizer whose ids **are** the model's ids;
* ``README.md``: a model card in the Hub's format (:func:`write_model_card`), which later steps
  extend with :func:`update_model_card` (``evaluate`` adds its scores).

The tokenizer maps gene-id strings (already in rank order) to ids. It does not rank genes:
ranking a cell's genes by median-normalised expression is stformer's rank tokenizer's job, which
:func:`encode_cells` runs on an AnnData, exactly as ``stformer embed`` does, before the ids reach
the model::

    from transformers import AutoModelForMaskedLM
    from stformer_train.hub import encode_cells

    model = AutoModelForMaskedLM.from_pretrained("RUN/model")
    batch = encode_cells("RUN/model", adata)  # input_ids, attention_mask; batch.cell_index
    out = model(**batch, output_hidden_states=True)
"""

from __future__ import annotations

import tempfile
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stformer_train._hub import (
    CARD_FILE,
    _build_args,
    evaluation_markdown,
    gene_tokenizer_fast,
    save_hub_files,
    tokenizer_settings,
    update_model_card,
    write_model_card,
)

if TYPE_CHECKING:
    from transformers import BatchEncoding, PreTrainedTokenizerFast

    from stformer_train.geneformer import FolderModel

__all__ = [
    "CARD_FILE",
    "encode_cells",
    "evaluation_markdown",
    "gene_tokenizer_fast",
    "save_hub_files",
    "tokenizer_for",
    "tokenizer_settings",
    "update_model_card",
    "write_model_card",
]


def tokenizer_for(model: str | PathLike[str] | FolderModel) -> PreTrainedTokenizerFast:
    """The fast tokenizer of a model folder: the saved one, else built from its vocabulary.

    A stformer run (``RUN`` or ``RUN/model``) has ``tokenizer.json``; a Geneformer checkpoint
    folder has none, and gets one built from its token dictionary and V1/V2 settings.
    """
    from transformers import AutoTokenizer

    from stformer_train.geneformer import FolderModel, open_model

    folder = model if isinstance(model, FolderModel) else open_model(model)
    if (folder.model_dir / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(folder.model_dir)
    return gene_tokenizer_fast(
        folder.vocab, **_build_args(tokenizer_settings({"settings": folder.settings["settings"]}))
    )


def encode_cells(
    model: str | PathLike[str] | FolderModel,
    adata: Any,
    *,
    return_tensors: str | None = "pt",
    progress: bool = False,
) -> BatchEncoding:
    """Cells of an AnnData (or an ``.h5ad`` path) as model inputs, through stformer's own tokenizer.

    The cells are tokenized with the model's vocabulary, gene medians and tokenizer settings (the
    rank-value tokenizer, or the binned one for a GeneBert), exactly as ``stformer embed`` does,
    then padded by the model's fast tokenizer (:func:`tokenizer_for`). The result holds
    ``input_ids`` and ``attention_mask`` (and the genes as ``token_type_ids`` for a GeneBert), ready
    for ``model(**batch)``; its ``cell_index`` attribute gives the ``obs`` row of every sequence
    (a cell with no gene of the vocabulary has no sequence).

    Parameters
    ----------
    model
        A run (``RUN`` or ``RUN/model``), a Geneformer checkpoint folder, or an opened
        :class:`~stformer_train.geneformer.FolderModel`.
    adata
        An in-memory ``AnnData`` (written to a temporary ``.h5ad`` first) or the path of one.
    return_tensors
        ``"pt"``, ``"np"`` or ``None`` (lists), as for any Hugging Face tokenizer.
    """
    import numpy as np

    from stformer_train.geneformer import FolderModel, open_model

    folder = model if isinstance(model, FolderModel) else open_model(model)
    tok = tokenizer_for(folder)
    with tempfile.TemporaryDirectory(prefix="stformer-encode-") as tmp:
        if isinstance(adata, (str, PathLike)):
            h5ad = Path(adata)
        else:
            h5ad = Path(tmp) / "cells.h5ad"
            adata.write_h5ad(h5ad)
        corpus = folder.tokenize(h5ad, Path(tmp) / "corpus", progress=progress)
        seqs, types = folder.sequences(corpus)
        rows = np.asarray(corpus.dataset["cell_index"], dtype=np.int64)
    features: dict[str, Any] = {"input_ids": [list(s) for s in seqs]}
    if types is not None:
        features["token_type_ids"] = [list(t) for t in types]
    batch = tok.pad(features, padding=True, return_tensors=return_tensors)
    batch.cell_index = rows
    return batch
