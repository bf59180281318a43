"""Mask refinement: the spec, the optimisation on synthetic targets (pure) and the render on tiny random
models."""

import numpy as np
import pytest
import torch
from PIL import Image

from hmedit.errors import HmeditError
from hmedit.masks.refine import RefineWeights, active_weight, refine_masks, total_variation
from hmedit.metrics import iou
from hmedit.scene import load_scene

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REFINE_SCENE = """
init_image: bg.png
root:
  prompt: a white background
  noise: 0
  REFINE_ROOT
  children:
    - id: box
      prompt: a red circle
      mask: {rect: [0.2, 0.2, 0.5, 0.5]}
      refine: REFINE
"""


def load_refine(write_scene, write_png, refine: str, root: str = ""):
    write_png("bg.png", "RGB", (64, 64), (245, 245, 245))
    text = REFINE_SCENE.replace("REFINE_ROOT", root).replace("REFINE", refine)
    return load_scene(write_scene(text))


@pytest.mark.parametrize(
    "refine, words",
    [
        ("{text: -1}", "root.children[0].refine.text: text must be >= 0 (got -1)"),
        ("{area: .nan}", "expected a finite number"),
        ("{tv: '0.1'}", "expected a number (got '0.1')"),
        ("{steps: 0}", "steps must be >= 1 (got 0)"),
        ("{text: 0, identity: 0, tv: 0, area: 0, hierarchy: 0}", "refine needs at least one weight above 0"),
        ("{idenity: 1}", "unknown key 'idenity' (did you mean 'identity'?)"),
        ("3", "refine is true, false or a mapping"),
    ],
)
def test_bad_refine_weights_are_one_line(write_scene, write_png, refine, words):
    with pytest.raises(HmeditError) as err:
        load_refine(write_scene, write_png, refine)
    text = str(err.value)
    assert words in text and "\n" not in text and "scene.yaml:" in text


def test_refine_defaults_and_where_it_is_refused(write_scene, write_png):
    sc = load_refine(write_scene, write_png, "true")
    assert RefineWeights.of(sc.root.children[0].refine) == RefineWeights()
    assert load_refine(write_scene, write_png, "false").root.children[0].refine is None
    with pytest.raises(HmeditError, match="the root cannot refine a mask"):
        load_refine(write_scene, write_png, "true", root="refine: true")
    text = REFINE_SCENE.replace("REFINE_ROOT", "").replace("REFINE", "true")
    text = text.replace("init_image: bg.png\n", "")
    with pytest.raises(HmeditError, match="refine needs the scene's init_image"):
        load_scene(write_scene(text))


def test_total_variation():
    flat = torch.full((16, 16), 0.7)
    checker = (torch.arange(16)[:, None] + torch.arange(16)[None]) % 2
    assert total_variation(flat) < 1e-2 < 1.0 < total_variation(checker.float())


def test_active_weight_is_the_active_share():
    eff = torch.stack([torch.full((4, 4), 0.25), torch.full((4, 4), 0.75), torch.zeros(4, 4)])
    assert torch.allclose(active_weight(eff, torch.tensor([False, True, True])), torch.full((4, 4), 0.75))
    nothing = active_weight(torch.zeros(3, 4, 4), torch.tensor([True, True, True]))
    assert torch.equal(nothing, torch.zeros(4, 4))


def square(y0, x0, y1, x1, size=48) -> torch.Tensor:
    m = torch.zeros(size, size)
    m[y0:y1, x0:x1] = 1
    return m


def synthetic(drawn: torch.Tensor, target: torch.Tensor):
    """A root (noise 0) and a child whose edit changed exactly ``target``'s pixels; the drawn box is off."""
    masks = torch.stack([torch.ones_like(drawn), drawn])
    source = torch.full((3, *drawn.shape), 0.9)
    edited = source.clone()
    edited[0][target > 0] = 0.9
    edited[1:, target > 0] = 0.1  # red where the target is
    return masks, source, edited


def red_text_loss(image, mask, k):
    """A stand-in for CLIP: how much of the masked region is not red (differentiable in the mask)."""
    redness = (image[0, 0] - image[0, 1:].mean(0)).clamp(0, 1)  # 0.8 on red pixels, 0 on grey
    return 1 - (mask * redness).sum() / (0.8 * mask.sum() + 1e-6)


def test_refinement_lowers_its_loss_and_finds_the_changed_region():
    target = square(14, 18, 34, 38)  # the true object
    drawn = square(8, 8, 36, 36)  # shifted up-left and grown
    masks, source, edited = synthetic(drawn, target)
    w = RefineWeights(steps=80, lr=0.2)
    out = refine_masks(
        masks,
        [-1, 0],
        torch.ones(2),
        "top_down",
        {1: w},
        active=torch.tensor([False, True]),
        edited=edited,
        source=source,
        text_loss=red_text_loss,
    )
    first, last = out.history[0], out.history[-1]
    assert last["loss"] < 0.6 * first["loss"]
    assert last["text"] < first["text"] and last["area"] < first["area"]
    before = iou(drawn.numpy(), target.numpy())
    after = iou(out.masks[1].numpy(), target.numpy())
    assert after > before + 0.15 and after > 0.6
    assert torch.equal(out.masks[0], masks[0])  # rows not refined are untouched
    assert float(out.masks[1][40:].max()) == 0.0  # far from everything: exactly 0, the source stays


