"""``stformer perturbgene mlm|cls ...``: perturbgene's training script with its own options."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    app.command(
        "perturbgene",
        context_settings={
            "allow_extra_args": True,
            "ignore_unknown_options": True,
            "help_option_names": [],
        },
        add_help_option=False,
    )(perturbgene)


def perturbgene(ctx: typer.Context) -> None:
    """Train a GeneBert as perturbgene does: [--bin_edges ... --max_length ...] mlm|cls [...] (-h for all options)."""
    from stformer_train.perturbgene.main import main

    raise typer.Exit(main(list(ctx.args)))
