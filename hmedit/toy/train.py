"""Train the bundled model: a small, genuine diffusers Stable Diffusion model of the procedural world.

Stages (each resumable from its checkpoint in ``--run-dir``):
  1. vae     AutoencoderKL, 8x downsampling, 4 latent channels (as SD), on random crops of world images.
  2. encode  a fixed dataset of world images encoded once to latents (the UNet never runs the encoder).
  3. unet    UNet2DConditionModel + CLIPTextModel trained jointly, v-prediction with a zero-terminal-SNR
             schedule (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed"):
             without it the background colour of a flat world follows the seed, not the prompt
             (shared/notes/toy-training.md).
             Min-SNR loss weighting (Hang et al. 2023), 10% empty captions for classifier-free guidance, EMA.
  4. export  a diffusers folder that ``StableDiffusionPipeline.from_pretrained`` loads.

    python -m hmedit.toy.train --run-dir runs/toy --out hmedit/models/weights/toy
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hmedit.toy import world
from hmedit.toy.publish import publish

MAX_TOKENS = 77


# ---------------------------------------------------------------- tokenizer
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-level alphabet: every byte maps to a printable character."""
    bs = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def train_bpe(words: list[str]) -> list[tuple[str, str]]:
    """Learn BPE merges until every word is one token (ties broken alphabetically, so it is deterministic).

    Applying merges in rank order reproduces the training segmentation, so each world word encodes as one
    token; any other text still encodes, character by character.
    """
    seqs = [list(w[:-1]) + [w[-1] + "</w>"] for w in sorted(set(words))]
    merges: list[tuple[str, str]] = []
    while any(len(s) > 1 for s in seqs):
        counts: dict[tuple[str, str], int] = {}
        for s in seqs:
            for pair in zip(s, s[1:]):
                counts[pair] = counts.get(pair, 0) + 1
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        joined = best[0] + best[1]
        for i, s in enumerate(seqs):
            out, j = [], 0
            while j < len(s):
                if j + 1 < len(s) and (s[j], s[j + 1]) == best:
                    out.append(joined)
                    j += 2
                else:
                    out.append(s[j])
                    j += 1
            seqs[i] = out
    return merges


def build_tokenizer():
    from transformers import CLIPTokenizer

    alphabet = list(_bytes_to_unicode().values())
    merges = train_bpe(world.vocabulary())
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges]
    vocab: dict[str, int] = {}
    for t in tokens:
        vocab.setdefault(t, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=list(merges), model_max_length=MAX_TOKENS)


# ---------------------------------------------------------------- model configs
def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        sample_size=world.SIZE,
        norm_num_groups=16,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 64, 64, 64),
        layers_per_block=1,
    )


def build_text_encoder(tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        projection_dim=128,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(cfg)


def build_unet():
    from diffusers import UNet2DConditionModel

    # Cross-attention at three latent resolutions (16, 8 and 4 px for a 128 px image): fine, mid, coarse.
    return UNet2DConditionModel(
        sample_size=world.SIZE // 8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(64, 128, 192),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=128,
        attention_head_dim=4,
        norm_num_groups=32,
    )


def build_scheduler_config() -> dict:
    return dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        timestep_spacing="trailing",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


# ---------------------------------------------------------------- helpers
def save_checkpoint(obj: dict, path: Path) -> None:
    """Write a checkpoint atomically (a run stopped mid-write keeps the previous one)."""
    from hmedit.outputs.write import atomic_path

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: Path) -> dict:
    """A checkpoint of this module's making, read without running code: only tensors, numbers, strings and
    containers of them load (``torch.load(weights_only=True)``); a file holding other objects (a planted
    pickle) or a damaged one is an ``HmeditError`` naming it."""
    import pickle

    from hmedit.errors import HmeditError

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise HmeditError(
            "not a checkpoint of hmedit toy train: it holds objects other than tensors and numbers, "
            "which are not loaded",
            file=path,
            hint="delete the file, or train into another --run-dir",
        ) from None
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        raise HmeditError(
            f"cannot read the checkpoint: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
            file=path,
            hint="delete the file to start that stage again",
        ) from None
    if not isinstance(data, dict):
        raise HmeditError(
            f"not a checkpoint of hmedit toy train (a {type(data).__name__}, not a mapping)",
            file=path,
            hint="delete the file, or train into another --run-dir",
        )
    return data


def _log(msg: str, logfile: Path | None = None) -> None:
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)
    if logfile:
        with open(logfile, "a") as f:
            f.write(line + "\n")


