"""hmedit.cli.html_report: the `hmedit report` command (the page itself: tests/outputs/test_html.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from hmedit.cli.app import main


def run(*args) -> int:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    return info.value.code


def scene_folder(out, name="a", record=True):
    folder = out / name
    folder.mkdir(parents=True)
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(folder / "image.png")
    if record:
        rec = {
            "format": "hmedit.render",
            "seeds": [1],
            "settings": [{"seed": 1, "width": 8, "height": 8}],
            "scene": {"name": name, "spec": {"root": {"id": "root", "prompt": "grey"}}},
            "outputs": ["image.png"],
        }
        (folder / "render.json").write_text(json.dumps(rec))
    return folder


def test_report_writes_the_page_into_the_folder_by_default(tmp_path, capsys):
    out = tmp_path / "out"
    scene_folder(out)
    assert run("report", out) == 0
    page = out / "report.html"
    assert f"report written to {page}" in capsys.readouterr().out
    text = page.read_text(encoding="utf-8")
    assert text.startswith("<!doctype html>") and "data:image/png;base64," in text and "grey" in text
    assert run("report", out, "-o", tmp_path / "r.html", "--link", "--title", "Nightly") == 0
    text = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert 'src="out/a/image.png"' in text and "<h1>Nightly</h1>" in text


def test_report_refuses_a_folder_without_renders_in_one_line(tmp_path, capsys):
    scene_folder(tmp_path / "out", record=False)  # an image, but nothing rendered to the end
    assert run("report", tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no renders" in err and "hmedit render" in err
    assert not (tmp_path / "out" / "report.html").exists()
    assert run("report", tmp_path / "missing") == 2
    assert "no such output folder" in capsys.readouterr().err
