"""The render pipeline against plain diffusers, and its editing guarantees, on tiny random models."""

import numpy as np
import pytest
import torch
from PIL import Image

from hmedit.pipeline import Settings, render
from hmedit.scene.spec import Scene


def scene(**kw) -> Scene:
    base = {
        "size": [64, 64],
        "steps": 4,
        "guidance": 5.0,
        "root": {"prompt": "a red circle", "negative": "blue"},
    }
    base.update(kw)
    return Scene.model_validate(base)


def diffusers_pipe(model, cls_name="StableDiffusionPipeline", scheduler=None):
    import diffusers

    from hmedit.models.load import make_scheduler

    pipe = getattr(diffusers, cls_name)(
        **model.components(), scheduler=make_scheduler(scheduler or "ddim", model.scheduler_config)
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def as_uint8(images) -> np.ndarray:
    return (images[0] * 255).round().astype(np.uint8)


def max_diff(a, b) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


@pytest.mark.parametrize("family", ["sd1", "sd2"])
@pytest.mark.parametrize("sched", ["ddim", "euler"])
def test_root_only_equals_stable_diffusion_pipeline(tiny_model, family, sched):
    m = tiny_model(family)
    sc = scene(scheduler=sched)
    ours = render(sc, m, Settings.of(sc, m, seed=3)).image
    ref = diffusers_pipe(m, scheduler=sched)(
        "a red circle",
        negative_prompt="blue",
        num_inference_steps=4,
        guidance_scale=5.0,
        height=64,
        width=64,
        generator=torch.Generator("cpu").manual_seed(3),
        output_type="np",
    ).images
    assert max_diff(ours, as_uint8(ref)) <= 2


def test_root_only_with_init_image_equals_img2img(tiny_model, tmp_path):
    m = tiny_model("sd1")
    src = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    Image.fromarray(src).save(tmp_path / "init.png")
    sc = scene(init_image=str(tmp_path / "init.png"), steps=10, root={"prompt": "a red circle", "noise": 0.6})
    ours = render(sc, m, Settings.of(sc, m, seed=4)).image
    ref = diffusers_pipe(m, "StableDiffusionImg2ImgPipeline")(
        "a red circle",
        image=Image.fromarray(src),
        strength=0.6,
        num_inference_steps=10,
        guidance_scale=5.0,
        generator=torch.Generator("cpu").manual_seed(4),
        output_type="np",
    ).images
    assert max_diff(ours, as_uint8(ref)) <= 2


@pytest.mark.slow
def test_same_seed_same_image_other_seed_other_image(tiny_model):
    m = tiny_model("sd1")
    sc = scene(
        root={
            "prompt": "a red circle",
            "children": [{"id": "a", "mask": {"rect": [0.1, 0.1, 0.5, 0.5]}, "prompt": "a blue square"}],
        }
    )
    a = render(sc, m, Settings.of(sc, m, seed=1)).image
    b = render(sc, m, Settings.of(sc, m, seed=1)).image
    c = render(sc, m, Settings.of(sc, m, seed=2)).image
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_regions_change_the_image_and_record_attention(tiny_model):
    m = tiny_model("sd1")
    plain = scene()
    sc = scene(
        root={
            "prompt": "a red circle",
            "negative": "blue",
            "children": [
                {
                    "id": "a",
                    "mask": {"rect": [0.0, 0.0, 0.5, 1.0]},
                    "prompt": "a blue square on a yellow background",
                }
            ],
        }
    )
    r0 = render(plain, m, Settings.of(plain, m, seed=5))
    r1 = render(sc, m, Settings.of(sc, m, seed=5))
    assert max_diff(r0.image, r1.image) > 0
    att = r1.maps["attention/a"]
    assert att.shape == (64, 64) and (att >= 0).all()
    # the bias pushes node a's tokens into its region: more of its attention mass lands inside than outside
    assert att[:, :28].mean() > 2 * att[:, 36:].mean()
    assert set(r1.maps) == {
        f"{k}/{i}" for k in ("intrinsic", "effective", "attention") for i in ("root", "a")
    }


def test_untouched_regions_keep_the_source_pixels(tiny_model, tmp_path):
    m = tiny_model("sd1")
    src = (np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8)
    Image.fromarray(src).save(tmp_path / "init.png")
    sc = scene(
        init_image=str(tmp_path / "init.png"),
        steps=6,
        root={
            "prompt": "a red circle",
            "noise": 0.0,
            "children": [
                {"id": "a", "mask": {"rect": [0.25, 0.25, 0.5, 0.5]}, "prompt": "a blue square", "noise": 0.8}
            ],
        },
    )
    out = render(sc, m, Settings.of(sc, m, seed=0)).image.astype(int)
    inside = np.zeros((64, 64), bool)
    inside[16:48, 16:48] = True
    assert np.abs(out - src)[~inside].max() == 0
    assert np.abs(out - src)[inside].mean() > 5


def test_all_noise_zero_returns_the_source(tiny_model, tmp_path):
    m = tiny_model("sd1")
    src = (np.random.default_rng(2).random((64, 64, 3)) * 255).astype(np.uint8)
    Image.fromarray(src).save(tmp_path / "init.png")
    sc = scene(init_image=str(tmp_path / "init.png"), root={"prompt": "x", "noise": 0.0})
    assert max_diff(render(sc, m, Settings.of(sc, m, seed=0)).image, src) <= 1


def test_inactive_node_matches_scene_without_it(tiny_model):
    """A node outside its active range and levels everywhere takes no part: its tokens leave the softmax."""
    m = tiny_model("sd1")
    base = scene()
    off = scene(
        root={
            "prompt": "a red circle",
            "negative": "blue",
            "children": [
                {
                    "id": "a",
                    "mask": {"rect": [0.0, 0.0, 0.5, 0.5]},
                    "prompt": "a blue square",
                    "active": [0.99, 1.0],
                }
            ],
        },
        steps=4,
    )
    a = render(base, m, Settings.of(base, m, seed=7)).image
    b = render(off, m, Settings.of(off, m, seed=7)).image
    assert max_diff(a, b) <= 1


@pytest.mark.slow
def test_long_prompts_are_chunked_not_cut(tiny_model):
    """Words past the tokenizer's 75-token window still steer the render, the root's and a node's alike:
    leaving them out changes the image."""
    m = tiny_model("sd1")
    head = " ".join(["a red circle"] * 20)
    assert len(m.tokenizer(head, add_special_tokens=False).input_ids) <= 75  # the head fits one window
    words = head + " and a blue square" * 10

    def image(root: str, child: str):
        sc = scene(
            steps=2,
            root={
                "prompt": root,
                "children": [{"id": "a", "mask": {"rect": [0, 0, 0.5, 0.5]}, "prompt": child}],
            },
        )
        return render(sc, m, Settings.of(sc, m, seed=0, record=False)).image

    full = image(words, words)
    assert full.shape == (64, 64, 3)
    assert max_diff(full, image(head, words)) > 0  # the root's words past the window count
    assert max_diff(full, image(words, head)) > 0  # and the node's
