"""Hostile and careless command lines: every mistake is exit 2 with one line on stderr, no traceback, at once.

Most cases run ``main()`` in this process (the command fails before any model or scene is loaded); a few run
the CLI in a child process with a memory limit, as a user would.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hmedit.cli.app import main

SCENE = "size: [64, 64]\nsteps: 2\nroot: {prompt: a red circle}\n"


def run(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return info.value.code, out, err


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def child(*args: str, mem_gib: float = 1.5, timeout: float = 60) -> subprocess.CompletedProcess:
    limit = int(mem_gib * (1 << 30))

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return subprocess.run(
        [sys.executable, "-m", "hmedit.cli.app", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=cap,
    )


@pytest.fixture
def scene(write_scene) -> Path:
    return write_scene(SCENE, "tiny.yaml")


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e999", "Infinity"])
def test_non_finite_guidance_is_refused(capsys, scene, tmp_path, value):
    code, _, err = run(capsys, "render", scene, "-o", tmp_path / "out", "--guidance", value)
    assert code == 2
    line = one_line(err)
    assert line.startswith("error: hmedit render:") and "--guidance" in line
    assert not (tmp_path / "out").exists()  # refused before anything is written


@pytest.mark.parametrize(
    ("size", "says"),
    [
        ("8x8", "64..8192"),
        ("8x64", "64..8192"),
        ("64x8", "height must be 64..8192"),
        ("0x0", "64..8192"),
        ("100x64", "multiple of 8"),
        ("16384x64", "64..8192"),
        ("99999999999x64", "64..8192"),
        ("9" * 5000 + "x64", "expected WIDTHxHEIGHT"),
        ("big", "expected WIDTHxHEIGHT"),
        ("-64x64", "expected WIDTHxHEIGHT"),
    ],
)
def test_render_size_outside_the_scene_rules_is_refused(capsys, scene, tmp_path, size, says):
    start = time.perf_counter()
    code, _, err = run(capsys, "render", scene, "-o", tmp_path / "out", "--size", size)
    assert code == 2 and time.perf_counter() - start < 5
    line = one_line(err)
    assert line.startswith("error: --size:") and says in line and "(" in line  # a hint follows
    if says != "expected WIDTHxHEIGHT":
        assert "nearest valid size" in line


def test_masks_size_may_be_small(capsys, scene, tmp_path):
    """A map of the masks alone runs no model: 8x64 is legal there."""
    code, out, err = run(capsys, "masks", scene, "-o", tmp_path / "out", "--size", "8x64")
    assert code == 0, out + err
    assert (tmp_path / "out" / "tiny" / "influence.safetensors").is_file()
    code, _, err = run(capsys, "masks", scene, "-o", tmp_path / "out", "--size", "0x64")
    assert code == 2 and "width must be 1..8192" in one_line(err)


@pytest.mark.parametrize("command", ["render", "masks"])
def test_out_naming_an_existing_file_is_refused(capsys, scene, tmp_path, command):
    blocker = tmp_path / "out.txt"
    blocker.write_text("keep me")
    code, _, err = run(capsys, command, scene, "-o", blocker)
    assert code == 2
    line = one_line(err)
    assert "is a file, not a folder" in line and "--out" in line
    assert blocker.read_text() == "keep me"


def test_out_below_a_file_is_refused(capsys, scene, tmp_path):
    (tmp_path / "file").write_text("x")
    code, _, err = run(capsys, "masks", scene, "-o", tmp_path / "file" / "out")
    assert code == 2 and "cannot create the output folder" in one_line(err)


@pytest.mark.parametrize(
    "args",
    [
        ["render", "--bogus"],
        ["render"],
        ["masks", "--size"],
        ["render", "x.yaml", "--steps", "0"],
        ["render", "x.yaml", "--steps", "many"],
        ["render", "x.yaml", "--scheduler", "nope"],
    ],
)
def test_usage_errors_are_one_line(capsys, args):
    code, _, err = run(capsys, *args)
    assert code == 2
    line = one_line(err)
    assert line.startswith("error: ") and "--help" in line


def test_in_a_child_process_with_a_memory_limit(scene, tmp_path):
    """As a user runs it: exit 2, one line on stderr, no traceback, within 1.5 GiB and seconds."""
    for args in (
        ["render", scene, "--guidance", "inf", "-o", tmp_path / "out"],
        ["render", scene, "--size", "8x8", "-o", tmp_path / "out"],
    ):
        start = time.perf_counter()
        result = child(*args)
        assert result.returncode == 2, result.stderr
        one_line(result.stderr)
        assert time.perf_counter() - start < 30
