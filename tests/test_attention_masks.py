"""Attention masks, word maps and ``hmedit dataset`` end to end: tiny random models (64 px, few steps) for the
plumbing, the toy model for one mask that must find the object the model drew."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from hmedit.cli.app import main
from hmedit.masks.attention import Probe, first_pass_scene, threshold
from hmedit.pipeline import Settings, render
from hmedit.scene.spec import Scene

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def scene(children=(), prompt="a red circle on a blue background", **kw) -> Scene:
    base = {
        "size": [64, 64],
        "steps": 3,
        "guidance": 5.0,
        "root": {"prompt": prompt, "children": list(children)},
    }
    base.update(kw)
    return Scene.model_validate(base)


ATTENTION = {
    "id": "c",
    "prompt": "a green circle",
    "mask": {"attention": {"of": "root", "word": "circle", "threshold": 0.4}},
}
BAND = {"id": "edge", "prompt": "a blue background", "mask": {"band": {"of": "c", "width": 6}}}


def run(*args) -> int:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    return info.value.code


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HMEDIT_CACHE", str(tmp_path / "cache"))


def test_attention_mask_is_the_first_pass_map_thresholded(tiny_model):
    m = tiny_model("sd1")
    sc = scene([ATTENTION, BAND])
    s = Settings.of(sc, m, seed=3)
    result = render(sc, m, s)
    first_scene = first_pass_scene(sc)
    assert [f.node.id for f in first_scene.flat()] == ["root"]
    first = render(first_scene, m, Settings.of(first_scene, m, seed=3), probes=[Probe("root", "circle")])
    expected = threshold(first.probes[Probe("root", "circle")], 0.4)
    assert torch.equal(result.maps["intrinsic/c"], expected)
    assert 0 < float(expected.mean()) < 1
    assert torch.allclose(result.maps["source/c"], first.probes[Probe("root", "circle")])
    # the band follows the attention mask's boundary
    from hmedit.masks.attention import band

    assert torch.allclose(result.maps["intrinsic/edge"], band(expected, 6.0))
    # same seed, same image; the first pass's recording does not change the first pass's image
    assert np.array_equal(render(sc, m, s).image, result.image)
    plain = render(first_scene, m, Settings.of(first_scene, m, seed=3))
    assert np.array_equal(plain.image, first.image)


def test_image_refined_map_and_auto_threshold(tiny_model):
    from hmedit.masks.attention import auto_threshold, guided_filter, normalise
    from hmedit.pipeline import attention_cell, image_guide

    m = tiny_model("sd1")
    node = {
        **ATTENTION,
        "mask": {"attention": {"of": "root", "word": "circle", "threshold": "auto", "refine": "image"}},
    }
    sc = scene([node])
    result = render(sc, m, Settings.of(sc, m, seed=3))
    first_scene = first_pass_scene(sc)
    raw, snapped = Probe("root", "circle"), Probe("root", "circle", "image")
    first = render(first_scene, m, Settings.of(first_scene, m, seed=3), probes=[raw, snapped])
    cell = attention_cell(m)
    assert cell == m.vae_scale_factor * min(m.family.cross_attention_factors(m.unet))
    guide = image_guide(first.image)
    # refine: image is the raw map filtered with the first pass's image as the guide
    assert torch.allclose(first.probes[snapped], normalise(guided_filter(first.probes[raw], guide, cell)))
    assert not torch.allclose(first.probes[snapped], first.probes[raw])
    # threshold: auto is Free-Mask's choice against the same image
    expected, t = auto_threshold(first.probes[snapped], guide, cell)
    assert torch.equal(result.maps["intrinsic/c"], expected)
    assert 0.2 <= t <= 0.7 and 0 < float(expected.mean()) < 1


def test_probes_leave_a_regional_render_unchanged(tiny_model):
    m = tiny_model("sd1")
    sc = scene([{"id": "a", "prompt": "a blue square", "mask": {"rect": [0, 0, 0.5, 1.0]}}])
    s = Settings.of(sc, m, seed=1)
    plain = render(sc, m, s)
    probed = render(sc, m, s, probes=[Probe("a"), Probe("root", "red circle", "self")])
    assert np.array_equal(plain.image, probed.image)
    maps = probed.probes
    assert set(maps) == {Probe("a"), Probe("root", "red circle", "self")}
    for mp in maps.values():
        assert mp.shape == (64, 64) and float(mp.min()) == 0.0 and float(mp.max()) == pytest.approx(1.0)
    # node a's prompt is pushed into its region (the left half) by the regional bias
    assert maps[Probe("a")][:, :28].mean() > 2 * maps[Probe("a")][:, 36:].mean()


def test_word_maps_in_a_tiled_render(tiny_model):
    m = tiny_model("sd1")
    sc = scene([{"id": "a", "prompt": "a blue square", "mask": {"rect": [0, 0, 0.5, 1.0]}}], size=[128, 64])
    s = Settings.of(sc, m, seed=1)
    assert s.tiling is not None
    result = render(sc, m, s, words=True)
    assert {(p.node, p.word) for p in result.probes} >= {("a", "square"), ("root", "circle")}
    assert all(mp.shape == (64, 128) for mp in result.probes.values())
    with pytest.raises(Exception, match="refine: self"):
        render(sc, m, s, probes=[Probe("a", None, "self")])


def test_unknown_probe_node_or_word_is_an_error(tiny_model):
    from hmedit.errors import HmeditError

    m = tiny_model("sd1")
    sc = scene()
    with pytest.raises(HmeditError, match="no node has id"):
        render(sc, m, Settings.of(sc, m, seed=1), probes=[Probe("nope")])
    with pytest.raises(HmeditError, match="'square'"):
        render(sc, m, Settings.of(sc, m, seed=1), probes=[Probe("root", "square")])


def write(folder, name, text):
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


SCENE = """
name: {name}
size: [64, 64]
steps: 2
seed: 4
root:
  prompt: a red circle on a blue background
  children:
    - id: box
      prompt: a yellow square
      mask: {{rect: [0.1, 0.1, 0.5, 0.5]}}
    - id: c
      prompt: a green circle
      mask: {{attention: {{of: root, word: circle}}}}
