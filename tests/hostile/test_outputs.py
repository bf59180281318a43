"""Hostile and careless output folders: nothing deleted or written outside the output folder, no symlink
followed, one process per folder, outputs verified before they count as up to date, stale temporary files
of dead processes removed, a full or read-only disk said in one line, long prompts drawn in bounded time.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hmedit.cli.app import main
from hmedit.errors import HmeditError
from hmedit.outputs import folder as F
from hmedit.outputs import write as W
from hmedit.outputs.influence import _fit, _font, _wrap

TINY = """\
size: [64, 64]
steps: 2
root:
  prompt: a yellow background
  children:
    - id: disc
      prompt: a red circle
      mask: {ellipse: [0.2, 0.2, 0.6, 0.6]}
"""


def run(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return info.value.code, out, err


def error_lines(text: str) -> list[str]:
    assert "Traceback" not in text
    return [line for line in text.splitlines() if line.startswith("error:")]


def child(*args, mem_gib: float = 2.5, **kw) -> subprocess.Popen:
    limit = int(mem_gib * (1 << 30))

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        os.umask(0o022)

    return subprocess.Popen(
        [sys.executable, "-m", "hmedit.cli.app", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=cap,
        **kw,
    )


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def scene(write_scene) -> Path:
    return write_scene(TINY, "tiny.yaml")


@pytest.fixture
def outside(tmp_path) -> Path:
    """A folder outside --out with files that hmedit must never touch."""
    path = tmp_path / "outside"
    path.mkdir()
    for name in ("victim.txt", "photo.png", "disc.png", "root.png"):
        (path / name).write_bytes(b"precious")
    return path


def untouched(outside: Path) -> bool:
    return sorted(p.name for p in outside.iterdir()) == [
        "disc.png",
        "photo.png",
        "root.png",
        "victim.txt",
    ] and all(p.read_bytes() == b"precious" for p in outside.iterdir())


# ------------------------------------------------------------------------------------------------
# 2. long prompts: wrapping and truncation are bounded


@pytest.mark.parametrize("words", [500, 10_000, 1_000_000])
def test_wrap_and_fit_are_bounded_by_the_space_not_the_text(words):
    font = _font(11)
    text = " ".join(f"word{i % 97}" for i in range(words))
    start = time.perf_counter()
    lines = _wrap(text, font, 170, 2)
    cut = _fit(text, font, 170)
    assert time.perf_counter() - start < 0.5
    assert len(lines) == 2 and lines[-1].endswith("...") and cut.endswith("...")
    assert all(font.getlength(line) <= 170 for line in [*lines, cut])
    unbroken = "x" * words  # one endless word, and zero-width characters, are cut as well
    assert _wrap(unbroken, font, 170, 2)[-1].endswith("...")
    assert _fit("\u200b" * words, font, 170).endswith("...")


def test_a_10000_word_prompt_draws_its_contact_sheet_in_seconds(write_scene, tmp_path, capsys):
    prompt = " ".join(f"word{i}" for i in range(10_000))
    path = write_scene(f"size: [64, 64]\nroot:\n  prompt: {prompt}\n", "long.yaml")
    start = time.perf_counter()
    code, out, err = run(capsys, "masks", path, "-o", tmp_path / "out")
    assert code == 0, out + err
    assert time.perf_counter() - start < 20
    assert (tmp_path / "out" / "long" / "influence.png").is_file()


# ------------------------------------------------------------------------------------------------
# 5, 12, 13. the output folder: a file, read-only, full disk; one mode for every output


def test_disk_full_while_writing_the_influence_tensors_is_exit_2(scene, tmp_path, capsys, monkeypatch):
    real = W._fsync

    def full(path, *, directory=False):
        if str(path).endswith(".tmp") and "influence.safetensors" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, directory=directory)

    monkeypatch.setattr(W, "_fsync", full)
    code, out, err = run(capsys, "masks", scene, "-o", tmp_path / "out")
    assert code == 2
    (line,) = error_lines(out + err)
    assert "No space left on device" in line and "disk is full" in line and "influence.safetensors" in line
    assert not list((tmp_path / "out").rglob("*.tmp"))
    assert not (tmp_path / "out" / "tiny" / "influence.safetensors").exists()


def test_full_or_read_only_output_folder_is_found_before_the_first_scene(
    scene, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(F.shutil, "disk_usage", lambda path: _Usage(0))
    code, out, err = run(capsys, "masks", scene, "-o", tmp_path / "out")
    assert code == 2
    (line,) = error_lines(err)
    assert "is full" in line and "--out" in line
    assert not (tmp_path / "out" / "tiny").exists()  # no scene was started

    monkeypatch.undo()
    real_open = os.open

    def read_only(path, flags, *a, **kw):
        if "hmedit-probe" in str(path):
            raise OSError(errno.EROFS, "Read-only file system")
        return real_open(path, flags, *a, **kw)

    monkeypatch.setattr(F.os, "open", read_only)
    with pytest.raises(HmeditError, match="cannot write into the output folder") as info:
        F.check_writable(tmp_path / "out")
    assert "not writable" in info.value.hint


class _Usage:
    def __init__(self, free: int) -> None:
        self.free = free


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder_in_a_child(scene, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o500)
    try:
        proc = child("masks", scene, "-o", out)
        _, err = proc.communicate(timeout=60)
    finally:
        out.chmod(0o700)
    assert proc.returncode == 2 and len(error_lines(err)) == 1


@pytest.mark.slow
def test_every_output_has_one_mode(scene, tmp_path):
    proc = child("masks", scene, "-o", tmp_path / "out")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"influence.safetensors", "influence.png", "root.png", "disc.png"}
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: "0o644" for p in files}


def test_atomic_write_mode_ignores_the_library_choice(tmp_path):
    with W.atomic_path(tmp_path / "x.bin") as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)  # as safetensors' writer did
        os.write(fd, b"x")
        os.close(fd)
    assert (tmp_path / "x.bin").stat().st_mode & 0o777 == W.file_mode()


# ------------------------------------------------------------------------------------------------
# 7. nothing deleted or written outside the output folder, never through a symlink


def test_symlinked_influence_folder_is_refused_and_its_files_kept(scene, tmp_path, outside, capsys):
    out = tmp_path / "out"
    (out / "tiny").mkdir(parents=True)
    (out / "tiny" / "influence").symlink_to(outside, target_is_directory=True)
    code, stdout, err = run(capsys, "masks", scene, "-o", out)
    assert code == 2
    (line,) = error_lines(stdout + err)
    assert "symbolic link" in line
    assert untouched(outside)


def test_symlinked_scene_folder_is_refused(scene, tmp_path, outside, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "tiny").symlink_to(outside, target_is_directory=True)
    code, stdout, err = run(capsys, "masks", scene, "-o", out)
    assert code == 2 and "symbolic link" in error_lines(stdout + err)[0]
    assert untouched(outside)


def test_safe_unlink_deletes_only_regular_files_inside(tmp_path, outside):
    root = tmp_path / "out" / "scene"
    (root / "influence").mkdir(parents=True)
    (root / "image.png").write_bytes(b"x")
    (root / "influence" / "a.png").write_bytes(b"x")
    (root / "link.png").symlink_to(outside / "victim.txt")
    (root / "dirlink").symlink_to(outside, target_is_directory=True)
    (root / "sub").mkdir()
    for name in (
        "link.png",  # a symlink: the link is not ours to judge, its target never
        "dirlink/photo.png",  # through a symlinked folder
        "../../outside/victim.txt",
        str(outside / "victim.txt"),  # absolute
        "sub",  # a folder
        "",
        ".",
        "missing.png",
    ):
        assert F.safe_unlink(root, name) is False, name
    assert F.safe_unlink(root, "image.png") and F.safe_unlink(root, "influence/a.png")
    assert not (root / "image.png").exists() and (root / "link.png").is_symlink()
    assert untouched(outside)


def test_stale_outputs_of_an_edited_record_stay_inside(tmp_path, outside):
    from hmedit import batch

    target = tmp_path / "out" / "scene"
    target.mkdir(parents=True)
    (target / "image-1.png").write_bytes(b"x")
    (target / "evil.png").symlink_to(outside / "victim.txt")
    (target / "influence").symlink_to(outside, target_is_directory=True)
    old = {
        "outputs": [
            "image-1.png",
            "evil.png",
            "influence/photo.png",
            "../../outside/victim.txt",
            "/etc/hosts",
        ]
    }
    batch._remove_stale(target, old, ["image.png"])
    assert not (target / "image-1.png").exists()
    assert untouched(outside) and Path("/etc/hosts").exists()


def test_a_planted_symlink_at_the_temporary_name_is_not_followed(tmp_path, outside):
    target = tmp_path / "image.png"
    W.temp_path_for(target).symlink_to(outside / "victim.txt")
    W.atomic_write(target, b"new")
    assert target.read_bytes() == b"new" and untouched(outside)


def test_real_dir_refuses_links_and_files(tmp_path, outside):
    root = tmp_path / "scene"
    assert F.real_dir(root, "influence") == root / "influence" and (root / "influence").is_dir()
    (root / "other").symlink_to(outside, target_is_directory=True)
    (root / "file").write_text("x")
    with pytest.raises(HmeditError, match="symbolic link"):
        F.real_dir(root, "other")
    with pytest.raises(HmeditError, match="is a file"):
        F.real_dir(root, "file/inner")
    with pytest.raises(ValueError):
        F.real_dir(root, "../escape")


# ------------------------------------------------------------------------------------------------
# 9. one process per folder; outputs verified against the record


def test_a_locked_folder_is_refused_at_once_with_the_owner(scene, tmp_path, capsys):
    target = tmp_path / "out" / "tiny"
    with F.lock_folder(target) as held:
        assert held.held and (target / F.LOCK_NAME).read_text().strip() == str(os.getpid())
        with pytest.raises(HmeditError, match=rf"another hmedit process \(pid {os.getpid()}\)"):
            F.lock_folder(target)
        start = time.perf_counter()
        code, out, err = run(capsys, "masks", scene, "-o", tmp_path / "out")
        assert code == 2 and time.perf_counter() - start < 10
        (line,) = error_lines(out + err)
        assert "being written by another hmedit process" in line and "--out" in line
    assert not (target / F.LOCK_NAME).exists()
    F.lock_folder(target).release()  # free again


def test_a_killed_holder_leaves_the_folder_free(tmp_path):
    target = tmp_path / "scene"
    code = (
        "import sys, time; from hmedit.outputs.folder import lock_folder;"
        f"lock_folder({str(target)!r}); print('held', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(HmeditError, match="another hmedit process"):
            F.lock_folder(target)
        proc.kill()
        proc.wait(timeout=10)
        F.lock_folder(target, wait=5).release()  # the kernel dropped the lock with the process
    finally:
        proc.kill()


def test_verify_outputs_rejects_truncated_mixed_linked_and_unrecorded(tmp_path, outside):
    root = tmp_path / "scene"
    root.mkdir()
    (root / "image.png").write_bytes(b"a" * 100)
    (root / "influence.png").write_bytes(b"b" * 50)
    record = {"outputs": ["image.png", "influence.png"]}
    record["files"] = F.describe_outputs(root, record["outputs"])
    assert F.verify_outputs(root, record)
    (root / "image.png").write_bytes(b"a" * 99)  # truncated
    assert not F.verify_outputs(root, record)
    (root / "image.png").write_bytes(b"c" * 100)  # same size, another render's
    assert not F.verify_outputs(root, record)
    (root / "image.png").unlink()
    (outside / "big.png").write_bytes(b"a" * 100)
    (root / "image.png").symlink_to(outside / "big.png")  # right bytes, but through a link
    assert not F.verify_outputs(root, record)
    assert not F.verify_outputs(root, {"outputs": record["outputs"]})  # no sizes and hashes
    assert not F.verify_outputs(root, {**record, "outputs": ["../outside/big.png"]})
    assert not F.verify_outputs(root, {**record, "files": {"image.png": {"size": "100", "sha256": 5}}})


def test_a_record_that_links_to_dev_zero_is_not_read(tmp_path):
    root = tmp_path / "scene"
    root.mkdir()
    (root / "render.json").symlink_to("/dev/zero")
    start = time.perf_counter()
    assert F.read_json(root, "render.json") is None
    (root / "render.json").unlink()
    (root / "render.json").write_text("[" * 100_000)
    assert F.read_json(root, "render.json") is None
    assert time.perf_counter() - start < 2


@pytest.mark.slow
def test_render_records_sizes_and_hashes_and_the_check_verifies_them(scene, tmp_path):
    """One real render (toy, 64x64, 2 steps); the up-to-date check then runs in this process."""
    from hmedit import batch

    out = tmp_path / "out"
    proc = child("render", scene, "-o", out, "--seed", "1")
    stdout, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, stdout + err
    record = json.loads((out / "tiny" / "render.json").read_text())
    assert set(record["files"]) == set(record["outputs"])
    assert all(len(v["sha256"]) == 64 and v["size"] > 0 for v in record["files"].values())
    job = batch.prepare(scene, batch.Options(out=out, seed=1))
    assert batch.up_to_date(job) == record
    image = out / "tiny" / "image.png"
    whole = image.read_bytes()
    image.write_bytes(whole[:100])  # truncated behind hmedit's back: rendered again
    assert batch.up_to_date(job) is None
    image.write_bytes(whole)
    assert batch.up_to_date(job) == record
    influence = out / "tiny" / "influence.safetensors"
    influence.write_bytes(influence.read_bytes()[::-1])  # same size, other bytes (another render's)
    assert batch.up_to_date(job) is None


# ------------------------------------------------------------------------------------------------
# 10. SIGTERM and the temporary files of dead processes


def test_stale_temporary_files_of_dead_processes_go_when_the_folder_is_locked(tmp_path, outside):
    root = tmp_path / "scene"
    (root / "influence").mkdir(parents=True)
    dead, alive = dead_pid(), os.getpid()
    stale = [root / f".image.png.{dead}.tmp", root / "influence" / f".disc.png.{dead}.tmp"]
    kept = [root / f".image.png.{alive}.tmp", root / ".notes.txt", root / f"image.png.{dead}.tmp"]
    for path in stale + kept:
        path.write_bytes(b"x")
    (outside / f".photo.png.{dead}.tmp").write_bytes(b"x")
    (root / "linked").symlink_to(outside, target_is_directory=True)
    with F.lock_folder(root):
        assert not any(p.exists() for p in stale)
        assert all(p.exists() for p in kept)
        assert (outside / f".photo.png.{dead}.tmp").exists()  # never through a symlink
    assert F.remove_stale_temp(root, pids=[alive]) == [root / f".image.png.{alive}.tmp"]


@pytest.mark.slow
def test_sigterm_is_handled_like_ctrl_c(scene, tmp_path):
    out = tmp_path / "out"
    heavy = scene.read_text().replace("steps: 2", "steps: 400")
    scene.write_text(heavy)
    dead = dead_pid()
    (out / "tiny").mkdir(parents=True)
    (out / "tiny" / f".image.png.{dead}.tmp").write_bytes(b"left by a killed run")
    proc = child("render", scene, "-o", out)
    deadline = time.monotonic() + 120
    while not (out / "tiny" / F.LOCK_NAME).exists():  # the batch holds the folder: it is rendering
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    stdout, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, stdout + err
    assert error_lines(err)[-1] == "error: terminated (SIGTERM)" and "Traceback" not in err
    assert "interrupted" in stdout  # the summary
    assert not list(out.rglob("*.tmp")) and not (out / "tiny" / F.LOCK_NAME).exists()
