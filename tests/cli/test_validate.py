"""`hmedit validate` and the entry point: exit codes, one line per problem, tracebacks only with --debug."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hmedit.cli.app import main

GOOD = "root:\n  prompt: a cat\n  children:\n    - {id: hat, mask: {rect: [0.3, 0, 0.4, 0.3]}}\n"
BAD = "root:\n  promt: a cat\n  children:\n    - {id: hat, mask: {rect: [0.3, 0, -0.4, 0.3]}}\n"


def run(*args: str) -> int:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    return info.value.code


@pytest.fixture(autouse=True)
def no_mask_checks(monkeypatch):
    """These tests are about the CLI: keep the mask rasteriser (another module) out of them."""
    from hmedit.errors import Diagnostics

    monkeypatch.setattr("hmedit.masks.checks.check_masks", lambda scene: Diagnostics())


def test_valid_scene_exits_0(write_scene, capsys):
    path = write_scene(GOOD, "good.yaml")
    assert run("validate", str(path)) == 0
    out = capsys.readouterr().out
    assert out.strip() == f"ok: {path} (2 nodes)"


def test_broken_scene_exits_2_with_one_line_per_problem(write_scene, capsys):
    path = write_scene(BAD, "bad.yaml")
    assert run("validate", str(path)) == 2
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert lines == [
        f"error: {path}:2:3: root.promt: unknown key 'promt' (did you mean 'prompt'?)",
        f"error: {path}:4:24: root.children[0].mask.rect: width must be > 0 (got -0.4) "
        "(a box is [x, y, width, height])",
    ]
    assert "Traceback" not in captured.out + captured.err


def test_folder_mixes_good_and_bad(write_scene, capsys, tmp_path):
    write_scene(GOOD, "scenes/a.yaml")
    write_scene(BAD, "scenes/sub/b.yml")
    assert run("validate", str(tmp_path / "scenes")) == 2
    out = capsys.readouterr().out
    assert "ok: " in out and "a.yaml" in out and "b.yml:2:3" in out
    assert out.strip().endswith("2 scenes: 1 ok, 0 with warnings, 1 with errors")


def test_warnings_do_not_fail_unless_strict(write_scene, capsys):
    path = write_scene("depth_gamma: 0.5\n" + GOOD)
    assert run("validate", str(path)) == 0
    assert f"warning: {path}:1:1: depth_gamma: " in capsys.readouterr().out
    assert run("validate", "--strict", "-q", str(path)) == 2
    assert "ok:" not in capsys.readouterr().out


def test_missing_path_is_one_line_exit_2(tmp_path, capsys):
    assert run("validate", str(tmp_path / "nope.yaml")) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == (
        f"error: {tmp_path / 'nope.yaml'}: no such file or folder "
        "(give scene files (*.yaml) or folders that contain them)"
    )
    assert "Traceback" not in captured.err


def test_debug_shows_the_traceback(tmp_path, capsys):
    assert run("--debug", "validate", str(tmp_path / "nope.yaml")) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err
    assert err.strip().splitlines()[-1].startswith("error: ")


def test_usage_error_and_version(capsys):
    assert run("validate") == 2  # missing argument
    assert "Traceback" not in capsys.readouterr().err
    assert run("--version") == 0
    assert capsys.readouterr().out.startswith("hmedit ")


def test_ctrl_c_exits_130_with_one_line(monkeypatch, write_scene, capsys):
    def interrupted(path):
        raise KeyboardInterrupt

    monkeypatch.setattr("hmedit.masks.checks.validate", interrupted)
    assert run("validate", str(write_scene(GOOD))) == 130
    assert capsys.readouterr().err.strip() == "error: interrupted"


def test_a_bug_is_one_line_without_debug(monkeypatch, write_scene, capsys):
    def broken(path):
        raise ZeroDivisionError("oops")

    monkeypatch.setattr("hmedit.masks.checks.validate", broken)
    assert run("validate", str(write_scene(GOOD))) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error: ZeroDivisionError: oops" in err and "--debug" in err


@pytest.mark.slow
def test_console_script_end_to_end(write_scene):
    """The real process: exit codes and no traceback (also checks `python -m`-free startup)."""
    bad = write_scene(BAD, "bad.yaml")
    code = "from hmedit.cli.app import main; main()"
    result = subprocess.run(
        [sys.executable, "-c", code, "validate", str(bad)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert "unknown key 'promt'" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    result = subprocess.run(
        [sys.executable, "-c", code, "--debug", "validate", str(bad.parent / "nope.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "Traceback" in result.stderr


def test_help_lists_commands_with_examples(capsys):
    assert run("--help") == 0
    out = capsys.readouterr().out
    assert "validate" in out and "schema" in out
    assert run("validate", "--help") == 0
    assert "hmedit validate scenes/" in capsys.readouterr().out
