"""The typed scene models: built in code, flattened, and their invariants."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from hmedit.scene import (
    LEVELS,
    AssetRef,
    EllipseMask,
    ImageMask,
    Node,
    PolygonMask,
    RectMask,
    Scene,
    format_field_path,
    parse_field_path,
)


def rect(x=0.0, y=0.0, w=0.5, h=0.5) -> dict:
    return {"rect": [x, y, w, h]}


def tree() -> Scene:
    """root ─┬─ a ─┬─ a1
    │     └─ a2 ── a2x
    └─ b"""
    return Scene.model_validate(
        {
            "root": {
                "prompt": "scene",
                "noise": 0.6,
                "children": [
                    {
                        "id": "a",
                        "mask": rect(),
                        "noise": 0.3,
                        "children": [
                            {"id": "a1", "mask": rect(w=0.1)},
                            {"id": "a2", "mask": rect(), "children": [{"id": "a2x", "mask": rect(w=0.05)}]},
                        ],
                    },
                    {"id": "b", "mask": {"ellipse": [0.5, 0.5, 0.2, 0.2]}},
                ],
            }
        }
    )


def test_flat_is_depth_first_preorder_with_parents_and_depths():
    flat = tree().flat()
    assert [f.node.id for f in flat] == ["root", "a", "a1", "a2", "a2x", "b"]
    assert [f.index for f in flat] == list(range(6))
    assert [f.parent for f in flat] == [-1, 0, 1, 1, 3, 0]
    assert [f.depth for f in flat] == [0, 1, 2, 2, 3, 1]
    assert [f.path for f in flat] == [
        "root",
        "root.children[0]",
        "root.children[0].children[0]",
        "root.children[0].children[1]",
        "root.children[0].children[1].children[0]",
        "root.children[1]",
    ]
    for f in flat[1:]:
        assert f.parent < f.index  # parents always come before children
        assert f.node in flat[f.parent].node.children


def test_flat_round_trips_through_the_field_paths():
    scene = tree()
    for f in scene.flat():
        node = scene
        for part in parse_field_path(f.path):
            node = node[part] if isinstance(part, int) else getattr(node, part)
        assert node is f.node


def test_noise_inherits_from_the_parent_and_root_defaults_to_1():
    flat = tree().flat()
    assert [f.noise for f in flat] == [0.6, 0.3, 0.3, 0.3, 0.3, 0.6]
    assert flat[2].node.noise is None  # the node itself keeps "inherit"
    assert Scene(root=Node()).root.noise == 1.0


def test_seed_list():
    assert Scene(root=Node()).seed_list == [0]
    assert Scene(root=Node(), seed=5).seed_list == [5]
    assert Scene(root=Node(), seeds=(1, 2, 3)).seed_list == [1, 2, 3]


def test_mask_variants_are_picked_by_key():
    node = Node.model_validate({"id": "x", "mask": {"polygon": [[0, 0], [1, 0], [0, 1]]}})
    assert isinstance(node.mask, PolygonMask) and node.mask.polygon[2] == (0.0, 1.0)
    assert isinstance(Node.model_validate({"id": "x", "mask": rect()}).mask, RectMask)
    assert isinstance(Node.model_validate({"id": "x", "mask": {"ellipse": [0, 0, 1, 1]}}).mask, EllipseMask)
    image = Node.model_validate({"id": "x", "mask": {"image": "m.png", "invert": True}}).mask
    assert isinstance(image, ImageMask) and image.invert
    # in code (no scene file), paths resolve against the working folder and need not exist yet
    assert image.image.path == Path.cwd() / "m.png" and image.image.raw == "m.png"


def test_levels_are_normalised():
    def levels(value):
        return Node.model_validate({"levels": value}).levels

    assert Node().levels == LEVELS == ("coarse", "mid", "fine")
    assert levels("all") == LEVELS
    assert levels("mid") == ("mid",)
    assert levels(["fine", "coarse", "fine"]) == ("coarse", "fine")
    with pytest.raises(ValidationError, match="unknown level 'midd'") as info:
        levels(["midd"])
    assert info.value.errors()[0]["ctx"]["hint"] == "did you mean 'mid'?"
    with pytest.raises(ValidationError, match="at least one level"):
        levels([])


def test_models_are_frozen_and_forbid_unknown_keys():
    node = Node(prompt="x")
    with pytest.raises(ValidationError):
        node.prompt = "y"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="Extra inputs"):
        Node.model_validate({"promt": "x"})


def test_invariants_hold_for_scenes_built_in_code():
    with pytest.raises(ValidationError, match="the root has no mask"):
        Scene.model_validate({"root": {"mask": rect()}})
    with pytest.raises(ValidationError, match="either mask or layer"):
        Node.model_validate({"mask": rect(), "layer": "a.png"})
    with pytest.raises(ValidationError, match="duplicate id 'a'"):
        Scene.model_validate(
            {"root": {"children": [{"id": "a", "mask": rect()}, {"id": "a", "mask": rect()}]}}
        )
    with pytest.raises(ValidationError, match="either seed or seeds"):
        Scene.model_validate({"seed": 1, "seeds": [2], "root": {}})
    with pytest.raises(ValidationError, match="width must be > 0"):
        RectMask(rect=(0, 0, 0, 1))


def test_invariants_hold_for_trees_of_node_objects():
    box = RectMask(rect=(0, 0, 1, 1))
    with pytest.raises(ValidationError, match="duplicate id 'a'"):
        Scene(
            root=Node(
                children=(Node(id="a", mask=box), Node(id="b", mask=box, children=(Node(id="a", mask=box),)))
            )
        )
    with pytest.raises(ValidationError) as info:
        Node(children=(Node(prompt="x"),))
    assert {err["type"] for err in info.value.errors()} == {"region_missing", "id_missing"}
    with pytest.raises(ValidationError, match="the root has no mask"):
        Scene(root=Node(mask=box))
    assert len(Scene(root=Node(children=(Node(id="a", mask=box),))).flat()) == 2


def test_cross_field_errors_come_with_field_errors():
    """A wrong value elsewhere does not hide the cross-field problems (all problems at once)."""
    with pytest.raises(ValidationError) as info:
        Scene.model_validate({"seed": 1, "seeds": [2], "steps": 0, "root": {"mask": rect(), "noise": 3}})
    locs = {err["loc"] for err in info.value.errors()}
    assert {("seeds",), ("steps",), ("root", "mask"), ("root", "noise")} <= locs


def test_asset_ref_is_path_like(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    ref = AssetRef.resolve("a.png", tmp_path)
    assert os.fspath(ref) == str(tmp_path / "a.png") == str(ref)
    assert Path(ref) == tmp_path / "a.png"
    with open(ref, "rb") as f:
        assert f.read() == b"x"
    assert ref == AssetRef.resolve("a.png", tmp_path) and len({ref, AssetRef.resolve("a.png", tmp_path)}) == 1


def test_field_path_helpers():
    path = ("root", "children", 1, "mask", "rect")
    assert format_field_path(path) == "root.children[1].mask.rect"
    assert parse_field_path("root.children[1].mask.rect") == path
    assert parse_field_path("root.children[0].children[12]") == ("root", "children", 0, "children", 12)


def test_node_lookup_and_walk():
    scene = tree()
    assert scene.node("a2x").mask.rect[2] == 0.05
    assert [n.id for n in scene.root.walk()] == [f.node.id for f in scene.flat()]
    with pytest.raises(KeyError):
        scene.node("nope")


def test_scene_built_in_code_has_no_positions():
    scene = Scene(root=Node())
    assert scene.source is None and scene.position("root") is None
    assert scene.where("root") == {"file": None, "line": None, "column": None, "field": "root"}
