"""Real-image inversion (hmedit.sampling.inversion): parity of `inversion: ddim` with a plain loop over
diffusers' DDIMInverseScheduler and DDIMScheduler, null-text against plain DDIM at guidance > 1, the cache,
source prompts, holds on the inverted trajectory, tiled windows, SD2 and SDXL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hmedit.errors import HmeditError
from hmedit.metrics import psnr
from hmedit.pipeline import Settings, render
from hmedit.sampling import inversion as I
from hmedit.scene.spec import Scene

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PHOTOS = Path(__file__).parents[1] / "assets" / "photos"


def _world_png(tmp_path: Path, seed: int = 10_000_005, size: int = 128) -> tuple[Path, object]:
    from hmedit.toy import world

    w = world.sample(seed, size)
    path = tmp_path / f"world-{seed}.png"
    Image.fromarray(w.image).save(path)
    return path, w


def _scene(init: Path, prompt: str, method: str, *, steps: int, guidance: float, **extra) -> Scene:
    raw = {
        "init_image": str(init),
        "inversion": method,
        "steps": steps,
        "guidance": guidance,
        "seed": 0,
        "scheduler": "ddim",
        "root": {"prompt": prompt, "noise": 1.0},
        **extra,
    }
    return Scene.model_validate(raw)


def _reference_ddim(model, init: Path, prompt: str, steps: int) -> np.ndarray:
    """The straightforward loop: encode (posterior mean), DDIMInverseScheduler over the UNet at guidance 1,
    then DDIMScheduler back, decode; prompt embeddings from diffusers' own pipeline."""
    from diffusers import DDIMInverseScheduler, DDIMScheduler, StableDiffusionPipeline

    cfg = {k: v for k, v in model.scheduler_config.items() if not k.startswith("_")}
    pipe = StableDiffusionPipeline(**model.components(), scheduler=DDIMScheduler.from_config(cfg))
    inverse = DDIMInverseScheduler.from_config(cfg)
    fwd = DDIMScheduler.from_config(cfg)
    inverse.set_timesteps(steps)
    fwd.set_timesteps(steps)
    with torch.no_grad():
        embeds, _ = pipe.encode_prompt(prompt, model.device, 1, False)
        img = torch.from_numpy(np.asarray(Image.open(init).convert("RGB"))).permute(2, 0, 1)[None]
        x = model.vae.encode(img.float() / 127.5 - 1).latent_dist.mean * model.vae.config.scaling_factor
        for t in inverse.timesteps:
            x = inverse.step(model.unet(x, t, embeds).sample, t, x).prev_sample
        for t in fwd.timesteps:
            x = fwd.step(model.unet(x, t, embeds).sample, t, x).prev_sample
        out = model.vae.decode(x / model.vae.config.scaling_factor).sample
    return ((out[0].permute(1, 2, 0) / 2 + 0.5).clamp(0, 1) * 255).round().byte().numpy()


@pytest.mark.slow
def test_ddim_inversion_at_guidance_1_matches_a_plain_diffusers_loop_on_the_toy_model(toy_model, tmp_path):
    init, w = _world_png(tmp_path)
    sc = _scene(init, w.caption, "ddim", steps=8, guidance=1.0)
    cache = I.InversionCache(tmp_path / "cache")
    ours = render(sc, toy_model, Settings.of(sc, toy_model, 0, record=False), inversions=cache).image
    ref = _reference_ddim(toy_model, init, w.caption, 8)
    assert np.abs(ours.astype(int) - ref.astype(int)).max() <= 2
    # and it is a reconstruction, far closer to the source than re-noising with fresh noise
    plain = _scene(init, w.caption, "none", steps=8, guidance=1.0)
    noisy = render(plain, toy_model, Settings.of(plain, toy_model, 0, record=False)).image
    assert psnr(ours, w.image) > psnr(noisy, w.image) + 5


