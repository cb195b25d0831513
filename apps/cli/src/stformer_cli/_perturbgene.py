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
    """Train a GeneBert as perturbgene does: [--bin_edges ... --max_length ...] mlm|cls [...] (--help for all options)."""
    args = list(ctx.args)
    if not args or args[0] in ("-h", "--help"):
        from stformer_train.perturbgene.configs import build_parser

        typer.echo("Usage: stformer perturbgene [BASE OPTIONS] mlm|cls [OPTIONS]\n")
        build_parser().print_help()
        raise typer.Exit(0 if args else 2)
    from stformer_train.perturbgene.main import main

    try:
        code = main(args)
    except SystemExit as exc:  # argparse: a usage error (2) or a sub-command's --help (0)
        code = exc.code if isinstance(exc.code, int) else 2
    raise typer.Exit(code)
