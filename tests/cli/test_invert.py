"""`hmedit invert`: inverts what a scene's render needs into the cache, once; render then reuses it."""

from __future__ import annotations

import pytest

from hmedit.cli.app import main

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

SCENE = """
init_image: photo.png
inversion: negative_prompt
steps: 3
guidance: 4
root:
  prompt: a cup of coffee
  noise: 0.0
  children:
    - id: cup
      prompt: a blue circle
      source_prompt: a brown circle
      noise: 0.8
      mask: {ellipse: [0.2, 0.2, 0.5, 0.3]}
"""


def run(*args) -> int:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    return info.value.code or 0


def test_invert_then_cached_then_render_reuses_it(write_scene, tmp_path, capsys, monkeypatch):
    from pathlib import Path

    from PIL import Image

    import hmedit.sampling.inversion as inv

    photo = Path(__file__).parents[1] / "assets" / "photos" / "coffee.png"
    Image.open(photo).resize((64, 64)).save(tmp_path / "photo.png")
    path = write_scene(SCENE)
    plain = write_scene("root: {prompt: a cat}\n", "plain.yaml")
    cache = tmp_path / "cache"
    assert run("invert", path, plain, "--cache-dir", cache) == 0
    out = capsys.readouterr().out
    assert "inverted" in out and "nothing to invert" in out and "1 inverted, 0 cached" in out
    assert "2/3" in out  # noise 0.8 of 3 steps: sampling (so inversion) goes 2 steps deep
    assert len(list(cache.glob("*/inversion.safetensors"))) == 1
    assert run("invert", path, "--cache-dir", cache) == 0
    assert "0 inverted, 1 cached" in capsys.readouterr().out
    # render finds it: no inversion runs
    calls = []
    real = inv.ddim_trajectory
    monkeypatch.setattr(inv, "ddim_trajectory", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert run("render", path, "--out", tmp_path / "out", "--cache-dir", cache) == 0
    assert calls == [] and (tmp_path / "out" / "scene" / "image.png").is_file()


def test_an_attention_mask_scene_is_inverted_as_its_render_needs_it(write_scene, tmp_path, monkeypatch):
    """The mask comes from a first pass (itself inverted): `invert` runs it, so that render finds both
    inversions, the first pass's and the final plan's, in the cache."""
    from pathlib import Path

    from PIL import Image

    import hmedit.sampling.inversion as inv

    photo = Path(__file__).parents[1] / "assets" / "photos" / "coffee.png"
    Image.open(photo).resize((64, 64)).save(tmp_path / "photo.png")
    text = SCENE.replace(
        "mask: {ellipse: [0.2, 0.2, 0.5, 0.3]}", "mask: {attention: {of: root, word: coffee, threshold: 0.4}}"
    )
    path = write_scene(text)
    cache = tmp_path / "cache"
    assert run("invert", path, "--cache-dir", cache) == 0
    assert len(list(cache.glob("*/inversion.safetensors"))) == 2  # the first pass's and the render's
    calls = []
    real = inv.ddim_trajectory
    monkeypatch.setattr(inv, "ddim_trajectory", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert run("render", path, "--out", tmp_path / "out", "--cache-dir", cache) == 0
    assert calls == [] and (tmp_path / "out" / "scene" / "image.png").is_file()


def test_a_broken_scene_is_one_line_and_the_others_go_on(write_scene, tmp_path, capsys):
    broken = write_scene(SCENE.replace("photo.png", "missing.png"), "broken.yaml")
    plain = write_scene("root: {prompt: a cat}\n", "plain.yaml")
    assert run("invert", broken, plain, "--cache-dir", tmp_path / "cache") == 2
    captured = capsys.readouterr()
    text = captured.out + captured.err
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "broken.yaml" in errors[0] and "missing.png" in errors[0], text
    assert "Traceback" not in text and "nothing to invert" in text and "1 scene failed" in text
