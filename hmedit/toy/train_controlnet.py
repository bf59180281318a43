"""Train the bundled ControlNet: edge maps of the procedural world steering the bundled toy model.

Stages (each resumable from its files in ``--run-dir``):
  1. data    world images 0..N-1 (seeds below every evaluation seed): latents by the frozen toy VAE (scaled by
             its scaling factor), edge maps by hmedit's own detector (``hmedit.control.edges.edge_map``),
             caption token ids; cached once as ``data.safetensors``.
  2. train   a diffusers ``ControlNetModel.from_unet`` copy of the frozen toy UNet's encoder (Zhang et al.
             2023, "Adding Conditional Control to Text-to-Image Diffusion Models"), trained alone: the UNet
             and the text encoder stay frozen. Loss as the toy UNet's (v-prediction, zero-terminal-SNR
             schedule, min-SNR weighting, 10% empty captions so the ControlNet also serves the unconditional
             half of classifier-free guidance). Timesteps are drawn biased towards high noise
             (t = (1 - u^3) T, the cubic sampling of T2I-Adapter, Mou et al. 2023): the layout that edges
             dictate is decided in the first, noisiest steps. Checkpoints are safetensors; every step draws
             its randomness from a generator seeded by (seed, step), so a resumed run repeats a straight run
             bit for bit.
  3. export  a folder that ``ControlNetModel.from_pretrained`` loads (fp16 safetensors, loaded as fp32).

    python -m hmedit.toy.train_controlnet --run-dir runs/cnet --out hmedit/models/weights/toy-controlnet
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hmedit.toy import checkpoint, world
from hmedit.toy.publish import publish
from hmedit.toy.train import MAX_TOKENS, _log, _lr, _to_tensor, build_scheduler_config, start_run

# The ControlNet's conditioning encoder: 128 px edge map -> 16 px latent grid (three stride-2 convolutions,
# one per step between these widths: 8x, the VAE's factor). Small: edges are a simple signal.
COND_CHANNELS = (16, 32, 64, 64)
CKPT = "controlnet.safetensors"
DATA = "data.safetensors"


def base_folder() -> Path:
    from hmedit.models.load import BUNDLED

    return BUNDLED["toy"]


def edge_tensor(images: np.ndarray) -> torch.Tensor:
    """[N, H, W, 3] uint8 world images -> [N, H, W] uint8 edge maps (0 or 255) of hmedit's detector."""
    from hmedit.control.edges import edge_map

    return torch.from_numpy(np.stack([np.asarray(edge_map(im))[..., 0] for im in images]))


def cond_input(edges: torch.Tensor) -> torch.Tensor:
    """[N, H, W] uint8 edge maps -> [N, 3, H, W] float in [0, 1]: what the diffusers ControlNet pipeline
    feeds the model for an RGB conditioning image (it scales PIL images to 0..1, no normalisation)."""
    return (edges.float() / 255.0)[:, None].expand(-1, 3, -1, -1).contiguous()


