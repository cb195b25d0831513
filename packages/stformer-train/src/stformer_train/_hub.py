"""The tokenizer and model-card files of a saved model (see :mod:`stformer_train.hub`).

Kept apart from :mod:`stformer_train.hub` so that ``save_model`` (``run_dir``) does not import
the model-folder reader (``geneformer``), which imports ``run_dir``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stformer_data.atomic import atomic_write_text

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

__all__ = [
    "CARD_FILE",
    "evaluation_markdown",
    "gene_tokenizer_fast",
    "save_hub_files",
    "tokenizer_settings",
    "update_model_card",
    "write_model_card",
]

CARD_FILE = "README.md"

#: spellings of the special tokens looked for in a vocabulary: stformer/Geneformer's, then BERT's
_SPECIAL_SPELLINGS = {
    "pad_token": ("<pad>", "[PAD]"),
    "mask_token": ("<mask>", "[MASK]"),
    "cls_token": ("<cls>", "[CLS]"),
    "eos_token": ("<eos>", "[EOS]", "[SEP]"),
    "unk_token": ("<unk>", "[UNK]"),
}

#: a special token's spelling: ``<pad>``, ``[CLS]``
_SPECIAL_RE = re.compile(r"<[^<>\s]+>|\[[A-Z]+\]")

#: WordLevel needs an unknown-token name; absent from the vocabulary it makes an unknown gene an error
_NO_UNK = "<unk>"


def _find_special(vocab: Mapping[str, int], role: str, given: str | None) -> str | None:
    if given is not None:
        if given not in vocab:
            raise ValueError(f"{role}={given!r} is not a token of the vocabulary")
        return given
    return next((t for t in _SPECIAL_SPELLINGS[role] if t in vocab), None)


def gene_tokenizer_fast(
    vocab: Mapping[str, int],
    *,
    model_input_size: int | None = None,
    add_cls: bool = False,
    add_eos: bool = False,
    pad_token: str | None = None,
    mask_token: str | None = None,
    cls_token: str | None = None,
    eos_token: str | None = None,
    unk_token: str | None = None,
) -> PreTrainedTokenizerFast:
    """A ``PreTrainedTokenizerFast`` whose ids are exactly ``vocab``'s (a ``GeneVocab`` or any mapping).

    The ``tokenizers`` pipeline is a word-level model over the vocabulary with a whitespace
    pre-tokenizer: ``"ENSG01 ENSG02"`` -> ``[vocab["ENSG01"], vocab["ENSG02"]]``. Tokens that contain
    whitespace (phenotype tokens such as ``"cell_type=T cell"``) are added tokens, matched whole.
    ``add_cls`` / ``add_eos`` put the ``<cls>`` / ``<eos>`` tokens around every sequence, as the
    corpus did; ``model_input_size`` becomes ``model_max_length`` (truncation keeps the first,
    highest-ranked genes, as stformer's rank tokenizer does).

    Ranking is not a string tokenizer's job: the input must already be gene ids in rank order
    (:func:`encode_cells` turns an AnnData into ids through stformer's rank tokenizer).

    The special tokens are found by their stformer (``<pad>``, ``<mask>``, ``<cls>``, ``<eos>``,
    ``<unk>``) or BERT (``[PAD]`` ...) spelling, or given explicitly. stformer's and Geneformer's
    vocabularies have no unknown-gene token (the rank tokenizer drops genes outside the
    vocabulary); then ``unk_token`` is ``None`` and encoding a gene the model does not know raises
    ("Missing [UNK] token") rather than inventing an id the model never had.

    >>> tok = gene_tokenizer_fast({"<pad>": 0, "<mask>": 1, "ENSG01": 2, "ENSG02": 3})
    >>> tok("ENSG02 ENSG01")["input_ids"], tok.mask_token_id, tok.pad_token_id
    ([3, 2], 1, 0)
    """
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    mapping = {str(t): int(i) for t, i in vocab.items()}
    if sorted(mapping.values()) != list(range(len(mapping))):
        raise ValueError("the vocabulary ids must be exactly 0 .. len(vocab) - 1")
    roles = {
        "pad_token": _find_special(mapping, "pad_token", pad_token),
        "mask_token": _find_special(mapping, "mask_token", mask_token),
        "cls_token": _find_special(mapping, "cls_token", cls_token),
        "eos_token": _find_special(mapping, "eos_token", eos_token),
        "unk_token": _find_special(mapping, "unk_token", unk_token),
    }
    for role in ("pad_token", "mask_token"):
        if roles[role] is None:
            raise ValueError(
                f"the vocabulary has no {role} (looked for {_SPECIAL_SPELLINGS[role]})"
            )
    for wanted, role in ((add_cls, "cls_token"), (add_eos, "eos_token")):
        if wanted and roles[role] is None:
            raise ValueError(f"add_{role[:3]}=True but the vocabulary has no {role}")
    if model_input_size is not None and model_input_size <= int(add_cls) + int(add_eos):
        raise ValueError(f"model_input_size must leave room for a gene, got {model_input_size}")

    backend = Tokenizer(models.WordLevel(mapping, unk_token=roles["unk_token"] or _NO_UNK))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    specials = {t for t in roles.values() if t is not None}
    specials |= {t for t in mapping if _SPECIAL_RE.fullmatch(t)}
    backend.add_special_tokens([AddedToken(t, normalized=False) for t in sorted(specials)])
    spaced = [t for t in mapping if re.search(r"\s", t) and t not in specials]
    if spaced:
        backend.add_tokens([AddedToken(t, normalized=False, single_word=True) for t in spaced])
    if add_cls or add_eos:
        head = [roles["cls_token"]] if add_cls else []
        tail = [roles["eos_token"]] if add_eos else []
        backend.post_processor = processors.TemplateProcessing(
            single=" ".join([*head, "$A", *tail]),
            pair=" ".join([*head, "$A", *tail, "$B", *tail]),
            special_tokens=[(t, mapping[t]) for t in (*head, *tail)],
        )
    kwargs = {role: token for role, token in roles.items() if token is not None}
    if roles["eos_token"] is not None:
        kwargs["sep_token"] = roles["eos_token"]
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        model_max_length=model_input_size if model_input_size is not None else int(1e30),
        padding_side="right",
        truncation_side="right",
        model_input_names=["input_ids", "attention_mask"],
        clean_up_tokenization_spaces=False,
        **kwargs,
    )


def tokenizer_settings(
    manifest: Mapping[str, Any] | None, sequences: Sequence[Sequence[int]] | None = None, vocab=None
) -> dict[str, Any]:
    """``model_input_size``, ``add_cls``, ``add_eos`` and ``scheme`` of a corpus.

    From a corpus manifest (its ``settings``); for a dataset without one (PretrainML's Geneformer
    datasets) ``add_cls`` / ``add_eos`` are read off the first sequence and the vocabulary.

    >>> tokenizer_settings({"settings": {"scheme": "rank", "rank": {"model_input_size": 64,
    ...                     "add_cls": True, "add_eos": False}}})
    {'scheme': 'rank', 'model_input_size': 64, 'add_cls': True, 'add_eos': False}
    """
    settings = dict((manifest or {}).get("settings") or {})
    scheme = settings.get("scheme")
    part = dict(settings.get(scheme) or {}) if scheme in ("rank", "binned") else {}
    if scheme == "neighborhood":
        part = dict(settings.get("rank") or {})
    if part:
        return {
            "scheme": scheme,
            "model_input_size": part.get("model_input_size"),
            "add_cls": bool(part.get("add_cls", False)),
            "add_eos": bool(part.get("add_eos", False)),
        }
    first = list(sequences[0]) if sequences is not None and len(sequences) else []
    cls_id = vocab.get("<cls>") if vocab is not None else None
    eos_id = vocab.get("<eos>") if vocab is not None else None
    return {
        "scheme": scheme or "rank",
        "model_input_size": (manifest or {}).get("max_length"),
        "add_cls": bool(first) and cls_id is not None and first[0] == cls_id,
        "add_eos": bool(first) and eos_id is not None and first[-1] == eos_id,
    }


def _build_args(settings: Mapping[str, Any]) -> dict[str, Any]:
    return {k: settings[k] for k in ("model_input_size", "add_cls", "add_eos")}


# --- the model card ---------------------------------------------------------------------------


def _final(history: Sequence[Mapping[str, Any]], key: str) -> tuple[float, int | None] | None:
    for entry in reversed(history or ()):
        value = entry.get(key)
        if isinstance(value, (int, float)) and math.isfinite(float(value)):
            return float(value), entry.get("step")
    return None


def _table(rows: Mapping[str, Any]) -> str:
    lines = ["| field | value |", "|---|---|"]
    for k, v in rows.items():
        text = json.dumps(v) if isinstance(v, (list, dict, tuple)) else str(v)
        lines.append(f"| `{k}` | {text.replace('|', '/')} |")
    return "\n".join(lines)


def _loading_code(binned: bool, example: Sequence[str]) -> str:
    imports = (
        "import stformer_train  # registers GeneBert with the Auto classes\n" if binned else ""
    )
    strings = (
        '# the fast tokenizer maps bin / phenotype token strings to ids ("bin_3 bin_1 ...");\n'
        "# the genes are token_type_ids, which only stformer's binned tokenizer produces\n"
        if binned
        else "# the fast tokenizer maps gene ids, already in rank order, to ids:\n"
        f'ids = tokenizer("{" ".join(example)}")["input_ids"]\n'
    )
    return (
        "```python\n"
        f"{imports}"
        "from transformers import AutoModelForMaskedLM, AutoTokenizer\n\n"
        'tokenizer = AutoTokenizer.from_pretrained("path/to/model")\n'
        'model = AutoModelForMaskedLM.from_pretrained("path/to/model")\n\n'
        f"{strings}\n"
        "# cells -> ids through stformer's own tokenizer (ranking / binning), then the model\n"
        "import anndata\n"
        "from stformer_train.hub import encode_cells\n\n"
        'adata = anndata.io.read_h5ad("cells.h5ad")\n'
        'batch = encode_cells("path/to/model", adata)  # input_ids, attention_mask; batch.cell_index\n'
        "out = model(**batch, output_hidden_states=True)\n"
        "```\n"
    )


def write_model_card(
    model_dir: str | PathLike[str],
    *,
    vocab: Mapping[str, int],
    settings: Mapping[str, Any],
    corpus: Mapping[str, Any] | None = None,
    run_config: Mapping[str, Any] | None = None,
    log_history: Sequence[Mapping[str, Any]] | None = None,
    model_config: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``README.md``, a Hub model card, into ``model_dir`` (atomically) and return its path.

    Parameters
    ----------
    vocab
        The model's token vocabulary.
    settings
        The tokenizer settings (:func:`tokenizer_settings`, plus any corpus settings to show).
    corpus
        What the model was trained on: ``path``, ``n_cells``, ``sources`` (h5ad files), ...
    run_config
        The run's resolved configuration (``engine``, ``model`` = ModelConfig, ``train`` =
        TrainConfig fields), shown as tables.
    log_history
        The trainer's log history: the final training and validation losses are read from it.
    model_config
        The saved ``config.json`` (architecture, shape).

    The front matter names ``library_name: transformers``, ``pipeline_tag: fill-mask`` and
    single-cell tags; it sets no licence, which is the choice of whoever publishes the weights
    (the card says so).
    """
    from huggingface_hub import ModelCard, ModelCardData

    model_dir = Path(model_dir)
    corpus = dict(corpus or {})
    run_config = dict(run_config or {})
    model_config = dict(model_config or {})
    scheme = settings.get("scheme") or "rank"
    binned = scheme == "binned"
    n_special = sum(1 for t in vocab if _SPECIAL_RE.fullmatch(t))
    arch = ", ".join(model_config.get("architectures") or []) or model_config.get("model_type", "")
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag=None if "Classification" in arch else "fill-mask",
        tags=[
            "stformer",
            "single-cell",
            "transcriptomics",
            "biology",
            "geneformer" if not binned else "genebert",
            "masked-language-modeling",
        ],
    )
    head = [
        "# stformer gene-expression model",
        "",
        f"A {arch or 'BERT'} model pretrained with "
        "stformer on single-cell transcriptomes. "
        + (
            "A cell is its expressed genes as (expression bin, gene) pairs: bins are `input_ids`, "
            "genes are `token_type_ids`, with no positions (GeneBert)."
            if binned
            else "A cell is the sequence of its genes ranked by median-normalised expression "
            "(rank-value tokens, as Geneformer)."
        ),
        "",
        "**License:** none is set. Whoever publishes these weights must choose one that the "
        "training data allows and add `license:` to the front matter above.",
    ]
    data_rows: dict[str, Any] = {
        "corpus": corpus.get("path", "unknown"),
        "cells": corpus.get("n_cells", "unknown"),
        "vocabulary size": len(vocab),
        "genes (vocabulary minus special tokens)": corpus.get("n_genes", len(vocab) - n_special),
        "token scheme": scheme,
    }
    for i, src in enumerate(corpus.get("sources") or ()):
        data_rows[f"source {i}"] = (
            f"{src.get('path')} ({src.get('cells_written', src.get('n_obs', '?'))} cells)"
        )
    tok_rows = {
        k: v
        for k, v in settings.items()
        if k not in ("scheme",) and not isinstance(v, Mapping) and v is not None
    }
    specials = {r: t for r in _SPECIAL_SPELLINGS for t in _SPECIAL_SPELLINGS[r] if t in vocab}
    tok_rows.update({f"{r} (id)": f"{t} ({vocab[t]})" for r, t in specials.items()})
    if not any(t in vocab for t in _SPECIAL_SPELLINGS["unk_token"]):
        tok_rows["unk_token"] = (
            "none: genes outside the vocabulary are dropped by stformer's tokenizer"
        )
    sections = [
        "\n".join(head),
        "## Data\n\n" + _table(data_rows),
        "## Tokenizer\n\n"
        "`tokenizer.json` is a word-level `PreTrainedTokenizerFast` over the vocabulary "
        "(`token_dictionary.json`); its ids are the model's. It maps token strings to ids and does "
        "**not** "
        + ("bin expression" if binned else "rank genes")
        + ": stformer's tokenizer does that from counts (`stformer_train.hub.encode_cells`).\n\n"
        + _table(tok_rows),
    ]
    training = []
    if run_config.get("engine"):
        training.append(f"Engine: `{run_config['engine']}`.")
    for title, key in (("ModelConfig", "model"), ("TrainConfig", "train")):
        if isinstance(run_config.get(key), Mapping):
            training.append(f"### {title}\n\n" + _table(run_config[key]))
    if model_config:
        shape = {
            k: model_config[k]
            for k in (
                "model_type",
                "vocab_size",
                "hidden_size",
                "num_hidden_layers",
                "num_attention_heads",
                "intermediate_size",
                "max_position_embeddings",
                "type_vocab_size",
            )
            if k in model_config
        }
        training.append("### config.json\n\n" + _table(shape))
    if training:
        sections.append("## Training\n\n" + "\n\n".join(training))
    results = {}
    for label, key in (
        ("final training loss (last logged)", "loss"),
        ("mean training loss (whole run)", "train_loss"),
        ("final validation loss", "eval_loss"),
    ):
        got = _final(log_history or (), key)
        if got is not None:
            value, step = got
            results[label] = f"{value:.4f}" + (f" (step {step})" if step is not None else "")
    if results:
        results["chance level (ln vocabulary size)"] = f"{math.log(len(vocab)):.4f}"
        sections.append("## Results\n\n" + _table(results))
    genes = [t for t in vocab if not _SPECIAL_RE.fullmatch(t)][:2]
    sections.append("## How to use\n\n" + _loading_code(binned, genes))
    template = "---\n{{ card_data }}\n---\n\n" + "\n\n".join(sections) + "\n"
    card = ModelCard.from_template(data, template_str=template)
    return atomic_write_text(model_dir / CARD_FILE, str(card))


def update_model_card(model_dir: str | PathLike[str], section_title: str, markdown: str) -> Path:
    """Put ``## section_title`` with ``markdown`` into the model card, replacing a section of that title.

    For the figures later steps compute (evaluation scores, fine-tuning results). A folder
    without a card gets a minimal one first.

    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> _ = update_model_card(d, "Evaluation", "kNN accuracy 0.9")
    >>> _ = update_model_card(d, "Evaluation", "kNN accuracy 0.95")
    >>> text = (Path(d) / "README.md").read_text()
    >>> text.count("## Evaluation"), "0.95" in text, "0.9\\n" in text
    (1, True, False)
    """
    from huggingface_hub import ModelCard, ModelCardData

    path = Path(model_dir) / CARD_FILE
    if path.is_file():
        card = ModelCard.load(path)
    else:
        card = ModelCard.from_template(
            ModelCardData(library_name="transformers", tags=["stformer", "single-cell"]),
            template_str="---\n{{ card_data }}\n---\n\n# stformer model\n",
        )
    title = section_title.strip().lstrip("#").strip()
    if not title:
        raise ValueError("section_title must not be empty")
    section = f"## {title}\n\n{markdown.strip()}\n"
    body = card.text
    pattern = re.compile(rf"^## {re.escape(title)}[ \t]*\n.*?(?=^## |\Z)", re.M | re.S)
    if pattern.search(body):
        body = pattern.sub(lambda _: section + "\n", body, count=1).rstrip() + "\n"
    else:
        body = body.rstrip() + "\n\n" + section
    card.text = body
    return atomic_write_text(path, str(card))


def evaluation_markdown(result: Mapping[str, Any], h5ad: str | PathLike[str] | None = None) -> str:
    """The model-card section of an evaluation (:func:`~stformer_train.downstream.evaluate_run`'s result).

    >>> print(evaluation_markdown({"label_key": "cell_type", "k": 15, "n_cells": 100,
    ...     "scores": {"stformer": {"accuracy": 0.9, "macro_f1": 0.8, "n_train": 80, "n_test": 20}}}))
    kNN label transfer (k = 15) of `cell_type` to held-out cells, 100 cells.
    <BLANKLINE>
    | embedding | accuracy | macro-F1 | train / test cells |
    |---|---|---|---|
    | stformer | 0.900 | 0.800 | 80 / 20 |
    """
    where = f" of {h5ad}" if h5ad is not None else ""
    lines = [
        f"kNN label transfer (k = {result.get('k')}) of `{result.get('label_key')}` to held-out "
        f"cells{where}, {result.get('n_cells')} cells.",
        "",
        "| embedding | accuracy | macro-F1 | train / test cells |",
        "|---|---|---|---|",
    ]
    for name, score in dict(result.get("scores") or {}).items():
        lines.append(
            f"| {name} | {score['accuracy']:.3f} | {score['macro_f1']:.3f} | "
            f"{score.get('n_train', '?')} / {score.get('n_test', '?')} |"
        )
    return "\n".join(lines)


def save_hub_files(
    model_dir: str | PathLike[str],
    vocab: Mapping[str, int],
    settings: Mapping[str, Any],
    *,
    corpus: Mapping[str, Any] | None = None,
    run_config: Mapping[str, Any] | None = None,
    log_history: Sequence[Mapping[str, Any]] | None = None,
    tokens: Mapping[str, str] | None = None,
) -> PreTrainedTokenizerFast:
    """Write the fast tokenizer and the model card of a saved model into ``model_dir``.

    ``settings`` are :func:`tokenizer_settings`; ``tokens`` names special tokens explicitly
    (``{"pad_token": "[PAD]", ...}``) when the vocabulary spells them differently. Returns the
    tokenizer.
    """
    model_dir = Path(model_dir)
    tok = gene_tokenizer_fast(vocab, **_build_args(settings), **dict(tokens or {}))
    tok.save_pretrained(model_dir)
    # transformers 5 names the class TokenizersBackend; PreTrainedTokenizerFast loads in 4.x and 5.x
    tok_config = model_dir / "tokenizer_config.json"
    saved = json.loads(tok_config.read_text())
    saved["tokenizer_class"] = "PreTrainedTokenizerFast"
    atomic_write_text(tok_config, json.dumps(saved, indent=2))
    config_path = model_dir / "config.json"
    model_config = json.loads(config_path.read_text()) if config_path.is_file() else None
    write_model_card(
        model_dir,
        vocab=vocab,
        settings=settings,
        corpus=corpus,
        run_config=run_config,
        log_history=log_history,
        model_config=model_config,
    )
    return tok
