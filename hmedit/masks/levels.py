"""Effective masks per UNet level and per sampling step (paper 000, §3: "for each level l, a set of masks
m~^{k,l} can be instantiated by downsampling"; Table 6: coarse levels carry the root and shallow nodes,
fine levels parts and boundaries).

Everything that can be is computed once per render in :class:`LevelMasks`; the attention processor then asks
``at(step_fraction, query_len)`` and gets a [K, N] tensor for one multiply (no resampling in the step loop).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["LevelMasks", "downsample", "level_names", "level_sizes"]

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


class LevelMasks:
    """Effective masks resampled to every UNet level once per render, gated per step and per level.

    ``masks`` [K, H, W] are effective masks at image resolution (or any resolution the latent grid divides);
    ``latent_size`` (h, w) the latent grid; ``factors`` the UNet's levels as downsampling factors of the
    latent (SD 1.x/2.x: 1, 2, 4, 8). ``active`` per node: [start, end) as fractions of the sampling steps
    (None: always). ``levels`` per node: the level names ("fine" / "mid" / "coarse") or factors it acts on
    (None: all). Levels are keyed by query length h_l * w_l, which is what an attention processor sees.
    """

    def __init__(
        self,
        masks: Tensor,
        latent_size: tuple[int, int],
        factors: Sequence[int] = (1, 2, 4, 8),
        *,
        active: Sequence[tuple[float, float] | None] | None = None,
        levels: Sequence[Iterable[str | int] | None] | None = None,
        mode: Literal["area", "max"] = "max",
    ) -> None:
        if masks.ndim != 3:
            raise ValueError(f"masks must be [K, H, W], got shape {tuple(masks.shape)}")
        k = masks.shape[0]
        self.names = level_names(factors)
        self.sizes = level_sizes(latent_size, self.names)
        active = list(active) if active is not None else [None] * k
        levels = list(levels) if levels is not None else [None] * k
        if len(active) != k or len(levels) != k:
            raise ValueError(f"need one active range and one level set per mask ({k})")
        spans = [(0.0, math.inf) if a is None else (float(a[0]), float(a[1])) for a in active]
        # [start, end) with end = 1 meaning "to the last step": step fractions are i / n < 1
        self._start = torch.tensor([s for s, _ in spans], dtype=torch.float64)
        self._end = torch.tensor([math.inf if e >= 1.0 else e for _, e in spans], dtype=torch.float64)

        self._by_len: dict[int, Tensor] = {}
        self._factor_of: dict[int, int] = {}
        for f, (h, w) in self.sizes.items():
            n = h * w
            if n in self._by_len:
                raise ValueError(f"levels {self._factor_of[n]} and {f} have the same query length {n}")
            name = self.names[f]
            gate = torch.tensor(
                [1.0 if lv is None or _in_levels(name, f, lv) else 0.0 for lv in levels],
                dtype=masks.dtype,
                device=masks.device,
            )
            down = downsample(masks, (h, w), mode)  # [K, h, w]
            self._by_len[n] = (down * gate[:, None, None]).reshape(k, n).contiguous()
            self._factor_of[n] = f
        self._last: tuple[float, Tensor] | None = None

    @property
    def query_lens(self) -> list[int]:
        return list(self._by_len)

    def factor(self, query_len: int) -> int:
        """The downsampling factor of the level with this query length."""
        return self._factor_of[self._key(query_len)]

    def _key(self, query_len: int) -> int:
        if query_len not in self._by_len:
            raise KeyError(f"no UNet level with query length {query_len}; known: {sorted(self._by_len)}")
        return query_len

    def step_gate(self, step_fraction: float) -> Tensor:
        """[K] 1 for nodes active at this fraction of the sampling steps, else 0 (cached per step)."""
        if self._last is not None and self._last[0] == step_fraction:
            return self._last[1]
        t = float(step_fraction)
        gate = ((self._start <= t) & (t < self._end)).to(self._dtype)
        gate = gate.to(self._device)
        self._last = (step_fraction, gate)
        return gate

    @property
    def _dtype(self) -> torch.dtype:
        return next(iter(self._by_len.values())).dtype

    @property
    def _device(self) -> torch.device:
        return next(iter(self._by_len.values())).device

    def at(self, step_fraction: float, query_len: int) -> Tensor:
        """Masks [K, N] for the level with ``query_len`` = N at ``step_fraction`` in [0, 1): nodes outside
        their active range or their levels are zero. One multiply per call."""
        return self._by_len[self._key(query_len)] * self.step_gate(step_fraction)[:, None]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> LevelMasks:
        """Move the precomputed masks (in place; returns self)."""
        for n, m in self._by_len.items():
            self._by_len[n] = m.to(device=device, dtype=dtype)
        self._last = None
        return self


def _in_levels(name: str, factor: int, wanted: Iterable[str | int]) -> bool:
    for w in wanted:
        if isinstance(w, str) and w == name:
            return True
        if not isinstance(w, str) and int(w) == factor:
            return True
    return False
