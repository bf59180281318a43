"""Edit pairs (scene key ``edits``, hmedit.sampling.edits) and region fusion (``regions: fusion``) on tiny
random components: spec checks, targets, output paths, one batch against separate renders, prompt-to-prompt
injection, and fusion against the plain render."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hmedit.attention.processor import RegionCall
from hmedit.masks.checks import validate
from hmedit.pipeline import Settings, render
from hmedit.scene.spec import Scene

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = {
    "prompt": "a blue background",
    "children": [
        {"id": "a", "prompt": "a red square", "mask": {"rect": [0.0, 0.0, 0.5, 0.5]}},
        {"id": "b", "prompt": "a yellow circle", "mask": {"ellipse": [0.5, 0.5, 0.5, 0.5]}},
    ],
}


def raw(**kw) -> dict:
    out = {"size": [64, 64], "steps": 4, "guidance": 5.0, "scheduler": "ddim", "root": ROOT}
    out.update(kw)
    return out


def scene(**kw) -> Scene:
    return Scene.model_validate(raw(**kw))


def run(sc: Scene, model, seed: int = 0):
    return render(sc, model, Settings.of(sc, model, seed))


# ------------------------------------------------------------------------------------------ the spec
def _errors(write_scene, text: str) -> list:
    sc, diags = validate(write_scene(text))
    assert sc is None and diags.errors
    return diags.errors


BASE_YAML = """
root:
  prompt: a blue background
  children:
    - {id: a, prompt: a red square, mask: {rect: [0, 0, 0.5, 0.5]}}
