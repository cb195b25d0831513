"""Models from a folder: a stformer run, or a Geneformer checkpoint with its dictionaries.

A Geneformer checkpoint is a saved ``BertForMaskedLM`` / ``BertForSequenceClassification``
(``config.json`` + weights) with, in the same folder or in ``dictionaries=``, its token dictionary
(``token_dictionary*.pkl`` or ``.json``) and gene medians (``gene_median_dictionary*.pkl`` or
``gene_medians.json``). Its tokenizer settings follow from the vocabulary: a vocabulary with
``<cls>`` and ``<eos>`` is V2 (both written around every cell, 4,096 positions), one without is V1
(2,048). The vocabulary is checked against the model's embedding table before anything runs: the
usual mistake, a V1 dictionary (25,426 tokens) with a V2 model (20,275), is refused naming both.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

import stformer_data as sd
from stformer_train.run_dir import TOKENIZER_SETTINGS

__all__ = [
    "FolderModel",
    "check_vocab",
    "geneformer_settings",
    "load_init_model",
    "model_config_of",
    "open_model",
]

_VOCAB_NAMES = ("token_dictionary.json", "token_dictionary.pkl")
_MEDIAN_NAMES = ("gene_medians.json", "gene_median_dictionary.pkl")


def _find(folder: Path, exact: tuple[str, ...], pattern: str) -> Path | None:
    for name in exact:
        if (folder / name).is_file():
            return folder / name
    hits = sorted(folder.glob(pattern))
    return hits[0] if len(hits) == 1 else None


def check_vocab(vocab: sd.GeneVocab, model_dir: Path, vocab_path: Path | str) -> dict[str, Any]:
    """Refuse a vocabulary whose size differs from the model's ``vocab_size`` (both sizes named)."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    size = config.get("vocab_size")
    if size is not None and int(size) != len(vocab):
        version = {25_426: " (a Geneformer V1 dictionary)", 20_275: " (a Geneformer V2 dictionary)"}
        raise sd.InputError(
            vocab_path,
            "token dictionary",
            f"has {len(vocab)} tokens{version.get(len(vocab), '')} but the model in {model_dir} has "
            f"vocab_size={size}{version.get(int(size), '')}",
            "use the token dictionary the model was trained with",
        )
    return config


def geneformer_settings(
    vocab: sd.GeneVocab, config: dict[str, Any], *, gene_id_key: str | None = None
) -> dict[str, Any]:
    """Tokenizer settings (``TokenizeConfig`` form) for a Geneformer model: V2 with <cls>/<eos>, else V1."""
    v2 = vocab.cls_id is not None and vocab.eos_id is not None
    positions = int(config.get("max_position_embeddings", 4096 if v2 else 2048))
    size = min(positions, 4096 if v2 else 2048)
    return {
        "model_version": "V2" if v2 else "V1",
        "settings": {
            "scheme": "rank",
            "gene_id_key": gene_id_key,
            "rank": {"model_input_size": size, "add_cls": v2, "add_eos": v2},
        },
    }