@pytest.mark.slow
def test_ddim_inversion_matches_a_plain_diffusers_loop_on_tiny_sd1(tiny_model, tmp_path):
    model = tiny_model("sd1")
    init = tmp_path / "photo.png"
    Image.open(PHOTOS / "coffee.png").resize((64, 64)).save(init)
    sc = _scene(init, "a cup of coffee", "ddim", steps=6, guidance=1.0)
    ours = render(
        sc, model, Settings.of(sc, model, 0, record=False), inversions=I.InversionCache(tmp_path)
    ).image
    ref = _reference_ddim(model, init, "a cup of coffee", 6)
    assert np.abs(ours.astype(int) - ref.astype(int)).max() <= 2


@pytest.mark.slow
def test_null_text_reconstructs_better_than_ddim_at_guidance_and_is_cached(toy_model, tmp_path):
    init, w = _world_png(tmp_path, 10_000_011)
    cache = I.InversionCache(tmp_path / "cache")
    got = {}
    for method in ("ddim", "null_text"):
        sc = _scene(init, w.caption, method, steps=8, guidance=7.5)
        got[method] = render(sc, toy_model, Settings.of(sc, toy_model, 0, record=False), inversions=cache)
    assert psnr(got["null_text"].image, w.image) > psnr(got["ddim"].image, w.image) + 3
    # a rerun takes the inversion from the cache: no UNet call for it, same pixels
    calls = []
    hook = toy_model.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        sc = _scene(init, w.caption, "null_text", steps=8, guidance=7.5)
        again = render(sc, toy_model, Settings.of(sc, toy_model, 0, record=False), inversions=cache)
    finally:
        hook.remove()
    assert len(calls) == 8  # the sampling steps only
    assert np.array_equal(again.image, got["null_text"].image)


def test_cache_keys_follow_what_the_inversion_depends_on(tiny_model, tmp_path, write_png):
    from hmedit.sampling.plan import build_plan

    model = tiny_model("sd1")
    init = write_png("init.png", "RGB", (64, 64), (200, 40, 40))

    def key(method="ddim", guidance=7.5, steps=4, source=None, prompt="a red square"):
        node = {"id": "a", "prompt": prompt, "mask": {"rect": [0, 0, 0.5, 0.5]}}
        if source is not None:
            node["source_prompt"] = source
        sc = Scene.model_validate(
            {"init_image": str(init), "inversion": method, "root": {"prompt": "x", "children": [node]}}
        )
        plan = build_plan(sc, model.family.factors(model.unet), 64, 64, model.vae_scale_factor)
        return I.cache_key(model, plan, I.encode_source(model, plan), method, steps, guidance, None)

    base = key()
    assert key() == base
    assert key(method="negative_prompt") == base  # one DDIM trajectory for both
    assert key(guidance=3.0) == base  # DDIM inversion runs without guidance
    assert key(method="null_text") != base
    assert key(method="null_text", guidance=3.0) != key(method="null_text")
    assert key(steps=5) != base
    # the key follows the source prompt, not the target prompt
    assert key(prompt="a blue square", source="a red square") == base
    assert key(source="a green square") != base


