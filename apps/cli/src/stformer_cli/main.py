"""The ``stformer`` command: one typer app; each command lives in its own module and registers itself.

``cli(args) -> int`` is a pure function (testable without a subprocess); ``run()`` is the console
entry point. Heavy imports (torch, transformers, ...) happen inside the commands, so ``--help`` is instant.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

import typer

# Modules under stformer_cli that define ``register(app: typer.Typer) -> None``.
_COMMAND_MODULES: tuple[str, ...] = (
    "stformer_cli._demo",
    "stformer_cli._perturb",
    "stformer_cli._perturbgene",
    "stformer_cli._tokenize",
    "stformer_cli._pretrain",
    "stformer_cli._embed",
    "stformer_cli._finetune",
    "stformer_cli._tune",
)

app = typer.Typer(
    name="stformer",
    help="Pretrain transformer foundation models on single-cell and spatial transcriptomics.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _main() -> None:
    """Pretrain transformer foundation models on single-cell and spatial transcriptomics."""


for _name in _COMMAND_MODULES:
    importlib.import_module(_name).register(app)


def cli(args: Sequence[str] | None = None) -> int:
    """Run the command line with ``args`` (default ``sys.argv[1:]``) and return its exit code."""
    from stformer_cli._errors import run_app

    return run_app(app, list(sys.argv[1:] if args is None else args))


def run() -> None:
    sys.exit(cli())
