"""The denoise step the sampler loop calls: guidance around one UNet call whose inputs come from small parts.

Each part adds keyword arguments to the UNet call for step ``i`` and a batch of windows (None: untiled):

* :class:`TextEmbeddings`: ``encoder_hidden_states``, fixed or per step (null-text inversion needs it);
* :class:`RegionalAttention`: ``cross_attention_kwargs={"region": ...}``, the data of hmedit's attention
  processor (masks, weights, σ, recording);
* :class:`AddedConditioning`: SDXL's ``added_cond_kwargs`` (pooled embedding, size and crop ids per window).

A new input is a new part; the others do not change. A part may also compute inputs from the latents
(``residuals``: ControlNet residuals, :mod:`hmedit.control.residuals`). :class:`Guidance` doubles the
batch and combines the branches (classifier-free guidance, Ho & Salimans, "Classifier-Free Diffusion
Guidance", arXiv:2207.12598); tiled fusion is :func:`hmedit.sampling.tiled.fuse_windows`; per-node noise
levels are :class:`NoiseHolds` (Collage Diffusion, Sarukkai et al., "Collage Diffusion", arXiv:2303.00262,
eq. 2-3).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from torch import Tensor

from hmedit.attention.processor import RegionCall, sigma_weight
from hmedit.conditioning.encode import Conditioning
from hmedit.sampling.plan import Plan
from hmedit.sampling.tiled import TiledRecord, Tiler, fuse_windows
from hmedit.sampling.tiling import Window, crop


class Part(Protocol):
    """One source of UNet inputs. ``n``: windows in the batch (1 untiled); the UNet batch is
    [uncond × n, cond × n] with guidance, [cond × n] without."""

    def inputs(self, i: int, windows: Sequence[Window] | None, n: int) -> dict: ...

    # Optional: ``residuals(x, t, i, windows, n, kwargs) -> dict``, called with the UNet's input batch ``x``
    # and the other parts' merged inputs, for inputs computed from the latents (ControlNet residuals:
    # hmedit.control.residuals.ControlResiduals).


def merge(kwargs: dict, more: dict) -> dict:
    """``kwargs`` updated with ``more``; nested dicts (cross_attention_kwargs, added_cond_kwargs) merge."""
    for k, v in more.items():
        if isinstance(v, dict) and isinstance(kwargs.get(k), dict):
            kwargs[k] = {**kwargs[k], **v}
        else:
            kwargs[k] = v
    return kwargs


class Guidance:
    """Classifier-free guidance: the UNet batch holds both branches (uncond first, as diffusers orders them)
    when ``scale`` > 1, and the prediction is u + scale·(c − u); else the cond branch alone."""

    def __init__(self, scale: float) -> None:
        self.scale = float(scale)
        self.on = self.scale > 1.0

    @property
    def branches(self) -> int:
        return 2 if self.on else 1

    def select(self, both: Tensor) -> Tensor:
        """From a tensor [2, ...] (uncond, cond), the branches the UNet batch holds."""
        return both if self.on else both[1:]

    def expand(self, x: Tensor) -> Tensor:
        return torch.cat([x] * 2) if self.on else x

    def combine(self, out: Tensor) -> Tensor:
        if not self.on:
            return out
        uncond, cond = out.chunk(2)
        return uncond + self.scale * (cond - uncond)


class TextEmbeddings:
    """``encoder_hidden_states``: [B, T, D] for every step, or ``per_step(i)`` -> [B, T, D]."""

    def __init__(self, embeds: Tensor | None = None, per_step: Callable[[int], Tensor] | None = None) -> None:
        self.embeds, self.per_step = embeds, per_step

    def inputs(self, i: int, windows, n: int) -> dict:
        e = self.per_step(i) if self.per_step is not None else self.embeds
        return {"encoder_hidden_states": e.repeat_interleave(n, dim=0)}


class AddedConditioning:
    """SDXL's micro-conditioning: the root's pooled embeddings [B, P] and ``time_ids`` = original size +
    crop top-left + target size. Untiled: (H, W), (0, 0), (H, W), as diffusers. Tiled, each window is a crop
    of the image: (H, W), its top-left and its size in pixels (as Mixture of Diffusers for SDXL does: Jiménez,
    arXiv:2302.02412)."""

    def __init__(self, family, pooled: Tensor, size: tuple[int, int], scale: int) -> None:
        self.family, self.pooled, self.size, self.scale = family, pooled, tuple(size), scale
        self._ids: dict[Window | None, Tensor] = {}

    def _time_ids(self, win: Window | None) -> Tensor:
        if win not in self._ids:
            if win is None:
                ids = self.family.time_ids(self.size, (0, 0), self.size)
            else:
                s = self.scale
                ids = self.family.time_ids(
                    self.size, (win.y0 * s, win.x0 * s), (win.height * s, win.width * s)
                )
            self._ids[win] = ids.to(self.pooled.device, self.pooled.dtype)
        return self._ids[win]

    def inputs(self, i: int, windows, n: int) -> dict:
        b = self.pooled.shape[0]
        ids = torch.stack([self._time_ids(w) for w in (windows or [None])])  # [n, 6]
        ids = ids.repeat(b, 1)  # [b·n, 6], branch-major like the latents
        return {"added_cond_kwargs": self.family.added_cond(self.pooled.repeat_interleave(n, dim=0), ids)}


def branch_rows(guidance: Guidance, branches: Sequence[int] | None = None) -> tuple[int, ...]:
    """The rows of a conditioning's [2, ...] batch (0: uncond, 1: cond) that the UNet batch holds:
    ``branches``, else both with guidance and the cond one without."""
    if branches is not None:
        return tuple(int(b) for b in branches)
    return (0, 1) if guidance.on else (1,)


class RegionalAttention:
    """The attention processor's data per step and batch of windows, and the recorded attention.
    ``branches``: which guidance branches of ``cond`` the UNet batch holds (default: ``guidance``'s)."""

    def __init__(
        self,
        plan: Plan,
        cond: Conditioning,
        guidance: Guidance,
        scheduler,
        timesteps,
        *,
        device,
        dtype,
        record: bool,
        tiler: Tiler | None = None,
        tokens: Tensor | None = None,
        self_level: int | None = None,
        record_only: bool = False,
        branches: Sequence[int] | None = None,
    ) -> None:
        """``tokens``: cond token positions whose own maps are recorded; ``self_level``: the query length at
        which self-attention is recorded too (untiled); ``record_only``: the scene has no regional token,
        the processor only records (output as the stock one's)."""
        _, owners, valid = cond.batch()
        rows = list(branch_rows(guidance, branches))
        owners, valid = owners[rows], valid[rows]
        self.plan, self.scheduler, self.timesteps, self.tiler = plan, scheduler, timesteps, tiler
        self.n_run = len(timesteps)
        self.owners, self.valid = owners.to(device), valid.to(device)
        self.device, self.dtype = device, dtype
        self.masks = {n: m[None].to(device, dtype) for n, m in plan.level_masks.items()}
        self.level_gate = {n: g.to(device) for n, g in plan.level_gate.items()}
        self.pos, self.neg = plan.pos.to(device, dtype), plan.neg.to(device, dtype)
        rec_owner = torch.full((owners.shape[1],), -1, dtype=torch.long)
        rec_owner[: len(cond.cond)] = cond.record_owner()
        self.record_owner = rec_owner.to(device)
        self.record = (
            {n: torch.zeros(1, len(plan.ids), n, device=device) for n in self.masks} if record else None
        )
        self.record_count: dict[int, int] = {}
        self.record_only = record_only
        self.tokens = tokens.to(device) if tokens is not None else None
        self.token_record = (
            {n: torch.zeros(1, len(tokens), n, device=device) for n in self.masks}
            if tokens is not None
            else None
        )
        self.self_record = (
            {self_level: torch.zeros(1, self_level, self_level, device=device)} if self_level else None
        )
        self.tiled_record = (
            TiledRecord(len(plan.ids), plan.latent, tiler.sizes) if record and tiler is not None else None
        )
        self.tiled_tokens = (
            TiledRecord(len(tokens), plan.latent, tiler.sizes)
            if tokens is not None and tiler is not None
            else None
        )
        self.last: RegionCall | None = None

    def call(self, i: int, windows: Sequence[Window] | None) -> RegionCall:
        step = self.plan.step_gate(i / self.n_run).to(self.device)
        if windows is None:
            masks, gate = self.masks, self.level_gate
            record, count, token_record = self.record, self.record_count, self.token_record
        else:
            masks = {n: m.to(self.device, self.dtype) for n, m in self.tiler.masks(windows).items()}
            gate = {n: g.to(self.device) for n, g in self.tiler.gate.items()}
            count: dict[int, int] = {}
            record = token_record = None
            if self.tiled_record is not None:
                record = {
                    n: torch.zeros(len(windows), m.shape[1], n, device=m.device) for n, m in masks.items()
                }
            if self.tiled_tokens is not None:
                t = len(self.tokens)
                token_record = {n: torch.zeros(len(windows), t, n, device=self.device) for n in masks}
        ac = self.scheduler.alphas_cumprod[int(self.timesteps[i])]
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
            record_tokens=self.tokens,
            token_record=token_record,
            self_record=self.self_record if windows is None else None,
            record_only=self.record_only,
        )

    def inputs(self, i: int, windows, n: int) -> dict:
        self.last = self.call(i, windows)
        return {"cross_attention_kwargs": {"region": self.last}}

    def after_batch(self, windows: Sequence[Window], weights: Tensor) -> None:
        """Tiled: add the last batch's recording, weighted like its predictions."""
        region = self.last
        if region is not None and region.record is not None and self.tiled_record is not None:
            self.tiled_record.add(region.record, region.record_count, list(windows), weights)
            if self.tiled_tokens is not None and region.token_record is not None:
                self.tiled_tokens.add(region.token_record, region.record_count, list(windows), weights)

    def attention_maps(self) -> dict[int, Tensor] | None:
        """Mean recorded attention mass per level: query length -> [K, N]."""
        if self.record is None:
            return None
        if self.tiled_record is not None:
            return self.tiled_record.maps()
        return {n: self.record[n][0] / max(self.record_count.get(n, 0), 1) for n in self.record}

    def token_maps(self) -> dict[int, Tensor] | None:
        """Mean recorded attention of each recorded token per level: query length -> [T', N]."""
        if self.tiled_tokens is not None:
            return self.tiled_tokens.maps()
        if self.token_record is None:
            return None
        count = self.record_count
        return {n: m[0] / count[n] for n, m in self.token_record.items() if count.get(n, 0) > 0}

    def self_attention(self) -> dict[int, Tensor] | None:
        """Summed self-attention of the recorded level: query length -> [N, N] (rows not normalised)."""
        return {n: m[0] for n, m in self.self_record.items()} if self.self_record is not None else None