@dataclass(frozen=True)
class FolderModel:
    """A model folder with its vocabulary, medians and tokenizer settings (a run's or Geneformer's)."""

    model_dir: Path
    vocab: sd.GeneVocab
    settings: dict[str, Any]
    medians_path: Path | None
    kind: str = "stformer"

    @classmethod
    def open(cls, run: str | PathLike[str], **kwargs: Any) -> FolderModel:
        """Same as :func:`open_model`."""
        return open_model(run, **kwargs)

    @property
    def binned(self) -> bool:
        """Whether the model reads binned tokens (a GeneBert: genes in ``token_type_ids``)."""
        return self.settings["settings"].get("scheme") == "binned"

    def tokenize(self, h5ad, out_dir: Path, *, obs_columns=(), progress: bool = True) -> sd.Corpus:
        """Tokenize ``h5ad`` with this model's vocabulary, medians and tokenizer settings."""
        overrides: dict[str, Any] = {"obs_columns": tuple(obs_columns)}
        if self.binned:  # the genes behind token_type_ids; input ids are remapped in sequences()
            return sd.tokenize_files(
                [h5ad],
                out_dir,
                vocab=sd.GeneVocab.load(self.model_dir / "gene_dictionary.json"),
                config=sd.TokenizeConfig.from_dict(self.settings["settings"], **overrides),
                overwrite=True,
                progress=progress,
            )
        if self.kind == "geneformer" and self.settings["settings"].get("gene_id_key") is None:
            # Geneformer's convention: Ensembl ids in var["ensembl_id"]; otherwise var_names
            if "ensembl_id" in sd.open_h5ad(h5ad, backed=True).var.columns:
                overrides["gene_id_key"] = "ensembl_id"
        config = sd.TokenizeConfig.from_dict(self.settings["settings"], **overrides)
        return sd.tokenize_files(
            [h5ad],
            out_dir,
            vocab=self.vocab,
            medians=self._medians(),
            config=config,
            overwrite=True,
            progress=progress,
        )

    def sequences(
        self, corpus: sd.Corpus, *, hide_phenotype: str | None = None
    ) -> tuple[list[list[int]], list[list[int]] | None]:
        """``input_ids`` in this model's vocabulary, and ``token_type_ids`` (binned models; else None).

        A binned corpus of new cells builds its phenotype tokens from their own values: they are
        mapped to the model's ids by name (a value the model never saw is an error).
        ``hide_phenotype`` replaces that phenotype's tokens by the mask token, so that a label
        evaluated or predicted is not read off its own phenotype token.
        """
        ids = corpus.dataset["input_ids"]
        if not self.binned:
            return ids, None
        types = corpus.dataset["token_type_ids"]
        table = np.full(len(corpus.vocab), -1, dtype=np.int64)
        for token, i in corpus.vocab.items():
            table[i] = self.vocab.get(token, -1)
        hidden_type = None
        if hide_phenotype is not None:
            phenotypes = list(self.settings["settings"]["binned"].get("phenotypes", ()))
            if hide_phenotype in phenotypes:
                n_genes = len(sd.GeneVocab.load(self.model_dir / "gene_dictionary.json"))
                hidden_type = n_genes + phenotypes.index(hide_phenotype)
        out = []
        for seq, typ in zip(ids, types, strict=True):
            mapped = table[np.asarray(seq, dtype=np.int64)]
            if (mapped < 0).any():
                bad = corpus.vocab.id_to_token(int(np.asarray(seq)[mapped < 0][0]))
                raise sd.InputError(
                    corpus.path,
                    "phenotype tokens",
                    f"hold {bad!r}, a value the model was not trained with",
                    "embed cells whose phenotype values the model's corpus had",
                )
            if hidden_type is not None:
                mapped[np.asarray(typ) == hidden_type] = self.vocab.mask_id
            out.append(mapped.tolist())
        return out, types

    def _medians(self):
        if self.medians_path.suffix == ".pkl":
            from stformer_data.genes.medians import load_medians

            return load_medians(self.medians_path, allow_pickle="plain")
        return self.medians_path

    def _auto(self):
        from transformers import (
            AutoConfig,
            AutoModelForMaskedLM,
            AutoModelForSequenceClassification,
        )

        import stformer_train.models  # noqa: F401  (registers GeneBert with the Auto classes)

        config = AutoConfig.from_pretrained(self.model_dir)
        arch = " ".join(config.architectures or [])
        return (
            AutoModelForSequenceClassification
            if "SequenceClassification" in arch
            else AutoModelForMaskedLM
        ), config

    def load_mlm(self):
        """The masked-LM model (from a classifier checkpoint: its encoder with a new MLM head)."""
        from transformers import AutoModelForMaskedLM

        import stformer_train.models  # noqa: F401

        return AutoModelForMaskedLM.from_pretrained(self.model_dir, attn_implementation="sdpa")

    def random_init(self, seed: int = 0):
        """A freshly initialised model of the same shape (the honest baseline)."""
        import torch
        from transformers import AutoModelForMaskedLM

        _, config = self._auto()
        torch.manual_seed(seed)
        return AutoModelForMaskedLM.from_config(config, attn_implementation="sdpa")

    def load_encoder(self):
        """The model with its encoder (any ``Bert*`` head), SDPA attention, in eval mode."""
        from transformers import (
            AutoConfig,
            AutoModelForMaskedLM,
            AutoModelForSequenceClassification,
        )

        import stformer_train.models  # noqa: F401  (registers GeneBert with the Auto classes)

        config = AutoConfig.from_pretrained(self.model_dir)
        arch = " ".join(config.architectures or [])
        auto = (
            AutoModelForSequenceClassification
            if "SequenceClassification" in arch
            else AutoModelForMaskedLM
        )
        return auto.from_pretrained(self.model_dir, attn_implementation="sdpa").eval()

    def fingerprint(self) -> str:
        """A hash of the model's config and weight files (size and mtime), for resuming."""
        h = hashlib.sha256()
        for p in sorted(self.model_dir.iterdir()):
            if p.is_file():
                st = p.stat()
                h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns};".encode())
        return h.hexdigest()


