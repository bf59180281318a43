"""The example scenes in scenes/: all valid, and together they show every composition scheme and feature."""

from __future__ import annotations

from pathlib import Path

import pytest

from hmedit.masks import SCHEMES
from hmedit.scene import find_scenes, validate
from hmedit.scene.spec import EllipseMask, ImageMask, PolygonMask, RectMask

SCENES_DIR = Path(__file__).resolve().parent.parent / "scenes"
SCENE_FILES = find_scenes([SCENES_DIR])


def test_there_are_enough_examples():
    assert len(SCENE_FILES) >= 5


@pytest.mark.parametrize("path", SCENE_FILES, ids=lambda p: p.name)
def test_scene_validates_without_errors(path):
    scene, diags = validate(path)
    assert [e.format() for e in diags.errors] == []
    assert scene is not None
    assert scene.model == "toy"
    assert scene.size is not None and all(128 <= v <= 256 for v in scene.size)
    assert path.read_text(encoding="utf-8").startswith("#"), "start each example with a comment"


def loaded():
    scenes = [validate(path)[0] for path in SCENE_FILES]
    assert all(s is not None for s in scenes)
    return scenes


def test_every_composition_scheme_appears():
    scenes = loaded()
    used = {s.composition for s in scenes}
    assert set(SCHEMES) <= used
    per_node = {f.node.composition for s in scenes if s.composition == "hybrid" for f in s.flat()}
    assert {"multiplicative", "normalized", "top_down", "depth_weighted"} <= per_node


def test_examples_cover_the_features():
    scenes = loaded()
    flats = [f for s in scenes for f in s.flat()]
    nodes = [f.node for f in flats]
    assert max(f.depth for f in flats) >= 2  # root -> region -> child
    assert any(n.layer is not None for n in nodes)
    mask_kinds = {type(n.mask) for n in nodes if n.mask is not None}
    assert {RectMask, EllipseMask, PolygonMask, ImageMask} <= mask_kinds
    assert any(n.feather > 0 for n in nodes)
    assert any(n.active != (0.0, 1.0) for n in nodes)
    assert any(len(n.levels) < 3 for n in nodes)
    assert any(n.negative and f.depth > 0 for f, n in zip(flats, nodes, strict=True))
    assert any(s.init_image is not None for s in scenes)


def test_some_siblings_overlap():
    from hmedit.masks import rasterize_scene

    def overlapping(scene) -> bool:
        flats = scene.flat()
        _, masks = rasterize_scene(scene, 64, 64)
        for a in flats:
            for b in flats[a.index + 1 :]:
                if (
                    a.parent == b.parent
                    and a.parent >= 0
                    and float((masks[a.index] * masks[b.index]).sum()) > 4
                ):
                    return True
        return False

    assert any(overlapping(s) for s in loaded())


def test_assets_are_small_pngs():
    from PIL import Image

    assets = sorted((SCENES_DIR / "assets").glob("*.png"))
    assert assets
    for path in assets:
        with Image.open(path) as img:
            assert img.format == "PNG" and max(img.size) <= 256, path.name
