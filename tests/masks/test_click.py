"""Click masks: the spec, the potential field (pure, on synthetic gradients) and the render on tiny random
models (a tiny random CLIP scores the regions)."""

import numpy as np
import pytest
import torch
from PIL import Image

from hmedit.errors import HmeditError
from hmedit.masks.click import boundary_band, initial_potential, soft_mask, update_potential
from hmedit.masks.raster import feather
from hmedit.metrics import iou
from hmedit.scene import load_scene

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLICK_SCENE = """
init_image: bg.png
root:
  prompt: a white background
  noise: 0
  children:
    - id: dot
      prompt: a red circle
      mask: MASK
"""


def load_click(write_scene, write_png, mask: str):
    write_png("bg.png", "RGB", (64, 64), (245, 245, 245))
    return load_scene(write_scene(CLICK_SCENE.replace("MASK", mask)))


@pytest.mark.parametrize(
    "mask, words",
    [
        ("{click: [1.2, 0.5]}", "root.children[0].mask.click[0]: click must be <= 1 (got 1.2)"),
        ("{click: [0.5, -0.1]}", "root.children[0].mask.click[1]: click must be >= 0 (got -0.1)"),
        ("{click: [0.5]}", "too few values"),
        ("{click: [0.5, 0.5], radius: 0}", "radius must be > 0"),
        ("{click: [0.5, 0.5], window: [0.3, 0.1]}", "window must be [start, end] with start < end"),
        ("{click: [0.5, 0.5], candidates: 0}", "candidates must be >= 1"),
        ("{click: [0.5, 0.5], radious: 0.2}", "unknown key 'radious' (did you mean 'radius'?)"),
        ("{click: [0.5, 0.5], rect: [0, 0, 1, 1]}", "a mask has exactly one shape"),
    ],
)
def test_bad_click_is_one_line_at_its_place(write_scene, write_png, mask, words):
    with pytest.raises(HmeditError) as err:
        load_click(write_scene, write_png, mask)
    text = str(err.value)
    assert words in text and "\n" not in text
    assert "scene.yaml:8:" in text  # the mask's line


def test_click_needs_an_init_image(write_scene):
    text = CLICK_SCENE.replace("MASK", "{click: [0.5, 0.5]}").replace("init_image: bg.png\n", "")
    with pytest.raises(HmeditError, match="click mask needs the scene's init_image"):
        load_scene(write_scene(text))


def test_click_spec_defaults(write_scene, write_png):
    sc = load_click(write_scene, write_png, "{click: [0.25, 0.75]}")
    spec = sc.root.children[0].mask
    assert spec.click == (0.25, 0.75) and spec.candidates == 3 and spec.radius == 0.2
    assert sc.clip is None  # the default: the bundled toy CLIP (hmedit.clip.load)


def test_initial_bump_is_a_disc_of_the_radius_at_the_click():
    p = initial_potential((0.25, 0.5), 0.2, 100, 200)  # the radius is a fraction of the shorter side: 20 px
    m = soft_mask(p)
    # the click (x = 50 px, y = 50 px) is the corner the four pixels 49..50 share: they hold the peak
    assert torch.allclose(p[49:51, 49:51], p.max().expand(2, 2))
    assert m[50, 50] > 0.99 and m[50, 50 + 18] > 0.5 > m[50, 50 + 20] and m[50 + 20, 50] < 0.5
    assert abs(float((m > 0.5).sum()) - np.pi * 20**2) < 0.03 * np.pi * 20**2


def test_update_is_pure_and_moves_only_near_the_boundary():
    p = initial_potential((0.5, 0.5), 0.25, 64, 64)
    before = p.clone()
    grad = torch.zeros(64, 64)
    grad[:, 32:] = -1.0  # enlarging the mask on the right lowers the loss
    grad[:, :32] = 1.0  # on the left it raises it
    q = update_potential(p, grad, step=0.2, shrink=0.0, smooth=0.0)
    assert torch.equal(p, before)  # the input is left alone
    moved = (q - p).abs()
    band = boundary_band(p)
    assert moved[band < 1e-3].max() < 1e-3  # far from the boundary nothing moves
    grown = soft_mask(q) - soft_mask(p)
    right, left = grown[:, 32:].sum(), grown[:, :32].sum()
    assert right > 20 and left < -20  # grows where the gradient is negative, shrinks where positive
    assert float(q.min()) >= 0 and float(q.max()) <= 1


def test_flat_gradient_contracts_the_mask():
    p = initial_potential((0.5, 0.5), 0.3, 64, 64)
    q = p
    for _ in range(5):
        q = update_potential(q, torch.zeros(64, 64), step=0.2, shrink=0.5)
    assert soft_mask(q).sum() < 0.8 * soft_mask(p).sum()


def test_gradient_is_scale_free():
    p = initial_potential((0.5, 0.5), 0.25, 32, 32)
    g = torch.randn(32, 32)
    assert torch.allclose(
        update_potential(p, g, step=0.3), update_potential(p, g * 1e-4, step=0.3), atol=1e-5
    )
    with pytest.raises(ValueError, match="does not fit"):
        update_potential(p, torch.zeros(16, 16), step=0.3)


