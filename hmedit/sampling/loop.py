"""The sampler loop and the denoise function it calls.

The loop (k-diffusion style) knows nothing of masks or tiles: it calls ``denoise(x, t, i)`` and the
scheduler, and lets ``denoise.after_step`` re-project the latents (per-node noise levels). Guidance, the
regional attention call and tiling live in :class:`Denoiser`: tiled, it denoises windows in batches and fuses
their predictions, so the scheduler still takes one step on the global latent.
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor

from hmedit.attention.processor import RegionCall, sigma_weight
from hmedit.conditioning.encode import Conditioning
from hmedit.errors import HmeditError
from hmedit.sampling.plan import Plan
from hmedit.sampling.tiled import TiledRecord, Tiler
from hmedit.sampling.tiling import crop


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

    skip_held = True  # tiled: skip windows held at the source for the whole step

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
        tiler: Tiler | None = None,
    ):
        self.unet, self.scheduler, self.plan, self.guidance = unet, scheduler, plan, guidance
        self.cfg = guidance > 1.0
        embeds, owners, valid = cond.batch()
        if not self.cfg:
            embeds, owners, valid = embeds[1:], owners[1:], valid[1:]
        dev, dt = unet.device, unet.dtype
        self.embeds = embeds.to(dev, dt)
        self.tiler = tiler
        self.windows_run = self.windows_total = 0  # tiled: windows denoised / scheduled, over all steps
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
            self.tiled_record = (
                TiledRecord(len(plan.ids), plan.latent, tiler.sizes) if record and tiler is not None else None
            )
        # per-node noise levels (Collage Diffusion eq. 2-3): position x starts denoising at global step
        # s(x) = n - floor(n * level(x)); before that it is held at the re-noised source.
        self.source, self.noise, self.t_start = source, noise, t_start
        if source is not None and plan.noise_map is not None:
            n = n_steps or self.n_run
            self.start_step = (n - torch.floor(plan.noise_map.to(dev) * n)).to(dev)
            self.all_timesteps = None

    def region_call(self, i: int, windows=None) -> RegionCall | None:
        """The attention processor's data for step ``i``: untiled, or for a batch of ``windows``."""
        if not self.regional:
            return None
        step = self.plan.step_gate(i / self.n_run).to(self.pos.device)
        if windows is None:
            masks, gate = self.masks, self.level_gate
            record, count = self.record, self.record_count
        else:
            masks = {n: m.to(self.pos.device, self.pos.dtype) for n, m in self.tiler.masks(windows).items()}
            gate = {n: g.to(self.pos.device) for n, g in self.tiler.gate.items()}
            count = {}
            record = None
            if self.tiled_record is not None:
                record = {
                    n: torch.zeros(len(windows), m.shape[1], n, device=m.device) for n, m in masks.items()
                }
        t = self.timesteps[i]
        ac = self.scheduler.alphas_cumprod[int(t)]
        sigma = float(((1 - ac) / ac.clamp(min=1e-12)).sqrt())
        return RegionCall(
            masks,
            {n: g & step for n, g in gate.items()},
            self.owners,
            self.valid,
            self.pos,
            self.neg,
            sigma_weight(sigma),
            record=record,
            record_owner=self.record_owner,
            record_count=count,
        )

    def _predict(self, x: Tensor, t, region: RegionCall | None) -> Tensor:
        """Guided noise prediction for latents ``x`` [W, C, h, w] (already scaled for the scheduler)."""
        n = x.shape[0]
        xin = torch.cat([x] * 2) if self.cfg else x
        kwargs = {"region": region} if region is not None else None
        out = self.unet(
            xin,
            t,
            encoder_hidden_states=self.embeds.repeat_interleave(n, dim=0),
            cross_attention_kwargs=kwargs,
            return_dict=False,
        )[0]
        if not self.cfg:
            return out
        uncond, cond = out.chunk(2)
        return uncond + self.guidance * (cond - uncond)

    def __call__(self, x: Tensor, t, i: int) -> Tensor:
        xs = self.scheduler.scale_model_input(x, t)
        if self.tiler is None:
            return self._predict(xs, t, self.region_call(i))
        wins, weights = self.tiler.step_windows()
        # windows held at the source for the whole step (per-node noise levels) need no prediction: after_step
        # overwrites them; the normaliser counts the windows that ran
        held = self.held_after(i) if self.skip_held else None
        keep = [j for j, win in enumerate(wins) if held is None or not bool(held[win.slice].all())]
        acc = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        norm = torch.zeros(x.shape[-2:], dtype=torch.float32, device=x.device)
        bs = self.tiler.ts.batch
        for b0 in range(0, len(keep), bs):
            idx = keep[b0 : b0 + bs]
            batch = [wins[j] for j in idx]
            xw = torch.cat([crop(xs, win) for win in batch])
            region = self.region_call(i, batch)
            eps = self._predict(xw, t, region)
            wt = weights[idx].to(x.device)
            for e, win, w_ in zip(eps, batch, wt):
                acc[0][win.slice] += e.float() * w_
                norm[win.slice] += w_
            if region is not None and region.record is not None:
                self.tiled_record.add(region.record, region.record_count, batch, weights[idx])
        self.windows_run += len(keep)
        self.windows_total += len(wins)
        return (acc / norm.clamp(min=1e-12)).to(x.dtype)

    def held_after(self, i: int) -> Tensor | None:
        """[h, w] True where step ``i``'s result is replaced by the re-noised source (None: nothing held)."""
        if self.source is None or self.plan.noise_map is None:
            return None
        return self.start_step[0, 0] >= self.t_start + i + 1

    def after_step(self, x: Tensor, i: int) -> Tensor:
        if self.source is None or self.plan.noise_map is None:
            return x
        hold = self.held_after(i)
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
        if self.tiled_record is not None:
            return self.tiled_record.maps()
        return {n: self.record[n][0] / max(self.record_count.get(n, 0), 1) for n in self.record}
