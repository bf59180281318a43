"""SDXL through hmedit on tiny random SDXL components saved as a diffusers folder: parity with diffusers'
SDXL pipelines, regional attention on SDXL's cross-attention levels, per-window crop ids, levels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hmedit
from hmedit.errors import HmeditError

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

PROMPT = "a red circle"


@pytest.fixture(scope="module")
def xl(tiny_model_dir):
    return tiny_model_dir("sdxl")


@pytest.fixture(scope="module")
def xl_model(xl):
    return hmedit.load_model(str(xl), device="cpu")


def _pixels(image) -> np.ndarray:
    return np.asarray(image).astype(int)


def _reference(pipe_cls, folder, scheduler: str, model, **kwargs) -> np.ndarray:
    from hmedit.models.load import make_scheduler

    pipe = pipe_cls.from_pretrained(folder, local_files_only=True)
    pipe.scheduler = make_scheduler(scheduler, model.scheduler_config)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(**kwargs, generator=torch.Generator("cpu").manual_seed(3), output_type="np").images[0]
    return (out * 255).round().astype(int)


@pytest.mark.parametrize("scheduler", ["ddim", "euler"])
@pytest.mark.parametrize("negative", ["", "blue"])
def test_root_only_scene_equals_the_sdxl_pipeline(xl, xl_model, scheduler, negative):
    """An empty negative is diffusers' negative_prompt=None (force_zeros_for_empty_prompt: zeros)."""
    from diffusers import StableDiffusionXLPipeline

    assert xl_model.family.name == "sdxl"
    scene = {
        "size": [64, 64],
        "steps": 3,
        "guidance": 5.0,
        "scheduler": scheduler,
        "root": {"prompt": PROMPT, "negative": negative},
    }
    ours = _pixels(hmedit.render(scene, xl_model, seed=3).image)
    ref = _reference(
        StableDiffusionXLPipeline,
        xl,
        scheduler,
        xl_model,
        prompt=PROMPT,
        negative_prompt=negative or None,
        height=64,
        width=64,
        num_inference_steps=3,
        guidance_scale=5.0,
    )
    assert np.abs(ours - ref).max() <= 2


@pytest.mark.parametrize("scheduler", ["ddim", "euler"])
def test_root_only_edit_equals_the_sdxl_img2img_pipeline(xl, xl_model, scheduler, tmp_path):
    from diffusers import StableDiffusionXLImg2ImgPipeline
    from PIL import Image

    rng = np.random.default_rng(0)
    init = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    init.save(tmp_path / "init.png")
    scene = {
        "size": [64, 64],
        "steps": 4,
        "guidance": 5.0,
        "scheduler": scheduler,
        "init_image": "init.png",
        "root": {"prompt": PROMPT, "noise": 0.6},
    }
    ours = _pixels(hmedit.render(hmedit.load_scene(scene, base_dir=tmp_path), xl_model, seed=3).image)
    ref = _reference(
        StableDiffusionXLImg2ImgPipeline,
        xl,
        scheduler,
        xl_model,
        prompt=PROMPT,
        image=init,
        strength=0.6,
        num_inference_steps=4,
        guidance_scale=5.0,
    )
    assert np.abs(ours - ref).max() <= 2


REGIONS = {
    "size": [64, 64],
    "steps": 3,
    "guidance": 5.0,
    "root": {
        "prompt": "a picture",
        "children": [
            {"id": "left", "prompt": "a red square", "mask": {"rect": [0.0, 0.0, 0.4, 1.0]}},
            {"id": "right", "prompt": "a blue circle", "mask": {"rect": [0.6, 0.0, 0.4, 1.0]}},
        ],
    },
}


def _density_ratio(out, node_id: str) -> float:
    """Mean recorded attention inside the node's mask over the mean outside."""
    att = out.maps[f"attention/{node_id}"].numpy()
    mask = out.maps[f"intrinsic/{node_id}"].numpy() > 0.5
    return float(att[mask].mean() / max(att[~mask].mean(), 1e-12))


def test_regions_concentrate_attention_inside_their_masks_on_sdxl(xl_model):
    """The bias scales with the model's own max(QKᵀ), which random weights keep small: with the default
    weights the tiny SDXL's mass is 1.6x as dense inside as outside (the tiny SD1: 3.3x), so the weights are
    raised to 3 here; unbiased, the density is about equal; and the ratio grows with the weights."""
    ratios = {}
    for w in (0, 1, 3):
        out = hmedit.render({**REGIONS, "attention": {"pos": w, "neg": w}}, xl_model, seed=1)
        ratios[w] = {node: _density_ratio(out, node) for node in ("left", "right")}
    for node in ("left", "right"):
        assert ratios[3][node] >= 3.0, ratios
        assert 0.67 <= ratios[0][node] <= 1.5, ratios
        assert ratios[0][node] < ratios[1][node] < ratios[3][node], ratios


