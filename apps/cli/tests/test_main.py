"""The command line lists its commands and every command answers --help."""

from __future__ import annotations

import typer

from stformer_cli.main import app, cli


def _command_names() -> list[str]:
    group = typer.main.get_command(app)
    return sorted(group.commands)


def test_help_lists_every_command(capsys):
    assert cli(["--help"]) == 0
    out = capsys.readouterr().out
    names = _command_names()
    assert "demo" in names
    for name in names:
        assert name in out


def test_each_command_has_help(capsys):
    for name in _command_names():
        assert cli([name, "--help"]) == 0, name
        assert "Usage" in capsys.readouterr().out


def test_unknown_command_is_an_error(capsys):
    assert cli(["no-such-command"]) != 0


def test_bad_input_exits_non_zero_with_a_clear_message(tmp_path, capsys):
    missing = tmp_path / "absent.h5ad"
    assert cli(["demo", "--h5ad", str(missing), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "absent.h5ad" in err and "does not exist" in err
