"""control: in scenes (validation, one-line errors) and the model-free part: preprocessors, conditioning
images, weight maps, groups, the key and the assets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import hmedit
from hmedit.control.images import ControlGroup, ControlNode, compose_images, control_nodes, group_controls
from hmedit.control.preprocess import PREPROCESSORS, preprocess, register
from hmedit.errors import HmeditError
from hmedit.provenance import asset_paths


def _scene(tmp_path, control: dict, **extra):
    return hmedit.load_scene(
        {"size": [64, 64], "root": {"prompt": "a", "control": control}, **extra}, base_dir=tmp_path
    )


def _layer(tmp_path, name="sq.png", size=32, colour=(220, 40, 40)):
    img = np.zeros((size, size, 4), np.uint8)
    img[8:24, 8:24] = (*colour, 255)
    Image.fromarray(img, "RGBA").save(tmp_path / name)
    return name


@pytest.mark.parametrize(
    "control, extra, message",
    [
        ({"source": "layer"}, {}, "control source 'layer' needs the node's layer"),
        ({"source": "init_image"}, {}, "needs the scene's init_image"),
        ({"source": "nope.png"}, {}, "file not found: nope.png"),
        ({"image": "nope.png"}, {}, "root.control.image: file not found"),
        ({"weight": 1}, {}, "exactly one of image (a ready conditioning image) or source"),
        ({"image": "c.png", "kind": "edges"}, {}, "kind applies to source"),
        ({"source": "c.png", "kind": "edgse"}, {}, "unknown control kind 'edgse' (did you mean 'edges'?)"),
        ({"image": "c.png", "start": 0.6, "end": 0.5}, {}, "start (0.6) must be smaller than end (0.5)"),
        ({"image": "c.png", "weight": -1}, {}, "root.control.weight"),
        ({"image": "c.png", "colour": 1}, {}, "root.control.colour"),
    ],
)
def test_bad_controls_are_one_line_errors_at_the_field(tmp_path, control, extra, message):
    Image.new("RGB", (8, 8)).save(tmp_path / "c.png")
    with pytest.raises(HmeditError) as info:
        _scene(tmp_path, control, **extra)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_valid_control_keeps_its_keys_and_default_kind(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "c.png")
    sc = _scene(tmp_path, {"source": "c.png", "weight": 0.5, "end": 0.8, "model": "x"})
    c = sc.root.control
    assert (c.weight, c.start, c.end, c.model, c.preprocessor) == (0.5, 0.0, 0.8, "x", "edges")
    assert c.source.path == tmp_path / "c.png"
    assert asset_paths(sc) == {"root.control.source": tmp_path / "c.png"}
    named = hmedit.load_scene(
        {"init_image": "c.png", "root": {"prompt": "a", "control": {"source": "init_image"}}},
        base_dir=tmp_path,
    )
    assert named.root.control.source == "init_image" and "root.control.source" not in asset_paths(named)


def test_a_registered_preprocessor_is_a_valid_kind(tmp_path):
    Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "c.png")

    @register("test-gray")
    def gray(image):
        return image.convert("L").convert("RGB")

    try:
        sc = _scene(tmp_path, {"source": "c.png", "kind": "test-gray"})
        assert sc.root.control.preprocessor == "test-gray"
        out = preprocess("test-gray", Image.open(tmp_path / "c.png").convert("RGBA"))
        assert out.mode == "RGB" and len(set(np.asarray(out)[0, 0])) == 1
    finally:
        del PREPROCESSORS["test-gray"]


def test_edges_of_a_layer_draw_its_outline_whatever_its_colour():
    rgba = np.zeros((48, 48, 4), np.uint8)
    rgba[12:36, 12:36] = (20, 20, 20, 255)  # nearly black on (transparent) black
    e = np.asarray(preprocess("edges", Image.fromarray(rgba, "RGBA")))[..., 0] > 0
    assert e[24, 9:15].any() and e[24, 33:39].any() and e[9:15, 24].any() and e[33:39, 24].any()
    assert not e[18:30, 18:30].any() and not e[:6].any()
    opaque = np.asarray(preprocess("edges", Image.fromarray(rgba[..., :3]).convert("RGBA")))
    assert not opaque.any()  # no alpha, no contrast: no edges


def test_conditioning_images_and_maps(tmp_path):
    name = _layer(tmp_path)
    Image.new("RGB", (32, 32), (255, 0, 0)).save(tmp_path / "ready.png")
    sc = hmedit.load_scene(
        {
            "size": [64, 64],
            "root": {
                "prompt": "bg",
                "children": [
                    {"id": "a", "prompt": "x", "layer": name, "control": {"source": "layer", "weight": 0.5}},
                    {
                        "id": "b",
                        "prompt": "y",
                        "mask": {"rect": [0.5, 0.5, 0.5, 0.5]},
                        "control": {"image": "ready.png"},
                    },
                ],
            },
        },
        base_dir=tmp_path,
    )
    from hmedit.sampling.plan import build_plan

    plan = build_plan(sc, [1, 2], 64, 64, 8)
    nodes = control_nodes(sc, plan.flat, plan.effective, 64, 64)
    assert [c.id for c in nodes] == ["a", "b"]
    a, b = nodes
    # the layer (32 px, placed at 0, 0 on the 64 px frame at the reference size 64): its square's outline
    edges = a.image[0] > 0
    assert edges[8:24, 7:10].any() and not edges[12:20, 12:20].any() and not edges[40:].any()
    assert torch.equal(a.map, 0.5 * plan.effective[1]) and float(a.map.max()) == 0.5
    # the ready image resized to the frame (Lanczos keeps a flat colour)
    assert b.image.shape == (3, 64, 64) and torch.all(b.image[0] == 1) and torch.all(b.image[1:] == 0)
    assert torch.equal(b.map, plan.effective[2])
    groups = group_controls(nodes, {1: "m", 2: "m"})
    assert len(groups) == 1 and groups[0].weight_map((True, False)).equal(a.map)
    assert len(group_controls(nodes, {1: "m", 2: "n"})) == 2


def test_composed_image_takes_each_nodes_image_where_it_owns_the_pixels():
    one, two = torch.zeros(3, 4, 4), torch.ones(3, 4, 4)
    m1, m2 = torch.zeros(4, 4), torch.zeros(4, 4)
    m1[:, :2], m2[:, 2:3] = 1.0, 0.5
    out = compose_images([one, two], [m1, m2])
    assert torch.all(out[:, :, :2] == 0) and torch.all(out[:, :, 2] == 1)
    assert torch.all(out[:, :, 3] == 1)  # owned by no one: the brightest
    assert compose_images([two], [m1]) is two


def test_step_window_is_diffusers_control_guidance():
    c = ControlNode(0, "r", "root.control", 1.0, 0.25, 0.75, False, torch.zeros(3, 1, 1), torch.ones(1, 1))
    # diffusers: keep = not (i / n < start or (i + 1) / n > end)
    assert [c.keep(i, 8) for i in range(8)] == [False, False, True, True, True, True, False, False]
    g = ControlGroup("k", False, [c])
    assert g.active(0, 8) == (False,)


def test_missing_or_corrupt_control_images_name_the_file_and_node(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    sc = hmedit.load_scene(
        {
            "size": [64, 64],
            "root": {
                "prompt": "bg",
                "children": [{"id": "kid", "mask": {"rect": [0, 0, 1, 1]}, "control": {"image": "bad.png"}}],
            },
        },
        base_dir=tmp_path,
    )
    from hmedit.sampling.plan import build_plan

    plan = build_plan(sc, [1, 2], 64, 64, 8)
    with pytest.raises(HmeditError) as info:
        control_nodes(sc, plan.flat, plan.effective, 64, 64)
    text = str(info.value)
    assert "bad.png" in text and "'kid'" in text and "root.children[0].control.image" in text
    assert "\n" not in text


def test_huge_control_images_are_refused_before_decoding(tmp_path, monkeypatch):
    monkeypatch.setenv("HMEDIT_MAX_IMAGE_PIXELS", "1000")
    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    sc = _scene(tmp_path, {"image": "big.png"})
    from hmedit.sampling.plan import build_plan

    plan = build_plan(sc, [1, 2], 64, 64, 8)
    with pytest.raises(HmeditError, match=r"big.png.*the control image of node 'root'"):
        control_nodes(sc, plan.flat, plan.effective, 64, 64)


def test_validate_reads_control_pictures_and_names_the_field(tmp_path):
    from hmedit.masks.checks import validate

    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    path = tmp_path / "s.yaml"
    path.write_text("size: [64, 64]\nroot:\n  prompt: a\n  control: {source: bad.png}\n")
    _, diags = validate(path)
    (err,) = diags.errors
    assert err.location.field == "root.control.source" and "bad.png" in err.problem and err.location.line == 4


def test_controlnets_resolve_from_folders_the_hub_cache_and_the_bundle(tmp_path, monkeypatch):
    import json

    from hmedit.models.load import BUNDLED, resolve, resolve_controlnet

    snap = tmp_path / "hub" / "models--org--cn" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(json.dumps({"_class_name": "ControlNetModel"}))
    (tmp_path / "hub" / "models--org--cn" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--cn" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    ref = resolve_controlnet("org/cn")
    assert ref.source == "hub" and ref.path == snap
    local = tmp_path / "scene" / "nets" / "mine"
    local.mkdir(parents=True)
    (local / "config.json").write_text(json.dumps({"_class_name": "ControlNetModel"}))
    got = resolve_controlnet("nets/mine", base_dir=tmp_path / "scene")
    assert got.source == "folder" and got.path == local
    monkeypatch.setitem(BUNDLED, "toy-controlnet", local)
    assert resolve_controlnet("toy-controlnet").source == "bundled"
    with pytest.raises(HmeditError, match="'toy-controlnet' is a ControlNet, not a model"):
        resolve("toy-controlnet")