def load_frozen(base: Path):
    """The toy model's tokenizer, text encoder, UNet and VAE, frozen, in fp32."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from hmedit.models.load import quiet_libraries

    quiet_libraries()
    tok = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer")
    text = CLIPTextModel.from_pretrained(base, subfolder="text_encoder")
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(base, subfolder="vae")
    for m in (text, unet, vae):
        m.float().eval().requires_grad_(False)
    return tok, text, unet, vae


def build_controlnet(unet, arch: str = "text-free"):
    """A ControlNet for ``unet``: ``full`` is ``ControlNetModel.from_unet`` (a copy of the encoder with its
    attention); ``text-free`` (the shipped one) keeps the copied convolutions only (``DownBlock2D`` blocks, a
    resnet mid block): edges say where things are and the frozen UNet already reads the prompt, and a pass
    costs about a sixth of a UNet pass; ``coarse-attn`` keeps the attention (self- and cross-) of every level
    but the finest, and of the mid block: the finest level's attention is most of an encoder's cost (its
    queries are 4x the next level's, its self-attention 16x), and the coarse levels' attention sees a whole
    outline at once. Trained as the shipped one (5500 steps) it scored a mean IoU of 0.669 against 0.657 on
    the 50 held-out images, for 5% more time per step and twice the size, so it is not the default. The
    copied weights are the UNet's, attention included. The conditioning embedding is computed once a render
    (see ``hmedit.control.residuals``). Either way the zero convolutions start at zero, so an
    untrained ControlNet leaves the UNet's output unchanged. The conditioning encoder's last convolution is
    not zeroed (diffusers zeroes it): with both factors of the residual path at zero, the zero convolutions
    first learn from a signal that does not depend on the edges, which slowed the first runs. At its default
    init the edges' signal through the encoder is weak (about 1e-4); Adam at the fast rate scales it up."""
    from diffusers import ControlNetModel

    full = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=COND_CHANNELS)
    if arch == "full":
        cn = full
    else:
        config = {k: v for k, v in full.config.items() if not k.startswith("_")}
        n = len(config["down_block_types"])
        if arch == "coarse-attn":
            config.update(down_block_types=["DownBlock2D"] + list(config["down_block_types"][1:]))
        else:
            config.update(down_block_types=["DownBlock2D"] * n, mid_block_type="UNetMidBlock2D")
        cn = ControlNetModel(**config)
        cn.load_state_dict(full.state_dict(), strict=False)  # the dropped attention weights have no place
    g = torch.Generator().manual_seed(0)
    conv = cn.controlnet_cond_embedding.conv_out
    with torch.no_grad():
        bound = 1.0 / (conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]) ** 0.5
        conv.weight.copy_(torch.empty_like(conv.weight).uniform_(-bound, bound, generator=g))
    return cn


# ---------------------------------------------------------------- stage 1: data
def make_data(a, tok=None, vae=None) -> None:
    from hmedit.outputs.write import save_safetensors

    out = a.run_dir / DATA
    if out.exists():
        return
    if tok is None or vae is None:
        tok, _, _, vae = load_frozen(a.base)
    lat, edges, ids = [], [], []
    t0 = time.time()
    for start in range(0, a.dataset, 128):
        samples = [world.sample(s) for s in range(start, min(start + 128, a.dataset))]
        images = np.stack([s.image for s in samples])
        with torch.no_grad():
            lat.append(vae.encode(_to_tensor(images)).latent_dist.mode() * vae.config.scaling_factor)
        edges.append(edge_tensor(images))
        ids.append(
            tok(
                [s.caption for s in samples],
                padding="max_length",
                max_length=MAX_TOKENS,
                truncation=True,
                return_tensors="pt",
            ).input_ids
        )
        _log(f"data {start + len(samples)}/{a.dataset} ({time.time() - t0:.0f} s)", a.log)
    save_safetensors(
        out,
        {"latents": torch.cat(lat), "edges": torch.cat(edges), "ids": torch.cat(ids)},
        metadata={"seeds": f"0..{a.dataset - 1}", "world": "hmedit.toy.world.sample"},
    )


# ---------------------------------------------------------------- optimiser
# The zero-initialised layers (the 1x1 convolutions onto every residual, the conditioning encoder's last
# convolution) and the conditioning encoder learn at ``--fast-lr-mult`` times the rate of the copied UNet
# encoder: both factors of the residual path start at or near zero, so at one shared small rate their product
# stays near zero for many steps (the "sudden convergence" of ControlNet training).
FAST_PREFIXES = ("controlnet_down_blocks.", "controlnet_mid_block.", "controlnet_cond_embedding.")


def param_groups(cn) -> list[tuple[list[str], list[torch.nn.Parameter], float]]:
    """(names, parameters, lr multiplier) of the body and of the fast layers (omitted when empty), in the
    optimiser's order."""
    named = list(cn.named_parameters())
    fast = [(n, p) for n, p in named if n.startswith(FAST_PREFIXES)]
    body = [(n, p) for n, p in named if not n.startswith(FAST_PREFIXES)]
    return [([n for n, _ in g], [p for _, p in g], m) for g, m in ((body, 1.0), (fast, None)) if g]


def make_optimizer(cn, lr: float, fast_mult: float = 1.0):
    groups = param_groups(cn)
    opt = torch.optim.AdamW(
        [{"params": ps, "lr_mult": fast_mult if m is None else m} for _, ps, m in groups],
        lr=lr,
        weight_decay=0.0,
    )
    names = [n for ns, _, _ in groups for n in ns]
    return opt, names


