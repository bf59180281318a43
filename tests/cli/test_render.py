"""`hmedit render` end to end with a tiny random model at 64x64, 2 steps: outputs, skipping, failures,
interruption, reproducibility."""

from __future__ import annotations

import json
import shutil
import textwrap

import pytest
from PIL import Image, ImageDraw
from safetensors import safe_open

import hmedit.outputs
import hmedit.pipeline
from hmedit.cli.app import main
from hmedit.models.load import model_hash, resolve

ALPHA = """
size: [64, 64]
steps: 2
seed: 7
root:
  prompt: a yellow background
  children:
    - id: disc
      prompt: a red circle
      mask: {image: disc.png}
      children:
        - id: dot
          prompt: a white circle
          mask: {ellipse: [0.4, 0.4, 0.2, 0.2]}
    - id: box
      prompt: a blue square
      mask: {rect: [0.55, 0.55, 0.4, 0.4]}
"""

BETA = """
size: [64, 64]
steps: 2
seeds: [1, 2]
root:
  prompt: a gray background
  children:
    - id: star
      prompt: a green star
      mask: {rect: [0.2, 0.2, 0.5, 0.5]}
"""

PLAIN = """
size: [64, 64]
steps: 2
root:
  prompt: a {} circle on a white background
"""

BROKEN = """
size: [64, 64]
root:
  prompt: a yellow background
  children:
    - id: hat
      mask: {rect: [0.3, 0, -0.4, 0.3]}
"""

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HMEDIT_CACHE", str(tmp_path / "cache"))


def run(*args) -> int:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    return info.value.code


def write(folder, name, text):
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def disc_mask(path, fill=255):
    img = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(img).ellipse((8, 8, 40, 40), fill=fill)
    img.save(path)


def count_renders(monkeypatch, fail_on=None, exc=KeyboardInterrupt):
    """Wrap hmedit.pipeline.render: count its calls; raise ``exc`` on call number ``fail_on``."""
    real = hmedit.pipeline.render
    calls = []

    def wrapped(scene, *args, **kwargs):
        calls.append(scene.name)
        if fail_on is not None and len(calls) == fail_on:
            raise exc("stop here")
        return real(scene, *args, **kwargs)

    monkeypatch.setattr(hmedit.pipeline, "render", wrapped)
    return calls


@pytest.fixture(scope="module")
def rendered(tiny, tmp_path_factory):
    """Two scenes (one with a mask image and 3 nodes, one with two seeds) rendered once."""
    root = tmp_path_factory.mktemp("rendered")
    scenes = root / "scenes"
    write(scenes, "alpha.yaml", ALPHA)
    write(scenes, "sub/beta.yaml", BETA)
    disc_mask(scenes / "disc.png")
    out = root / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HMEDIT_CACHE", str(root / "cache"))
        code = run("render", scenes, "--model", tiny, "--out", out)
    assert code == 0
    return scenes, out


