"""hmedit.cli.report: the console's lines for what a batch reports (the batch itself prints nothing)."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from hmedit.batch import FAILED, OK, Result
from hmedit.cli.report import ConsoleReporter, print_summary
from hmedit.errors import HmeditError


def console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=200, force_terminal=False), buf


def test_problem_lines_name_the_scene_when_the_error_names_no_file():
    con, buf = console()
    scene = Path("scenes/a.yaml")
    with ConsoleReporter(con) as reporter:
        reporter.problem(scene, HmeditError("an old key [x]", hint="rename it"), "warning")
        reporter.problem(scene, HmeditError("bad width", file="other.yaml", line=3, column=5, field="size"))
        reporter.internal(scene, RuntimeError("stop here\nsecond line"))
        reporter.internal(scene, KeyError(), traceback="Traceback (most recent call last): ...")
    assert buf.getvalue().splitlines() == [
        "warning: scenes/a.yaml: an old key [x] (rename it)",
        "error: other.yaml:3:5: size: bad width",
        "error: scenes/a.yaml: internal error: RuntimeError: stop here "
        "(run again with --debug for the traceback, and please report it)",
        "Traceback (most recent call last): ...",
        "error: scenes/a.yaml: internal error: KeyError:  "
        "(run again with --debug for the traceback, and please report it)",
    ]


def test_more_errors_point_to_validate():
    con, buf = console()
    err = HmeditError("first")
    err.others = [HmeditError("second"), HmeditError("third")]
    with ConsoleReporter(con) as reporter:
        reporter.problem(Path("s.yaml"), err)
    assert buf.getvalue().strip() == "error: s.yaml: first (+2 more: run hmedit validate s.yaml)"


def test_summary_counts():
    con, buf = console()
    results = [Result(Path("a.yaml"), status=OK, target=Path("out/a")), Result(Path("b.yaml"), status=FAILED)]
    print_summary(con, results)
    text = buf.getvalue()
    assert "out/a" in text and "failed" in text
    assert text.splitlines()[-1] == "2 scenes: 1 rendered, 0 up to date, 1 failed"
