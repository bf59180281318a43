"""Tiled sampling: which windows a step denoises, their masks, and how their recordings add up.

The sampler loop is the same with or without tiles: :class:`~hmedit.sampling.denoise.Denoiser` calls
:func:`fuse_windows`, which asks :class:`Tiler` for this step's windows and weights, denoises them in batches,
and fuses the noise predictions into one global prediction, on which the scheduler takes one step (so
multistep schedulers and per-node noise levels work on the global latent as untiled). Each window gets its
crop of the per-level effective masks, computed from the pixel-resolution masks exactly as the untiled ones
are, so the attention bias means the same thing in every window; a window covering the whole latent gets
exactly the untiled masks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from hmedit.errors import HmeditError
from hmedit.masks.levels import downsample, level_sizes
from hmedit.sampling.plan import Plan
from hmedit.sampling.tiling import Window, crop, fusion_weights, random_offset, windows
from hmedit.scene.presets import TilingDefaults
from hmedit.scene.spec import Tiling

DEFAULT_OVERLAP_FRACTION = 4  # overlap = tile // 4


@dataclass(frozen=True)
class TileSettings:
    """Tiling after defaults (latent px), as recorded in the provenance."""

    tile: int
    overlap: int
    weighting: str = "gaussian"
    batch: int = 8
    offsets: bool = True
    fade: bool = True
    coarse: bool = False
    refine: float = 0.6

    @property
    def stride(self) -> int:
        return self.tile - self.overlap


def resolve_tiling(
    spec: Tiling | None,
    latent: tuple[int, int],
    native_latent: int,
    align: int,
    defaults: TilingDefaults,
    *,
    from_noise: bool = True,
) -> TileSettings | None:
    """The tiling a render uses, or None (untiled). On by default when the latent exceeds the model's
    native latent size; ``tiling: off`` renders any size whole (as plain diffusers does); ``tiling: on``
    tiles any size. Keys the scene leaves out come from the preset's ``defaults``; the preset's ``coarse``
    applies to renders generated ``from_noise`` (no init image or layer) above the native size only: an edit
    takes its composition from its source picture, and at the native size there is nothing to refine."""
    spec = spec or Tiling()
    h, w = latent
    if not spec.enabled or not (max(h, w) > native_latent or spec.force):
        return None
    tile = spec.tile or defaults.tile or native_latent
    if tile % align:
        raise HmeditError(
            f"tile {tile} is not a multiple of {align} latent px (the UNet's coarsest level)",
            field="tiling.tile",
            hint=f"use {max(align, tile // align * align)}",
        )
    overlap = spec.overlap if spec.overlap is not None else defaults.overlap
    overlap = overlap if overlap is not None else tile // DEFAULT_OVERLAP_FRACTION
    if overlap >= tile:
        raise HmeditError(
            f"overlap {overlap} must be smaller than tile {tile}",
            field="tiling.overlap",
            hint=f"use {tile // 4}",
        )
    batch = spec.batch or defaults.batch
    coarse = spec.coarse
    if coarse is None:
        coarse = defaults.coarse and from_noise and max(h, w) > native_latent
    refine = spec.refine if spec.refine is not None else defaults.refine
    return TileSettings(tile, overlap, spec.weighting, batch, spec.offsets, spec.fade, coarse, float(refine))


class Tiler:
    """Windows, weights and per-window masks for one render."""

    def __init__(self, ts: TileSettings, plan: Plan, generator: torch.Generator | None = None) -> None:
        self.ts, self.plan = ts, plan
        self.h, self.w = plan.latent
        self.scale = plan.height // self.h  # image px per latent px
        self.generator = generator
        self._weights: dict[tuple, Tensor] = {}
        self._masks: dict[Window, dict[int, Tensor]] = {}
        self.th, self.tw = min(ts.tile, self.h), min(ts.tile, self.w)
        self.sizes = level_sizes((self.th, self.tw), plan.factors)  # factor -> (h_l, w_l) of a window
        self.n_of = {f: hh * ww for f, (hh, ww) in self.sizes.items()}  # factor -> query length
        self.gate = {self.n_of[f]: plan.level_gate[_global_n(plan, f)] for f in plan.factors}
        self.windows_run = self.windows_total = 0  # windows denoised / scheduled, over all steps

    def step_windows(self) -> tuple[list[Window], Tensor]:
        """This step's windows and their fusion weights [W, th, tw]. The caller normalises by the weights of
        the windows it actually runs (held windows are skipped)."""
        ts = self.ts
        off = (0, 0)
        if ts.offsets and self.generator is not None:
            off = random_offset(self.generator, ts.tile, ts.overlap)
        wins = windows(self.h, self.w, ts.tile, ts.overlap, off)
        key = tuple(wins)
        if key not in self._weights:
            self._weights[key] = fusion_weights(self.h, self.w, wins, ts.weighting, fade=ts.fade)[0]
        return wins, self._weights[key]

    def masks(self, batch: list[Window]) -> dict[int, Tensor]:
        """Per-level effective masks of a batch of windows: query length -> [Wb, K, N]."""
        per = [self._window_masks(win) for win in batch]
        return {n: torch.stack([p[n] for p in per]) for n in per[0]}

    def _window_masks(self, win: Window) -> dict[int, Tensor]:
        if win not in self._masks:
            crop = self.plan.effective[win.scaled(self.scale).slice]  # [K, th·s, tw·s] pixels
            k = crop.shape[0]
            self._masks[win] = {
                self.n_of[f]: downsample(crop, size, "max").reshape(k, -1) for f, size in self.sizes.items()
            }
        return self._masks[win]


def fuse_windows(
    tiler: Tiler, x: Tensor, predict: Callable[[list[Window], Tensor], Tensor], held: Tensor | None = None
) -> Tensor:
    """One global prediction for latents ``x`` [1, C, h, w] from this step's windows, denoised in batches by
    ``predict(windows, weights)`` -> [Wb, C, th, tw] and fused with the tiler's weights. Windows entirely
    ``held`` ([h, w] True: replaced by the re-noised source after the step) are skipped; the normaliser
    counts the windows that ran."""
    wins, weights = tiler.step_windows()
    keep = [j for j, win in enumerate(wins) if held is None or not bool(held[win.slice].all())]
    acc = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    norm = torch.zeros(x.shape[-2:], dtype=torch.float32, device=x.device)
    bs = tiler.ts.batch
    for b0 in range(0, len(keep), bs):
        idx = keep[b0 : b0 + bs]
        batch = [wins[j] for j in idx]
        eps = predict(batch, weights[idx])
        wt = weights[idx].to(x.device)
        for e, win, w_ in zip(eps, batch, wt):
            acc[0][win.slice] += e.float() * w_
            norm[win.slice] += w_
    tiler.windows_run += len(keep)
    tiler.windows_total += len(wins)
    return (acc / norm.clamp(min=1e-12)).to(x.dtype)


def _global_n(plan: Plan, factor: int) -> int:
    h, w = plan.latent
    return math.ceil(h / factor) * math.ceil(w / factor)


class TiledRecord:
    """Measured attention of tiled steps, gathered at latent resolution: per level, each window's map is
    upsampled to the window and added with the window's fusion weight."""

    def __init__(self, k: int, latent: tuple[int, int], sizes: dict[int, tuple[int, int]]) -> None:
        self.k, self.latent, self.sizes = k, latent, sizes
        self.by_n = {hh * ww: (hh, ww) for hh, ww in sizes.values()}
        self.acc = {n: torch.zeros(k, *latent) for n in self.by_n}
        self.weight = {n: torch.zeros(*latent) for n in self.by_n}

    def add(
        self, record: dict[int, Tensor], counts: dict[int, int], wins: list[Window], weights: Tensor
    ) -> None:
        for n, maps in record.items():  # [Wb, K, N]
            c = counts.get(n, 0)
            if not c:
                continue
            hh, ww = self.by_n[n]
            for m, win, wt in zip(maps, wins, weights):
                up = F.interpolate(
                    (m / c).reshape(1, self.k, hh, ww).float().cpu(),
                    (win.height, win.width),
                    mode="bilinear",
                    align_corners=False,
                )[0]
                wt = wt.cpu()
                self.acc[n][win.slice] += up * wt
                self.weight[n][win.slice] += wt

    def maps(self) -> dict[int, Tensor] | None:
        """Mean over levels of the weighted mean over windows and steps: {h·w: [K, h·w]} (one latent map)."""
        levels = [self.acc[n] / self.weight[n].clamp(min=1e-12) for n in self.acc if self.weight[n].any()]
        if not levels:
            return None
        h, w = self.latent
        return {h * w: torch.stack(levels).mean(0).reshape(self.k, h * w)}


