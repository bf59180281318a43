"""hmedit.toy.train_controlnet: seeded, resumable to the bit, safetensors only; the export loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hmedit.errors import HmeditError
from hmedit.toy import train_controlnet as tc


def _tiny_base(path: Path) -> Path:
    """A tiny random toy-shaped model folder: 8x VAE (128 px world images -> 16 px latents), small UNet."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from hmedit.models.random import _clip_text, bundled_tokenizer

    torch.manual_seed(0)
    tok = bundled_tokenizer()
    text = _clip_text(tok, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    unet = UNet2DConditionModel(
        sample_size=16,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=2,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=128,
    )
    for name, m in [("tokenizer", tok), ("text_encoder", text), ("unet", unet), ("vae", vae)]:
        m.save_pretrained(path / name)
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return _tiny_base(tmp_path_factory.mktemp("base"))


def _run(base: Path, run_dir: Path, *extra: str) -> None:
    torch.set_num_threads(1)
    tc.main(
        [
            "--base",
            str(base),
            "--run-dir",
            str(run_dir),
            "--dataset",
            "4",
            "--batch",
            "2",
            "--save-every",
            "1",
        ]
        + list(extra)
    )


@pytest.mark.slow
def test_two_steps_straight_equal_one_plus_one_resumed(base, tmp_path):
    _run(base, tmp_path / "a", "--stages", "data,train", "--steps", "2")
    _run(base, tmp_path / "b", "--stages", "data,train", "--steps", "2", "--until", "1")
    one = load_file(tmp_path / "b" / tc.CKPT)
    _run(base, tmp_path / "b", "--stages", "train", "--steps", "2")
    a, b = load_file(tmp_path / "a" / tc.CKPT), load_file(tmp_path / "b" / tc.CKPT)
    assert a.keys() == b.keys()
    assert any(k.startswith("opt.") for k in a) and any(k.startswith("ema.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    # and the resumed session really trained: step 2 differs from step 1
    assert not all(torch.equal(one[k], b[k]) for k in one if k.startswith("model."))
    assert (tmp_path / "a" / tc.DATA).exists() and not list((tmp_path / "a").glob("*.pt"))


@pytest.mark.slow
def test_export_loads_in_diffusers_as_fp16_safetensors(base, tmp_path):
    from diffusers import ControlNetModel, UNet2DConditionModel

    out = tmp_path / "out"
    _run(base, tmp_path / "run", "--steps", "1", "--out", str(out))
    files = sorted(p.name for p in out.iterdir())
    assert files == ["config.json", "diffusion_pytorch_model.safetensors", "training.json"]
    stored = load_file(out / "diffusion_pytorch_model.safetensors")
    assert {t.dtype for t in stored.values()} == {torch.float16}
    cn = ControlNetModel.from_pretrained(out)
    unet = UNet2DConditionModel.from_pretrained(base / "unet")
    n_built = sum(p.numel() for p in tc.build_controlnet(unet).parameters())
    assert sum(p.numel() for p in cn.parameters()) == n_built
    assert cn.dtype == torch.float32  # loaded as fp32
    # the conditioning encoder maps a 128 px edge map onto the 16 px latent grid
    down, mid = cn(
        torch.zeros(1, 4, 16, 16),
        10,
        torch.zeros(1, 77, 32),
        controlnet_cond=torch.zeros(1, 3, 128, 128),
        return_dict=False,
    )
    assert down[0].shape[-2:] == (16, 16)


def test_a_damaged_checkpoint_is_an_error_naming_it(tmp_path):
    path = tmp_path / tc.CKPT
    path.write_bytes(b"\x00" * 64)
    cn = torch.nn.Linear(2, 2)
    with pytest.raises(HmeditError) as info:
        tc.load_state(path, cn, torch.optim.AdamW(cn.parameters()))
    assert info.value.location.file == path


def test_state_round_trips_model_ema_and_adam(tmp_path):
    torch.manual_seed(0)
    cn = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(cn.parameters(), lr=1e-2)
    cn(torch.randn(4, 3)).sum().backward()
    opt.step()
    ema = [p.detach() * 0.5 for p in cn.parameters()]

    class A:
        seed, dataset, steps, batch, lr, warmup = 0, 4, 2, 2, 1e-2, 1
        ema, t_bias, save_every = 0.9, "cubic", 1

    tc.save_state(tmp_path / "c.safetensors", cn, opt, ema, 7, A)
    fresh = torch.nn.Linear(3, 2)
    fopt = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    got, step = tc.load_state(tmp_path / "c.safetensors", fresh, fopt)
    assert step == 7 and all(torch.equal(x, y) for x, y in zip(got, ema))
    assert all(torch.equal(p, q) for p, q in zip(cn.parameters(), fresh.parameters()))
    for s, f in zip(opt.state_dict()["state"].values(), fopt.state_dict()["state"].values()):
        assert all(torch.equal(torch.as_tensor(s[k]), torch.as_tensor(f[k])) for k in s)


def test_cubic_timesteps_favour_high_noise():
    g = torch.Generator().manual_seed(0)
    t = tc.draw_timesteps(4000, 1000, "cubic", g)
    u = tc.draw_timesteps(4000, 1000, "uniform", g)
    assert t.min() >= 0 and t.max() <= 999 and u.max() <= 999
    assert 0.75 < (t >= 500).float().mean() < 0.84 and 0.45 < (u >= 500).float().mean() < 0.55


def _attention_blocks(net) -> set[str]:
    return {n.split(".attentions.")[0] for n, _ in net.named_parameters() if ".attentions." in n}


@pytest.mark.parametrize("arch", ["text-free", "coarse-attn", "full"])
def test_an_untrained_controlnet_leaves_the_unet_unchanged_but_already_sees_the_edges(base, arch):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_pretrained(base / "unet").eval()
    cn = tc.build_controlnet(unet, arch).eval()
    # the UNet's attention blocks: the finest level's and the mid block's (this tiny UNet has no other)
    everywhere = _attention_blocks(unet) - {n for n in _attention_blocks(unet) if n.startswith("up_blocks")}
    assert everywhere == {"down_blocks.0", "mid_block"}
    kept = {"text-free": set(), "coarse-attn": {"mid_block"}, "full": everywhere}[arch]
    assert _attention_blocks(cn) == kept
    weights = unet.state_dict()
    for name, p in cn.named_parameters():  # the kept attention is the UNet's own, copied
        if ".attentions." in name:
            assert torch.equal(p, weights[name]), name
    x, text = torch.randn(1, 4, 16, 16), torch.randn(1, 77, 32)
    edges = torch.zeros(1, 3, 128, 128)
    edges[..., 40:90, 40:42] = 1.0
    with torch.no_grad():
        down, mid = cn(x, 500, text, controlnet_cond=edges, return_dict=False)
        plain = unet(x, 500, text).sample
        steered = unet(x, 500, text, down_block_additional_residuals=down, mid_block_additional_residual=mid)
        # zero convolutions: the residuals are exactly zero, so the UNet's output is unchanged
        assert all(float(r.abs().max()) == 0.0 for r in [*down, mid])
        assert torch.equal(steered.sample, plain)
        # the conditioning encoder's last layer is not zeroed: its output already depends on the edges
        # (weakly: the default-initialised layers before it shrink the signal; Adam scales it up quickly)
        e1 = cn.controlnet_cond_embedding(edges)
        e0 = cn.controlnet_cond_embedding(torch.zeros_like(edges))
    assert float((e1 - e0).abs().max()) > 1e-6
    # the text-free variant's residuals have the full one's shapes (the UNet takes either)
    full = tc.build_controlnet(unet, "full").eval()
    with torch.no_grad():
        fdown, fmid = full(x, 500, text, controlnet_cond=edges, return_dict=False)
    assert [r.shape for r in down] == [r.shape for r in fdown] and mid.shape == fmid.shape
