"""Turn expected failures (bad input, a missing optional package) into one line and an exit code."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import typer
from rich.console import Console
from rich.markup import escape

err_console = Console(stderr=True)

#: Optional back-ends by top-level import name: (what needs it, the package, the stformer-cli extra).
#: An extra is ``None`` where the package is no extra of stformer-cli (installed by its own name).
OPTIONAL_BACKENDS: dict[str, tuple[str, str, str | None]] = {
    "stformer_tune_app": ("stformer tune", "stformer-tune-app", "tune"),
    "stformer_tune": ("stformer tune", "stformer-tune-app", "tune"),
    "optuna": ("stformer tune", "stformer-tune-app", "tune"),
    "stformer_dist": ("--deepspeed", "stformer-dist", "dist"),
    "deepspeed": ("--deepspeed", "stformer-dist", "dist"),
    "ray": ("Ray (stformer tune --backend ray, distributed runs)", "stformer-dist", "dist"),
    "tensorboardX": ("--report-to tensorboard", "tensorboardX", None),
    "tensorboard": ("--report-to tensorboard", "tensorboard", None),
    "wandb": ("--report-to wandb", "wandb", None),
    "mlflow": ("--report-to mlflow", "mlflow", None),
    "umap": ("UMAP plots", "umap-learn", None),
}


def missing_backend_hint(exc: BaseException) -> str | None:
    """One line naming what to install (uv and pip) when ``exc`` is a missing optional package.

    The exception and its causes are searched for a ``ModuleNotFoundError`` of a module in
    :data:`OPTIONAL_BACKENDS`, or for a :class:`stformer_train.progress.MissingBackend` (whose
    message is already that line). ``None`` for any other import error (a bug: it keeps its
    traceback).
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if type(exc).__name__ == "MissingBackend":
            return str(exc)
        name = getattr(exc, "name", None)
        if isinstance(exc, ModuleNotFoundError) and name:
            top = name.split(".")[0]
            if top in OPTIONAL_BACKENDS:
                from stformer_train.progress import install_hint

                what, package, extra = OPTIONAL_BACKENDS[top]
                return install_hint(package, extra=extra, what=what)
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return None


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """transformers' per-load report tables and its weight-loading/shard-writing bars off.

    The commands show their own bar for each long step (tokenize, pretrain, embed); the
    "Loading weights" / "Writing model shards" bars and the LOAD REPORT tables of
    ``from_pretrained`` say nothing a user acts on. Set through ``TRANSFORMERS_VERBOSITY`` (a
    user's own setting wins) and Hugging Face's progress-bar switches; restored on exit.
    """
    saved_env = os.environ.get("TRANSFORMERS_VERBOSITY")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    restore: list = []
    if "huggingface_hub" in sys.modules:  # transformers' bars follow the hub's switch at import
        from huggingface_hub import utils as hub

        if not hub.are_progress_bars_disabled():
            hub.disable_progress_bars()
            restore.append(hub.enable_progress_bars)
    if "transformers" in sys.modules and saved_env is None:
        from transformers.utils import logging as hf_logging

        level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        restore.append(lambda: hf_logging.set_verbosity(level))
        if bars:
            restore.append(hf_logging.enable_progress_bar)
    try:
        yield
    finally:
        if saved_env is None:
            os.environ.pop("TRANSFORMERS_VERBOSITY", None)
        for undo in restore:
            undo()


def run_app(app: typer.Typer, args: list[str]) -> int:
    """Invoke ``app`` like a console script and return the exit code instead of exiting.

    Usage errors exit 2 with typer's message; :class:`stformer_data.InputError` and config
    validation errors (``ValueError``) and missing files exit 2 with a one-line message; a missing
    optional package (``stformer tune`` without stformer-tune-app, ``--deepspeed`` without
    stformer-dist, ``--report-to wandb`` without wandb) exits 1 with one line naming the uv and pip
    install commands; anything else is a bug and propagates with its traceback.
    """
    command = typer.main.get_command(app)
    try:
        with quiet_libraries():
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
    except ImportError as exc:
        hint = missing_backend_hint(exc)
        if hint is None:
            raise
        err_console.print(
            f"[bold red]error:[/bold red] {escape(hint)}", highlight=False, soft_wrap=True
        )
        return 1
    except (ValueError, FileNotFoundError) as exc:  # InputError is a ValueError
        err_console.print(f"[bold red]error:[/bold red] {exc}", highlight=False, soft_wrap=True)
        return 2
    return rv if isinstance(rv, int) else 0