def read_tensors(path):
    with safe_open(path, framework="pt") as f:
        return {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 - safe_open is not iterable


def test_writes_image_influence_and_provenance(rendered, tiny):
    scenes, out = rendered
    folder = out / "alpha"
    with Image.open(folder / "image.png") as img:
        assert img.size == (64, 64) and img.mode == "RGB"
        assert img.text["hmedit:scene"] == (scenes / "alpha.yaml").read_text()
        settings = json.loads(img.text["hmedit:settings"])
    assert settings["seed"] == 7 and settings["steps"] == 2 and settings["width"] == 64

    tensors = read_tensors(folder / "influence.safetensors")
    ids = ["root", "disc", "dot", "box"]
    assert set(tensors) == {f"{k}/{i}" for k in ("intrinsic", "effective", "attention") for i in ids}
    assert all(tuple(t.shape) == (64, 64) for t in tensors.values())
    assert sorted(p.name for p in (folder / "influence").iterdir()) == sorted(f"{i}.png" for i in ids)
    assert (folder / "influence.png").is_file()

    rec = json.loads((folder / "render.json").read_text())
    assert rec["model"]["hash"] == model_hash(resolve(str(tiny))) and rec["model"]["family"] == "sd1"
    assert rec["settings"] == [settings]
    assert rec["seeds"] == [7]
    assert rec["scene"]["spec"]["root"]["children"][0]["id"] == "disc"
    assert rec["assets"]["root.children[0].mask.image"]["path"] == str((scenes / "disc.png").absolute())
    assert set(rec["timings"]["seeds"]["7"]) >= {"sample", "decode", "write"}
    assert rec["timings"]["total"] > 0
    assert set(rec["versions"]) >= {"hmedit", "torch", "diffusers", "transformers", "python"}
    assert rec["created"].endswith("Z") and len(rec["key"]) == 64
    assert set(rec["outputs"]) == {
        "image.png",
        "influence.safetensors",
        "influence.png",
        *(f"influence/{i}.png" for i in ids),
    }
    assert not list(out.rglob("*.tmp"))


def test_several_seeds_give_one_image_each(rendered):
    _, out = rendered
    folder = out / "beta"
    assert not (folder / "image.png").exists()
    images = {}
    for seed in (1, 2):
        with Image.open(folder / f"image-{seed}.png") as img:
            assert json.loads(img.text["hmedit:settings"])["seed"] == seed
            images[seed] = img.tobytes()
    assert images[1] != images[2]
    rec = json.loads((folder / "render.json").read_text())
    assert rec["seeds"] == [1, 2] and {"image-1.png", "image-2.png"} <= set(rec["outputs"])


def test_rerun_skips_up_to_date_scenes(rendered, tiny, monkeypatch, capsys):
    scenes, out = rendered
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    calls = count_renders(monkeypatch)
    capsys.readouterr()
    assert run("render", scenes, "--model", tiny, "--out", out) == 0
    assert calls == []
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
    text = capsys.readouterr().out
    assert text.count("skipped (up to date)") == 2 and "0 rendered, 2 up to date" in text


def test_changed_asset_steps_or_force_render_again(rendered, tiny, tmp_path, monkeypatch):
    scenes, out = tmp_path / "scenes", tmp_path / "out"
    shutil.copytree(rendered[0], scenes)
    shutil.copytree(rendered[1], out)
    (scenes / "sub" / "beta.yaml").unlink()
    calls = count_renders(monkeypatch)
    args = ("render", scenes, "--model", tiny, "--out", out)

    assert run(*args) == 0 and calls == []  # a copied folder is still up to date
    disc_mask(scenes / "disc.png", fill=200)
    assert run(*args) == 0 and calls == ["alpha"]
    assert run(*args, "--steps", "3") == 0 and calls == ["alpha"] * 2
    with Image.open(out / "alpha" / "image.png") as img:
        assert json.loads(img.text["hmedit:settings"])["steps"] == 3
    assert run(*args, "--steps", "3") == 0 and calls == ["alpha"] * 2
    assert run(*args, "--steps", "3", "--force") == 0 and calls == ["alpha"] * 3


def test_same_seed_gives_the_same_bytes(rendered, tiny, tmp_path):
    scenes, out = rendered
    again = tmp_path / "again"
    assert run("render", scenes, "--model", tiny, "--out", again, "--seed", "7") == 0
    assert (again / "alpha" / "image.png").read_bytes() == (out / "alpha" / "image.png").read_bytes()
    # --seed replaces the scene's seeds: one image, named image.png
    assert sorted(p.name for p in (again / "beta").glob("image*.png")) == ["image.png"]
    assert json.loads((again / "beta" / "render.json").read_text())["overrides"]["seed"] == 7


def test_broken_scene_is_one_line_and_the_batch_goes_on(tiny, tmp_path, monkeypatch, capsys):
    scenes, out = tmp_path / "scenes", tmp_path / "out"
    write(scenes, "a_broken.yaml", BROKEN)
    write(scenes, "b_good.yaml", PLAIN.format("red"))
    calls = count_renders(monkeypatch)

    assert run("render", scenes, "--model", tiny, "--out", out, "--fail-fast") == 2
    assert calls == [] and not (out / "b_good").exists()
    text = capsys.readouterr().out
    assert "not run" in text

    assert run("render", scenes, "--model", tiny, "--out", out) == 2
    captured = capsys.readouterr()
    text = captured.out + captured.err
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "a_broken.yaml:6:" in errors[0] and "width" in errors[0]
    assert "Traceback" not in text
    assert calls == ["b_good"] and (out / "b_good" / "render.json").is_file()
    assert not (out / "a_broken").exists()


def test_internal_error_is_one_line_exit_1(tiny, tmp_path, monkeypatch, capsys):
    scenes, out = tmp_path / "scenes", tmp_path / "out"
    write(scenes, "a.yaml", PLAIN.format("red"))
    write(scenes, "b.yaml", PLAIN.format("blue"))
    calls = count_renders(monkeypatch, fail_on=1, exc=RuntimeError)
    assert run("render", scenes, "--model", tiny, "--out", out) == 1
    text = capsys.readouterr().out
    (line,) = [line for line in text.splitlines() if line.startswith("error:")]
    assert "internal error: RuntimeError: stop here" in line and "--debug" in line
    assert "Traceback" not in text
    assert calls == ["a", "b"] and (out / "b" / "render.json").is_file()
    assert not (out / "a" / "render.json").exists()


def test_interrupted_batch_resumes(tiny, tmp_path, monkeypatch, capsys):
    scenes, out = tmp_path / "scenes", tmp_path / "out"
    write(scenes, "p.yaml", PLAIN.format("red"))
    write(scenes, "q.yaml", PLAIN.format("blue"))
    args = ("render", scenes, "--model", tiny, "--out", out)

    calls = count_renders(monkeypatch, fail_on=2)
    assert run(*args) == 130
    assert calls == ["p", "q"]
    assert (out / "p" / "render.json").is_file() and (out / "p" / "image.png").is_file()
    assert not (out / "q" / "render.json").exists()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert "interrupted" in capsys.readouterr().err

    # interrupted while writing: q's image is there, its render.json is not, so q is rendered again
    real = hmedit.outputs.write_influence

    def stop(*a, **k):
        raise KeyboardInterrupt

    calls = count_renders(monkeypatch)
    monkeypatch.setattr(hmedit.outputs, "write_influence", stop)
    assert run(*args) == 130
    assert calls == ["q"] and (out / "q" / "image.png").is_file()
    assert not (out / "q" / "render.json").exists()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]

    monkeypatch.setattr(hmedit.outputs, "write_influence", real)
    calls = count_renders(monkeypatch)
    assert run(*args) == 0
    assert calls == ["q"] and (out / "q" / "render.json").is_file()

    # a finished scene whose new render is interrupted loses its old key: its image is already the new one
    monkeypatch.setattr(hmedit.outputs, "write_influence", stop)
    assert run(*args, "--force") == 130
    assert not (out / "p" / "render.json").exists() and (out / "q" / "render.json").is_file()


def test_no_scene_files_and_bad_options(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert run("render", tmp_path / "empty") == 2
    assert "no scene files found" in capsys.readouterr().err
    write(tmp_path, "s.yaml", PLAIN.format("red"))
    assert run("render", tmp_path / "s.yaml", "--scheduler", "nope") == 2
    assert run("render", tmp_path / "s.yaml", "--size", "64by64") == 2