def test_a_shallow_edit_inverts_only_its_steps_and_a_deeper_one_continues_the_cached_trajectory(
    tiny_model, tmp_path, write_png
):
    from hmedit.sampling.plan import build_plan, noise_steps

    model = tiny_model("sd1")
    init = write_png("init.png", "RGB", (64, 64), (200, 40, 40))
    sc = Scene.model_validate({"init_image": str(init), "inversion": "ddim", "root": {"prompt": "x"}})
    plan = build_plan(sc, model.family.factors(model.unet), 64, 64, model.vae_scale_factor)
    assert [noise_steps(6, f) for f in (0.0, 0.5, 0.8, 1.0)] == [0, 3, 4, 6]
    whole = I.invert(model, plan, "ddim", 6, 5.0, cache=I.InversionCache(tmp_path / "whole"))
    cache = I.InversionCache(tmp_path / "cache")
    calls = []
    hook = model.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        shallow = I.invert(model, plan, "ddim", 6, 5.0, cache=cache, depth=3)
        assert (len(calls), shallow.depth, shallow.steps) == (3, 3, 6)
        deeper = I.invert(model, plan, "negative_prompt", 6, 5.0, cache=cache, depth=5)
        assert len(calls) == 5  # two more inverse steps, continued from the cached third
        again = I.invert(model, plan, "ddim", 6, 5.0, cache=cache, depth=4)
        assert len(calls) == 5 and again.cached and again.depth == 5
    finally:
        hook.remove()
    assert torch.allclose(deeper.trajectory, whole.trajectory[:6], atol=1e-5)
    assert torch.equal(deeper.latent(1), deeper.trajectory[5][None])  # sampling step 1 starts 5 deep
    # null-text optimises from where the render starts: its depth is part of the key
    nti = I.invert(model, plan, "null_text", 6, 5.0, cache=cache, depth=3)
    assert nti.uncond.shape[0] == 6 and len(nti.losses) == 3
    assert torch.equal(nti.uncond[0], nti.uncond[2])  # the steps before 3 are never sampled: the start
    full = I.invert(model, plan, "null_text", 6, 5.0, cache=cache)
    assert full.key != nti.key and len(full.losses) == 6


def test_source_prompts_default_to_the_prompt_and_keep_a_learned_token(tmp_path, write_png):
    from hmedit.sampling.plan import build_plan

    init = write_png("init.png", "RGB", (64, 64))
    sc = Scene.model_validate(
        {
            "init_image": str(init),
            "inversion": "null_text",
            "root": {
                "prompt": "a white background",
                "children": [
                    {
                        "id": "a",
                        "prompt": "<hm-a-12345678> a blue square",
                        "source_prompt": "a red square",
                        "mask": {"rect": [0, 0, 0.5, 0.5]},
                    },
                    {"id": "b", "prompt": "a circle", "mask": {"rect": [0.5, 0.5, 0.5, 0.5]}},
                ],
            },
        }
    )
    plan = build_plan(sc, [1, 2], 64, 64, 8)
    assert I.source_prompts(plan) == ["a white background", "<hm-a-12345678> a red square", "a circle"]


def test_the_scene_refuses_an_unknown_method(write_png):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="inversion"):
        Scene.model_validate({"inversion": "magic", "root": {"prompt": "x"}})


def test_inverting_without_an_image_says_what_is_missing(tiny_model):
    from hmedit.sampling.plan import build_plan

    model = tiny_model("sd1")
    sc = Scene.model_validate({"inversion": "ddim", "root": {"prompt": "x"}})
    plan = build_plan(sc, model.family.factors(model.unet), 64, 64, 8)
    with pytest.raises(HmeditError, match="needs an image"):
        I.invert(model, plan, "ddim", 4, 1.0, cache=I.InversionCache(Path("/nonexistent")))


def test_held_positions_follow_the_inverted_trajectory(tiny_model, tmp_path):
    from hmedit.sampling.plan import build_plan

    model = tiny_model("sd1")
    init = tmp_path / "init.png"
    Image.new("RGB", (64, 64), (10, 200, 10)).save(init)
    sc = Scene.model_validate(
        {
            "init_image": str(init),
            "inversion": "ddim",
            "root": {
                "prompt": "x",
                "noise": 0.0,
                "children": [{"id": "a", "prompt": "y", "noise": 1.0, "mask": {"rect": [0, 0, 0.5, 1]}}],
            },
        }
    )
    plan = build_plan(sc, model.family.factors(model.unet), 64, 64, 8)
    n = 4
    traj = torch.randn(n + 1, 4, 8, 8)
    inv = I.Inversion("ddim", traj, None, "k")
    sched, _ = I.schedulers(model, n)
    holds = I.TrajectoryHolds(plan, sched, sched.timesteps, inv, 0, n, "cpu", torch.float32)
    x = torch.zeros(1, 4, 8, 8)
    for i in range(n):
        out = holds.after_step(x, i)
        held = holds.held_after(i)
        assert held[:, 6:].all() and not held[:, :2].any()  # the right half is held, the node's left is not
        assert torch.equal(out[..., held], traj[n - i - 1][None][..., held])
        assert torch.equal(out[..., ~held], x[..., ~held])
    assert inv.latent(0).shape == (1, 4, 8, 8) and torch.equal(inv.latent(n)[0], traj[0])


