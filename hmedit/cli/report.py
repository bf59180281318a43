"""What the commands show on the console (presentation only): the one progress builder, the batch's progress
bars and summary table, and a scene's problems as one line each.

The batch runner (:mod:`hmedit.batch`) knows nothing of the console: it calls the hooks of a
:class:`~hmedit.batch.Reporter` with structured data (the scene file, the error, its severity), and
:class:`ConsoleReporter` turns those into bars and lines here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from hmedit.batch import FAILED, INTERRUPTED, NOT_RUN, OK, SKIPPED, Reporter, Result
from hmedit.errors import HmeditError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress
    from rich.text import Text

__all__ = [
    "STATUS_STYLE",
    "ConsoleReporter",
    "SceneLoop",
    "error_line",
    "internal_line",
    "print_summary",
    "progress_bar",
    "wide",
]


def progress_bar(console: Console, *extra, transient: bool = True) -> Progress:
    """The one progress display of hmedit's commands: description, bar, n/m, ``extra`` columns (e.g. a loss),
    elapsed time; transient unless told, and silent when not on a terminal."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *extra,
        TimeElapsedColumn(),
        console=console,
        transient=transient,
        disable=not console.is_terminal,
    )


def error_line(err: HmeditError, file: Path, severity: str = "error") -> Text:
    """One line for a scene's problem; names the scene file when the error itself names no file."""
    from rich.text import Text

    from hmedit.cli.options import problem_line

    if err.location.file is not None:
        line = problem_line(err, severity)
    else:
        style = "bold red" if severity == "error" else "bold yellow"
        line = Text.assemble((f"{severity}: ", style), f"{file}: ", err.format())
    others = len(getattr(err, "others", ()))
    if others:
        line.append(f" (+{others} more: run hmedit validate {file})")
    return line


def internal_line(exc: BaseException, file: Path) -> str:
    """One line for a bug met while handling a scene (the traceback is one flag away)."""
    message = str(exc).splitlines()[0] if str(exc) else ""
    return (
        f"error: {file}: internal error: {type(exc).__name__}: {message} "
        "(run again with --debug for the traceback, and please report it)"
    )


class SceneLoop:
    """The failures of a command that works scene by scene outside a batch (``learn``, ``invert``): in
    ``with loop.scene(file):`` a user mistake prints its one line, a bug its internal-error line (and the
    traceback with ``--debug``), and Ctrl-C stops the loop (``loop.interrupted``: break); ``status(file,
    "failed" | "interrupted")`` records the scene's row. ``exit()`` ends the command with the batch's codes:
    130 interrupted, 2 if a scene failed for a user mistake, 1 if only bugs did."""

    def __init__(self, progress: Progress, status: Callable[[Path, str], None], *, debug: bool) -> None:
        self.progress, self.status, self.debug = progress, status, debug
        self.user_errors = self.internal = 0
        self.interrupted = False

    @contextmanager
    def scene(self, file: Path) -> Iterator[None]:
        console = self.progress.console
        try:
            yield
        except KeyboardInterrupt:
            self.status(file, "interrupted")
            self.interrupted = True
        except HmeditError as err:
            console.print(error_line(err, file))
            self.status(file, "failed")
            self.user_errors += 1
        except Exception as exc:  # a bug in one scene must not stop the others
            if self.debug:
                import traceback

                console.print(traceback.format_exc().rstrip(), markup=False)
            console.print(internal_line(exc, file), markup=False, highlight=False)
            self.status(file, "failed")
            self.internal += 1

    def exit(self) -> None:
        import typer

        if self.interrupted:
            raise typer.Exit(130)
        if self.user_errors or self.internal:
            raise typer.Exit(2 if self.user_errors else 1)


