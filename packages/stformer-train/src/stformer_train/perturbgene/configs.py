"""perturbgene's ``parse_args()`` and config classes, with its command-line options as spelled.

Options before the sub-command are :class:`BaseConfig`'s (data, tokenizer, model file, evaluation,
output); ``mlm`` adds :class:`MLMConfig`'s and ``cls`` (alias ``classification``)
:class:`ClassificationConfig`'s. ``python -m stformer_train.perturbgene.main -h`` lists them all.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = ["BaseConfig", "ClassificationConfig", "MLMConfig", "build_parser", "parse_args"]


@dataclass(kw_only=True)
class BaseConfig:
    """What every perturbgene run needs: data, tokenization, the model file, evaluation, output."""

    subcommand: str = ""
    bin_edges: list[float] = field(default_factory=lambda: [0.1])
    max_length: int = 1024
    num_top_genes: int | None = None
    shard_size: int | None = None
    eval_data_paths: list[str] = field(default_factory=list)
    pretrained_model_path: str | None = None
    vocab_path: str | None = None
    included_phenotypes: list[str] = field(default_factory=list)
    use_flash_attn: bool = False
    output_dir: str = "output"
    per_device_train_batch_size: int = 32
    per_device_eval_batch_size: int = 64
    dataloader_num_workers: int = 0
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    num_train_epochs: float = 1.0
    max_steps: int = -1
    eval_steps: int | None = None
    save_steps: int = 500
    logging_steps: int = 50
    seed: int = 42
    mixed_precision: str = "auto"
    train_data_paths: list[str] = field(default_factory=list)
    num_hidden_layers: int | None = None
    num_attention_heads: int | None = None
    hidden_size: int | None = None

    def __post_init__(self) -> None:
        if not self.bin_edges or any(
            b >= a for a, b in zip(self.bin_edges[1:], self.bin_edges, strict=False)
        ):
            raise ValueError(f"--bin_edges must be increasing numbers, got {self.bin_edges}")
        if self.max_length < 3:
            raise ValueError(f"--max_length must be >= 3, got {self.max_length}")
        for name in ("num_top_genes", "shard_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name} must be >= 1, got {value}")
        if self.mixed_precision not in ("auto", "no", "fp16", "bf16"):
            raise ValueError(
                f"--mixed_precision must be auto, no, fp16 or bf16, got {self.mixed_precision!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(kw_only=True)
class MLMConfig(BaseConfig):
    """Phenotypic masked-LM pretraining (sub-command ``mlm``)."""

    subcommand: str = "mlm"
    gene_mask_prob: float = 0.15
    phenotype_mask_prob: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("gene_mask_prob", "phenotype_mask_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"--{name} must be in [0, 1], got {getattr(self, name)}")
        if self.gene_mask_prob == 0 and (
            self.phenotype_mask_prob == 0 or not self.included_phenotypes
        ):
            raise ValueError(
                "nothing to predict: raise --gene_mask_prob or --phenotype_mask_prob (with --included_phenotypes)"
            )


@dataclass(kw_only=True)
class ClassificationConfig(BaseConfig):
    """Cell classification (or regression) on an ``obs`` column (sub-command ``cls``)."""

    subcommand: str = "cls"
    phenotype_category: str = ""
    regression: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.phenotype_category:
            raise ValueError("cls needs --phenotype_category (the obs column to predict)")


def _add_training_options(p: argparse.ArgumentParser, *, main: bool) -> None:
    s = argparse.SUPPRESS  # sub-command copies leave the value of the main parser unless given
    default = (lambda v: v) if main else (lambda v: s)
    p.add_argument("--per_device_train_batch_size", type=int, default=default(32))
    p.add_argument("--per_device_eval_batch_size", type=int, default=default(64))
    p.add_argument("--dataloader_num_workers", type=int, default=default(0))
    p.add_argument("--learning_rate", type=float, default=default(1e-4))
    p.add_argument("--weight_decay", type=float, default=default(0.0))
    p.add_argument("--warmup_ratio", type=float, default=default(0.0))
    p.add_argument("--num_train_epochs", type=float, default=default(1.0))
    p.add_argument("--max_steps", type=int, default=default(-1))
    p.add_argument("--eval_steps", type=int, default=default(None))
    p.add_argument("--save_steps", type=int, default=default(500))
    p.add_argument("--logging_steps", type=int, default=default(50))
    p.add_argument("--seed", type=int, default=default(42))
    p.add_argument(
        "--train_data_paths", nargs="+", default=default([]), help="Training h5ad shards."
    )
    p.add_argument("--num_hidden_layers", type=int, default=default(None))
    p.add_argument("--num_attention_heads", type=int, default=default(None))
    p.add_argument("--hidden_size", type=int, default=default(None))


_END = "--end_of_base_options"  # inserted before the sub-command: ends a list option (--bin_edges 0.1 mlm)
_SUBCOMMANDS = ("mlm", "cls", "classification")


def _mark_subcommand(args: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """Insert :data:`_END` before the sub-command, so that ``nargs="+"`` options stop there."""
    single = {
        opt
        for action in parser._actions
        if action.nargs is None and action.option_strings
        for opt in action.option_strings
    }
    for i, token in enumerate(args):
        if token in _SUBCOMMANDS and not (i and args[i - 1] in single):
            return [*args[:i], _END, *args[i:]]
    return args


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m stformer_train.perturbgene.main``."""
    p = argparse.ArgumentParser(
        prog="python -m stformer_train.perturbgene.main",
        description="Train a GeneBert (Transformeromics / perturbgene) on binned h5ad shards.",
    )
    p.add_argument(
        "--bin_edges",
        type=float,
        nargs="+",
        default=[0.1],
        help="Expression bin edges; values below the first are dropped.",
    )
    p.add_argument(
        "--max_length",
        type=int,
        default=1024,
        help="Longest sequence (specials and phenotypes included).",
    )
    p.add_argument(
        "--num_top_genes",
        type=int,
        default=None,
        help="Genes of the vocabulary: the first N of the files' var.",
    )
    p.add_argument(
        "--shard_size",
        type=int,
        default=None,
        help="Cells per h5ad shard (len() without reading the files).",
    )
    p.add_argument("--eval_data_paths", nargs="+", default=[], help="Evaluation h5ad shards.")
    p.add_argument(
        "--pretrained_model_path",
        default=None,
        help="A DistilBert/GeneBert config .json, or a trained model folder.",
    )
    p.add_argument(
        "--vocab_path",
        default=None,
        help="JSON {phenotype: [values]} (default: the values in the data).",
    )
    p.add_argument(
        "--included_phenotypes",
        nargs="*",
        default=[],
        help="obs columns written as phenotype tokens.",
    )
    p.add_argument(
        "--use_flash_attn",
        action="store_true",
        help="flash_attention_2 (CUDA + flash-attn), else SDPA.",
    )
    p.add_argument("--output_dir", default="output")
    p.add_argument("--mixed_precision", default="auto", choices=["auto", "no", "fp16", "bf16"])
    _add_training_options(p, main=True)
    p.add_argument(_END, action="store_true", help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="subcommand", required=True)
    mlm = sub.add_parser("mlm", help="phenotypic masked-LM pretraining")
    mlm.add_argument("--gene_mask_prob", type=float, default=0.15)
    mlm.add_argument("--phenotype_mask_prob", type=float, default=0.5)
    _add_training_options(mlm, main=False)
    cls = sub.add_parser("cls", aliases=["classification"], help="classification on an obs column")
    cls.add_argument("--phenotype_category", required=True, help="obs column to predict.")
    cls.add_argument(
        "--regression", action="store_true", help="predict a numeric column (MSE, num_labels=1)."
    )
    _add_training_options(cls, main=False)
    return p


def parse_args(args: Sequence[str] | None = None) -> MLMConfig | ClassificationConfig:
    """Parse the command line (default ``sys.argv[1:]``) into an :class:`MLMConfig` or :class:`ClassificationConfig`.

    >>> cfg = parse_args(["--bin_edges", "0.1", "--max_length", "64", "mlm", "--gene_mask_prob", "0.2"])
    >>> type(cfg).__name__, cfg.bin_edges, cfg.gene_mask_prob, cfg.phenotype_mask_prob
    ('MLMConfig', [0.1], 0.2, 0.5)
    """
    import sys

    parser = build_parser()
    argv = list(sys.argv[1:] if args is None else args)
    ns = vars(parser.parse_args(_mark_subcommand(argv, parser)))
    ns.pop(_END.lstrip("-"))
    command = ns.pop("subcommand")
    if command == "mlm":
        return MLMConfig(**ns)
    return ClassificationConfig(**ns, subcommand="cls")
