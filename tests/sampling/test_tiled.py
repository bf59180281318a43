"""Tiled sampling in the render: parity with diffusers' Panorama pipeline, equality with untiled rendering
when one window covers everything, masks and noise levels intact across windows."""

import numpy as np
import pytest
import torch
from PIL import Image

from hmedit.errors import HmeditError
from hmedit.models.family import Family
from hmedit.pipeline import Settings, coarse_size, render
from hmedit.sampling.plan import build_plan
from hmedit.sampling.tiled import Tiler, TileSettings, resolve_tiling
from hmedit.sampling.tiling import Window, panorama_views
from hmedit.scene.spec import Scene, Tiling

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REGIONS = {
    "prompt": "a yellow background",
    "children": [
        {"id": "small", "prompt": "a red circle", "mask": {"ellipse": [0.1, 0.1, 0.15, 0.2]}},
        {"id": "wide", "prompt": "a blue square", "mask": {"rect": [0.05, 0.55, 0.9, 0.4]}},
    ],
}


def scene(**kw) -> Scene:
    base = {"size": [64, 64], "steps": 4, "guidance": 5.0, "root": {"prompt": "a red circle"}}
    base.update(kw)
    return Scene.model_validate(base)


def max_diff(a, b) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


def panorama(model, prompt, *, height, width, steps, guidance, seed, window, stride, negative=None):
    """diffusers' StableDiffusionPanoramaPipeline on ``model``'s modules, its views set to ``window`` and
    ``stride`` latent px (get_views assumes a VAE factor of 8; ours computes them in latent px)."""
    from diffusers import StableDiffusionPanoramaPipeline

    from hmedit.models.load import make_scheduler

    pipe = StableDiffusionPanoramaPipeline(
        **model.components(), scheduler=make_scheduler("ddim", model.scheduler_config)
    )
    pipe.set_progress_bar_config(disable=True)
    f = model.vae_scale_factor
    pipe.get_views = lambda h, w, **_: [
        tuple(v) for v in panorama_views(h // 8 * 8 // f, w // 8 * 8 // f, window, stride)
    ]
    out = pipe(
        prompt,
        negative_prompt=negative,
        height=height,
        width=width,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="np",
    ).images
    return (out[0] * 255).round().astype(np.uint8)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_uniform_tiling_without_offsets_equals_diffusers_panorama(tiny_model, family):
    m = tiny_model(family)
    # latent 48x64 in windows of 32 with stride 16: 2x3 windows, every pixel covered, as Panorama's grid
    sc = scene(
        size=[128, 96],
        root={"prompt": "a red circle", "negative": "blue"},
        tiling={"tile": 32, "overlap": 16, "weighting": "uniform", "offsets": False, "fade": False},
    )
    s = Settings.of(sc, m, seed=5, record=False)
    assert s.tiling is not None and s.tiling.stride == 16
    ours = render(sc, m, s).image
    ref = panorama(
        m,
        "a red circle",
        negative="blue",
        height=96,
        width=128,
        steps=4,
        guidance=5.0,
        seed=5,
        window=32,
        stride=16,
    )
    assert max_diff(ours, ref) <= 2


@pytest.mark.slow
def test_bundled_model_tiled_equals_panorama(toy_model):
    """Acceptance: on the bundled model, uniform weights, no offsets, Panorama's window and stride."""
    sc = scene(
        size=[256, 192],
        steps=5,
        root={"prompt": "a green star on a pink background"},
        # every window from noise, as Panorama (the toy preset's coarse pass is off)
        tiling={
            "tile": 16,
            "overlap": 8,
            "weighting": "uniform",
            "offsets": False,
            "fade": False,
            "coarse": False,
        },
    )
    ours = render(sc, toy_model, Settings.of(sc, toy_model, seed=1, record=False)).image
    ref = panorama(
        toy_model,
        "a green star on a pink background",
        height=192,
        width=256,
        steps=5,
        guidance=5.0,
        seed=1,
        window=16,
        stride=8,
    )
    assert max_diff(ours, ref) <= 2


def test_one_window_covering_everything_equals_untiled(tiny_model):
    m = tiny_model("sd1")
    plain = scene(root=REGIONS)
    tiled = scene(root=REGIONS, tiling={"force": True, "batch": 1})
    a = render(plain, m, Settings.of(plain, m, seed=2))
    s = Settings.of(tiled, m, seed=2)
    assert s.tiling is not None and s.tiling.tile == 32  # the native latent size: one window
    b = render(tiled, m, s)
    assert max_diff(a.image, b.image) == 0
    for k in ("attention/small", "attention/wide"):
        assert torch.allclose(a.maps[k], b.maps[k], atol=0.02), k


def test_window_masks_are_the_untiled_masks_cropped(tiny_model):
    m = tiny_model("sd1")
    sc = scene(size=[128, 128], root=REGIONS)
    plan = build_plan(sc, Family.factors(m.unet), 128, 128, m.vae_scale_factor)
    ts = TileSettings(tile=32, overlap=8)
    tiler = Tiler(ts, plan)
    # a window aligned to the coarsest level sees exactly the global level masks' crop
    win = Window(16, 48, 32, 64)
    masks = tiler.masks([win])
    h, w = plan.latent
    for n, m_win in masks.items():
        f = round((32 * 32 / n) ** 0.5)
        full = plan.level_masks[(h // f) * (w // f)].reshape(-1, h // f, w // f)
        crop = full[:, 16 // f : 48 // f, 32 // f : 64 // f].reshape(full.shape[0], -1)
        assert torch.allclose(m_win[0], crop), f
    # the small node lies in one window, the wide one spans several: both are seen where they are
    wins, _ = tiler.step_windows()
    small = [tiler.masks([v])[32 * 32][0, 1].max() for v in wins]
    wide = [tiler.masks([v])[32 * 32][0, 2].max() for v in wins]
    assert sum(x > 0.5 for x in small) >= 1 and sum(x > 0.5 for x in wide) >= 3


@pytest.mark.slow
def test_tiled_regions_steer_their_windows_and_record_attention(tiny_model):
    m = tiny_model("sd1")
    sc = scene(size=[128, 128], root=REGIONS)
    s = Settings.of(sc, m, seed=0)
    assert s.tiling is not None  # above the native 64 px: tiled by default
    r = render(sc, m, s)
    off = scene(size=[128, 128], root=REGIONS, attention={"pos": 0, "neg": 0})
    assert max_diff(r.image, render(off, m, Settings.of(off, m, seed=0)).image) > 0
    for node in ("small", "wide"):
        att, eff = r.maps[f"attention/{node}"], r.maps[f"effective/{node}"]
        assert att.shape == (128, 128)
        assert att[eff > 0.5].mean() > 1.5 * att[eff < 0.05].mean(), node


@pytest.mark.slow
@pytest.mark.parametrize("sched", ["dpmpp_2m", "euler_a"])
def test_tiled_multistep_and_stochastic_schedulers_are_reproducible(tiny_model, sched):
    m = tiny_model("sd1")
    sc = scene(size=[96, 128], scheduler=sched, root=REGIONS)
    a = render(sc, m, Settings.of(sc, m, seed=7, record=False)).image
    b = render(sc, m, Settings.of(sc, m, seed=7, record=False)).image
    c = render(sc, m, Settings.of(sc, m, seed=8, record=False)).image
    assert max_diff(a, b) == 0 and max_diff(a, c) > 0
    assert a.std() > 1  # a picture, not the flat black that NaN latents decode to


@pytest.mark.slow
def test_tiled_edit_keeps_untouched_pixels(tiny_model, tmp_path, monkeypatch):
    m = tiny_model("sd1")
    src = (np.random.default_rng(1).random((128, 160, 3)) * 255).astype(np.uint8)
    Image.fromarray(src).save(tmp_path / "init.png")
    sc = scene(
        size=[160, 128],
        init_image=str(tmp_path / "init.png"),
        steps=6,
        root={
            "prompt": "a picture",
            "noise": 0.0,
            "children": [
                {
                    "id": "edit",
                    "prompt": "a red circle",
                    "noise": 0.8,
                    "mask": {"rect": [0.5, 0.25, 0.4, 0.5]},
                }
            ],
        },
    )
    s = Settings.of(sc, m, seed=3)
    assert s.tiling is not None
    r = render(sc, m, s)
    # windows wholly held at the source are not denoised, and skipping them changes nothing (but float
    # rounding: the remaining windows batch differently)
    assert 0 < r.stats["windows_run"] < r.stats["windows_total"]
    from hmedit.sampling import denoise

    monkeypatch.setattr(denoise.Denoiser, "skip_held", False)
    assert max_diff(render(sc, m, s).image, r.image) <= 1
    monkeypatch.undo()
    keep = (r.plan.keep_alpha == 0).numpy()
    assert keep.sum() > 0.5 * keep.size
    assert max_diff(r.image[keep], src[keep]) <= 1  # source pixels pasted back, across every window
    inside = (r.plan.effective[1] > 0.99).numpy()
    assert np.abs(r.image[inside].astype(int) - src[inside].astype(int)).mean() > 5


@pytest.mark.slow
def test_coarse_pass_refines_a_native_render(tiny_model):
    m = tiny_model("sd1")
    sc = scene(size=[128, 128], steps=5, root=REGIONS, tiling={"coarse": True, "refine": 0.5})
    s = Settings.of(sc, m, seed=4)
    r = render(sc, m, s)
    assert "coarse" in r.timings and r.image.shape == (128, 128, 3)
    assert float(r.plan.noise_map.max()) == pytest.approx(0.5)  # the refinement is an edit at 0.5
    plain = scene(size=[128, 128], steps=5, root=REGIONS)
    assert max_diff(r.image, render(plain, m, Settings.of(plain, m, seed=4)).image) > 0


def test_coarse_size_keeps_the_aspect_on_the_native_frame():
    assert coarse_size(1024, 1024, 128, 32) == (128, 128)
    assert coarse_size(2048, 1024, 128, 32) == (128, 64)
    assert coarse_size(4096, 512, 512, 64) == (512, 64)


def test_tiling_defaults_and_switches():
    from hmedit.scene.presets import TilingDefaults

    native, d = 16, TilingDefaults()
    assert resolve_tiling(None, (16, 16), native, 4, d) is None  # native size: untiled
    auto = resolve_tiling(None, (128, 64), native, 4, d)
    assert auto == TileSettings(tile=16, overlap=4, batch=d.batch)
    assert resolve_tiling(Tiling(enabled=False), (128, 128), native, 4, d) is None  # off: whole, untiled
    assert resolve_tiling(Tiling(force=True), (16, 16), native, 4, d) is not None
    with pytest.raises(HmeditError, match="multiple of 4"):
        resolve_tiling(Tiling(tile=18), (128, 128), native, 4, d)
    # keys the scene leaves out come from the preset; the scene's own win
    preset = TilingDefaults(tile=32, overlap=4, batch=3)
    assert resolve_tiling(None, (128, 64), native, 4, preset) == TileSettings(tile=32, overlap=4, batch=3)
    mine = resolve_tiling(Tiling(tile=24, batch=2), (128, 64), native, 4, preset)
    assert (mine.tile, mine.overlap, mine.batch) == (24, 4, 2)


def test_tiling_keys_validate(write_scene):
    from hmedit.scene.load import load_scene

    ok = load_scene(write_scene("root: {prompt: x}\ntiling: {tile: 32, overlap: 8, weighting: uniform}\n"))
    assert ok.tiling.tile == 32 and ok.tiling.weighting == "uniform"
    assert load_scene(write_scene("root: {prompt: x}\ntiling: off\n", "off.yaml")).tiling.enabled is False
    with pytest.raises(HmeditError) as e:
        load_scene(write_scene("root: {prompt: x}\ntiling: {tile: 16, overlap: 16}\n", "bad.yaml"))
    assert "overlap (16) must be smaller than tile (16)" in str(e.value)
