"""hmedit.check: metrics and diff images (pure), and `hmedit check` against goldens with a tiny model."""

from __future__ import annotations

import json
import math
import textwrap

import numpy as np
import pytest
from PIL import Image

from hmedit.check import (
    Comparison,
    diff_image,
    exit_code,
    maxdiff,
    measure,
    passes,
    psnr,
    side_by_side,
)
from hmedit.cli.app import main

SCENE = """
size: [64, 64]
steps: 2
seeds: [3, 4]
root:
  prompt: a yellow background
  children:
    - id: disc
      prompt: a red circle
      mask: {ellipse: [0.2, 0.2, 0.5, 0.5]}
"""

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_psnr_and_maxdiff_values():
    a = np.zeros((4, 4, 3), np.uint8)
    assert psnr(a, a) == math.inf and maxdiff(a, a) == 0
    b = a.copy()
    b[0, 0, 0] = 10  # MSE = 100 / 48
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 * 48 / 100))
    assert maxdiff(a, b) == 10 and maxdiff(b, a) == 10  # no uint8 wrap-around
    assert measure(a, b, "maxdiff") == 10
    with pytest.raises(ValueError):
        measure(a, b, "ssim")
    with pytest.raises(ValueError, match="shape"):
        psnr(a, np.zeros((4, 5, 3), np.uint8))


def test_pass_rules():
    assert passes(35.0, "psnr", 35) and not passes(34.9, "psnr", 35) and passes(math.inf, "psnr", 35)
    assert passes(2, "maxdiff", 2) and not passes(3, "maxdiff", 2)


def test_diff_is_amplified_and_side_by_side_has_all_three():
    a = np.full((8, 6, 3), 100, np.uint8)
    b = a.copy()
    b[2, 3] = (103, 90, 100)
    d = diff_image(a, b)
    assert d[2, 3].tolist() == [12, 40, 0] and d.sum() == 52
    assert diff_image(a, np.full_like(a, 200)).max() == 255  # clipped, not wrapped
    s = side_by_side(a, b, d, gap=4)
    assert s.shape == (8, 3 * 6 + 2 * 4, 3)
    assert (s[:, 6:10] == 255).all() and (s[:, 10:16] == b).all() and (s[:, 20:] == d).all()


def test_exit_codes():
    def c(**kw):
        return Comparison(None, "s", 0, "image.png", **kw)

    assert exit_code([c(passed=True)]) == 0
    assert exit_code([c(passed=True), c(regressed=True)]) == 1
    assert exit_code([c(problem="no golden", user_error=True)]) == 2
    assert exit_code([c(problem="no golden", user_error=True), c(regressed=True)]) == 1
    assert exit_code([c(problem="render failed", internal=True)]) == 1


# ------------------------------------------------------------------------------------------------
# The command


def run(*args) -> int:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    return info.value.code


@pytest.mark.slow
def test_update_then_check_then_regression(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HMEDIT_CACHE", str(tmp_path / "cache"))
    scene = tmp_path / "disc.yaml"
    scene.write_text(textwrap.dedent(SCENE).lstrip(), encoding="utf-8")
    golden, out = tmp_path / "golden", tmp_path / "out"

    assert run("check", scene, "--golden", golden, "--model", tiny) == 2
    err = capsys.readouterr().err
    assert "golden folder not found" in err and "--update" in err

    assert run("check", scene, "--golden", golden, "--model", tiny, "--update") == 0
    assert sorted(p.name for p in (golden / "disc").iterdir()) == [
        "golden.json",
        "image-3.png",
        "image-4.png",
    ]
    manifest = json.loads((golden / "disc" / "golden.json").read_text())
    assert len(manifest["model"]["hash"]) == 16 and [s["seed"] for s in manifest["settings"]] == [3, 4]

    capsys.readouterr()
    assert run("check", scene, "--golden", golden, "--model", tiny, "--out", out) == 0
    text = capsys.readouterr().out
    assert "2 passed, 0 failed" in text and "inf" in text
    assert not list(out.rglob("*.diff.png"))

    path = golden / "disc" / "image-4.png"
    with Image.open(path) as img:
        pixels = np.asarray(img.convert("RGB")).copy()
    pixels[10:30, 10:30] ^= 0x80  # every channel off by 128
    Image.fromarray(pixels).save(path)
    assert run("check", scene, "-g", golden, "-m", tiny, "--out", out, "--metric", "maxdiff") == 1
    text = capsys.readouterr().out
    assert "maxdiff <= 2" in text and "128" in text
    assert "1 passed, 1 failed" in text and "FAIL" in text
    with Image.open(out / "disc" / "image-4.diff.png") as diff:
        d = np.asarray(diff)
    assert d.shape == (64, 64, 3) and d[15, 15].max() > 0 and d[50:, 50:].max() == 0
    with Image.open(out / "disc" / "image-4.compare.png") as compare:
        assert compare.size == (3 * 64 + 2 * 4, 64)
    assert not (out / "disc" / "image-3.diff.png").exists()


def test_goldens_record_the_controlnets_and_a_changed_one_is_noted(tmp_path):
    from types import SimpleNamespace

    from hmedit.check import GOLDEN_JSON, _drift, _manifest

    def result(control_hash: str | None):
        record = {"model": {"name": "toy", "hash": "m1", "family": "sd1"}, "settings": [{"seed": 1}]}
        if control_hash:
            where = "root.children[0].control.model"
            record["controls"] = {where: {"name": "toy-controlnet", "hash": control_hash, "path": "/x"}}
        return SimpleNamespace(name="s", record=record, images={})

    made = _manifest(result("aaaa"))
    assert made["controls"] == {"root.children[0].control.model": {"name": "toy-controlnet", "hash": "aaaa"}}
    assert "controls" not in _manifest(result(None))  # scenes without controls keep their manifest
    (tmp_path / GOLDEN_JSON).write_text(json.dumps(made))
    assert _drift(result("aaaa"), tmp_path) is None
    note = _drift(result("bbbb"), tmp_path)
    assert note == "ControlNet of root.children[0].control.model changed (aaaa -> bbbb)"