def test_hierarchy_term_pulls_a_child_inside_its_parent():
    parent = square(0, 0, 24, 48)  # the top half
    child = square(12, 10, 36, 30)  # half of it below the parent
    masks = torch.stack([torch.ones(48, 48), parent, child])
    source = torch.full((3, 48, 48), 0.5)
    kw = dict(active=torch.tensor([False, True, True]), edited=source.clone(), source=source)
    only_h = RefineWeights(steps=60, text=0, identity=0, tv=0, area=0, hierarchy=10.0, lr=0.2)
    out = refine_masks(masks, [-1, 0, 1], torch.ones(3), "top_down", {2: only_h}, **kw)
    outside = lambda m: float((m * (1 - parent)).sum())  # noqa: E731
    assert outside(out.masks[2]) < 0.2 * outside(child)
    assert float((out.masks[2] * parent).sum()) > 0.8 * float((child * parent).sum())  # inside is kept


def test_refinement_is_deterministic_and_nothing_to_refine_is_a_no_op():
    masks, source, edited = synthetic(square(8, 8, 36, 36), square(14, 18, 34, 38))
    args = (masks, [-1, 0], torch.ones(2), "normalized")
    kw = dict(active=torch.tensor([False, True]), edited=edited, source=source, text_loss=red_text_loss)
    a = refine_masks(*args, {1: RefineWeights(steps=5)}, **kw)
    b = refine_masks(*args, {1: RefineWeights(steps=5)}, **kw)
    assert torch.equal(a.masks, b.masks)
    assert refine_masks(*args, {}, **kw).masks is masks


def test_refine_render_on_tiny_models(tiny_model, tiny_clip_dir, tmp_path):
    from hmedit.pipeline import Settings, render
    from hmedit.scene.spec import Scene

    src = np.full((64, 64, 3), 240, np.uint8)
    src[20:44, 24:48] = (200, 30, 30)
    Image.fromarray(src).save(tmp_path / "src.png")
    raw = {
        "size": [64, 64],
        "steps": 3,
        "guidance": 5.0,
        "init_image": str(tmp_path / "src.png"),
        "clip": str(tiny_clip_dir),
        "root": {
            "prompt": "a white background",
            "noise": 0.0,
            "children": [
                {
                    "id": "box",
                    "prompt": "a blue square",
                    "noise": 0.8,
                    "mask": {"rect": [0.25, 0.2, 0.5, 0.5]},
                    "refine": {"steps": 4},
                }
            ],
        },
    }
    sc = Scene.model_validate(raw)
    m = tiny_model("sd1")
    r = render(sc, m, Settings.of(sc, m, 0))
    drawn, refined = r.maps["drawn/box"], r.maps["intrinsic/box"]
    assert not torch.allclose(drawn, refined, atol=1e-3)
    assert torch.allclose(refined, r.plan.intrinsic[1])  # the render used the refined mask
    info = r.masks["box"]
    assert set(info["loss_first"]) == {"loss", "text", "identity", "tv", "area", "hierarchy"}
    outside = (r.plan.keep_alpha == 0).numpy()
    assert outside.mean() > 0.3  # far from the box the refined mask is exactly 0 ...
    change = np.abs(r.image.astype(int) - src.astype(int)).max(-1)
    assert change[outside].max() <= 1  # ... and the source stays


def test_every_scored_node_adds_its_text_term_in_its_effective_region():
    masks, source, edited = synthetic(square(8, 8, 36, 36), square(14, 18, 34, 38))
    seen: list[tuple[int, float]] = []

    def spy(image, mask, k):
        seen.append((k, float(mask.detach().sum())))
        return red_text_loss(image, mask, k)

    kw = dict(active=torch.tensor([False, True]), edited=edited, source=source, text_loss=spy)
    refine_masks(masks, [-1, 0], torch.ones(2), "top_down", {1: RefineWeights(steps=1)}, **kw)
    assert [k for k, _ in seen] == [1]  # by default the refined nodes
    seen.clear()
    refine_masks(
        masks, [-1, 0], torch.ones(2), "top_down", {1: RefineWeights(steps=1)}, text_nodes=[0, 1], **kw
    )
    assert [k for k, _ in seen] == [0, 1]
    # top_down: the root's effective region is the frame less the child's
    assert abs(seen[0][1] + seen[1][1] - 48 * 48) < 1.0


def test_the_edit_refinement_scores_renders_refined_nodes_at_half_their_noise(write_scene, write_png):
    from hmedit.sampling.mask_search import PROPOSAL_NOISE, _proposal

    sc = load_refine(write_scene, write_png, "true\n      noise: 0.8")
    prop = _proposal(sc, {1: RefineWeights()})
    assert [f.noise for f in sc.flat()] == [0.0, 0.8]
    assert [f.noise for f in prop.flat()] == [0.0, 0.8 * PROPOSAL_NOISE]
    assert prop.source == sc.source and prop.root.children[0].mask == sc.root.children[0].mask
