"""The ``stformer-tune`` command (also ``stformer tune``): a hyperparameter search over pretraining.

``cli(args) -> int`` is a pure function (testable without a subprocess); ``run()`` is the console
entry point. stformer_tune, torch and Ray are imported inside the command, so ``--help`` is instant.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

console = Console()
err_console = Console(stderr=True)

app = typer.Typer(
    name="stformer-tune",
    help="Search pretraining hyperparameters with Optuna or Ray Tune; write the best config.",
    add_completion=False,
    pretty_exceptions_enable=False,
)


def parse_resources(text: str | None) -> dict[str, float] | None:
    """``"0.5"`` or ``"cpu=0.5,gpu=0"`` -> ``{"cpu": 0.5, "gpu": 0.0}``."""
    if text is None or not text.strip():
        return None
    text = text.strip()
    try:
        return {"cpu": float(text)}
    except ValueError:
        pass
    out: dict[str, float] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        try:
            if not sep:
                raise ValueError
            out[key.strip().lower()] = float(value)
        except ValueError:
            raise ValueError(
                f"--resources: cannot read {part!r}; write e.g. 'cpu=0.5,gpu=0' or '0.5' "
                "(CPUs per trial)"
            ) from None
    return out


def _base_configs(
    corpus_path: Path,
    config: Path | None,
    overrides: dict[str, Any],
    model_overrides: dict[str, Any] | None = None,
):
    from stformer_data import InputError, load_corpus
    from stformer_train import ModelConfig, TrainConfig

    if not corpus_path.is_dir():
        raise InputError(
            corpus_path,
            "CORPUS",
            "is not a corpus folder",
            "tokenize the .h5ad files first (stformer_data.tokenize_files) and pass that folder",
        )
    from stformer_train.config import load_config_file

    data = load_config_file(config) if config else {}
    model_d, train_d = dict(data.get("model") or {}), dict(data.get("train") or {})
    train_d.update({k: v for k, v in overrides.items() if v is not None})
    model_d.update({k: v for k, v in (model_overrides or {}).items() if v is not None})
    if (model_overrides or {}).get("hidden_size") and "intermediate_size" not in model_d:
        model_d["intermediate_size"] = 2 * int(model_overrides["hidden_size"])  # type: ignore[index]
    train_d.setdefault("eval_fraction", 0.1)
    corpus = load_corpus(corpus_path)
    longest = max(corpus.lengths) if corpus.lengths else 1
    model_d.setdefault("max_position_embeddings", max(longest, 8))
    return corpus, ModelConfig.from_dict(model_d), TrainConfig.from_dict(train_d)


@app.command()
def tune(
    corpus: Annotated[Path, typer.Argument(help="A tokenized stformer corpus folder.")],
    out: Annotated[
        Path, typer.Option("--out", help="Search folder (study, trials, best.yaml, plots).")
    ],
    space: Annotated[
        Path | None,
        typer.Option(
            "--space",
            help="YAML/JSON search space (stFormer's dict form; see examples/space.yaml). "
            "Default: learning rate (log), warm-up, weight decay, batch size, layers and hidden size.",
        ),
    ] = None,
    backend: Annotated[
        str, typer.Option(help="optuna (SQLite study, pruning) or ray (Tune + ASHA).")
    ] = "optuna",
    trials: Annotated[int, typer.Option("--trials", help="Trials in the whole search.")] = 8,
    resources: Annotated[
        str | None, typer.Option(help="Per trial: 'cpu=0.5,gpu=0' or a CPU count.")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue the search stored in --out.")] = False,
    config: Annotated[
        Path | None, typer.Option(help="Base model:/train: YAML/JSON every trial starts from.")
    ] = None,
    max_steps: Annotated[int | None, typer.Option(help="Optimiser steps per trial.")] = None,
    eval_fraction: Annotated[
        float | None, typer.Option(help="Held-out fraction (objective); default 0.1.")
    ] = None,
    eval_steps: Annotated[
        int | None, typer.Option(help="Evaluate (and maybe prune) every N steps.")
    ] = None,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (default: local Ray).")
    ] = None,
    num_cpus: Annotated[int, typer.Option(help="CPUs of a local Ray.")] = 2,
    seed: Annotated[int, typer.Option(help="Seed of the sampler.")] = 0,
    layers: Annotated[
        int | None, typer.Option(help="Fix the transformer layers (not searched).")
    ] = None,
    hidden: Annotated[int | None, typer.Option(help="Fix the hidden size (not searched).")] = None,
    heads: Annotated[int | None, typer.Option(help="Fix the attention heads.")] = None,
    report_to: Annotated[
        str | None,
        typer.Option(help="Trackers of each trial: tensorboard, wandb, mlflow, none or auto."),
    ] = None,
) -> None:
    """Search hyperparameters on CORPUS; the best config goes to OUT/best.yaml (stformer pretrain --config)."""
    from rich.table import Table

    from stformer_tune import default_search_space, load_search_space, run_search

    search_space = default_search_space() if space is None else load_search_space(space)
    fixed = {"num_layers": layers, "hidden_size": hidden, "num_heads": heads}
    fixed = {k: v for k, v in fixed.items() if v is not None}
    dropped = [n for n in search_space.names if n in fixed or (n == "intermediate_size" and hidden)]
    if dropped:
        search_space = search_space.without(dropped)
        console.print(f"not searched (fixed on the command line): {', '.join(dropped)}")
    corpus_obj, model_cfg, train_cfg = _base_configs(
        corpus,
        config,
        {
            "max_steps": max_steps,
            "eval_fraction": eval_fraction,
            "eval_steps": eval_steps,
            "report_to": report_to,
        },
        fixed,
    )
    console.print(
        f"{backend}: {trials} trials over {', '.join(search_space.names)} on "
        f"{len(corpus_obj.dataset)} cells -> {out}"
    )
    result = run_search(
        corpus_obj.path,
        out,
        search_space,
        model=model_cfg,
        train=train_cfg,
        backend=backend,
        n_trials=trials,
        resources_per_trial=parse_resources(resources),
        resume=resume,
        seed=seed,
        address=address,
        num_cpus=num_cpus,
    )
    table = Table(title=f"{len(result.trials)} trials (objective: eval_loss, lower is better)")
    for col in ("trial", "state", "eval_loss", *search_space.names):
        table.add_column(col)
    for t in sorted(result.trials, key=lambda t: t.number):
        loss = "" if t.eval_loss is None else f"{t.eval_loss:.4f}"
        table.add_row(
            str(t.number),
            t.state.lower(),
            loss,
            *(f"{t.params.get(n)!s:.8}" for n in search_space.names),
        )
    console.print(table)
    console.print(
        f"best trial {result.best.number}: eval_loss {result.best.eval_loss:.4f}; "
        f"config -> {result.best_config} (stformer pretrain CORPUS --out RUN --config {result.best_config})"
    )
    console.print(f"table -> {result.trials_csv}; plot -> {result.plot}")


def cli(args: Sequence[str] | None = None, prog_name: str = "stformer-tune") -> int:
    """Run the command with ``args`` (default ``sys.argv[1:]``) and return its exit code.

    Bad input (``ValueError``, ``InputError``, missing files, an existing search without
    ``--resume``) exits 2 with a one-line message; a search in which no trial completed exits 1;
    an interrupted search exits 130 (continue it with ``--resume``); anything else propagates.
    """
    command = typer.main.get_command(app)
    try:
        rv = command.main(
            args=list(sys.argv[1:] if args is None else args),
            prog_name=prog_name,
            standalone_mode=False,
        )
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:  # Ctrl-C (the Optuna study keeps every finished trial)
        err_console.print(
            "[red]Aborted.[/red] Run the same command with --resume to continue the search."
        )
        return 130
    except typer.TyperException as exc:  # usage errors
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            err_console.print(f"[bold red]error:[/bold red] {exc}", highlight=False)
        return int(getattr(exc, "exit_code", 2))
    except ImportError as exc:  # an optional package (Optuna, Ray, a tracker) is missing
        from stformer_train.progress import MissingBackend, install_hint

        name = getattr(exc, "name", None) or ""
        if isinstance(exc, MissingBackend):
            hint = str(exc)
        elif isinstance(exc, ModuleNotFoundError) and name.split(".")[0] in ("optuna", "ray"):
            hint = install_hint(name.split(".")[0], what=f"stformer-tune ({name.split('.')[0]})")
        else:
            raise
        err_console.print(
            f"[bold red]error:[/bold red] {escape(hint)}", highlight=False, soft_wrap=True
        )
        return 1
    except Exception as exc:
        from stformer_tune import NoTrialCompleted, SearchInterrupted

        if isinstance(exc, SearchInterrupted):
            err_console.print(f"[red]Interrupted:[/red] {exc}", highlight=False, soft_wrap=True)
            return 130
        if isinstance(exc, NoTrialCompleted):
            err_console.print(f"[bold red]error:[/bold red] {exc}", highlight=False, soft_wrap=True)
            return 1
        if not isinstance(exc, ValueError | FileNotFoundError | FileExistsError):
            raise
        err_console.print(f"[bold red]error:[/bold red] {exc}", highlight=False, soft_wrap=True)
        return 2
    return rv if isinstance(rv, int) else 0


def run() -> None:
    sys.exit(cli())