@pytest.mark.slow
def test_regions_tiles_and_negative_prompt_run_together_and_keep_unedited_pixels(toy_model, tmp_path):
    """A two-region edit above the native size, tiled (fixed windows), with negative-prompt inversion: the
    region at noise 0 keeps the source, the edited one changes."""
    init, w = _world_png(tmp_path, 10_000_021, size=192)
    sc = Scene.model_validate(
        {
            "init_image": str(init),
            "size": [192, 192],
            "inversion": "negative_prompt",
            "steps": 4,
            "guidance": 5.0,
            "tiling": {"tile": 16, "overlap": 8},
            "root": {
                "prompt": w.caption,
                "noise": 0.0,
                "children": [
                    {
                        "id": "e",
                        "prompt": "a purple square",
                        "source_prompt": "a square",
                        "noise": 1.0,
                        "mask": {"rect": [0.0, 0.0, 0.5, 0.5]},
                    }
                ],
            },
        }
    )
    out = render(
        sc, toy_model, Settings.of(sc, toy_model, 0, record=False), inversions=I.InversionCache(tmp_path)
    )
    assert out.stats["windows_total"] > 4  # tiled
    src = w.image.astype(int)
    assert np.abs(out.image[120:, 120:].astype(int) - src[120:, 120:]).max() == 0  # pasted back
    assert np.abs(out.image[:80, :80].astype(int) - src[:80, :80]).mean() > 5  # edited


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_every_method_runs_on_other_families(tiny_model_dir, family, tmp_path):
    import hmedit

    model = hmedit.load_model(str(tiny_model_dir(family)), device="cpu")
    init = tmp_path / "photo.png"
    Image.open(PHOTOS / "chelsea.png").resize((64, 64)).save(init)
    cache = I.InversionCache(tmp_path / "cache")
    for method in ("ddim", "negative_prompt", "null_text"):
        sc = _scene(init, "a cat", method, steps=3, guidance=4.0, size=[64, 64])
        sc = Scene.model_validate(
            {
                **sc.model_dump(mode="json", exclude_none=True),
                "root": {
                    "prompt": "a cat",
                    "noise": 1.0,
                    "children": [
                        {
                            "id": "eye",
                            "prompt": "an eye",
                            "negative": "blur",
                            "mask": {"rect": [0.2, 0.2, 0.3, 0.3]},
                        }
                    ],
                },
            }
        )
        out = render(sc, model, Settings.of(sc, model, 0, record=False), inversions=cache)
        assert out.image.shape == (64, 64, 3) and out.settings.scheduler == "ddim"
        inv = I.invert_scene(sc, model, out.settings, cache=cache)
        assert inv is not None and inv.cached
        assert (inv.uncond is not None) == (method == "null_text")


@pytest.mark.slow
def test_a_learned_token_is_in_the_source_prompt_and_in_the_cache_key(learn_scene, tiny, tmp_path):
    """With learn: and inversion: the image is inverted under the node's token too, and a rerun reuses the
    learned token and the inversion."""
    import hmedit

    path = learn_scene(
        edit=lambda t: t.replace(
            "init_image: bg.png", "init_image: bg.png\ninversion: null_text\nguidance: 3"
        ).replace("prompt: a square", "prompt: a red square\n      source_prompt: a square")
    )
    seen: list[list[str]] = []
    real = I.source_prompts

    def spy(plan):
        seen.append(real(plan))
        return seen[-1]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(I, "source_prompts", spy)
        first = hmedit.render(path, str(tiny), cache_dir=tmp_path / "cache", device="cpu", record=False)
    token_prompt = seen[0][1]
    assert token_prompt.startswith("<hm-sq-") and token_prompt.endswith(" a square")
    assert len(list((tmp_path / "cache").glob("*/inversion.safetensors"))) == 1
    calls = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(I, "null_text", lambda *a, **k: calls.append(1))
        again = hmedit.render(path, str(tiny), cache_dir=tmp_path / "cache", device="cpu", record=False)
    assert calls == [] and np.array_equal(np.asarray(first.image), np.asarray(again.image))


