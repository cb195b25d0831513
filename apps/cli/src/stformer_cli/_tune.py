"""``stformer tune``: the hyperparameter search of the stformer-tune app, when that extra is installed.

The app is imported only when the command runs, so ``stformer --help`` stays instant and works
without it; all arguments (``--help`` included) are handed to ``stformer-tune`` unchanged.
"""

from __future__ import annotations

import typer


def _load_tune_cli():
    # a missing stformer-tune-app (or Optuna) propagates as ModuleNotFoundError; run_app turns it
    # into one line with the uv and pip commands (stformer_cli._errors.OPTIONAL_BACKENDS)
    from stformer_tune_app.main import cli

    return cli


def register(app: typer.Typer) -> None:
    app.command(
        "tune",
        context_settings={
            "allow_extra_args": True,
            "ignore_unknown_options": True,
            "help_option_names": [],
        },
        help="Search pretraining hyperparameters (Optuna or Ray Tune); see `stformer tune --help`. "
        "Needs the tune extra: uv sync --package stformer-cli --extra tune "
        '(pip install "stformer-cli\\[tune]").',  # \\[ is a literal [ in rich markup
    )(tune)


def tune(ctx: typer.Context) -> None:
    """Run ``stformer-tune`` with the remaining arguments."""
    code = _load_tune_cli()(list(ctx.args), prog_name="stformer tune")
    if code:
        raise typer.Exit(code)
