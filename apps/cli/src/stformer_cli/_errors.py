"""Turn expected failures (bad input) into a one-line error and a non-zero exit code."""

from __future__ import annotations

import click
import typer
from rich.console import Console

err_console = Console(stderr=True)


def run_app(app: typer.Typer, args: list[str]) -> int:
    """Invoke ``app`` like a console script and return the exit code instead of exiting."""
    command = typer.main.get_command(app)
    try:
        rv = command.main(args=args, prog_name="stformer", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        err_console.print("[red]Aborted.[/red]")
        return 130
    except ValueError as exc:  # InputError and config validation errors are ValueErrors
        err_console.print(f"[bold red]error:[/bold red] {exc}", highlight=False)
        return 2
    except FileNotFoundError as exc:
        err_console.print(f"[bold red]error:[/bold red] {exc}", highlight=False)
        return 2
    return rv if isinstance(rv, int) else 0