edits:
"""


@pytest.mark.parametrize(
    "edits, field, problem",
    [
        ("  - {id: x, node: ball, prompt: p}", "edits[0].node", "no node 'ball' in the scene"),
        (
            "  - {id: x, node: a, prompt: p}\n  - {id: x, node: a, remove: true}",
            "edits[1].id",
            "duplicate edit id 'x' (also used by edits[0])",
        ),
        ("  - {id: x, node: root, remove: true}", "edits[0].remove", "the root cannot be removed"),
        (
            "  - {id: x, add: {id: a, mask: {rect: [0, 0, 0.1, 0.1]}}}",
            "edits[0].add.id",
            "the added node's id 'a' is already used",
        ),
        ("  - {id: x, add: {id: c, prompt: p}}", "edits[0].add", "an added node needs a mask or a layer"),
        ("  - {id: x, node: a}", "edits[0]", "an edit has exactly one of"),
        ("  - {id: x, node: a, prompt: p, parent: root}", "edits[0]", "parent applies only to add"),
        ("  - {id: x, add: {id: c, mask: {rect: [0, 0, 1, 1]}}, parent: nope}", "edits[0].parent", "no node"),
    ],
)
def test_edit_spec_mistakes_are_one_line_errors_at_their_field(write_scene, edits, field, problem):
    errors = _errors(write_scene, BASE_YAML + edits + "\n")
    found = [e for e in errors if e.location.field == field]
    assert found, [e.format() for e in errors]
    assert problem in found[0].problem
    assert "\n" not in found[0].format() and found[0].location.line is not None


def test_edit_targets_change_remove_or_add_one_node():
    add = {"id": "c", "prompt": "a white circle", "mask": {"ellipse": [0.1, 0.6, 0.3, 0.3]}}
    sc = scene(
        edits=[
            {"id": "green", "node": "a", "prompt": "a green square"},
            {"id": "no-b", "node": "b", "remove": True},
            {"id": "plus", "add": add, "parent": "a"},
        ]
    )
    green, no_b, plus = (sc.edit_target(e) for e in sc.edits)
    assert [(f.node.id, f.node.prompt) for f in green.flat()] == [
        ("root", "a blue background"),
        ("a", "a green square"),
        ("b", "a yellow circle"),
    ]
    assert [f.node.id for f in no_b.flat()] == ["root", "a"]
    assert [(f.node.id, f.parent) for f in plus.flat()] == [("root", -1), ("a", 0), ("c", 1), ("b", 0)]
    assert not green.edits and sc.edit_target("green") == green
    assert sc.root == Scene.model_validate(raw()).root  # the source is left alone


# ------------------------------------------------------------------------------------------ rendering
def test_one_batch_equals_separate_renders_without_injection(tiny_model):
    m = tiny_model("sd1")
    edits = [
        {"id": "same", "node": "a", "prompt": "a red square", "inject": 0.0},
        {"id": "green", "node": "a", "prompt": "a green square", "inject": 0.0},
        {"id": "no-b", "node": "b", "remove": True, "inject": 0.0},
    ]
    sc = scene(edits=edits)
    pair = run(sc, m)
    assert list(pair.edits) == ["same", "green", "no-b"]
    # an edit that changes nothing: the target is the source, bit for bit
    assert np.array_equal(pair.edits["same"].image, pair.image)
    for key in ("intrinsic/a", "effective/b", "attention/a"):
        assert torch.equal(pair.edits["same"].maps[key], pair.maps[key])
    # each copy as its own render (batch size aside: float rounding only)
    alone = run(scene(), m)
    assert np.abs(alone.image.astype(int) - pair.image.astype(int)).max() <= 1
    for e in sc.edits[1:]:
        own = run(sc.edit_target(e), m)
        assert np.abs(own.image.astype(int) - pair.edits[e.id].image.astype(int)).max() <= 1
        assert not np.array_equal(own.image, pair.image)
    assert "attention/b" not in pair.edits["no-b"].maps and "attention/a" in pair.edits["no-b"].maps


def test_injection_takes_the_sources_attention_in_untouched_nodes_for_the_first_steps(tiny_model):
    from hmedit.sampling import edits as E
    from hmedit.sampling.denoise import Denoiser

    m = tiny_model("sd1")
    sc = scene(edits=[{"id": "green", "node": "a", "prompt": "a green square extra words", "inject": 0.5}])
    captured: list[Denoiser] = []
    orig = Denoiser.__init__

    def spy(self, *a, **kw):
        orig(self, *a, **kw)
        captured.append(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Denoiser, "__init__", spy)
        pair = run(sc, m)
    copies = captured[-1].parts[0]
    assert isinstance(copies, E.Copies)
    inject = copies.inject[1]  # [T] per cond token of the target: the source token it takes, or -1
    tgt_owner = copies.regions[1].owners[-1][: len(inject)]  # the target's cond tokens' nodes
    src_owner = copies.regions[0].owners[-1]
    assert (inject[tgt_owner == 1] == -1).all()  # the edited node (a) keeps its own attention
    assert (inject[tgt_owner == 2] >= 0).all() and (src_owner[inject[tgt_owner == 2]] == 2).all()  # b: b's
    root = inject[tgt_owner == -1]  # the root's window: the same positions
    assert torch.equal(root, torch.nonzero(tgt_owner == -1)[:, 0])
    assert copies.inject[0] is None  # the source is its own
    # during the first half of the steps only
    n = copies.n_run
    t = max(r.owners.shape[1] for r in copies.regions)
    assert all(copies._inject(i, t) is not None for i in range(n // 2))
    assert all(copies._inject(i, t) is None for i in range(n // 2, n))
    # and it changes the target, not the source
    plain = run(scene(edits=[{**sc.edits[0].model_dump(exclude_unset=True), "inject": 0.0}]), m)
    assert np.array_equal(plain.image, pair.image)
    assert not np.array_equal(plain.edits["green"].image, pair.edits["green"].image)


def test_inject_source_replaces_only_the_named_tokens_of_the_targets_cond_rows():
    k, n, t, heads = 2, 4, 5, 2
    call = RegionCall(
        {n: torch.zeros(2, k, n)},
        {n: torch.ones(2, k, dtype=torch.bool)},
        torch.full((2, 2, t), -1),
        torch.ones(2, 2, t, dtype=torch.bool),
        torch.ones(2, k),
        torch.ones(2, k),
        1.0,
        inject=torch.tensor([[-1] * t, [0, 1, -1, 4, -1]]),
    )
    probs = torch.rand(4, heads, n, t)  # [uncond src, uncond tgt, cond src, cond tgt]
    out = call.inject_source(probs, 2)
    assert torch.equal(out[:3], probs[:3])
    assert torch.equal(out[3][..., [0, 1]], probs[2][..., [0, 1]])
    assert torch.equal(out[3][..., 3], probs[2][..., 4])
    assert torch.equal(out[3][..., [2, 4]], probs[3][..., [2, 4]])


def test_editing_a_root_only_scene_from_an_inverted_image(tiny_model, tmp_path):
    from PIL import Image

    from hmedit.sampling.inversion import InversionCache

    m = tiny_model("sd1")
    init = tmp_path / "init.png"
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(init)
    base = {"init_image": str(init), "inversion": "negative_prompt", "root": {"prompt": "a red circle"}}
    edits = [
        {"id": "same", "node": "root", "prompt": "a red circle"},
        {"id": "blue", "node": "root", "prompt": "a blue circle"},
    ]
    sc = scene(**base, edits=edits)
    cache = InversionCache(tmp_path / "cache")
    pair = render(sc, m, Settings.of(sc, m, 0), inversions=cache)
    alone = render(scene(**base), m, Settings.of(scene(**base), m, 0), inversions=cache)
    assert np.abs(alone.image.astype(int) - pair.image.astype(int)).max() <= 1
    assert np.array_equal(pair.edits["same"].image, pair.image)
    assert not np.array_equal(pair.edits["blue"].image, pair.image)


def test_an_inverted_pair_guides_its_edited_node_as_a_render_of_the_target_does(
    tiny_model, tmp_path, monkeypatch
):
    """Negative-prompt inversion: a target's edited node is guided against its negatives (edit guidance), in
    the pair as in a render of the target scene alone (without injection: the same render)."""
    from PIL import Image

    from hmedit.sampling import inversion as I

    m = tiny_model("sd1")
    init = tmp_path / "init.png"
    Image.fromarray((np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8)).save(init)
    base = {"init_image": str(init), "inversion": "negative_prompt"}
    sc = scene(**base, edits=[{"id": "green", "node": "a", "prompt": "a green square", "inject": 0.0}])
    cache = I.InversionCache(tmp_path / "cache")
    target = sc.edit_target(sc.edits[0])
    seen = []
    real = I.EditGuidance.predict

    def spy(self, x, t, i, windows=None):
        seen.append(x.shape[0])
        return real(self, x, t, i, windows)

    monkeypatch.setattr(I.EditGuidance, "predict", spy)
    pair = render(sc, m, Settings.of(sc, m, 0), inversions=cache)
    alone = render(target, m, Settings.of(target, m, 0), inversions=cache)
    assert seen and seen[0] == 2 and seen[-1] == 1  # the pair's two copies, then the target alone
    assert np.abs(alone.image.astype(int) - pair.edits["green"].image.astype(int)).max() <= 1


def test_edit_outputs_are_written_beside_the_source(tiny_model, tiny, tmp_path):
    from hmedit.jobs import edit_image_name, plan_job, run_job

    assert edit_image_name("green", 3, [3]) == "edits/green.png"
    assert edit_image_name("green", 3, [3, 4]) == "edits/green-3.png"
    sc = scene(seeds=[1, 2], edits=[{"id": "green", "node": "a", "prompt": "a green square"}])
    job = plan_job(sc, model=str(tiny))
    rec = run_job(job).save(tmp_path / "out")
    out = tmp_path / "out"
    for name in ("edits/green-1.png", "edits/green-2.png", "edits/green/influence.safetensors"):
        assert (out / name).is_file() and name in rec["outputs"]
    assert (out / "edits/green/influence/a.png").is_file()
    assert load_file(out / "edits/green/influence.safetensors").keys() >= {"effective/a", "attention/a"}
    assert rec["edits"] == {
        "green": {"kind": "prompt", "node": "a", "inject": 0.5, "blend": 0.0, "regions": "attention"}
    }
    # the edits are part of the key
    other = plan_job(
        scene(seeds=[1, 2], edits=[{"id": "green", "node": "a", "prompt": "a pink square"}]), model=str(tiny)
    )
    assert other.key != job.key


def test_blend_keeps_the_sources_latents_outside_the_edited_region_for_its_steps():
    from hmedit.sampling.edits import StackedHolds

    keep = torch.zeros(3, 4, 4, dtype=torch.bool)
    keep[1, :, :2] = True  # copy 1 keeps the source in the left half
    keep[2] = True
    holds = StackedHolds([None] * 3, keep, [0.0, 0.5, 0.25], 4)
    x = torch.stack([torch.full((1, 4, 4), float(c)) for c in range(3)])  # [3, 1, 4, 4]
    out = holds.after_step(x, 0)
    assert torch.equal(out[0], x[0]) and (out[1][..., :2] == 0).all() and (out[1][..., 2:] == 1).all()
    assert (out[2] == 0).all()
    out = holds.after_step(x, 1)  # copy 2's blend (a quarter of 4 steps) is over
    assert (out[2] == 2).all() and (out[1][..., :2] == 0).all()
    assert torch.equal(holds.after_step(x, 2), x)


def test_a_full_blend_keeps_the_sources_latents_outside_the_edit(tiny_model):
    m = tiny_model("sd1")
    sc = scene(edits=[{"id": "green", "node": "a", "prompt": "a green square", "blend": 1.0, "inject": 0.0}])
    pair = run(sc, m)
    src, tgt = pair.image.astype(int), pair.edits["green"].image.astype(int)
    far = np.zeros((64, 64), bool)
    far[48:, :16] = True  # far from a (top left quarter) and off b (the lower right ellipse)
    free = run(scene(edits=[{**sc.edits[0].model_dump(exclude_unset=True), "blend": 0.0}]), m)
    outside = np.abs(src - tgt)[far].mean()
    assert outside < np.abs(free.image.astype(int) - free.edits["green"].image.astype(int))[far].mean()


# ------------------------------------------------------------------------------------------ fusion
def test_fusion_of_a_root_only_scene_is_the_plain_render(tiny_model):
    m = tiny_model("sd1")
    root = {"prompt": "a red circle", "negative": "blue"}
    plain = run(scene(root=root), m)
    fused = run(scene(root=root, regions="fusion"), m)
    assert np.array_equal(plain.image, fused.image)


def test_fusion_denoises_each_node_over_its_window_and_differs_from_attention(tiny_model):
    from hmedit.sampling.tiled import region_window

    m = tiny_model("sd1")
    fused = run(scene(regions="fusion"), m)
    attention = run(scene(), m)
    assert not np.array_equal(fused.image, attention.image)
    w = torch.zeros(16, 16)
    w[2:5, 3:6] = 1
    win = region_window(w, 4, 8)
    assert (win.height, win.width) == (8, 8) and win.y0 <= 2 and win.y1 >= 5 and win.x0 <= 3 and win.x1 >= 6
    assert region_window(torch.zeros(4, 4), 4, 8) is None
    w[10:16, 12:16] = 1  # near the border: the window stays inside
    win = region_window(w, 4, 4)
    assert win.y1 <= 16 and win.x1 <= 16


def test_fusion_refuses_tiling_with_a_one_line_error(tiny_model):
    from hmedit.errors import HmeditError

    m = tiny_model("sd1")
    sc = scene(regions="fusion", tiling={"force": True, "tile": 8, "overlap": 2})
    with pytest.raises(HmeditError, match="fusion does not work with tiling"):
        run(sc, m)