def test_synthetic_loss_gradients_lead_the_mask_to_a_shifted_target():
    """The loss mean((m - target)^2) of a square beside the click: following its gradient near the boundary,
    the bump turns into the square."""
    target = torch.zeros(64, 64)
    target[24:52, 30:58] = 1.0
    p = initial_potential((0.5, 0.5), 0.3, 64, 64)
    start = iou(soft_mask(p).numpy(), target.numpy())
    for _ in range(60):
        m = soft_mask(p).requires_grad_(True)
        (grad,) = torch.autograd.grad(((m - target) ** 2).mean(), m)
        p = update_potential(p, grad, step=0.1, shrink=0.0)
    end = iou(soft_mask(p).numpy(), target.numpy())
    assert start < 0.5 and end > 0.85


# ---------------------------------------------------------------------------------------------------------
# The render (tiny random diffusion model, tiny random CLIP)


def click_scene(tmp_path, clip_dir, noise=1.0, inversion="none", **mask):
    from hmedit.scene.spec import Scene

    rng = np.random.default_rng(0)
    src = np.zeros((64, 64, 3), np.uint8)
    src[..., 2] = 200
    src[::7] = rng.integers(0, 255, (10, 64, 3))  # some texture, so pasting back is visible
    Image.fromarray(src).save(tmp_path / "src.png")
    spec = {"click": [0.3, 0.6], "radius": 0.25, "candidates": 2, "window": [0.0, 1.0], **mask}
    raw = {
        "size": [64, 64],
        "steps": 4,
        "guidance": 5.0,
        "seed": 3,
        "init_image": str(tmp_path / "src.png"),
        "clip": str(clip_dir),
        "inversion": inversion,
        "root": {
            "prompt": "a blue background",
            "noise": 0.0,
            "children": [
                {"id": "dot", "prompt": "a red circle", "noise": noise, "feather": 1.0, "mask": spec}
            ],
        },
    }
    return Scene.model_validate(raw), src


def test_click_render_grows_a_mask_and_keeps_the_source_outside(tiny_model, tiny_clip_dir, tmp_path):
    from hmedit.pipeline import Settings, render

    m = tiny_model("sd1")
    sc, src = click_scene(tmp_path, tiny_clip_dir)
    r = render(sc, m, Settings.of(sc, m, 3))
    info = r.masks["dot"]
    assert len(info["scores"]) == 2 and info["best"] == int(np.argmin(info["scores"]))
    assert info["moves"] > 0
    drawn, final = r.maps["drawn/dot"], r.maps["intrinsic/dot"]
    assert drawn.shape == final.shape == (64, 64)
    assert not torch.allclose(drawn, final, atol=1e-3)  # the mask moved
    bump = feather(soft_mask(initial_potential((0.3, 0.6), 0.25, 64, 64)), 1.0)  # drawn as the node's feather
    assert torch.allclose(drawn, bump, atol=1e-6)
    # outside the final mask and its feather every pixel is the source's
    outside = (r.plan.keep_alpha == 0).numpy()
    assert outside.mean() > 0.3
    diff = np.abs(r.image.astype(int) - src.astype(int)).max(-1)
    assert diff[outside].max() <= 1
    assert diff[~outside].max() > 10  # and inside, the node re-made its pixels
    # the found mask composes with the parent like any other: the effective maps come from it
    assert torch.allclose(r.maps["effective/dot"], r.plan.effective[1])


def test_click_render_is_deterministic(tiny_model, tiny_clip_dir, tmp_path):
    from hmedit.pipeline import Settings, render

    m = tiny_model("sd1")
    sc, _ = click_scene(tmp_path, tiny_clip_dir, candidates=1)
    a = render(sc, m, Settings.of(sc, m, 3, record=False))
    b = render(sc, m, Settings.of(sc, m, 3, record=False))
    assert np.array_equal(a.image, b.image) and torch.equal(a.maps["intrinsic/dot"], b.maps["intrinsic/dot"])


def test_click_node_at_noise_zero_keeps_its_bump_and_the_source(tiny_model, tiny_clip_dir, tmp_path):
    from hmedit.pipeline import Settings, render

    m = tiny_model("sd1")
    sc, src = click_scene(tmp_path, tiny_clip_dir, noise=0.0)
    r = render(sc, m, Settings.of(sc, m, 3, record=False))
    assert r.masks["dot"]["moves"] == 0
    assert np.abs(r.image.astype(int) - src.astype(int)).max() <= 1


def test_invert_searches_the_click_mask_so_a_render_finds_its_inversion(tiny_model, tiny_clip_dir, tmp_path):
    """``hmedit invert`` (invert_scene) plans with the grown click mask, as the render does: the render then
    takes the inversion from the cache (it inverted under other regions before, a cache miss)."""
    from hmedit.pipeline import Settings, render
    from hmedit.sampling.inversion import InversionCache, invert_scene

    m = tiny_model("sd1")
    sc, _ = click_scene(tmp_path, tiny_clip_dir, inversion="ddim", candidates=1)
    s = Settings.of(sc, m, 3, record=False)
    cache = InversionCache(tmp_path / "inversions")
    first = invert_scene(sc, m, s, cache=cache)
    assert first is not None and not first.cached
    inverted: list = []
    r = render(sc, m, s, inversions=cache, on_invert=lambda *a: inverted.append(a))
    assert r.masks["dot"]["moves"] > 0  # the render grew the mask: the regions differ from the drawn bump
    assert inverted == [] and len(list((tmp_path / "inversions").iterdir())) == 1
