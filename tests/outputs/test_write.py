"""Atomic writes: no temp file left, old content kept when a writer fails; PNG text; safetensors; JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from hmedit.errors import HmeditError
from hmedit.outputs.write import (
    atomic_path,
    atomic_write,
    save_json,
    save_png,
    save_safetensors,
    temp_path_for,
)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_atomic_write_creates_folders_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a" / "b" / "out.bin"
    atomic_write(target, b"hello")
    assert target.read_bytes() == b"hello"
    assert leftovers(target.parent) == []


def test_temp_name_is_hidden_sibling_with_pid(tmp_path):
    tmp = temp_path_for(tmp_path / "x.png")
    assert tmp.parent == tmp_path
    assert tmp.name == f".x.png.{os.getpid()}.tmp"


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_failing_writer_keeps_old_file_and_removes_temp(tmp_path, error):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(type(error)), atomic_path(target) as tmp:
        tmp.write_text("half of the new con")
        raise error
    assert target.read_text() == "old"
    assert leftovers(tmp_path) == []


def test_failing_writer_leaves_no_file_when_there_was_none(tmp_path):
    target = tmp_path / "new.txt"
    with pytest.raises(ValueError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise ValueError("stop")
    assert not target.exists()
    assert leftovers(tmp_path) == []


def test_writer_that_writes_nothing_fails_cleanly(tmp_path):
    target = tmp_path / "x.txt"
    with pytest.raises(RuntimeError, match="nothing was written"), atomic_path(target):
        pass
    assert not target.exists()


def test_unwritable_target_is_an_hmedit_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(HmeditError, match="cannot write"):
        atomic_write(blocker / "inside.txt", b"x")


def test_png_text_round_trips_and_pixels_match(tmp_path):
    rgb = np.arange(8 * 6 * 3, dtype=np.uint8).reshape(8, 6, 3)
    text = {"prompt": "a blue square", "note": "größe ✓", "seed": "7"}
    path = save_png(tmp_path / "img.png", rgb, text)
    with Image.open(path) as img:
        assert img.text == text
        assert img.mode == "RGB"
        assert np.array_equal(np.asarray(img), rgb)
    assert leftovers(tmp_path) == []


def test_png_accepts_rgba_and_pil_and_rejects_float(tmp_path):
    rgba = np.zeros((4, 5, 4), np.uint8)
    with Image.open(save_png(tmp_path / "a.png", rgba)) as img:
        assert img.mode == "RGBA" and img.size == (5, 4)
    with Image.open(save_png(tmp_path / "b.png", Image.new("L", (3, 2)))) as img:
        assert img.size == (3, 2)
    with pytest.raises(ValueError, match="uint8"):
        save_png(tmp_path / "c.png", np.zeros((4, 4, 3), np.float32))
    assert not (tmp_path / "c.png").exists()


def test_safetensors_names_shapes_metadata(tmp_path):
    stack = torch.rand(3, 5, 7)
    tensors = {f"effective/n{i}": stack[i] for i in range(3)}  # views of one storage
    path = save_safetensors(tmp_path / "t.safetensors", tensors, {"ids": '["n0", "n1", "n2"]'})
    with safe_open(path, framework="pt") as f:
        assert sorted(f.keys()) == sorted(tensors)
        assert f.metadata() == {"ids": '["n0", "n1", "n2"]'}
        for name, t in tensors.items():
            got = f.get_tensor(name)
            assert got.shape == (5, 7) and got.dtype == torch.float32
            assert torch.equal(got, t)
    assert leftovers(tmp_path) == []


def test_safetensors_metadata_must_be_text(tmp_path):
    with pytest.raises(TypeError):
        save_safetensors(tmp_path / "t.safetensors", {"a": torch.zeros(2)}, {"n": 3})  # type: ignore[dict-item]


def test_json_sorted_indented_with_newline(tmp_path):
    path = save_json(tmp_path / "d.json", {"b": 1, "a": [Path("x"), np.float32(0.5)], "c": "ü"})
    text = path.read_text(encoding="utf-8")
    assert text.endswith("}\n")
    assert text.index('"a"') < text.index('"b"') < text.index('"c"')
    assert '\n  "a": [' in text
    assert json.loads(text) == {"a": ["x", 0.5], "b": 1, "c": "ü"}


def test_temp_owner_reads_the_pid_of_temp_names_only(tmp_path):
    from hmedit.outputs.write import temp_owner

    assert temp_owner(temp_path_for(tmp_path / "x.png").name) == os.getpid()
    assert temp_owner(".influence.safetensors.12.tmp") == 12
    for name in ("x.png", ".x.png.tmp", "x.png.12.tmp", ".x.png.-1.tmp", ".x.png.12.tmp.bak"):
        assert temp_owner(name) is None


def test_disk_full_is_one_error_with_a_hint(tmp_path, monkeypatch):
    import errno

    from hmedit.outputs import write

    def full(path, *, directory=False):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(write, "_fsync", full)
    with pytest.raises(HmeditError, match="No space left") as info:
        write.atomic_write(tmp_path / "x.bin", b"x")
    assert "disk is full" in info.value.hint and leftovers(tmp_path) == []