def _edit_scene(init: Path, method: str = "negative_prompt", source: str | None = "x") -> Scene:
    node = {"id": "a", "prompt": "y", "noise": 1.0, "mask": {"rect": [0, 0, 0.5, 1]}}
    if source is not None:
        node["source_prompt"] = source
    return Scene.model_validate(
        {
            "init_image": str(init),
            "size": [64, 64],
            "inversion": method,
            "guidance": 5.0,
            "root": {"prompt": "z", "noise": 1.0, "children": [node]},
        }
    )


def test_edited_nodes_are_those_whose_prompt_differs_from_their_source_prompt(tiny_model, tmp_path):
    from hmedit.pipeline import plan_of

    model = tiny_model("sd1")
    init = tmp_path / "init.png"
    Image.new("RGB", (64, 64), (10, 200, 10)).save(init)
    s = lambda sc: Settings.of(sc, model, 0, record=False)  # noqa: E731
    for source, edited in (("x", [1]), ("y", []), (None, [])):
        sc = _edit_scene(init, source=source)
        plan = plan_of(sc, model, s(sc))
        assert I.edited_nodes(plan) == edited
        mask = I.edit_mask(plan)
        if not edited:
            assert mask is None
            continue
        h, w = plan.latent
        assert mask.shape == (1, 1, h, w)
        assert mask[..., : w // 2].min() == 1 and mask[..., w // 2 :].max() == 0  # the node's half alone


def test_edit_guidance_takes_the_negatives_inside_edited_nodes_and_the_source_outside(tiny_model, tmp_path):
    """Negative-prompt inversion with an edited node: inside the node's mask the prediction is guided against
    the negatives (as without inversion), elsewhere against the source prompts (reconstruction)."""
    from hmedit.attention.processor import regional_attention
    from hmedit.pipeline import encode, plan_of
    from hmedit.sampling.denoise import Denoiser, Guidance, conditioning_parts

    model = tiny_model("sd1")
    init = tmp_path / "init.png"
    Image.new("RGB", (64, 64), (10, 200, 10)).save(init)
    sc = _edit_scene(init)
    plan = plan_of(sc, model, Settings.of(sc, model, 0, record=False))
    own = encode(model, plan)
    npi = I.null_text_base(own, I.encode_source(model, plan))
    sched, _ = I.schedulers(model, 4)
    g = Guidance(5.0)

    def plain(cond):
        parts = conditioning_parts(model, plan, cond, g, sched, sched.timesteps)
        return Denoiser(model.unet, sched, parts, g)

    den = I.edit_guidance(plain(npi), model, plan, own)
    assert isinstance(den, I.EditGuidance)
    h, w = plan.latent
    x = torch.randn(1, model.unet.config.in_channels, h, w, generator=torch.Generator().manual_seed(0))
    t = sched.timesteps[1]
    with torch.no_grad(), regional_attention(model.unet):
        got, src, neg = den(x, t, 1), plain(npi)(x, t, 1), plain(own)(x, t, 1)
    left, right = (slice(None), slice(None), slice(None), slice(0, w // 2)), (..., slice(w // 2, None))
    assert torch.allclose(got[left], neg[left], atol=1e-5)
    assert torch.allclose(got[right], src[right], atol=1e-5)
    assert (neg[left] - src[left]).abs().max() > 1e-3  # the two guidances differ there
    # without an edited node, or without guidance, the denoiser is left as it is
    same = _edit_scene(init, source=None)
    plan2 = plan_of(same, model, Settings.of(same, model, 0, record=False))
    d2 = plain(encode(model, plan2))
    assert I.edit_guidance(d2, model, plan2, encode(model, plan2)) is d2
