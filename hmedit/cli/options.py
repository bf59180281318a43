"""What commands share: Annotated argument/option aliases and the consoles that print one problem per line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from hmedit.errors import HmeditError

ScenePaths = Annotated[
    list[Path],
    typer.Argument(
        help="Scene files ([bold]*.yaml[/]) or folders, searched recursively for them.",
        show_default=False,
    ),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print only problems, not the OK lines.")]
Strict = Annotated[bool, typer.Option("--strict", help="Treat warnings as errors (exit code 2).")]
Output = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="Write to this file instead of standard output.", show_default=False),
]


def stdout() -> Console:
    """A console for a command's report; soft_wrap keeps one problem on one line, whatever the width."""
    return Console(highlight=False, soft_wrap=True)


def stderr() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def problem_line(err: HmeditError, severity: str = "error") -> Text:
    """``error: file:line:col: field: problem (hint)`` as one rich Text (no markup: brackets stay literal)."""
    style = {"error": "bold red", "warning": "bold yellow"}.get(severity, "bold")
    return Text.assemble((f"{severity}: ", style), err.format())