def conditioning_parts(
    model,
    plan: Plan,
    cond: Conditioning,
    guidance: Guidance,
    scheduler,
    timesteps,
    *,
    branches: Sequence[int] | None = None,
    text: TextEmbeddings | None = None,
    record: bool = False,
    tiler: Tiler | None = None,
    region: bool | None = None,
    **region_kw,
) -> list:
    """The parts every denoiser of ``plan`` starts from: :class:`TextEmbeddings` (``text``, else ``cond``'s
    embeddings of the selected branches), :class:`RegionalAttention` when the plan and the conditioning
    are regional, and :class:`AddedConditioning` on families with micro-conditioning. ``branches``: the
    rows of ``cond`` the UNet batch holds (0: uncond, 1: cond; default: as ``guidance`` needs); ``region``:
    whether to add the regional attention (None: when regional); ``region_kw``: its recording options."""
    dev, dt = model.device, model.dtype
    rows = list(branch_rows(guidance, branches))
    if text is None:
        text = TextEmbeddings(cond.batch()[0][rows].to(dev, dt))
    parts: list = [text]
    if region if region is not None else plan.regional and cond.regional:
        parts.append(
            RegionalAttention(
                plan,
                cond,
                guidance,
                scheduler,
                timesteps,
                device=dev,
                dtype=dt,
                record=record,
                tiler=tiler,
                branches=rows,
                **region_kw,
            )
        )
    fam = model.family
    if fam.uses_time_ids:
        pooled = cond.pooled[rows].to(dev, dt)
        parts.append(AddedConditioning(fam, pooled, (plan.height, plan.width), model.vae_scale_factor))
    return parts