def open_model(
    path: str | PathLike[str],
    *,
    dictionaries: str | PathLike[str] | None = None,
    gene_id_key: str | None = None,
) -> FolderModel:
    """Open a stformer run (``RUN`` or ``RUN/model``) or a Geneformer checkpoint folder.

    Parameters
    ----------
    path
        The folder with ``config.json`` and the weights.
    dictionaries
        Where Geneformer's ``token_dictionary*.pkl`` and ``gene_median_dictionary*.pkl`` are, when
        not next to the weights.
    gene_id_key
        ``var`` column of the h5ad files with Ensembl ids (Geneformer checkpoints; ``None``: var_names).
    """
    root = Path(path)
    if (root / "model" / TOKENIZER_SETTINGS).is_file() or (root / TOKENIZER_SETTINGS).is_file():
        model_dir = root / "model" if (root / "model" / TOKENIZER_SETTINGS).is_file() else root
        settings = json.loads((model_dir / TOKENIZER_SETTINGS).read_text())
        binned = (settings.get("settings") or {}).get("scheme") == "binned"
        needed = ("gene_dictionary.json",) if binned else ("gene_medians.json",)
        for name in ("config.json", "token_dictionary.json", *needed):
            if not (model_dir / name).is_file():
                raise sd.InputError(
                    model_dir,
                    name,
                    "is missing",
                    "pass a run directory written by `stformer pretrain`",
                )
        vocab = sd.GeneVocab.load(model_dir / "token_dictionary.json")
        check_vocab(vocab, model_dir, model_dir / "token_dictionary.json")
        return FolderModel(
            model_dir=model_dir,
            vocab=vocab,
            settings=settings,
            medians_path=None if binned else model_dir / "gene_medians.json",
        )
    if not (root / "config.json").is_file():
        raise sd.InputError(
            root,
            "config.json",
            "is missing",
            "pass a stformer run or a saved Geneformer (BERT) model folder",
        )
    where = Path(dictionaries) if dictionaries is not None else root
    vocab_path = _find(where, _VOCAB_NAMES, "token_dictionary*.pkl")
    medians_path = _find(where, _MEDIAN_NAMES, "gene_median_dictionary*.pkl")
    for name, found in (("token dictionary", vocab_path), ("gene median dictionary", medians_path)):
        if found is None:
            raise sd.InputError(
                where,
                name,
                "was not found (or more than one candidate)",
                "put Geneformer's token_dictionary.pkl and gene_median_dictionary.pkl next to the model or pass dictionaries=",
            )
    vocab = sd.GeneVocab.load(vocab_path, allow_pickle="plain")
    config = check_vocab(vocab, root, vocab_path)
    return FolderModel(
        model_dir=root,
        vocab=vocab,
        settings=geneformer_settings(vocab, config, gene_id_key=gene_id_key),
        medians_path=medians_path,
        kind="geneformer",
    )


_SHAPE = {
    "num_layers": "num_hidden_layers",
    "hidden_size": "hidden_size",
    "num_heads": "num_attention_heads",
    "intermediate_size": "intermediate_size",
    "max_position_embeddings": "max_position_embeddings",
    "hidden_act": "hidden_act",
    "layer_norm_eps": "layer_norm_eps",
}


def model_config_of(path: str | PathLike[str]) -> dict[str, Any]:
    """The ``ModelConfig`` shape fields of a saved BERT folder (for ``pretrain --init-from``)."""
    config = json.loads((Path(path) / "config.json").read_text())
    return {ours: config[theirs] for ours, theirs in _SHAPE.items() if theirs in config}


def load_init_model(model: Any, vocab: sd.GeneVocab, *, gradient_checkpointing: bool = False):
    """``SparseBertForMaskedLM`` with the weights of ``model.init_from`` (a ``ModelConfig``).

    The vocabulary must be the checkpoint's (same size) and the shape must be ``model``'s;
    a classifier checkpoint gets a new MLM head.
    """
    from stformer_train.models import SparseBertForMaskedLM

    folder = Path(model.init_from)
    if not (folder / "config.json").is_file():
        raise sd.InputError(
            folder, "config.json", "is missing", "pass a saved BERT model folder to init_from"
        )
    check_vocab(vocab, folder, "the corpus vocabulary")
    shape = model_config_of(folder)
    wrong = {k: (getattr(model, k), v) for k, v in shape.items() if getattr(model, k) != v}
    if wrong:
        raise ValueError(
            f"ModelConfig differs from the checkpoint in {folder}: "
            + ", ".join(f"{k}={a} (checkpoint: {b})" for k, (a, b) in wrong.items())
        )
    net = SparseBertForMaskedLM.from_pretrained(folder, attn_implementation="sdpa")
    if gradient_checkpointing:
        net.gradient_checkpointing_enable()
    return net
