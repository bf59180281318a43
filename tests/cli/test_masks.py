"""`hmedit masks`: files per scene, tensor names and shapes, effective maps equal compose(), broken scenes."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from hmedit.cli.app import main
from hmedit.cli.masks import parse_size
from hmedit.masks import compose, rasterize_scene
from hmedit.masks.checks import FALLBACK_REF_SIZE
from hmedit.scene import load_scene

NESTED = """
size: [96, 64]
composition: hybrid
depth_gamma: 0.5
root:
  prompt: a yellow background
  children:
    - id: disc
      prompt: a blue circle
      mask: {ellipse: [0.1, 0.1, 0.8, 0.8]}
      composition: top_down
      strength: 0.8
      children:
        - id: dot
          prompt: a red circle
          mask: {rect: [0.4, 0.4, 0.2, 0.2]}
          feather: 1.5
          composition: depth_weighted
    - id: corner
      prompt: a green square
      mask: {rect: [0.0, 0.0, 0.3, 0.3]}
      composition: multiplicative
"""

BROKEN = """
root:
  prompt: a yellow background
  children:
    - id: hat
      mask: {rect: [0.3, 0, -0.4, 0.3]}
"""


def run(*args: str) -> int:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    return info.value.code


def read(path):
    with safe_open(path, framework="pt") as f:
        names = f.keys()  # safe_open is not iterable
        return {name: f.get_tensor(name) for name in names}, f.metadata()


def expected_effective(scene_path, width, height):
    scene = load_scene(scene_path)
    flats = scene.flat()
    ids, intrinsic = rasterize_scene(scene, width, height)
    effective = compose(
        intrinsic,
        [f.parent for f in flats],
        [f.node.strength for f in flats],
        scene.composition,
        gamma=scene.depth_gamma,
        node_schemes=[f.node.composition for f in flats],
    )
    return ids, intrinsic, effective


def test_writes_files_named_by_node_with_compose_output(write_scene, tmp_path, capsys):
    scene = write_scene(NESTED, "nested.yaml")
    out = tmp_path / "out"
    assert run("masks", str(scene), "--out", str(out)) == 0

    folder = out / "nested"
    tensors, meta = read(folder / "influence.safetensors")
    ids, intrinsic, effective = expected_effective(scene, 96, 64)
    assert ids == ["root", "disc", "dot", "corner"]
    assert set(tensors) == {f"{kind}/{i}" for kind in ("intrinsic", "effective") for i in ids}
    for k, node_id in enumerate(ids):
        assert tensors[f"intrinsic/{node_id}"].shape == (64, 96)
        assert tensors[f"intrinsic/{node_id}"].dtype == torch.float32
        torch.testing.assert_close(tensors[f"intrinsic/{node_id}"], intrinsic[k])
        torch.testing.assert_close(tensors[f"effective/{node_id}"], effective[k])
    assert json.loads(meta["ids"]) == ids
    assert meta["composition"] == "hybrid" and meta["size"] == "96x64"

    assert sorted(p.name for p in (folder / "influence").iterdir()) == sorted(f"{i}.png" for i in ids)
    with Image.open(folder / "influence" / "dot.png") as img:
        assert img.size == (96, 64)
    with Image.open(folder / "influence.png") as sheet:
        assert sheet.width <= 2000
    assert not list(out.rglob("*.tmp"))
    assert "nested.yaml" in capsys.readouterr().out


def test_size_option_sets_the_map_shape(write_scene, tmp_path):
    scene = write_scene(NESTED, "nested.yaml")
    out = tmp_path / "out"
    assert run("masks", str(scene), "--out", str(out), "--size", "40x24") == 0
    tensors, _ = read(out / "nested" / "influence.safetensors")
    assert {tuple(t.shape) for t in tensors.values()} == {(24, 40)}
    _, _, effective = expected_effective(scene, 40, 24)
    torch.testing.assert_close(tensors["effective/dot"], effective[2])


def test_scene_without_size_defaults_to_512(write_scene, tmp_path):
    scene = write_scene("root: {prompt: a yellow background}\n", "plain.yaml")
    assert run("masks", str(scene), "--out", str(tmp_path / "o")) == 0
    tensors, _ = read(tmp_path / "o" / "plain" / "influence.safetensors")
    assert FALLBACK_REF_SIZE == (512, 512)  # the size the mask checks assume, shared
    assert tensors["effective/root"].shape == FALLBACK_REF_SIZE[::-1]


def test_broken_scene_is_reported_and_the_batch_goes_on(write_scene, tmp_path, capsys):
    write_scene(NESTED, "scenes/a_good.yaml")
    bad = write_scene(BROKEN, "scenes/b_bad.yaml")
    write_scene(NESTED.replace("size: [96, 64]", "size: [64, 64]"), "scenes/c_good.yaml")
    out = tmp_path / "out"
    assert run("masks", str(tmp_path / "scenes"), "--out", str(out), "--size", "32x32") == 2

    assert (out / "a_good" / "influence.safetensors").is_file()
    assert (out / "c_good" / "influence.png").is_file()
    assert not (out / "b_bad").exists()
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "Traceback" not in text
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert errors[0].startswith(f"error: {bad}:5:") and "width must be > 0" in errors[0]
    assert "3 scenes: 2 written, 1 failed" in text


def test_warnings_are_printed_one_line_each(write_scene, tmp_path, capsys):
    scene = write_scene("depth_gamma: 0.5\nsize: [64, 64]\nroot: {prompt: a yellow background}\n", "w.yaml")
    assert run("masks", str(scene), "--out", str(tmp_path / "o")) == 0
    out = capsys.readouterr().out
    assert f"warning: {scene}:1:1: depth_gamma: depth_gamma has no effect" in out


def test_two_scenes_with_one_name_do_not_overwrite_each_other(write_scene, tmp_path, capsys):
    write_scene("name: same\nsize: [64, 64]\nroot: {prompt: a}\n", "s/one.yaml")
    second = write_scene("name: same\nsize: [64, 64]\nroot: {prompt: b}\n", "s/two.yaml")
    assert run("masks", str(tmp_path / "s"), "--out", str(tmp_path / "o")) == 2
    out = capsys.readouterr().out
    assert f"error: {second}:1:1: name: output folder" in out


def test_no_scenes_and_bad_size(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert run("masks", str(tmp_path / "empty")) == 2
    assert "no scene files found" in capsys.readouterr().err
    assert parse_size("256x192") == (256, 192) and parse_size(None) is None
    assert run("masks", str(tmp_path), "--size", "big") == 2


def test_help_has_examples(capsys):
    assert run("masks", "--help") == 0
    out = capsys.readouterr().out
    assert "Examples" in out and "--size" in out and "--out" in out


@pytest.mark.parametrize("command", ["masks", "validate"])
def test_usage_line_names_scenes(command, capsys):
    assert run(command, "--help") == 0
    assert f"hmedit {command} [OPTIONS] SCENE..." in capsys.readouterr().out
    assert run(command) == 2  # missing argument
    err = capsys.readouterr().err
    assert f"hmedit {command} [OPTIONS] SCENE..." in err


def test_out_option_is_shared():
    from hmedit.cli import masks, options

    assert masks.OutDir is options.OutDir