"""


def test_render_words_writes_a_map_per_word(tiny, tmp_path):
    path = write(tmp_path, "s.yaml", SCENE.format(name="s"))
    out = tmp_path / "out"
    assert run("render", path, "--model", tiny, "--out", out, "--words") == 0
    folder = out / "s"
    expected = {
        "root": {"a", "red", "circle", "on", "blue", "background"},
        "box": {"a", "yellow", "square"},
        "c": {"a", "green", "circle"},
    }
    for node, words in expected.items():
        files = {p.stem for p in (folder / "attention" / node).glob("*.png")}
        assert files == words, node
        with Image.open(
            folder / "attention" / node / "circle.png"
            if "circle" in words
            else folder / "attention" / node / "square.png"
        ) as img:
            assert img.mode == "L" and img.size == (64, 64)
            assert img.getextrema()[1] == 255  # normalised
            assert img.text["node"] == node
    record = json.loads((folder / "render.json").read_text())
    assert "attention/c/circle.png" in record["outputs"]
    assert not [p for p in folder.rglob("*") if ".tmp" in p.name]  # atomic writes leave no temp files
    # without --words the key differs: the scene renders again, and the word maps are stale outputs
    assert run("render", path, "--model", tiny, "--out", out) == 0
    assert not (folder / "attention" / "c" / "circle.png").exists()


def test_dataset_writes_images_and_coco_masks(tiny, tiny_model, tmp_path, capsys):
    coco_api = pytest.importorskip("pycocotools.coco")
    scenes = tmp_path / "scenes"
    write(scenes, "one.yaml", SCENE.format(name="one"))
    write(scenes, "two.yaml", SCENE.format(name="two").replace("yellow square", "white star"))
    write(scenes, "broken.yaml", "root: {prompt: x, children: [{id: a, prompt: y, mask: {band: {of: b}}}]}\n")
    out = tmp_path / "data"
    code = run("dataset", scenes, "--model", tiny, "--out", out, "--seeds", 2)
    text = capsys.readouterr().out
    assert code == 2  # the broken scene failed, in one line, and the others went on
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "broken.yaml" in errors[0] and "mask.band" in errors[0]
    assert "4 images" in text
    coco = coco_api.COCO(str(out / "annotations.json"))
    images = coco.loadImgs(coco.getImgIds())
    assert sorted(im["file_name"] for im in images) == [
        f"images/{n}-{s}.png" for n in ("one", "two") for s in (0, 1)
    ]
    assert {c["name"] for c in coco.loadCats(coco.getCatIds())} <= {"box", "c"}
    # each mask is the node's attention thresholded within its effective mask: re-render one seed and compare
    from hmedit.dataset import DEFAULT_THRESHOLD, REGION_MIN, node_masks, node_probes
    from hmedit.pipeline import attention_cell
    from hmedit.scene import load_scene

    model = tiny_model("sd1")
    sc = load_scene(scenes / "one.yaml")
    result = render(sc, model, Settings.of(sc, model, seed=1), probes=node_probes(sc))
    expected = node_masks(result, DEFAULT_THRESHOLD, attention_cell(model))
    image = next(im for im in images if im["file_name"] == "images/one-1.png")
    assert np.array_equal(np.asarray(Image.open(out / image["file_name"]).convert("RGB")), result.image)
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]]))
    assert {a["node"] for a in anns} == {k for k, v in expected.items() if v.any()}
    for ann in anns:
        mask = coco.annToMask(ann).astype(bool)
        assert np.array_equal(mask, expected[ann["node"]])
        assert ann["area"] == int(mask.sum()) > 0
        k = result.plan.ids.index(ann["node"])
        assert not (mask & ~(result.plan.effective[k] > REGION_MIN).numpy()).any()


def test_dataset_bad_input_is_one_line(tiny, tmp_path, capsys):
    assert run("dataset", tmp_path / "missing.yaml", "--model", tiny, "--out", tmp_path / "d") == 2
    err = capsys.readouterr().err
    assert "missing.yaml" in err and len(err.strip().splitlines()) == 1


def test_toy_attention_mask_finds_the_object_the_model_drew(toy_model):
    """On the toy model, a mask read from the word 'circle' covers the red pixels of the first pass."""
    from hmedit import metrics
    from hmedit.toy.world import PALETTE

    sc = Scene.model_validate(
        {
            "seed": 3,
            "steps": 20,
            "root": {"prompt": "a red circle on a blue background", "children": [ATTENTION]},
        }
    )
    s = Settings.of(sc, toy_model, seed=3)
    result = render(sc, toy_model, s)
    first = render(first_pass_scene(sc), toy_model, s)
    red = metrics.nearest_colour(first.image, PALETTE) == list(PALETTE).index("red")
    assert red.mean() > 0.05  # the model drew a circle
    iou = metrics.iou(result.maps["intrinsic/c"].numpy() > 0.5, red)
    assert iou > 0.6, iou
    # and the edit turns it green
    green = metrics.nearest_colour(result.image, PALETTE) == list(PALETTE).index("green")
    assert (green & red).sum() > 0.5 * red.sum()


def test_dataset_threshold_auto_and_refine_image(tiny, tiny_model, tmp_path, capsys):
    from hmedit.dataset import node_masks, node_probes
    from hmedit.pipeline import attention_cell
    from hmedit.scene import load_scene

    scenes = tmp_path / "scenes"
    write(scenes, "one.yaml", SCENE.format(name="one"))
    out = tmp_path / "data"
    assert run("dataset", scenes, "--model", tiny, "--out", out, "--seeds", 1, "--threshold", "nope") == 2
    assert not out.exists()
    args = ("--model", tiny, "--out", out, "--seeds", 1, "--threshold", "auto", "--refine", "image")
    assert run("dataset", scenes, *args) == 0
    data = json.loads((out / "annotations.json").read_text())
    model = tiny_model("sd1")
    sc = load_scene(scenes / "one.yaml")
    result = render(sc, model, Settings.of(sc, model, seed=0), probes=node_probes(sc, "image"))
    expected = node_masks(result, "auto", attention_cell(model))
    assert {a["node"] for a in data["annotations"]} == {k for k, v in expected.items() if v.any()}
    assert all(a["area"] == int(expected[a["node"]].sum()) for a in data["annotations"])


@pytest.mark.parametrize("inversion", ["none", "negative_prompt"])
def test_an_edit_that_keeps_every_pixel_reads_the_picture_at_a_noise_level(tiny_model, tmp_path, inversion):
    """An init image at noise 0 whose only edit is an attention node: the first pass would run no step (it
    used to fail with an internal error), so every node is read at READ_NOISE; nodes with noise keep the
    first pass as it was."""
    from PIL import Image

    from hmedit.masks.attention import READ_NOISE

    init = tmp_path / "init.png"
    Image.fromarray((np.random.default_rng(3).random((64, 64, 3)) * 255).astype(np.uint8)).save(init)
    kept = {"id": "k", "prompt": "a yellow square", "noise": 0.0, "mask": {"rect": [0, 0, 0.3, 0.3]}}
    sc = scene([ATTENTION, kept], init_image=str(init), inversion=inversion)
    sc = sc.model_copy(update={"root": sc.root.model_copy(update={"noise": 0.0})})
    first = first_pass_scene(sc)
    assert [(f.node.id, f.noise) for f in first.flat()] == [("root", READ_NOISE), ("k", READ_NOISE)]
    m = tiny_model("sd1")
    result = render(sc, m, Settings.of(sc, m, seed=3))
    assert 0 < float(result.maps["intrinsic/c"].mean()) < 1
    # a first pass that denoises somewhere is left as it is
    moving = scene([ATTENTION, {**kept, "noise": 0.3}], init_image=str(init))
    assert [f.noise for f in first_pass_scene(moving).flat()] == [
        f.noise for f in moving.flat() if f.node.id != "c"
    ]