def region_part(parts: Sequence) -> RegionalAttention | None:
    """The :class:`RegionalAttention` among ``parts``, or None."""
    return next((p for p in parts if isinstance(p, RegionalAttention)), None)


class NoiseHolds:
    """Per-node noise levels (Collage Diffusion §4.4, eq. 2-3): position x starts denoising at global step
    s(x) = n − floor(n · level(x)); before that it is held at the source, re-noised to the current step."""

    def __init__(self, plan: Plan, scheduler, timesteps, source: Tensor, noise: Tensor, t_start: int, n: int):
        self.scheduler, self.timesteps = scheduler, timesteps
        self.source, self.noise, self.t_start = source, noise, t_start
        self.n_run = len(timesteps)
        dev = source.device
        self.start_step = (n - torch.floor(plan.noise_map.to(dev) * n)).to(dev)

    def held_after(self, i: int) -> Tensor:
        """[h, w] True where step ``i``'s result is replaced by the re-noised source."""
        return self.start_step[0, 0] >= self.t_start + i + 1

    def after_step(self, x: Tensor, i: int) -> Tensor:
        hold = self.held_after(i)
        if not hold.any():
            return x
        if i + 1 < self.n_run:
            target = self.scheduler.add_noise(self.source, self.noise, self.timesteps[i + 1 : i + 2])
        else:
            target = self.source
        return torch.where(hold, target.to(x.dtype), x)