# ------------------------------------------------------------------------------------------ regions: fusion
def region_window(weight: Tensor, align: int, min_side: int) -> Window | None:
    """The window of a node's latent weight [h, w]: the bounding box of where it is > 0, grown about its
    centre to at least ``min_side`` and to a multiple of ``align`` per side (the UNet's coarsest level),
    kept inside the latent; None where the weight is 0 everywhere."""
    h, w = weight.shape
    ys, xs = torch.nonzero(weight > 0, as_tuple=True)
    if not len(ys):
        return None

    def span(lo: int, hi: int, size: int) -> tuple[int, int]:
        side = min(size, max(hi - lo, min_side))
        side = min(size, -(-side // align) * align) if size >= align else size
        start = max(0, min(size - side, (lo + hi - side) // 2))
        return start, start + side

    y0, y1 = span(int(ys.min()), int(ys.max()) + 1, h)
    x0, x1 = span(int(xs.min()), int(xs.max()) + 1, w)
    return Window(y0, y1, x0, x1)


class RegionFusion:
    """``regions: fusion`` (MultiDiffusion, Bar-Tal et al., arXiv:2302.08113, eq. 3-5 with region masks;
    MRGD eq. 1; Mixture of Diffusers, Jiménez, arXiv:2302.02412): each node's prompt, encoded on its own (no
    regional attention), denoises the crop of its region's bounding box, and the guided noise predictions
    are fused into one, each weighted by its node's effective mask at latent resolution (area-averaged):
    ε(x) = Σ_k w_k(x) ε_k(x) / Σ_k w_k(x). Where no weight falls (never, with masks that conserve influence)
    the root's prediction is used. One UNet call per node and step. ``after_step``: the per-node holds."""

    def __init__(self, model, plan: Plan, guidance, scheduler, timesteps, *, holds=None) -> None:
        from hmedit.conditioning.encode import encode_scene
        from hmedit.sampling.denoise import Denoiser, conditioning_parts

        fam = model.family
        text = fam.text(model)
        h, w = plan.latent
        align = max(fam.factors(model.unet))
        min_side = max(align, model.native_size // model.vae_scale_factor // 2)
        weights = downsample(plan.effective.float(), (h, w), "area")  # [K, h, w]
        self.scheduler, self.holds = scheduler, holds
        self.nodes: list[tuple[Window, Tensor, object]] = []
        for k, f in enumerate(plan.flat):
            win = Window(0, h, 0, w) if k == 0 else region_window(weights[k], align, min_side)
            if win is None:
                continue
            cond = encode_scene(
                text, [f.node.prompt], [f.node.negative], zero_empty_negative=fam.zero_empty_negative(model)
            )
            parts = conditioning_parts(model, plan, cond, guidance, scheduler, timesteps)
            den = Denoiser(model.unet, scheduler, parts, guidance)
            self.nodes.append((win, weights[k][win.slice].to(model.device), den))
        self.windows_run = 0

    def __call__(self, x: Tensor, t, i: int) -> Tensor:
        xs = self.scheduler.scale_model_input(x, t)
        acc = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        norm = torch.zeros(x.shape[-2:], dtype=torch.float32, device=x.device)
        root = None
        for win, weight, den in self.nodes:
            whole = win == (0, x.shape[-2], 0, x.shape[-1])
            eps = den.predict(crop(xs, win), t, i, None if whole else [win])
            if root is None:
                root = eps
            acc[win.slice] += eps.float() * weight
            norm[win.slice] += weight
            self.windows_run += 1
        fused = acc / norm.clamp(min=1e-12)
        return torch.where(norm > 1e-6, fused, root.float()).to(x.dtype)

    def after_step(self, x: Tensor, i: int) -> Tensor:
        return self.holds.after_step(x, i) if self.holds is not None else x


def fusion_denoiser(model, plan: Plan, guidance, scheduler, timesteps, *, holds=None) -> RegionFusion:
    """The denoiser of ``regions: fusion`` (:class:`RegionFusion`)."""
    return RegionFusion(model, plan, guidance, scheduler, timesteps, holds=holds)
