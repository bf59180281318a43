"""Shell completion of the hmedit command (typer's --show-completion / --install-completion)."""

from __future__ import annotations

import pytest

from hmedit.cli.app import main


def run(*args) -> int:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    return info.value.code


@pytest.mark.parametrize(
    "shell, expected",
    [
        ("bash", "complete -o default -F _hmedit_completion hmedit"),
        ("zsh", "#compdef hmedit"),
        ("fish", "complete --command hmedit"),
    ],
)
def test_show_completion_prints_the_script_of_the_shell_given(shell, expected, monkeypatch, capsys):
    # typer detects the running shell; with detection off, the option takes the shell as its value
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    assert run("--show-completion", shell) == 0
    out = capsys.readouterr().out
    assert expected in out and "_HMEDIT_COMPLETE" in out


def test_the_script_completes_commands_and_options(monkeypatch, capsys):
    monkeypatch.setenv("_HMEDIT_COMPLETE", "complete_bash")
    monkeypatch.setenv("COMP_WORDS", "hmedit rep")
    monkeypatch.setenv("COMP_CWORD", "1")
    assert run() == 0
    assert capsys.readouterr().out.split() == ["report"]
    monkeypatch.setenv("COMP_WORDS", "hmedit check --ju")
    monkeypatch.setenv("COMP_CWORD", "2")
    assert run() == 0
    assert capsys.readouterr().out.split() == ["--junit"]