class Denoiser:
    """Guided noise prediction from parts, untiled or fused over windows; per-node holds after each step."""

    skip_held = True  # tiled: skip windows held at the source for the whole step

    def __init__(
        self,
        unet,
        scheduler,
        parts: Sequence[Part],
        guidance: Guidance,
        *,
        tiler: Tiler | None = None,
        holds: NoiseHolds | None = None,
    ) -> None:
        self.unet, self.scheduler, self.parts, self.guidance = unet, scheduler, list(parts), guidance
        self.tiler, self.holds = tiler, holds

    def predict(self, x: Tensor, t, i: int, windows: Sequence[Window] | None = None) -> Tensor:
        """Guided prediction for latents ``x`` [n, C, h, w] (scaled for the scheduler), n windows or 1."""
        return self.guidance.combine(self.raw(x, t, i, windows))

    def raw(self, x: Tensor, t, i: int, windows: Sequence[Window] | None = None) -> Tensor:
        """The UNet's output for every branch the batch holds ([uncond × n, cond × n] with guidance)."""
        n = x.shape[0]
        kwargs: dict = {}
        for part in self.parts:
            merge(kwargs, part.inputs(i, windows, n))
        xin = self.guidance.expand(x)
        for part in self.parts:
            if hasattr(part, "residuals"):
                merge(kwargs, part.residuals(xin, t, i, windows, n, kwargs))
        return self.unet(xin, t, **kwargs, return_dict=False)[0]

    def __call__(self, x: Tensor, t, i: int) -> Tensor:
        xs = self.scheduler.scale_model_input(x, t)
        if self.tiler is None:
            return self.predict(xs, t, i)

        def batch(wins: list[Window], weights: Tensor) -> Tensor:
            eps = self.predict(torch.cat([crop(xs, w) for w in wins]), t, i, wins)
            for part in self.parts:
                if hasattr(part, "after_batch"):
                    part.after_batch(wins, weights)
            return eps

        held = self.holds.held_after(i) if self.holds is not None and self.skip_held else None
        return fuse_windows(self.tiler, x, batch, held)

    def after_step(self, x: Tensor, i: int) -> Tensor:
        return self.holds.after_step(x, i) if self.holds is not None else x
