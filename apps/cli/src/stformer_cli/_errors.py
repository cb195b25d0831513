"""Turn expected failures (bad input) into a one-line error and a non-zero exit code."""

from __future__ import annotations

import typer
from rich.console import Console

err_console = Console(stderr=True)


def run_app(app: typer.Typer, args: list[str]) -> int:
    """Invoke ``app`` like a console script and return the exit code instead of exiting.

    Usage errors exit 2 with typer's message; :class:`stformer_data.InputError` and config
    validation errors (``ValueError``) and missing files exit 2 with a one-line message; anything
    else is a bug and propagates with its traceback.
    """
    command = typer.main.get_command(app)
    try:
        rv = command.main(args=args, prog_name="stformer", standalone_mode=False)
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        err_console.print("[red]Aborted.[/red]")
        return 130
    except typer.TyperException as exc:  # usage errors: bad option, unknown command, ...
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            err_console.print(f"[bold red]error:[/bold red] {exc}", highlight=False)
        return int(getattr(exc, "exit_code", 2))
    except (ValueError, FileNotFoundError) as exc:  # InputError is a ValueError
        err_console.print(f"[bold red]error:[/bold red] {exc}", highlight=False, soft_wrap=True)
        return 2
    return rv if isinstance(rv, int) else 0
