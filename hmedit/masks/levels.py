"""Masks at the resolution of each UNet level (Hierarchical Mask Composition for High-Resolution Text-Guided
Image Editing, Adhikari and Shrestha, §3: "for each level l, a set of masks m~^{k,l} can be instantiated by
downsampling"; Table 6: coarse levels carry the root and shallow nodes, fine levels parts and boundaries).

The geometry only: level names and feature-map sizes per downsampling factor, and the resampling. The
per-render tables (one [K, N] mask per level, the level and step gates) are built once in
:func:`hmedit.sampling.plan.build_plan`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal

import torch.nn.functional as F
from torch import Tensor

__all__ = ["downsample", "level_names", "level_sizes"]

LevelName = Literal["fine", "mid", "coarse"]


def _pool_factor(n_in: int, n_out: int) -> int | None:
    """An integer k with ceil(n_in / k) == n_out (a ceil-mode pooling window), if there is one."""
    k = max(1, round(n_in / n_out))
    for cand in (k, k + 1, k - 1):
        if cand >= 1 and math.ceil(n_in / cand) == n_out:
            return cand
    return None


def downsample(mask: Tensor, size: tuple[int, int], mode: Literal["area", "max"] = "area") -> Tensor:
    """Resize ``mask`` [..., H, W] to ``size`` (h, w).

    "area" averages (keeps each region's mass, so a region smaller than an output pixel is diluted);
    "max" max-pools, so any output pixel touched by a region gets its peak value and one-pixel regions
    survive at every level (InvokeAI's regional prompting does this). When the size is a ceil-mode pooling
    of the input, i.e. ceil(H / k) = h for an integer k as in a UNet's stride-2 convolutions, windows are
    k x k and a partial window at the border covers only what is there; other sizes use adaptive pooling.
    """
    if mode not in ("area", "max"):
        raise ValueError(f"mode must be 'area' or 'max', not {mode!r}")
    h, w = int(size[0]), int(size[1])
    if mask.ndim < 2 or h <= 0 or w <= 0:
        raise ValueError(f"cannot resize a mask of shape {tuple(mask.shape)} to {size}")
    lead, (H, W) = mask.shape[:-2], mask.shape[-2:]
    if (h, w) == (H, W):
        return mask
    x = mask.reshape(-1, 1, H, W)
    if not x.dtype.is_floating_point:
        x = x.float()
    kh, kw = _pool_factor(H, h), _pool_factor(W, w)
    if kh is not None and kw is not None and h <= H and w <= W:
        if mode == "max":
            y = F.max_pool2d(x, (kh, kw), stride=(kh, kw), ceil_mode=True)
        else:
            # with ceil_mode and no padding, a partial border window is averaged over its inside part
            y = F.avg_pool2d(x, (kh, kw), stride=(kh, kw), ceil_mode=True, count_include_pad=False)
    elif mode == "max":
        y = F.adaptive_max_pool2d(x, (h, w))
    else:
        y = F.adaptive_avg_pool2d(x, (h, w))
    return y.reshape(*lead, h, w)


def level_names(factors: Iterable[int]) -> dict[int, LevelName]:
    """Name a UNet's levels by downsampling factor relative to the latent: the smallest factor (highest
    resolution) is "fine", the largest (deepest) "coarse", everything in between "mid". One level is
    "fine"; two are "fine" and "coarse"."""
    fs = sorted(set(int(f) for f in factors))
    if not fs or fs[0] < 1:
        raise ValueError(f"level factors must be positive integers, got {list(factors)}")
    out: dict[int, LevelName] = {}
    for f in fs:
        out[f] = "fine" if f == fs[0] else "coarse" if f == fs[-1] else "mid"
    return out


def level_sizes(latent_size: tuple[int, int], factors: Iterable[int]) -> dict[int, tuple[int, int]]:
    """Feature map size (h, w) per factor: ceil(h / f), ceil(w / f), as repeated stride-2 convolutions
    with padding 1 produce (ceil(ceil(h / 2) / 2) = ceil(h / 4))."""
    h, w = latent_size
    return {int(f): (math.ceil(h / f), math.ceil(w / f)) for f in factors}
