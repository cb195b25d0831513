"""One vocabulary of options (issue 18.3): the same name and default for one idea on every
command, and every option an input error suggests exists on the commands that raise it."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import typer

import stformer_data
from stformer_cli.main import app, cli

#: the commands that read cells of an .h5ad
READS_H5AD = (
    "tokenize",
    "medians",
    "pretrain",
    "embed",
    "evaluate",
    "finetune",
    "predict",
    "perturb",
    "demo",
)
#: what every one of them takes: where the gene ids and counts are and how they are checked
READS_CELLS = {"--gene-id-key", "--layer", "--allow-non-integer", "--n-counts-key"}
DATA_SRC = Path(stformer_data.__file__).parent


def _commands() -> dict:
    return typer.main.get_command(app).commands


def _options(name: str, *, hidden: bool = True) -> dict[str, object]:
    out = {}
    for p in _commands()[name].params:
        if not hidden and getattr(p, "hidden", False):
            continue
        for flag in (*p.opts, *p.secondary_opts):
            out[flag] = p
    return out


def _fix_flags(files) -> dict[str, set[str]]:
    """The ``--flags`` named in the ``fix`` of every ``InputError(...)`` raised in ``files``."""
    flags: dict[str, set[str]] = {}
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            if not (isinstance(node, ast.Call) and "InputError" in ast.unparse(node.func)):
                continue
            fix = node.args[3] if len(node.args) > 3 else None
            fix = fix or next((k.value for k in node.keywords if k.arg == "fix"), None)
            if fix is None:
                continue
            text = " ".join(
                c.value
                for c in ast.walk(fix)
                if isinstance(c, ast.Constant) and isinstance(c.value, str)
            )
            for flag in re.findall(r"--[a-z][a-z-]+", text):
                flags.setdefault(flag, set()).add(f.name)
    return flags


def test_every_command_that_reads_an_h5ad_takes_the_options_its_errors_suggest():
    # errors raised while reading cells (any command): h5ad reading, counts checks, gene mapping
    reading = [*DATA_SRC.joinpath("h5ad").glob("*.py"), *DATA_SRC.joinpath("genes").glob("*.py")]
    # --allow-pickle: only for .pkl dictionaries; --medians / --drop-invalid-medians: only about a
    # medians file, which only `tokenize` reads (the other commands use the model's medians)
    suggested = set(_fix_flags(reading)) - {"--allow-pickle", "--medians", "--drop-invalid-medians"}
    assert {"--gene-id-key", "--layer", "--allow-non-integer"} <= suggested
    assert suggested <= READS_CELLS
    for name in READS_H5AD:
        missing = READS_CELLS - set(_options(name))
        assert not missing, f"{name} lacks {sorted(missing)}"
    # every option any stformer_data error suggests is an option of `stformer tokenize`
    everything = _fix_flags(DATA_SRC.rglob("*.py"))
    assert not set(everything) - set(_options("tokenize")), everything


def test_one_name_and_one_default_per_idea():
    cmds = _commands()
    for name in ("tokenize", "pretrain", "demo"):
        assert "--max-length" in _options(name, hidden=False), name
    for name in cmds:  # Geneformer's name survives only as tokenize's hidden alias
        assert "--model-input-size" not in _options(name, hidden=False), name
    assert _options("tokenize")["--model-input-size"].hidden
    for name in ("evaluate", "finetune", "demo", "pretrain"):
        assert _options(name)["--label-key"].default == "cell_type", name
    for name in ("evaluate", "demo"):
        assert _options(name)["--k"].default == 15, name
    for name in cmds:  # --k is the kNN's k wherever it is shown
        shown = _options(name, hidden=False)
        assert "--k" not in shown or shown["--k"].default == 15, name
    for name in ("embed", "evaluate", "finetune", "pretrain", "demo", "perturb", "tokenize"):
        opts = _options(name)
        assert "--progress" in opts and "--no-progress" in opts, name
    for name in ("embed", "evaluate", "finetune", "pretrain", "demo"):
        assert "--batch-size" in _options(name), name
    for name in ("evaluate", "finetune", "pretrain", "demo"):
        assert "--seed" in _options(name) and "--test-fraction" in _options(name), name
    # pretrain carries the demo's recipe
    recipe = {"--mlm-probability", "--tie-embeddings", "--no-tie-embeddings", "--learning-rate"}
    recipe |= {"--layers", "--hidden", "--heads", "--epochs", "--max-length", "--test-fraction"}
    assert recipe <= set(_options("demo")) and recipe | {"--eval-fraction"} <= set(
        _options("pretrain")
    )


def test_tokenize_model_input_size_is_a_deprecated_alias_of_max_length(tmp_path, capsys):
    h5ad = tmp_path / "cells.h5ad"
    stformer_data.simulate_counts(n_cells=20, n_genes=80, seed=0).write_h5ad(h5ad)
    base = ["tokenize", str(h5ad), "--no-progress"]
    assert cli([*base, "--out", str(tmp_path / "a"), "--model-input-size", "12"]) == 0
    assert cli([*base, "--out", str(tmp_path / "b"), "--max-length", "12"]) == 0
    manifests = [json.loads((tmp_path / x / "manifest.json").read_text()) for x in "ab"]
    assert manifests[0]["settings"] == manifests[1]["settings"]
    assert manifests[0]["max_length"] == 12
    capsys.readouterr()
    args = [*base, "--out", str(tmp_path / "c"), "--max-length", "12", "--model-input-size", "16"]
    assert cli(args) == 2
    assert "--max-length" in capsys.readouterr().err