# ---------------------------------------------------------------- checkpoints
def save_state(
    path: Path, cn, opt, ema: list[torch.Tensor], step: int, a, names: list[str] | None = None
) -> None:
    """:func:`hmedit.toy.checkpoint.save_state` with this trainer's argument record. ``names``: the
    parameters' names in the optimiser's (and ``ema``'s) order; default: ``cn``'s own order."""
    names = names or [n for n, _ in cn.named_parameters()]
    checkpoint.save_state(path, cn, opt, names, ema, step, _arg_record(a))


def load_state(path: Path, cn, opt, names: list[str] | None = None) -> tuple[list[torch.Tensor], int]:
    """:func:`hmedit.toy.checkpoint.load_state`; ``names`` as for :func:`save_state`."""
    return checkpoint.load_state(path, cn, opt, names or [n for n, _ in cn.named_parameters()])


def _arg_record(a) -> dict:
    keys = (
        "seed",
        "dataset",
        "steps",
        "batch",
        "lr",
        "fast_lr_mult",
        "warmup",
        "ema",
        "t_bias",
        "save_every",
        "arch",
    )
    return {k: getattr(a, k, None) for k in keys}


# ---------------------------------------------------------------- stage 2: train
def loss_weights(sched) -> torch.Tensor:
    """Per-timestep min-SNR-5 weights for v-prediction, +1 so the zero-SNR terminal step keeps its weight
    (as ``hmedit.toy.train.train_unet``)."""
    ac = sched.alphas_cumprod
    snr = ac / (1 - ac).clamp(min=1e-8)
    return (snr.clamp(max=5.0) + 1) / (snr + 1)


def draw_timesteps(n: int, total: int, bias: str, g: torch.Generator) -> torch.Tensor:
    u = torch.rand(n, generator=g)
    if bias == "cubic":
        u = 1 - u**3
    return (u * total).long().clamp(max=total - 1)


def train(a, frozen=None) -> None:
    from diffusers import DDPMScheduler

    tok, text, unet, _ = frozen or load_frozen(a.base)
    data = load_data(a.run_dir / DATA)
    z_all, edges, ids_all = data["latents"], data["edges"], data["ids"]
    empty = tok([""], padding="max_length", max_length=MAX_TOKENS, return_tensors="pt").input_ids
    cn = build_controlnet(unet, a.arch).train()
    opt, names = make_optimizer(cn, a.lr, a.fast_lr_mult)
    params = [p for g in opt.param_groups for p in g["params"]]
    ema = [p.detach().clone() for p in params]
    step = 0
    ckpt = a.run_dir / CKPT
    if ckpt.exists():
        ema, step = load_state(ckpt, cn, opt, names)
    sched = DDPMScheduler(
        **{k: v for k, v in build_scheduler_config().items() if k not in ("set_alpha_to_one", "steps_offset")}
    )
    weight = loss_weights(sched)
    _log(
        f"controlnet params {sum(p.numel() for p in params) / 1e6:.2f} M, dataset {len(z_all)},"
        f" from step {step}",
        a.log,
    )
    t0, losses, done = time.time(), [], 0
    stop = min(a.steps, a.until or a.steps)
    while step < stop:
        g = torch.Generator().manual_seed(a.seed * 1_000_003 + step)
        for pg in opt.param_groups:
            pg["lr"] = _lr(step, a.steps, a.lr, warmup=a.warmup) * pg["lr_mult"]
        idx = torch.randint(0, len(z_all), (a.batch,), generator=g)
        ids = ids_all[idx].clone()
        ids[torch.rand(len(idx), generator=g) < 0.1] = empty
        z0 = z_all[idx]
        noise = torch.randn(z0.shape, generator=g)
        t = draw_timesteps(len(idx), sched.config.num_train_timesteps, a.t_bias, g)
        zt = sched.add_noise(z0, noise, t)
        target = sched.get_velocity(z0, noise, t)
        with torch.no_grad():
            cond = text(ids).last_hidden_state
        down, mid = cn(zt, t, cond, controlnet_cond=cond_input(edges[idx]), return_dict=False)
        pred = unet(
            zt, t, cond, down_block_additional_residuals=down, mid_block_additional_residual=mid
        ).sample
        loss = (F.mse_loss(pred, target, reduction="none").mean((1, 2, 3)) * weight[t]).mean()
        step = checkpoint.optimiser_step(opt, loss, params, ema, a.ema, step)
        done += 1
        losses.append(loss.item())
        if step % a.log_every == 0 or step == stop:
            _log(
                f"controlnet step {step}/{a.steps} loss {np.mean(losses):.4f}"
                f" lr {opt.param_groups[0]['lr']:.2e}"
                f" ({(time.time() - t0) / done:.2f} s/step)",
                a.log,
            )
            losses, t0, done = [], time.time(), 0
        if step % a.save_every == 0 or step == stop:
            save_state(ckpt, cn, opt, ema, step, a, names)


