"""hmedit.toy.publish: a model folder is replaced in one step, keeping its model card."""

from __future__ import annotations

import json

import pytest

from hmedit.toy.publish import publish


def test_publish_replaces_the_folder_keeps_its_card_and_makes_files_readable(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "README.md").write_text("# card\n")
    (out / "old.bin").write_bytes(b"old")

    def write(tmp):
        (tmp / "sub").mkdir(parents=True)
        (tmp / "sub" / "weights.safetensors").write_bytes(b"new")
        (tmp / "sub" / "weights.safetensors").chmod(0o600)

    assert publish(out, write, {"steps": 3}) == out
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == ["README.md", "sub/weights.safetensors", "training.json"]
    assert (out / "README.md").read_text() == "# card\n"
    assert json.loads((out / "training.json").read_text()) == {"steps": 3}
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in out.rglob("*") if p.is_file())
    assert not (tmp_path / "model.tmp").exists()


def test_a_failed_export_leaves_the_published_folder_as_it_was(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "weights.safetensors").write_bytes(b"good")

    def write(tmp):
        tmp.mkdir()
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        publish(out, write, {})
    assert (out / "weights.safetensors").read_bytes() == b"good"
