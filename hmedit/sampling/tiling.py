"""Tiling geometry for sampling above the model's native size: windows over the latent, their blending
weights and per-step random offsets. Plain torch, no model; the denoise step crops and fuses with them.

All sizes are latent pixels. A render is denoised window by window and the windows' noise predictions are
fused with per-pixel weights that sum to one (MultiDiffusion: Fusing Diffusion Paths for Controlled Image
Generation, Bar-Tal et al., arXiv:2302.08113, eq. 5 with uniform weights; Mixture of Diffusers for scene
composition and high resolution image generation, Jiménez, arXiv:2302.02412, with separable Gaussian
weights). Seams are controlled by
shifting the window grid every step (:func:`random_offset`) and by weights that fall to zero at window
borders that lie inside the image (``fade``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
from torch import Tensor

Weighting = Literal["gaussian", "uniform"]

GAUSSIAN_VAR = 0.01  # Mixture of Diffusers: variance 0.01 in units of the tile size (σ = 0.1·tile)
WEIGHT_FLOOR = 1e-6  # every covered pixel keeps at least this weight, so the normaliser is never zero


class Window(NamedTuple):
    """A window [y0, y1) × [x0, x1) of a [..., H, W] tensor."""

    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def slice(self) -> tuple:
        """Index for ``tensor[..., y0:y1, x0:x1]``: ``tensor[window.slice]``."""
        return (Ellipsis, slice(self.y0, self.y1), slice(self.x0, self.x1))

    def scaled(self, factor: int) -> Window:
        """The same window at ``factor`` times the resolution (latent -> pixels: the VAE scale factor)."""
        return Window(self.y0 * factor, self.y1 * factor, self.x0 * factor, self.x1 * factor)


def _check(tile: int, overlap: int) -> int:
    if tile < 1 or not 0 <= overlap < tile:
        raise ValueError(f"need tile >= 1 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
    return tile - overlap


def _starts(dim: int, size: int, stride: int, offset: int) -> list[int]:
    """Window starts along one axis: the grid {offset + k·stride} clamped into [0, dim - size], plus both
    ends. Consecutive starts are at most ``stride`` <= ``size`` apart, so there are no gaps."""
    last = dim - size
    if last <= 0:
        return [0]
    starts = {0, last}
    s = offset % stride
    while s < last:
        starts.add(s)
        s += stride
    return sorted(starts)


def windows(
    height: int, width: int, tile: int, overlap: int, offset: tuple[int, int] = (0, 0)
) -> list[Window]:
    """Windows of min(tile, dim) per axis covering an ``height`` × ``width`` latent with stride
    ``tile - overlap``, row-major. Without offset the grid starts at 0 and the last window is aligned to the
    far edge (no partial windows, no gaps). ``offset`` = (dy, dx) shifts the grid; windows pushed past an
    edge are clamped to it, so everything stays covered (at most one extra window per axis)."""
    stride = _check(tile, overlap)
    if height < 1 or width < 1:
        raise ValueError(f"empty latent {height}x{width}")
    th, tw = min(tile, height), min(tile, width)
    ys = _starts(height, th, stride, offset[0])
    xs = _starts(width, tw, stride, offset[1])
    return [Window(y, y + th, x, x + tw) for y in ys for x in xs]


def random_offset(generator: torch.Generator, tile: int, overlap: int) -> tuple[int, int]:
    """A grid offset (dy, dx), uniform in [0, tile - overlap)², drawn from ``generator`` (reproducible)."""
    stride = _check(tile, overlap)
    d = torch.randint(0, stride, (2,), generator=generator, device=generator.device)
    return int(d[0]), int(d[1])


def _profile(n: int, kind: Weighting, fade: tuple[bool, bool] | None, ramp: int, var: float) -> Tensor:
    """1-D weight profile of length ``n``; ``fade`` = (low side, high side) or None for the plain profile."""
    i = torch.arange(n, dtype=torch.float64)
    if kind == "gaussian":
        mid = (n - 1) / 2
        p = torch.exp(-((i - mid) ** 2) / (2 * var * n * n))
    elif kind == "uniform":
        p = torch.ones(n, dtype=torch.float64)
    else:
        raise ValueError(f"unknown weighting {kind!r} (gaussian or uniform)")
    if fade is None:
        return p
    lo, hi = fade
    if kind == "gaussian":
        # an image-border side keeps full weight: flatten that half of the bell
        if not lo:
            p = torch.where(i <= (n - 1) / 2, torch.ones_like(p), p)
        if not hi:
            p = torch.where(i >= (n - 1) / 2, torch.ones_like(p), p)
    if ramp > 0:
        # linear ramp sampled at pixel centres, reaching zero on the window's edge line: two windows whose
        # ramps cover the same ``ramp`` pixels sum to exactly one there (InvokeAI-style linear overlap)
        r = ((i + 0.5) / ramp).clamp(max=1.0)
        if lo:
            p = p * r
        if hi:
            p = p * r.flip(0)
    return p


def window_weights(
    tile_h: int,
    tile_w: int,
    kind: Weighting = "gaussian",
    *,
    fade: tuple[bool, bool, bool, bool] | None = None,
    ramp: int | None = None,
    var: float = GAUSSIAN_VAR,
) -> Tensor:
    """Blending weights [tile_h, tile_w] of one window, peak 1.

    ``gaussian``: Mixture of Diffusers' separable Gaussian, variance ``var`` of the tile size per axis
    (centred at (n-1)/2 on both axes). ``uniform``: MultiDiffusion's plain average.
    ``fade`` = (top, bottom, left, right): sides that fall to zero (window borders inside the image) with a
    linear ramp over ``ramp`` pixels (default a quarter of the tile); the other sides (image borders) keep
    full weight, the Gaussian's half-bell being flattened there. None: the peers' profiles unchanged."""
    fy = fx = None
    if fade is not None:
        fy, fx = (fade[0], fade[1]), (fade[2], fade[3])
    ry = ramp if ramp is not None else tile_h // 4
    rx = ramp if ramp is not None else tile_w // 4
    py = _profile(tile_h, kind, fy, min(ry, tile_h), var)
    px = _profile(tile_w, kind, fx, min(rx, tile_w), var)
    w = py[:, None] * px[None, :]
    return (w / w.max()).float()


def fusion_weights(
    height: int,
    width: int,
    wins: Sequence[Window],
    kind: Weighting = "gaussian",
    *,
    fade: bool = True,
    ramp: int | None = None,
    var: float = GAUSSIAN_VAR,
    floor: float = WEIGHT_FLOOR,
) -> tuple[Tensor, Tensor]:
    """Per-window weights [W, h, w] and the normaliser [H, W] (their scattered sum) for fusing window
    predictions: Σ_w weight_w(x) / norm(x) = 1 at every pixel.

    ``fade``: weights fall to zero at window sides inside the image, not at image borders (seam control).
    Weights are floored at ``floor`` so every covered pixel has a positive normaliser. Windows must all be
    the same size and lie inside the image; pixels no window covers raise ValueError."""
    if not wins:
        raise ValueError("no windows")
    h, w = wins[0].height, wins[0].width
    out = []
    for win in wins:
        if (win.height, win.width) != (h, w):
            raise ValueError(f"windows differ in size: {win} vs {h}x{w}")
        if win.y0 < 0 or win.x0 < 0 or win.y1 > height or win.x1 > width:
            raise ValueError(f"window {win} lies outside the {height}x{width} latent")
        sides = (win.y0 > 0, win.y1 < height, win.x0 > 0, win.x1 < width) if fade else None
        out.append(window_weights(h, w, kind, fade=sides, ramp=ramp, var=var).clamp(min=floor))
    weights = torch.stack(out)
    norm = torch.zeros(height, width)
    for win, wt in zip(wins, weights):
        norm[win.slice] += wt
    gaps = norm <= 0
    if gaps.any():
        raise ValueError(f"the windows leave {int(gaps.sum())} pixels of {height}x{width} uncovered")
    return weights, norm


def crop(tensor: Tensor, window: Window) -> Tensor:
    """``tensor[..., y0:y1, x0:x1]`` (a view)."""
    return tensor[window.slice]


def panorama_views(height: int, width: int, window: int = 64, stride: int = 8) -> list[Window]:
    """The views of diffusers' ``StableDiffusionPanoramaPipeline.get_views`` (non-circular), with height and
    width in latent pixels (get_views takes image pixels and divides by 8). Like the original, views may
    miss a strip at the far edges when (size - window) is not a multiple of ``stride``, and a latent smaller
    than ``window`` gets one view that overhangs it (diffusers relies on slicing to truncate it)."""
    nh = (height - window) // stride + 1 if height > window else 1
    nw = (width - window) // stride + 1 if width > window else 1
    out = []
    for i in range(int(nh * nw)):
        y0 = int((i // nw) * stride)
        x0 = int((i % nw) * stride)
        out.append(Window(y0, y0 + window, x0, x0 + window))
    return out