def load_data(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path)


# ---------------------------------------------------------------- stage 3: export
def export(a, out: Path, use_ema: bool = True, unet=None, extra: dict | None = None) -> Path:
    """Write the ControlNet (EMA weights unless ``use_ema`` is false) as an fp16 diffusers folder with its
    training.json; a README.md already in ``out`` (the model card) is kept."""
    if unet is None:
        unet = load_frozen(a.base)[2]
    cn = build_controlnet(unet, a.arch)
    opt, names = make_optimizer(cn, a.lr, a.fast_lr_mult)
    ema, step = load_state(a.run_dir / CKPT, cn, opt, names)
    if use_ema:
        params = dict(cn.named_parameters())
        with torch.no_grad():
            for n, e in zip(names, ema):
                params[n].copy_(e)
    record = {
        "base_model": "toy",
        "conditioning": "hmedit.control.edges.edge_map (white edges on black, RGB, 128x128)",
        "weights": "ema" if use_ema else "raw",
        "train_seeds": f"0..{a.dataset - 1}",
        "conditioning_embedding_out_channels": list(COND_CHANNELS),
        **_arg_record(a),
        "schedule_steps": a.steps,  # the lr schedule's length
        "steps": step,  # trained
        **(extra or {}),
    }
    # fp16 storage keeps the folder under 10 MB (diffusers loads it as fp32 unless asked otherwise)
    return publish(out, lambda tmp: cn.half().save_pretrained(tmp, safe_serialization=True), record)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", type=Path, default=Path("runs/cnet"))
    p.add_argument("--out", type=Path, default=None, help="export the ControlNet folder here when done")
    p.add_argument("--base", type=Path, default=None, help="the toy model folder (default: the bundled one)")
    p.add_argument("--stages", default="data,train,export")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    p.add_argument("--dataset", type=int, default=2048, help="world images 0..N-1")
    p.add_argument("--steps", type=int, default=6000, help="length of the run (the lr schedule's)")
    p.add_argument("--until", type=int, default=0, help="stop this session at this step (resume later)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--fast-lr-mult", type=float, default=10.0, help="lr factor of the zero convs (see above)")
    p.add_argument(
        "--arch",
        choices=("text-free", "coarse-attn", "full"),
        default="text-free",
        help="see build_controlnet",
    )
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--ema", type=float, default=0.98)
    p.add_argument("--t-bias", choices=("cubic", "uniform"), default="cubic")
    p.add_argument("--save-every", type=int, default=10)
    p.add_argument("--log-every", type=int, default=5)
    p.add_argument("--raw", action="store_true", help="export the raw weights instead of the EMA")
    p.add_argument("--note", default="", help="how it was trained, for the model card (training.json)")
    a = p.parse_args(argv)
    a.base = a.base or base_folder()
    return a


def main(argv=None) -> None:
    a = parse_args(argv)
    stages = start_run(a)
    frozen = load_frozen(a.base)
    if "data" in stages:
        make_data(a, frozen[0], frozen[3])
    if "train" in stages:
        train(a, frozen)
    if "export" in stages and a.out:
        extra = {"note": a.note} if a.note else None
        _log(f"exported to {export(a, a.out, use_ema=not a.raw, unet=frozen[2], extra=extra)}", a.log)


if __name__ == "__main__":
    main()
