"""Per-node ControlNet on tiny random SD1 / SDXL models (and the bundled toy pair when it is there):
parity with diffusers' ControlNet pipelines, weight maps, shared passes, tiling, noise holds, errors, key
and maps."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import hmedit
from hmedit.errors import HmeditError

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

PROMPT = "a red circle"


@pytest.fixture(scope="module")
def nets(tiny_model_dir, tmp_path_factory):
    """family -> (model folder, ControlNet folder)."""
    from hmedit.models.random import save_tiny_controlnet

    out = {}
    for fam in ("sd1", "sd2", "sdxl"):
        folder = tiny_model_dir(fam)
        out[fam] = (folder, save_tiny_controlnet(tmp_path_factory.mktemp(f"cn-{fam}") / "cn", folder))
    return out


@pytest.fixture(scope="module")
def cond_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cond")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(d / "cond.png")
    return d


def _pixels(image) -> np.ndarray:
    return np.asarray(image).astype(int)


def _reference(fam, folder, cn, model, image, *, steps=3, scheduler="ddim", size=64, **kwargs) -> np.ndarray:
    from diffusers import (
        ControlNetModel,
        StableDiffusionControlNetPipeline,
        StableDiffusionXLControlNetPipeline,
    )

    from hmedit.models.load import make_scheduler

    cls = StableDiffusionXLControlNetPipeline if fam == "sdxl" else StableDiffusionControlNetPipeline
    extra = {} if fam == "sdxl" else {"safety_checker": None, "requires_safety_checker": False}
    net = ControlNetModel.from_pretrained(cn)
    pipe = cls.from_pretrained(folder, controlnet=net, local_files_only=True, **extra)
    pipe.scheduler = make_scheduler(scheduler, model.scheduler_config)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        PROMPT,
        image=image,
        height=size,
        width=size,
        num_inference_steps=steps,
        guidance_scale=5.0,
        generator=torch.Generator("cpu").manual_seed(3),
        output_type="np",
        **kwargs,
    ).images[0]
    return (out * 255).round().astype(int)


def _control_scene(cn, control=None, **root):
    return {
        "size": [64, 64],
        "steps": 3,
        "guidance": 5.0,
        "scheduler": "ddim",
        "root": {
            "prompt": PROMPT,
            "control": {"image": "cond.png", "model": str(cn), **(control or {})},
            **root,
        },
    }


CASES = {
    "weight 1": ({}, {}),
    "weight 0.7, end 0.7": (
        {"weight": 0.7, "end": 0.7},
        {"controlnet_conditioning_scale": 0.7, "control_guidance_end": 0.7},
    ),
    "guess, start 0.3": ({"guess": True, "start": 0.3}, {"guess_mode": True, "control_guidance_start": 0.3}),
}


@pytest.mark.parametrize(
    "fam, case",
    [("sd1", c) for c in CASES] + [("sd2", "weight 1"), ("sdxl", "weight 1"), ("sdxl", "guess, start 0.3")],
)
def test_a_root_control_equals_the_diffusers_controlnet_pipeline(nets, cond_dir, fam, case):
    folder, cn = nets[fam]
    ours_kw, theirs_kw = CASES[case]
    model = hmedit.load_model(str(folder), device="cpu")
    scene = hmedit.load_scene(_control_scene(cn, ours_kw), base_dir=cond_dir)
    out = hmedit.render(scene, model, seed=3)
    ours = _pixels(out.image)
    ref = _reference(fam, folder, cn, model, Image.open(cond_dir / "cond.png"), **theirs_kw)
    plain = _pixels(hmedit.render({**_control_scene(cn), "root": {"prompt": PROMPT}}, model, seed=3).image)
    assert np.abs(ours - ref).max() <= 2
    assert np.abs(plain - ref).max() > 10  # the control changes the picture: the comparison means something
    assert torch.all(out.maps["control/root"] == ours_kw.get("weight", 1.0))


def test_the_bundled_controlnet_on_the_bundled_model_equals_diffusers(tmp_path):
    from hmedit.models.load import BUNDLED

    if (
        not (BUNDLED["toy-controlnet"] / "config.json").is_file()
        or not (BUNDLED["toy"] / "model_index.json").is_file()
    ):
        pytest.skip("the bundled toy-controlnet is not trained yet")
    from hmedit.control.edges import edge_map
    from hmedit.toy import world

    w = world.sample(3)
    edge_map(w.image).save(tmp_path / "cond.png")
    model = hmedit.load_model("toy", device="cpu")
    scene = {
        "size": [128, 128],
        "steps": 4,
        "guidance": 5.0,
        "scheduler": "ddim",
        "root": {"prompt": PROMPT, "control": {"image": "cond.png"}},
    }
    ours = _pixels(hmedit.render(hmedit.load_scene(scene, base_dir=tmp_path), model, seed=3).image)
    ref = _reference(
        "toy",
        BUNDLED["toy"],
        BUNDLED["toy-controlnet"],
        model,
        Image.open(tmp_path / "cond.png"),
        steps=4,
        size=128,
    )
    assert np.abs(ours - ref).max() <= 2


def _part(scene, model, guidance=5.0, steps=3):
    from hmedit.control.residuals import make_controls
    from hmedit.sampling.denoise import Guidance
    from hmedit.sampling.plan import build_plan

    plan = build_plan(scene, model.family.factors(model.unet), 64, 64, model.vae_scale_factor)
    return plan, make_controls(scene, plan, model, Guidance(guidance), steps)


def _two_nodes(cn, second_model=None, **kid):
    return {
        "size": [64, 64],
        "steps": 3,
        "guidance": 5.0,
        "root": {
            "prompt": "bg",
            "children": [
                {
                    "id": "left",
                    "prompt": "x",
                    "mask": {"rect": [0, 0, 0.5, 1]},
                    "control": {"image": "cond.png", "model": str(cn), **kid},
                },
                {
                    "id": "right",
                    "prompt": "y",
                    "mask": {"rect": [0.5, 0, 0.5, 1]},
                    "control": {"image": "cond.png", "model": str(second_model or cn)},
                },
            ],
        },
    }


def test_residuals_are_weighted_by_the_maps_and_vanish_outside(nets, cond_dir):
    folder, cn = nets["sd1"]
    model = hmedit.load_model(str(folder), device="cpu")
    scene = hmedit.load_scene(_two_nodes(cn, weight=0.5), base_dir=cond_dir)
    scene = scene.model_copy(
        update={"root": scene.root.model_copy(update={"children": scene.root.children[:1]})}
    )
    plan, part = _part(scene, model)
    x = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    embeds = torch.randn(2, 77, 32)
    got = part.residuals(x, torch.tensor(500), 0, None, 1, {"encoder_hidden_states": embeds})
    down, mid = got["down_block_additional_residuals"], got["mid_block_additional_residual"]
    assert len(down) == len(part.nets[0].controlnet_down_blocks) and part.passes == 1
    raw_down, raw_mid = part.nets[0](
        x,
        torch.tensor(500),
        encoder_hidden_states=embeds,
        controlnet_cond=torch.cat([part.images[0]] * 2),
        return_dict=False,
    )
    for r, w in zip([*down, mid], [*raw_down, raw_mid]):
        h, wd = r.shape[-2:]
        half = wd // 2
        # left half weighted 0.5, right half (beyond one column of bilinear blending) zero
        assert (
            torch.allclose(r[..., : max(half - 1, 1)], 0.5 * w[..., : max(half - 1, 1)], atol=1e-6) or wd < 4
        )
        if wd >= 4:
            assert torch.all(r[..., half + 1 :] == 0)
            assert torch.abs(w[..., half + 1 :]).max() > 0


def test_nodes_sharing_a_controlnet_share_one_pass_per_step(nets, cond_dir, tmp_path):
    folder, cn = nets["sd1"]
    model = hmedit.load_model(str(folder), device="cpu")
    import shutil

    other = tmp_path / "cn2"
    shutil.copytree(cn, other)
    for second, passes in ((None, 3), (other, 6)):
        scene = hmedit.load_scene(_two_nodes(cn, second), base_dir=cond_dir)
        plan, part = _part(scene, model)
        assert len(part.groups) == passes // 3
        from hmedit.sampling.denoise import Denoiser, Guidance, TextEmbeddings

        den = Denoiser(
            model.unet, model_scheduler(model), [TextEmbeddings(torch.zeros(2, 77, 32)), part], Guidance(5.0)
        )
        for i in range(3):
            den.predict(torch.zeros(1, 4, 32, 32), torch.tensor(10), i)
        assert part.passes == passes


def model_scheduler(model):
    from hmedit.models.load import make_scheduler

    return make_scheduler("ddim", model.scheduler_config)


def test_step_windows_turn_a_control_off(nets, cond_dir):
    folder, cn = nets["sd1"]
    model = hmedit.load_model(str(folder), device="cpu")
    scene = hmedit.load_scene(_control_scene(cn, {"start": 0.5}), base_dir=cond_dir)
    plan, part = _part(scene, model, steps=4)
    kw = {"encoder_hidden_states": torch.zeros(2, 77, 32)}
    assert part.residuals(torch.zeros(2, 4, 32, 32), torch.tensor(10), 1, None, 1, kw) == {}
    assert part.residuals(torch.zeros(2, 4, 32, 32), torch.tensor(10), 2, None, 1, kw)
    assert part.passes == 1


def test_tiled_windows_get_their_crops_and_one_window_equals_untiled(nets, cond_dir):
    from hmedit.sampling.tiling import Window

    folder, cn = nets["sd1"]
    model = hmedit.load_model(str(folder), device="cpu")
    raw = _two_nodes(cn)
    plain = hmedit.render(hmedit.load_scene({**raw, "tiling": "off"}, base_dir=cond_dir), model, seed=2)
    one = {"force": True, "tile": 32, "offsets": False}
    tiled = hmedit.render(hmedit.load_scene({**raw, "tiling": one}, base_dir=cond_dir), model, seed=2)
    assert tiled.results[2].stats["windows_total"] == 3
    assert np.abs(_pixels(tiled.image) - _pixels(plain.image)).max() <= 1
    many = {"force": True, "tile": 16, "overlap": 4}
    out = hmedit.render(hmedit.load_scene({**raw, "tiling": many}, base_dir=cond_dir), model, seed=2)
    assert out.results[2].stats["windows_total"] > 3 and "control/left" in out.maps
    # the crops: a window's image and map are the full ones' pixels under it
    plan, part = _part(hmedit.load_scene(raw, base_dir=cond_dir), model)
    win = Window(4, 20, 10, 26)
    crop = part._image(0, [win])
    assert torch.equal(crop[0], part.images[0][0][:, 8:40, 20:52])
    full = part.groups[0].weight_map((True, True))
    assert torch.equal(
        part._map(0, (True, False), win, (32, 32)), part.groups[0].weight_map((True, False))[8:40, 20:52]
    )
    assert full.shape == (64, 64)


def test_controls_work_with_per_node_noise_levels(nets, cond_dir, tmp_path):
    folder, cn = nets["sd1"]
    model = hmedit.load_model(str(folder), device="cpu")
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(cond_dir / "init.png")
    raw = _two_nodes(cn)
    raw["init_image"] = "init.png"
    raw["root"]["noise"] = 0.0
    raw["root"]["children"][0]["noise"] = 0.8
    raw["root"]["children"][1]["noise"] = 0.0
    out = hmedit.render(hmedit.load_scene(raw, base_dir=cond_dir), model, seed=1)
    img, src = _pixels(out.image), _pixels(Image.open(cond_dir / "init.png"))
    assert np.abs(img[:, 40:] - src[:, 40:]).max() <= 1  # held at noise 0: the source, pasted back
    assert np.abs(img[:, :28] - src[:, :28]).mean() > 5  # re-made under the control


def test_a_control_without_model_on_another_model_is_an_error(nets, cond_dir):
    folder, cn = nets["sd1"]
    model = hmedit.load_model(str(folder), device="cpu")
    scene = hmedit.load_scene(
        {**_control_scene(cn), "root": {"prompt": "a", "control": {"image": "cond.png"}}}, base_dir=cond_dir
    )
    with pytest.raises(HmeditError, match="root.control: this control needs a model"):
        hmedit.render(scene, model, seed=0)


def test_absent_corrupt_or_misfit_controlnets_are_one_line_errors(nets, cond_dir, tmp_path):
    folder, cn = nets["sd1"]
    model = hmedit.load_model(str(folder), device="cpu")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((cn / "config.json").read_text())
    (broken / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage")
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    cases = {
        str(tmp_path / "absent"): "ControlNet '.*absent' not found",
        str(broken): "cannot load the ControlNet",
        str(plain): "is not a diffusers ControlNet",
        "org/not-cached": "not in the local Hugging Face cache",
        "toy": "'toy' is a model, not a ControlNet",
        str(nets["sdxl"][1]): "does not fit the model",
    }
    for ref, message in cases.items():
        scene = hmedit.load_scene(_control_scene(ref), base_dir=cond_dir)
        with pytest.raises(HmeditError, match=message) as info:
            hmedit.render(scene, model, seed=0)
        assert "\n" not in str(info.value)


def test_controls_enter_the_key_render_json_and_influence_maps(nets, cond_dir, tmp_path):
    import shutil

    folder, cn = nets["sd1"]
    model = hmedit.load_model(str(folder), device="cpu")
    work = tmp_path / "w"
    shutil.copytree(cond_dir, work)
    scene = hmedit.load_scene(_two_nodes(cn), base_dir=work)
    key = hmedit.plan(scene, model).key
    Image.new("RGB", (48, 48), (1, 2, 3)).save(work / "cond.png")
    assert hmedit.plan(hmedit.load_scene(_two_nodes(cn), base_dir=work), model).key != key
    cn2 = tmp_path / "cn2"
    shutil.copytree(cn, cn2)
    before = hmedit.plan(hmedit.load_scene(_two_nodes(cn, cn2), base_dir=work), model).key

    from hmedit.models.random import tiny_controlnet

    tiny_controlnet(model.unet, seed=5).save_pretrained(cn2)
    assert hmedit.plan(hmedit.load_scene(_two_nodes(cn, cn2), base_dir=work), model).key != before
    out = hmedit.render(hmedit.load_scene(_two_nodes(cn), base_dir=work), model, seed=0)
    rec = out.save(tmp_path / "out")
    assert set(rec["controls"]) == {"root.children[0].control.model", "root.children[1].control.model"}
    assert rec["controls"]["root.children[0].control.model"]["path"] == str(cn)
    assert "root.children[0].control.image" in rec["assets"]
    from safetensors.torch import load_file

    maps = load_file(tmp_path / "out" / "influence.safetensors")
    assert torch.equal(maps["control/left"], maps["effective/left"])
    assert "control/root" not in maps