class ConsoleReporter(Reporter):
    """A bar over the scenes and one over the steps of the current render, on a terminal only; problems
    print above the bars (or plainly, when not on a terminal). Use as a context manager."""

    def __init__(self, console: Console, verb: str = "render") -> None:
        self.console = console
        self.verb = verb
        self.progress = progress_bar(console)
        self._scenes = self._steps = None

    def __enter__(self) -> ConsoleReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def batch_started(self, total: int) -> None:
        self._scenes = self.progress.add_task(self.verb, total=total)
        self._steps = self.progress.add_task("", total=None, visible=False)

    def scene_started(self, file: Path) -> None:
        self.progress.update(self._scenes, description=f"{self.verb} {file.name}")
        self.progress.update(self._steps, visible=False)

    def loading(self, file: Path, model: str) -> None:
        self.progress.update(self._steps, description=f"  loading {model}", total=None, visible=True)

    def seed_started(self, file: Path, index: int, seed: int, count: int) -> None:
        label = f"  seed {seed}" + (f" ({index + 1}/{count})" if count > 1 else "")
        self.progress.reset(self._steps, description=label, total=None, visible=True)

    def step(self, i: int, n: int) -> None:
        self.progress.update(self._steps, completed=i + 1, total=n)

    def learning(self, file: Path, node_id: str, i: int, n: int, loss: float | None) -> None:
        label = f"  learn {node_id}" + (f" (loss {loss:.4f})" if loss is not None else "")
        if i == 0:
            self.progress.reset(self._steps, description=label, total=n, visible=True)
        else:
            self.progress.update(self._steps, description=label, completed=i, total=n)

    def scene_finished(self, result: Result) -> None:
        self.progress.update(self._steps, visible=False)
        self.progress.advance(self._scenes)

    def problem(self, file: Path, error: HmeditError, severity: str = "error") -> None:
        self._print(error_line(error, file, severity))

    def internal(self, file: Path, exc: BaseException, traceback: str | None = None) -> None:
        if traceback is not None:
            self._print(traceback)
        self._print(internal_line(exc, file))

    def _print(self, line: Text | str) -> None:
        self.progress.console.print(line, markup=False, highlight=False)


STATUS_STYLE = {
    OK: "[green]ok[/]",
    SKIPPED: "[dim]skipped (up to date)[/]",
    FAILED: "[bold red]failed[/]",
    INTERRUPTED: "[bold yellow]interrupted[/]",
    NOT_RUN: "[dim]not run[/]",
}


def wide(console: Console) -> Console:
    """``console`` on a terminal (long cells fold to fit); elsewhere (a log, a pipe) a console as wide as
    the content, so that each table row stays one line."""
    if console.is_terminal:
        return console
    from rich.console import Console

    return Console(file=console.file, width=10_000, highlight=False, soft_wrap=True)


def print_summary(console: Console, results: Sequence[Result]) -> None:
    """The table (scene, seeds, status, time, output) and a count line."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(show_edge=False, pad_edge=False)
    for name in ("scene", "seeds", "status", "time", "output"):
        table.add_column(name, justify="right" if name == "time" else "left", overflow="fold")
    for r in results:
        seeds = r.record.get("seeds") if r.record else None
        table.add_row(
            escape(str(r.file)),
            ", ".join(map(str, seeds)) if seeds else "",
            STATUS_STYLE.get(r.status, r.status),
            f"{r.seconds:.1f}s" if r.status not in (NOT_RUN,) else "",
            escape(str(r.target)) if r.target is not None and r.status in (OK, SKIPPED) else "",
        )
    wide(console).print(table)
    counts = {s: sum(r.status == s for r in results) for s in STATUS_STYLE}
    parts = [f"{counts[OK]} rendered", f"{counts[SKIPPED]} up to date", f"{counts[FAILED]} failed"]
    parts += [f"{counts[s]} {s}" for s in (INTERRUPTED, NOT_RUN) if counts[s]]
    total = len(results)
    console.print(f"{total} scene{'s' * (total != 1)}: " + ", ".join(parts))