def start_run(a) -> list[str]:
    """A trainer's common start: torch threads (``a.threads``; 0 leaves torch's), the seed, the run folder
    and its log (``a.log``); returns the stages asked for (``a.stages``, comma-separated)."""
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    a.run_dir.mkdir(parents=True, exist_ok=True)
    a.log = a.run_dir / "train.log"
    return a.stages.split(",")


def _images(seeds) -> np.ndarray:
    return np.stack([world.sample(int(s)).image for s in seeds])


def _to_tensor(imgs: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1


def _lr(step: int, total: int, peak: float, warmup: int = 200, floor: float = 0.1) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    p = (step - warmup) / max(total - warmup, 1)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(p, 1.0))))


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (computed on the 0..1 scale)."""
    from hmedit.metrics import psnr as psnr_

    return psnr_(a.detach().clamp(-1, 1).cpu(), b.detach().clamp(-1, 1).cpu(), peak=2.0)


HELD_OUT = 10_000_000  # seeds at and above this are never trained on


# ---------------------------------------------------------------- stage 1: VAE
def train_vae(a) -> None:
    ckpt = a.run_dir / "vae.pt"
    vae = build_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=a.vae_lr, weight_decay=0.0)
    step = 0
    if ckpt.exists():
        st = load_checkpoint(ckpt)
        vae.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        step = st["step"]
    if step >= a.vae_steps:
        return
    pool = _to_tensor(_images(range(a.vae_pool)))
    held = _to_tensor(_images(range(HELD_OUT, HELD_OUT + 32)))
    g = torch.Generator().manual_seed(a.seed * 1000 + step)
    t0 = time.time()
    while step < a.vae_steps:
        for pg in opt.param_groups:
            pg["lr"] = _lr(step, a.vae_steps, a.vae_lr)
        idx = torch.randint(0, len(pool), (a.vae_batch,), generator=g)
        c = a.vae_crop
        ox, oy = (torch.randint(0, world.SIZE - c + 1, (2,), generator=g) // 8 * 8).tolist()
        x = pool[idx, :, oy : oy + c, ox : ox + c]
        if torch.rand(1, generator=g).item() < 0.5:
            x = x.flip(-1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            post = vae.encode(x).latent_dist
            z = post.sample(generator=g)
            rec = vae.decode(z).sample.float()
        loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + a.vae_kl * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 100 == 0 or step == a.vae_steps:
            with torch.no_grad():
                rec = vae.decode(vae.encode(held).latent_dist.mode()).sample
            rate = (time.time() - t0) / 100
            t0 = time.time()
            _log(
                f"vae step {step}/{a.vae_steps} loss {loss.item():.4f} held-out PSNR {psnr(rec, held):.2f} dB"
                f" ({rate:.2f} s/step)",
                a.log,
            )
            save_checkpoint({"model": vae.state_dict(), "opt": opt.state_dict(), "step": step}, ckpt)


def load_vae(a, decoder: bool = False):
    """The trained VAE; with ``decoder``, its decoder fine-tuned by stage ``decoder`` where that has run."""
    vae = build_vae()
    vae.load_state_dict(load_checkpoint(a.run_dir / "vae.pt")["model"])
    dec = a.run_dir / "vae_dec.pt"
    if decoder and dec.exists():
        vae.load_state_dict(load_checkpoint(dec)["model"])
    return vae.eval().requires_grad_(False)


def train_decoder(a) -> None:
    """Fine-tune the decoder alone on latents of whole images from the frozen encoder.

    The encoder (hence the latent space the UNet learns) stays fixed, so this can run beside UNet training.
    """
    ckpt = a.run_dir / "vae_dec.pt"
    vae = load_vae(a, decoder=True)
    dec_params = list(vae.post_quant_conv.parameters()) + list(vae.decoder.parameters())
    for p in dec_params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(dec_params, lr=a.dec_lr, weight_decay=0.0)
    step = 0
    if ckpt.exists():
        st = load_checkpoint(ckpt)
        opt.load_state_dict(st["opt"])
        step = st["step"]
    if step >= a.dec_steps:
        return
    pool = _to_tensor(_images(range(HELD_OUT - a.vae_pool, HELD_OUT)))
    with torch.no_grad():
        lat = torch.cat([vae.encode(pool[i : i + 128]).latent_dist.mode() for i in range(0, len(pool), 128)])
    held = _to_tensor(_images(range(HELD_OUT, HELD_OUT + 32)))
    with torch.no_grad():
        held_lat = vae.encode(held).latent_dist.mode()
    g = torch.Generator().manual_seed(a.seed * 31 + step)
    c = a.dec_crop // 8
    t0 = time.time()
    while step < a.dec_steps:
        for pg in opt.param_groups:
            pg["lr"] = _lr(step, a.dec_steps, a.dec_lr, warmup=50)
        idx = torch.randint(0, len(pool), (a.dec_batch,), generator=g)
        ox, oy = torch.randint(0, world.SIZE // 8 - c + 1, (2,), generator=g).tolist()
        z = lat[idx, :, oy : oy + c, ox : ox + c]
        x = pool[idx, :, oy * 8 : (oy + c) * 8, ox * 8 : (ox + c) * 8]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            rec = vae.decode(z).sample.float()
        loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(dec_params, 1.0)
        opt.step()
        step += 1
        if step % 100 == 0 or step == a.dec_steps:
            with torch.no_grad():
                rec = vae.decode(held_lat).sample
            rate = (time.time() - t0) / 100
            t0 = time.time()
            _log(
                f"decoder step {step}/{a.dec_steps} loss {loss.item():.4f}"
                f" held-out PSNR {psnr(rec, held):.2f} dB"
                f" ({rate:.2f} s/step)",
                a.log,
            )
            save_checkpoint({"model": vae.state_dict(), "opt": opt.state_dict(), "step": step}, ckpt)


# ---------------------------------------------------------------- stage 2: cached latents
def encode_dataset(a) -> None:
    out = a.run_dir / "latents.pt"
    if out.exists():
        return
    vae = load_vae(a)
    lat, caps = [], []
    t0 = time.time()
    for start in range(0, a.dataset, 256):
        seeds = range(start, min(start + 256, a.dataset))
        samples = [world.sample(s) for s in seeds]
        caps += [s.caption for s in samples]
        with torch.no_grad():
            x = _to_tensor(np.stack([s.image for s in samples]))
            lat.append(vae.encode(x).latent_dist.mode())
        if (start // 256) % 10 == 0:
            _log(f"encode {start + len(seeds)}/{a.dataset} ({time.time() - t0:.0f} s)", a.log)
    z = torch.cat(lat)
    scale = 1.0 / z.std().item()
    save_checkpoint({"latents": z, "captions": caps, "scaling_factor": scale}, out)
    _log(f"encoded {len(z)} latents, std {z.std():.3f} -> scaling_factor {scale:.4f}", a.log)


# ---------------------------------------------------------------- stage 3: UNet + text encoder
def train_unet(a) -> None:
    from diffusers import DDPMScheduler

    ckpt = a.run_dir / "unet.pt"
    data = load_checkpoint(a.run_dir / "latents.pt")
    z_all = data["latents"] * data["scaling_factor"]
    tok = build_tokenizer()
    ids_all = tok(
        data["captions"], padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt"
    ).input_ids
    empty = tok([""], padding="max_length", max_length=MAX_TOKENS, return_tensors="pt").input_ids
    unet, text = build_unet(), build_text_encoder(tok)
    params = list(unet.parameters()) + list(text.parameters())
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=a.unet_lr, weight_decay=1e-2)
    step = 0
    if ckpt.exists():
        st = load_checkpoint(ckpt)
        unet.load_state_dict(st["unet"])
        text.load_state_dict(st["text"])
        opt.load_state_dict(st["opt"])
        ema = st["ema"]
        step = st["step"]
    sched = DDPMScheduler(
        **{k: v for k, v in build_scheduler_config().items() if k not in ("set_alpha_to_one", "steps_offset")}
    )
    ac = sched.alphas_cumprod
    snr = ac / (1 - ac).clamp(min=1e-8)
    # min-SNR-gamma for v-prediction, +1 so the zero-SNR terminal step (pure noise -> predict the image
    # mean, i.e. the background colour) keeps its weight instead of vanishing.
    weight = (snr.clamp(max=5.0) + 1) / (snr + 1)
    g = torch.Generator().manual_seed(a.seed * 7919 + step)
    n_params = sum(p.numel() for p in params)
    _log(f"unet+text params {n_params / 1e6:.2f} M, dataset {len(z_all)}", a.log)
    t0 = time.time()
    losses = []
    while step < a.unet_steps:
        for pg in opt.param_groups:
            pg["lr"] = _lr(step, a.unet_steps, a.unet_lr)
        idx = torch.randint(0, len(z_all), (a.unet_batch,), generator=g)
        z0 = z_all[idx]
        ids = ids_all[idx].clone()
        drop = torch.rand(len(idx), generator=g) < 0.1
        ids[drop] = empty
        noise = torch.randn(z0.shape, generator=g)
        t = torch.randint(0, sched.config.num_train_timesteps, (len(idx),), generator=g)
        zt = sched.add_noise(z0, noise, t)
        target = sched.get_velocity(z0, noise, t)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            cond = text(ids).last_hidden_state
            pred = unet(zt, t, cond).sample.float()
        loss = ((pred - target) ** 2).mean((1, 2, 3))
        loss = (loss * weight[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        decay = min(a.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
        losses.append(loss.item())
        if step % 50 == 0 or step == a.unet_steps:
            rate = (time.time() - t0) / 50
            t0 = time.time()
            _log(
                f"unet step {step}/{a.unet_steps} loss {np.mean(losses):.4f}"
                f" lr {opt.param_groups[0]['lr']:.2e}"
                f" ({rate:.2f} s/step)",
                a.log,
            )
            losses = []
        if step % a.save_every == 0 or step == a.unet_steps:
            save_checkpoint(
                {
                    "unet": unet.state_dict(),
                    "text": text.state_dict(),
                    "opt": opt.state_dict(),
                    "ema": ema,
                    "step": step,
                },
                ckpt,
            )


# ---------------------------------------------------------------- stage 4: export
def export(a, out: Path, use_ema: bool = True) -> Path:
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    tok = build_tokenizer()
    unet, text = build_unet(), build_text_encoder(tok)
    st = load_checkpoint(a.run_dir / "unet.pt")
    unet.load_state_dict(st["unet"])
    text.load_state_dict(st["text"])
    if use_ema:
        with torch.no_grad():
            for p, e in zip(list(unet.parameters()) + list(text.parameters()), st["ema"]):
                p.copy_(e)
    vae = load_vae(a, decoder=True)
    scale = load_checkpoint(a.run_dir / "latents.pt")["scaling_factor"]
    vae.register_to_config(scaling_factor=float(scale))
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=tok,
        unet=unet,
        scheduler=DDIMScheduler(**build_scheduler_config()),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    # fp16 weights for the UNet and VAE keep the package small (diffusers loads them as fp32); the text
    # encoder stays fp32 because transformers loads a checkpoint in its stored dtype, which would break plain
    # StableDiffusionPipeline.from_pretrained on CPU.
    unet.half()
    vae.half()
    record = {
        "unet_steps": st["step"],
        "vae_steps": a.vae_steps,
        "decoder_steps": a.dec_steps,
        "decoder_batch": a.dec_batch,
        "decoder_crop": a.dec_crop,
        "dataset": a.dataset,
        "seed": a.seed,
        "unet_batch": a.unet_batch,
        "unet_lr": a.unet_lr,
        "vae_batch": a.vae_batch,
        "vae_crop": a.vae_crop,
        "ema": a.ema,
        "scaling_factor": scale,
    }
    return publish(out, lambda tmp: pipe.save_pretrained(tmp, safe_serialization=True), record)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", type=Path, default=Path("runs/toy"))
    p.add_argument("--out", type=Path, default=None, help="export the diffusers folder here when done")
    p.add_argument("--stages", default="vae,encode,unet,export")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    p.add_argument("--vae-steps", type=int, default=3000)
    p.add_argument("--vae-batch", type=int, default=24)
    p.add_argument("--vae-crop", type=int, default=64)
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--vae-kl", type=float, default=1e-6)
    p.add_argument("--vae-pool", type=int, default=4000)
    p.add_argument("--dec-steps", type=int, default=4000)
    p.add_argument("--dec-lr", type=float, default=3e-4)
    p.add_argument("--dec-batch", type=int, default=24)
    p.add_argument(
        "--dec-crop",
        type=int,
        default=64,
        help="decoder crops in px (128: whole images, as GroupNorm sees them at use)",
    )
    p.add_argument("--dataset", type=int, default=24000)
    p.add_argument("--unet-steps", type=int, default=4000)
    p.add_argument("--unet-batch", type=int, default=64)
    p.add_argument("--unet-lr", type=float, default=4e-4)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--save-every", type=int, default=200)
    return p.parse_args(argv)


def main(argv=None) -> None:
    a = parse_args(argv)
    stages = start_run(a)
    if "vae" in stages:
        train_vae(a)
    if "encode" in stages:
        encode_dataset(a)
    if "decoder" in stages:
        train_decoder(a)
    if "unet" in stages:
        train_unet(a)
    if "export" in stages and a.out:
        _log(f"exported to {export(a, a.out)}", a.log)


if __name__ == "__main__":
    main()
