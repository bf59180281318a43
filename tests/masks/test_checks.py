"""Mask checks: each finding, where it points, and a clean scene with none."""

from __future__ import annotations

import numpy as np
from PIL import Image

from hmedit.masks.checks import check_masks, check_size
from hmedit.scene import load_scene


def _check(write_scene, children: str, header: str = "size: [512, 256]"):
    text = f"{header}\nroot:\n  prompt: a room\n  children:\n{children}"
    return check_masks(load_scene(write_scene(text)))


def _found(diags):
    return [(e.location.field, e.problem) for e in diags.errors], [
        (w.location.field, w.problem) for w in diags.warnings
    ]


def test_check_size_keeps_the_aspect():
    assert check_size((512, 256)) == (128, 64)
    assert check_size((300, 900)) == (43, 128)


def test_a_clean_scene_has_no_findings(write_scene, write_png):
    write_png("mask.png", size=(256, 128))
    layer = np.zeros((32, 32, 4), np.uint8)
    layer[8:24, 8:24] = 255
    Image.fromarray(layer, "RGBA").save(write_png("x.png").parent / "layer.png")
    diags = _check(
        write_scene,
        """    - id: a
      mask: {rect: [0.1, 0.1, 0.5, 0.5]}
      children:
        - id: b
          mask: {ellipse: [0.2, 0.2, 0.3, 0.3]}
    - id: c
      mask: {polygon: [[0.6, 0.6], [0.9, 0.6], [0.8, 0.9]]}
    - id: d
      mask: {image: mask.png}
    - id: e
      layer: layer.png
      at: [0.5, 0.1]
""",
    )
    assert _found(diags) == ([], [])


def test_empty_and_outside_regions(write_scene, write_png):
    write_png("black.png", size=(256, 128), color=0)
    write_png("white.png", size=(256, 128), color=255)
    diags = _check(
        write_scene,
        """    - id: out
      mask: {rect: [1.2, 0.1, 0.2, 0.2]}
    - id: part
      mask: {ellipse: [0.8, 0.8, 0.4, 0.4]}
    - id: black
      mask: {image: black.png}
    - id: white
      mask: {image: white.png, invert: true}
""",
    )
    errors, warnings = _found(diags)
    assert errors == [
        ("root.children[0].mask", "the region lies entirely outside the image"),
        ("root.children[2].mask.image", "the region is empty"),
        ("root.children[3].mask.image", "the region is empty"),
    ]
    # the ellipse's box is half outside in x and y: three quarters of it are cut off
    assert warnings == [("root.children[1].mask", "75% of the region lies outside the image and is cut off")]
    assert diags.errors[0].location.line == 6 and diags.errors[0].location.file is not None


def test_child_outside_its_parent_warns_beyond_five_percent(write_scene):
    diags = _check(
        write_scene,
        """    - id: a
      mask: {rect: [0.1, 0.1, 0.4, 0.4]}
      children:
        - id: inside
          mask: {rect: [0.2, 0.2, 0.2, 0.2]}
        - id: slightly
          mask: {rect: [0.1, 0.1, 0.41, 0.4]}
        - id: half
          mask: {rect: [0.3, 0.2, 0.4, 0.2]}
""",
    )
    errors, warnings = _found(diags)
    assert errors == []
    assert warnings == [
        ("root.children[0].children[2].mask", "50% of the region lies outside its parent 'a'")
    ]


def test_mask_image_of_the_wrong_size(write_scene, write_png):
    write_png("square.png", size=(128, 128))
    write_png("close.png", size=(257, 128))  # 0.4% off: fine
    diags = _check(
        write_scene,
        """    - id: sq
      mask: {image: square.png}
    - id: close
      mask: {image: close.png}
""",
    )
    errors, warnings = _found(diags)
    assert [e[0] for e in errors] == ["root.children[0].mask.image"]
    assert errors[0][1].startswith("mask of the wrong size: square.png is 128x128, the scene is 512x256")
    assert "resize" in diags.errors[0].hint
    assert warnings == []


def test_layer_without_alpha_is_an_error(write_scene, write_png):
    write_png("rgb.png", mode="RGB", size=(32, 32), color=(10, 20, 30))
    write_png("clear.png", mode="RGBA", size=(32, 32), color=(0, 0, 0, 0))
    diags = _check(
        write_scene,
        """    - id: flat
      layer: rgb.png
    - id: clear
      layer: clear.png
""",
    )
    errors, _ = _found(diags)
    assert errors[0][0] == "root.children[0].layer" and "no alpha channel" in errors[0][1]
    assert errors[1] == ("root.children[1].layer", "the region is empty")


def test_unreadable_mask_file_is_reported_at_its_field(write_scene, tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    diags = _check(
        write_scene,
        """    - id: bad
      mask: {image: notes.png}
""",
    )
    assert [e.location.field for e in diags.errors] == ["root.children[0].mask.image"]
    assert "not an image" in diags.errors[0].problem


def test_validate_runs_the_mask_checks(write_scene):
    from hmedit.masks.checks import validate

    path = write_scene(
        "size: [64, 64]\nroot:\n  children:\n    - id: a\n      mask: {rect: [2, 2, 0.1, 0.1]}\n"
    )
    scene, diags = validate(path)
    assert scene is None and "entirely outside" in diags.errors[0].problem
