"""Running hmedit on hostile input: in-process for speed, in a child process (address-space limit, peak RSS
measured) for the cases that used to exhaust memory."""

from __future__ import annotations

import contextlib
import io
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from hmedit.cli.app import main

CHILD_ADDRESS_SPACE = 3 * 2**30
"""A safety net for the child: a regression fails the test instead of the machine (torch maps ~1 GiB)."""
MAX_RSS = 2**30
"""The acceptance bound: no case may need more than 1 GiB."""


@dataclass
class Result:
    code: int
    out: str
    err: str
    seconds: float
    max_rss: int = 0  # bytes, child runs only

    @property
    def lines(self) -> list[str]:
        return [line for line in (self.out + self.err).splitlines() if line.strip()]

    @property
    def errors(self) -> list[str]:
        return [line for line in self.lines if line.startswith("error: ")]


def run_cli(*args: str | os.PathLike) -> Result:
    """``hmedit ARGS`` in this process: exit code, stdout, stderr, seconds."""
    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return Result(code, out.getvalue(), err.getvalue(), time.perf_counter() - start)


def run_child(*args: str | os.PathLike, timeout: float = 120, env: dict | None = None) -> Result:
    """``hmedit ARGS`` in a child process limited to ``CHILD_ADDRESS_SPACE``; its peak RSS is measured."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (CHILD_ADDRESS_SPACE, CHILD_ADDRESS_SPACE))

    # The child reports its own high-water RSS (VmHWM of its exec'd image) at exit: the kernel's rusage of a
    # forked child also counts the pages it shared with this (large, long-lived) pytest process before exec.
    code = (
        "import atexit, sys\n"
        "def _hwm(path=sys.argv[1]):\n"
        "    with open('/proc/self/status') as f, open(path, 'w') as o:\n"
        "        o.write(next(line for line in f if line.startswith('VmHWM:')))\n"
        "atexit.register(_hwm)\n"
        "from hmedit.cli.app import main\n"
        "main(sys.argv[2:])\n"
    )
    start = time.perf_counter()
    with (
        tempfile.TemporaryFile("w+") as out,
        tempfile.TemporaryFile("w+") as err,
        tempfile.TemporaryDirectory() as hwm_dir,
    ):
        hwm = Path(hwm_dir) / "hwm"
        proc = subprocess.Popen(
            [sys.executable, "-c", code, str(hwm), *map(str, args)],
            stdout=out,
            stderr=err,
            text=True,
            preexec_fn=limit,
            env={**os.environ, **(env or {})},
        )
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS, not all children's
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        assert seconds < timeout, f"killed after {timeout} s"
        out.seek(0)
        err.seek(0)
        peak = usage.ru_maxrss * 1024  # an upper bound where the child could not report (killed)
        if hwm.exists() and hwm.read_text().split()[1:2]:
            peak = int(hwm.read_text().split()[1]) * 1024  # "VmHWM:  123456 kB"
        return Result(proc.returncode, out.read(), err.read(), seconds, peak)


def assert_clean(result: Result, *, code: int = 2, errors: int | None = 1) -> None:
    """Exit ``code``, no traceback, no internal error, no raw warning, and ``errors`` one-line problems."""
    text = result.out + result.err
    assert result.code == code, text
    assert "Traceback" not in text and "internal error" not in text, text
    assert "Warning" not in text, text
    if errors is not None:
        assert len(result.errors) == errors, text


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
