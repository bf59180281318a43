"""The sampler loop (k-diffusion style): it knows nothing of masks, tiles or model families. It calls
``denoise(x, t, i)`` (:class:`hmedit.sampling.denoise.Denoiser`) and the scheduler, and lets
``denoise.after_step`` re-project the latents (per-node noise levels)."""

from __future__ import annotations

import inspect

import torch
from torch import Tensor

from hmedit.errors import HmeditError


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
