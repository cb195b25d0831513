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
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import stformer_data as sd
from stformer_train.downstream import RunModel
from stformer_train.run_dir import TOKENIZER_SETTINGS

__all__ = ["FolderModel", "check_vocab", "geneformer_settings", "open_model"]

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
class FolderModel(RunModel):
    """A model folder with its vocabulary, medians and tokenizer settings (a run's or Geneformer's)."""

    medians_path: Path = field(default=Path())
    kind: str = "stformer"

    def tokenize(self, h5ad, out_dir: Path, *, obs_columns=(), progress: bool = True) -> sd.Corpus:
        config = sd.TokenizeConfig.from_dict(
            self.settings["settings"], obs_columns=tuple(obs_columns)
        )
        return sd.tokenize_files(
            [h5ad],
            out_dir,
            vocab=self.vocab,
            medians=self._medians(),
            config=config,
            overwrite=True,
            progress=progress,
        )

    def _medians(self):
        if self.medians_path.suffix == ".pkl":
            from stformer_data.genes.medians import load_medians

            return load_medians(self.medians_path, allow_pickle=True)
        return self.medians_path

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
        rm = RunModel.open(root)
        check_vocab(rm.vocab, rm.model_dir, rm.model_dir / "token_dictionary.json")
        return FolderModel(
            model_dir=rm.model_dir,
            vocab=rm.vocab,
            settings=rm.settings,
            medians_path=rm.model_dir / "gene_medians.json",
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
    vocab = sd.GeneVocab.load(vocab_path, allow_pickle=vocab_path.suffix == ".pkl")
    config = check_vocab(vocab, root, vocab_path)
    return FolderModel(
        model_dir=root,
        vocab=vocab,
        settings=geneformer_settings(vocab, config, gene_id_key=gene_id_key),
        medians_path=medians_path,
        kind="geneformer",
    )