def test_a_tiled_render_whose_one_window_covers_the_image_equals_the_untiled_one(xl_model):
    plain = hmedit.render({**REGIONS, "tiling": "off"}, xl_model, seed=2)
    f = xl_model.vae_scale_factor
    tiling = {"force": True, "tile": 64 // f, "offsets": False}
    tiled = hmedit.render({**REGIONS, "tiling": tiling}, xl_model, seed=2)
    assert tiled.results[2].stats["windows_total"] == 3  # one window, each of the 3 steps
    assert np.abs(_pixels(tiled.image) - _pixels(plain.image)).max() <= 1


def test_tiled_windows_get_their_own_crop_ids(xl_model):
    from hmedit.models.family import FAMILIES
    from hmedit.sampling.denoise import AddedConditioning
    from hmedit.sampling.tiling import Window

    part = AddedConditioning(FAMILIES["sdxl"], torch.zeros(2, 4), (256, 512), 8)
    ids = part.inputs(0, [Window(0, 16, 0, 16), Window(8, 24, 32, 48)], 2)["added_cond_kwargs"]["time_ids"]
    assert ids.tolist() == [
        [256, 512, 0, 0, 128, 128],
        [256, 512, 64, 256, 128, 128],
        [256, 512, 0, 0, 128, 128],
        [256, 512, 64, 256, 128, 128],
    ]


def test_levels_resolve_to_sdxls_cross_attention_levels(xl_model):
    from hmedit.models.family import Family

    # the tiny SDXL, like SDXL, has no cross-attention at full latent resolution: only at 1/2 (one level,
    # named fine)
    assert Family.factors(xl_model.unet) == [1, 2]
    assert Family.cross_attention_factors(xl_model.unet) == [2]

    def with_levels(levels):
        child = {**REGIONS["root"]["children"][0], "levels": levels}
        return {**REGIONS, "steps": 1, "root": {**REGIONS["root"], "children": [child]}}

    hmedit.render(with_levels(["fine"]), xl_model, seed=0)
    for levels in (["coarse"], ["mid", "coarse"]):
        with pytest.raises(HmeditError, match="select none of this model's cross-attention levels"):
            hmedit.render(with_levels(levels), xl_model, seed=0)


def test_a_token_learned_on_sdxl_loads_in_plain_diffusers_for_both_encoders(xl, tmp_path):
    """Both encoders' rows are learned together; the exported file (clip_l, clip_g) loads into diffusers'
    SDXL pipeline, which then encodes a prompt with the token exactly as hmedit does; a fresh model loading
    the file through hmedit encodes it the same way too."""
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import load_file

    import hmedit.conditioning.textual_inversion as inv
    from hmedit.jobs import ModelCache

    model = hmedit.load_model(str(xl), device="cpu", cache=ModelCache())  # tokens change it: a fresh copy
    image = torch.full((1, 3, 64, 64), -1.0)
    image[:, 0, 16:48, 16:48] = 1.0
    alpha = torch.zeros(64, 64)
    alpha[16:48, 16:48] = 1.0
    token, prompt = "<hm-sq>", "<hm-sq> a square"
    settings = inv.LearnSettings(steps=3, batch=2, lr=0.05, guidance=3.0)
    got = inv.learn_token(
        model, token, image, alpha, prompt, settings, cache=inv.EmbeddingCache(tmp_path / "c")
    )
    widths = inv.widths(model)
    assert got.embedding.shape == (sum(widths),) and len(widths) == 2
    start = inv.init_row(model, None)
    assert all(
        not torch.equal(a, b)
        for a, b in zip(inv.split_row(model, got.embedding), inv.split_row(model, start))
    )

    path = inv.export_diffusers(tmp_path / "sq.safetensors", token, got.embedding, widths)
    state = load_file(path)
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        "clip_l": (1, widths[0]),
        "clip_g": (1, widths[1]),
    }
    pipe = StableDiffusionXLPipeline.from_pretrained(xl, local_files_only=True)
    pipe.load_textual_inversion(
        state["clip_l"], token=token, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer
    )
    pipe.load_textual_inversion(
        state["clip_g"], token=token, text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2
    )
    ref, _, ref_pooled, _ = pipe.encode_prompt(prompt, device="cpu", do_classifier_free_guidance=False)
    ours, pooled = model.family.text(model).encode_window(prompt)
    torch.testing.assert_close(ours, ref[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(pooled, ref_pooled[0], rtol=0, atol=1e-6)

    fresh = hmedit.load_model(str(xl), device="cpu", cache=ModelCache())
    (vector,) = inv.load_embedding(path, dim=sum(widths)).values()
    text = inv.install_embedding(fresh, "<hm-file>", vector)
    again, _ = fresh.family.text(fresh).encode_window(f"{text} a square")
    torch.testing.assert_close(again, ours, rtol=0, atol=1e-6)
