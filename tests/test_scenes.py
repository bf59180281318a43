"""The example scenes in scenes/: all valid, and together they show every composition scheme and feature."""

from __future__ import annotations

from pathlib import Path

import pytest

from hmedit.masks import SCHEMES
from hmedit.masks.checks import validate
from hmedit.scene import find_scenes
from hmedit.scene.spec import AttentionMask, BandMask, EllipseMask, ImageMask, PolygonMask, RectMask

SCENES_DIR = Path(__file__).resolve().parent.parent / "scenes"
SCENE_FILES = find_scenes([SCENES_DIR])


def test_there_are_enough_examples():
    assert len(SCENE_FILES) >= 9


@pytest.mark.parametrize("path", SCENE_FILES, ids=lambda p: p.name)
def test_scene_validates_without_errors(path):
    scene, diags = validate(path)
    assert [e.format() for e in diags.errors] == []
    assert scene is not None
    assert scene.model == "toy"
    # native-ish sizes keep the goldens quick; the hires_* scenes show tiling at 8x the native 128 px
    limit = 1024 if path.name.startswith("hires_") else 256
    assert scene.size is not None and all(128 <= v <= limit for v in scene.size)
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
    assert {BandMask, AttentionMask} <= mask_kinds  # masks from other nodes
    assert any(n.feather > 0 for n in nodes)
    assert any(n.active != (0.0, 1.0) for n in nodes)
    assert any(len(n.levels) < 3 for n in nodes)
    assert any(n.negative and f.depth > 0 for f, n in zip(flats, nodes, strict=True))
    assert any(s.init_image is not None for s in scenes)
    assert any(n.control is not None for n in nodes)  # per-node ControlNet


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
            assert img.format == "PNG", path.name
        assert path.stat().st_size <= 64 * 1024, path.name  # the 2048 px board is flat colours: 26 KB


def scene_named(name: str):
    scene, diags = validate(SCENES_DIR / f"{name}.yaml")
    assert scene is not None and not diags.errors and not diags.warnings
    return scene


def test_examples_have_no_warnings():
    for path in SCENE_FILES:
        _, diags = validate(path)
        assert [w.format() for w in diags.warnings] == [], path.name


def test_prompts_use_the_toy_vocabulary():
    import re

    from hmedit.toy import world

    known = set(world.vocabulary())
    for scene in loaded():
        for flat in scene.flat():
            for text in (flat.node.prompt, flat.node.negative):
                words = re.findall(r"[a-z]+|,", text.lower())
                assert set(words) <= known, (scene.name, flat.node.id, sorted(set(words) - known))


def test_style_exceptions_has_a_root_style_with_one_exception():
    scene = scene_named("style_exceptions")
    assert "outlined" in scene.root.prompt.split(", ")[-1]
    children = scene.root.children
    exceptions = [c for c in children if "outlined" in c.negative]
    assert len(exceptions) == 1 and "outlined" not in exceptions[0].prompt
    assert all("outlined" in c.prompt for c in children if c is not exceptions[0])


def test_many_regions_holds_more_than_one_token_window():
    scene = scene_named("many_regions")
    flats = scene.flat()
    regions = [f for f in flats if f.depth == 1]
    assert len(regions) >= 6 and all(not f.node.children for f in regions)
    words = sum(len(f.node.prompt.split()) for f in flats)
    assert words > 77
    assert max(len(f.node.prompt.split()) for f in regions) >= 9  # some regions hold two objects


def test_many_regions_do_not_overlap():
    from hmedit.masks import rasterize_scene

    scene = scene_named("many_regions")
    _, masks = rasterize_scene(scene, 64, 64)
    assert float(masks[1:].sum(0).max()) <= 1.0 + 1e-5


def test_per_node_negatives_siblings_differ():
    scene = scene_named("per_node_negatives")
    a, b = scene.root.children
    assert a.negative and b.negative and a.negative != b.negative
    assert a.active != b.active and a.levels != b.levels
