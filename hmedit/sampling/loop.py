"""The sampler loop and the denoise function it calls.

The loop (k-diffusion style) knows nothing of masks or tiles: it calls ``denoise(x, t, i)`` and the
scheduler, and lets ``denoise.after_step`` re-project the latents (per-node noise levels). Guidance, the
regional attention call and (later) tiling live in :class:`Denoiser`.
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor

from hmedit.attention.processor import RegionCall, sigma_weight
from hmedit.conditioning.encode import Conditioning
from hmedit.errors import HmeditError
from hmedit.sampling.plan import Plan


def sample(
    denoise, scheduler, x: Tensor, timesteps, step_kwargs: dict | None = None, callback=None
) -> Tensor:
    """Run ``scheduler`` over ``timesteps`` from latents ``x``."""
    for i, t in enumerate(timesteps):
        eps = denoise(x, t, i)
        x = scheduler.step(eps, t, x, **(step_kwargs or {}), return_dict=False)[0]
        x = denoise.after_step(x, i)
        if not torch.isfinite(x).all():
            raise HmeditError(
                f"the latents became NaN/inf at step {i + 1} of {len(timesteps)}",
                hint="fp16 overflow is the usual cause: try --dtype bf16 or --dtype fp32",
            )
        if callback is not None:
            callback(i, len(timesteps))
    return x


def step_kwargs(scheduler, generator, eta: float = 0.0) -> dict:
    """eta/generator for schedulers that take them (as diffusers' prepare_extra_step_kwargs)."""
    params = set(inspect.signature(scheduler.step).parameters)
    out = {}
    if "eta" in params:
        out["eta"] = eta
    if "generator" in params:
        out["generator"] = generator
    return out


class Denoiser:
    """Classifier-free guided noise prediction with regional attention and per-node noise levels."""

    def __init__(
        self,
        unet,
        scheduler,
        plan: Plan,
        cond: Conditioning,
        guidance: float,
        *,
        record: bool,
        timesteps,
        source: Tensor | None = None,
        noise: Tensor | None = None,
        t_start: int = 0,
        n_steps: int | None = None,
    ):
        self.unet, self.scheduler, self.plan, self.guidance = unet, scheduler, plan, guidance
        self.cfg = guidance > 1.0
        embeds, owners, valid = cond.batch()
        if not self.cfg:
            embeds, owners, valid = embeds[1:], owners[1:], valid[1:]
        dev, dt = unet.device, unet.dtype
        self.embeds = embeds.to(dev, dt)
        self.regional = plan.regional and cond.regional
        self.timesteps = timesteps
        self.n_run = len(timesteps)
        if self.regional:
            self.owners, self.valid = owners.to(dev), valid.to(dev)
            self.masks = {n: m[None].to(dev, dt) for n, m in plan.level_masks.items()}
            self.level_gate = {n: g.to(dev) for n, g in plan.level_gate.items()}
            self.pos, self.neg = plan.pos.to(dev, dt), plan.neg.to(dev, dt)
            rec_owner = torch.full((owners.shape[1],), -1, dtype=torch.long)
            rec_owner[: len(cond.cond)] = cond.record_owner()
            self.record_owner = rec_owner.to(dev)
            self.record = (
                {n: torch.zeros(1, len(plan.ids), n, device=dev) for n in self.masks} if record else None
            )
            self.record_count: dict[int, int] = {}
        # per-node noise levels (Collage Diffusion eq. 2-3): position x starts denoising at global step
        # s(x) = n - floor(n * level(x)); before that it is held at the re-noised source.
        self.source, self.noise, self.t_start = source, noise, t_start
        if source is not None and plan.noise_map is not None:
            n = n_steps or self.n_run
            self.start_step = (n - torch.floor(plan.noise_map.to(dev) * n)).to(dev)
            self.all_timesteps = None

    def region_call(self, i: int) -> RegionCall | None:
        if not self.regional:
            return None
        frac = i / self.n_run
        step = self.plan.step_gate(frac).to(self.pos.device)
        active = {n: g & step for n, g in self.level_gate.items()}
        t = self.timesteps[i]
        ac = self.scheduler.alphas_cumprod[int(t)]
        sigma = float(((1 - ac) / ac.clamp(min=1e-12)).sqrt())
        call = RegionCall(
            self.masks,
            active,
            self.owners,
            self.valid,
            self.pos,
            self.neg,
            sigma_weight(sigma),
            record=self.record,
            record_owner=self.record_owner,
            record_count=self.record_count,
        )
        return call

    def __call__(self, x: Tensor, t, i: int) -> Tensor:
        xin = torch.cat([x] * 2) if self.cfg else x
        xin = self.scheduler.scale_model_input(xin, t)
        region = self.region_call(i)
        kwargs = {"region": region} if region is not None else None
        out = self.unet(
            xin,
            t,
            encoder_hidden_states=self.embeds.expand(xin.shape[0], -1, -1),
            cross_attention_kwargs=kwargs,
            return_dict=False,
        )[0]
        if not self.cfg:
            return out
        uncond, cond = out.chunk(2)
        return uncond + self.guidance * (cond - uncond)

    def after_step(self, x: Tensor, i: int) -> Tensor:
        if self.source is None or self.plan.noise_map is None:
            return x
        g = self.t_start + i + 1  # global index of the step x has now reached
        hold = self.start_step >= g
        if not hold.any():
            return x
        if i + 1 < self.n_run:
            target = self.scheduler.add_noise(self.source, self.noise, self.timesteps[i + 1 : i + 2])
        else:
            target = self.source
        return torch.where(hold, target.to(x.dtype), x)

    def attention_maps(self) -> dict[int, Tensor] | None:
        """Mean recorded attention mass per level: query length -> [K, N]."""
        if not self.regional or self.record is None:
            return None
        return {n: self.record[n][0] / max(self.record_count.get(n, 0), 1) for n in self.record}
