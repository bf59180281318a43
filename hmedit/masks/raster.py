"""Intrinsic masks m^k (Hierarchical Mask Composition for High-Resolution Text-Guided Image Editing,
Adhikari and Shrestha, no arXiv id, §3) rasterised at any resolution.

Shapes are given in fractions of the image (x, y, w, h with the origin top-left), so one scene renders at any
size. Every function returns a float32 tensor [height, width] in 0..1 whose pixel values are the fraction of
the pixel's area covered by the shape (anti-aliased):

- rectangles are exact (separable analytic coverage);
- ellipses and polygons are cut into ``SUBROWS`` strips per pixel row; each strip's covered x-interval is
  integrated exactly over the pixels. Along y, a polygon strip uses the outline at the strip's middle
  (exact unless a vertex or horizontal edge falls inside the strip, so a pixel is off by at most
  1/SUBROWS), an ellipse strip the interval with the strip's exact mean chord (so an ellipse's area is
  exact, up to clipping at the left and right frame edges, and pixels are off by far less than 1/SUBROWS);
- mask images and layer images are area-resampled (box filter over the exact footprint of each pixel, for
  upsampling and downsampling alike).

Pixel j spans [j, j + 1) in pixel units; a fractional coordinate u maps to u * width pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hmedit.errors import HmeditError
from hmedit.scene.assets import image_size, load_gray, load_rgb, load_rgba
from hmedit.scene.spec import (
    AttentionMask,
    BandMask,
    EllipseMask,
    FlatNode,
    ImageMask,
    Node,
    PolygonMask,
    RectMask,
    Scene,
)

__all__ = [
    "SUBROWS",
    "ellipse",
    "feather",
    "from_image",
    "layer_alpha",
    "layer_box",
    "layer_rgba_on_canvas",
    "place_layer",
    "polygon",
    "rasterize_node",
    "rasterize_scene",
    "rect",
    "reference_size",
]

SUBROWS = 16
"""Scanlines per pixel row for ellipses and polygons (coverage error per pixel at most 1/SUBROWS)."""

_F64 = torch.float64


def _cum_cover(edge: Tensor, cols: Tensor) -> Tensor:
    """F(x)_j = clamp(x - j, 0, 1): how much of pixel j lies left of x. Coverage of [a, b] = F(b) - F(a)."""
    return (edge.unsqueeze(-1) - cols).clamp(0.0, 1.0)


def _span(lo: float, hi: float, n: int) -> tuple[int, int]:
    """Pixel index range [i0, i1) touched by the interval [lo, hi] in pixel units, clipped to [0, n)."""
    i0 = max(0, min(n, math.floor(lo)))
    i1 = max(0, min(n, math.ceil(hi)))
    return i0, i1


def rect(x: float, y: float, w: float, h: float, width: int, height: int) -> Tensor:
    """Axis-aligned rectangle with top-left (x, y) and size (w, h), fractions of the image; exact coverage."""
    _check_size(width, height)
    cols = torch.arange(width, dtype=_F64)
    rows = torch.arange(height, dtype=_F64)
    x0, x1 = sorted((x * width, (x + w) * width))
    y0, y1 = sorted((y * height, (y + h) * height))
    cx = _cum_cover(torch.tensor(x1, dtype=_F64), cols) - _cum_cover(torch.tensor(x0, dtype=_F64), cols)
    cy = _cum_cover(torch.tensor(y1, dtype=_F64), rows) - _cum_cover(torch.tensor(y0, dtype=_F64), rows)
    return (cy[:, None] * cx[None, :]).to(torch.float32)


def ellipse(x: float, y: float, w: float, h: float, width: int, height: int) -> Tensor:
    """Ellipse inscribed in the bounding box (x, y, w, h), fractions of the image."""
    _check_size(width, height)
    out = torch.zeros(height, width, dtype=_F64)
    cx, cy = (x + w / 2) * width, (y + h / 2) * height
    rx, ry = abs(w) * width / 2, abs(h) * height / 2
    if rx <= 0 or ry <= 0:
        return out.to(torch.float32)
    r0, r1 = _span(cy - ry, cy + ry, height)
    c0, c1 = _span(cx - rx, cx + rx, width)
    if r0 >= r1 or c0 >= c1:
        return out.to(torch.float32)
    rows = torch.arange(r0, r1, dtype=_F64)
    acc = _Scanlines(r1 - r0, c0, c1)
    sign = torch.tensor([-1.0, 1.0], dtype=_F64).expand(r1 - r0, 2)
    for k in range(SUBROWS):
        # Each sub-row strip [ya, yb) is represented by one centred interval whose half-width is the
        # strip's exact mean chord half-length, rx * ry * (G(tb) - G(ta)) / (yb - ya) with
        # G(t) = (t sqrt(1 - t^2) + asin t) / 2 the integral of sqrt(1 - t^2): every strip, and so the
        # whole ellipse, has its exact area however few strips cover it; empty strips get width 0.
        ta = ((rows + k / SUBROWS - cy) / ry).clamp(-1.0, 1.0)
        tb = ((rows + (k + 1) / SUBROWS - cy) / ry).clamp(-1.0, 1.0)
        half = rx * ry * (_semicircle_integral(tb) - _semicircle_integral(ta)) * SUBROWS
        acc.add(torch.stack([cx - half, cx + half], dim=1), sign)
    out[r0:r1, c0:c1] = acc.coverage()
    return out.to(torch.float32)


def _semicircle_integral(t: Tensor) -> Tensor:
    """G(t) = ∫_0^t sqrt(1 - u^2) du for t in [-1, 1]."""
    return 0.5 * (t * (1.0 - t * t).clamp(min=0.0).sqrt() + torch.asin(t))


def polygon(
    points: Sequence[Sequence[float]],
    width: int,
    height: int,
    fill: Literal["evenodd", "nonzero"] = "evenodd",
) -> Tensor:
    """Closed polygon through ``points`` [(x, y), ...] (fractions of the image; the last joins the first).

    ``fill`` is the SVG fill rule: "evenodd" (default: a point is inside when a ray from it crosses the
    outline an odd number of times, so self-overlapping loops cut holes) or "nonzero" (inside when the
    outline winds around it, so overlapping loops add up). For simple (non self-intersecting) polygons
    both agree.
    """
    _check_size(width, height)
    if fill not in ("evenodd", "nonzero"):
        raise ValueError(f"fill must be 'evenodd' or 'nonzero', not {fill!r}")
    out = torch.zeros(height, width, dtype=_F64)
    pts = torch.tensor([[float(px) * width, float(py) * height] for px, py in points], dtype=_F64)
    if pts.shape[0] < 3:
        return out.to(torch.float32)
    x0, y0 = pts[:, 0], pts[:, 1]
    x1, y1 = pts.roll(-1, 0)[:, 0], pts.roll(-1, 0)[:, 1]
    keep = y0 != y1  # horizontal edges never cross a scanline
    x0, y0, x1, y1 = x0[keep], y0[keep], x1[keep], y1[keep]
    if x0.numel() == 0:
        return out.to(torch.float32)
    r0, r1 = _span(float(pts[:, 1].min()), float(pts[:, 1].max()), height)
    c0, c1 = _span(float(pts[:, 0].min()), float(pts[:, 0].max()), width)
    if r0 >= r1 or c0 >= c1:
        return out.to(torch.float32)
    rows = torch.arange(r0, r1, dtype=_F64)
    direction = torch.where(y1 > y0, 1.0, -1.0).to(_F64)
    slope = (x1 - x0) / (y1 - y0)
    acc = _Scanlines(r1 - r0, c0, c1)
    for k in range(SUBROWS):
        ys = (rows + (k + 0.5) / SUBROWS)[:, None]  # [R, 1]
        # half-open rule (min <= y < max) so a scanline through a vertex counts it once
        crosses = (ys >= torch.minimum(y0, y1)) & (ys < torch.maximum(y0, y1))  # [R, E]
        xs = torch.where(crosses, x0 + (ys - y0) * slope, torch.inf)
        xs, order = xs.sort(dim=1)
        d = torch.where(crosses, direction, 0.0).gather(1, order)
        if fill == "evenodd":
            d = d.abs()
        after = d.cumsum(1)  # crossing count (evenodd) or winding number (nonzero) right of each crossing
        before = after - d
        if fill == "evenodd":
            inside_after, inside_before = after.remainder(2) == 1, before.remainder(2) == 1
        else:
            inside_after, inside_before = after != 0, before != 0
        sign = inside_before.to(_F64) - inside_after.to(_F64)  # -1 entering, +1 leaving, 0 otherwise
        acc.add(torch.where(torch.isfinite(xs), xs, 0.0), sign)
    out[r0:r1, c0:c1] = acc.coverage()
    return out.to(torch.float32)


class _Scanlines:
    """Accumulates the covered intervals of SUBROWS scanlines per pixel row into exact per-pixel coverage.

    A covered interval [a, b] on a scanline covers F(b) - F(a) of pixel j, F(x)_j = clamp(x - j, 0, 1); a
    row's coverage is sum_c sign_c F(x_c) over its crossings x_c (sign -1 where the outline is entered, +1
    where it is left). F(x) is 1 left of floor(x), frac(x) at floor(x) and 0 right of it, so the sum is kept
    as a step part (a difference array, integrated once at the end) plus a fractional part: O(rows * cols)
    work in total instead of O(rows * cols * crossings * SUBROWS).
    """

    def __init__(self, n_rows: int, c0: int, c1: int) -> None:
        self.c0, self.n = c0, c1 - c0
        self.step = torch.zeros(n_rows, self.n + 1, dtype=_F64)
        self.part = torch.zeros(n_rows, self.n + 1, dtype=_F64)

    def add(self, xs: Tensor, sign: Tensor) -> None:
        """One scanline per row: crossings xs [R, C] in frame pixels, signs [R, C]."""
        local = (xs - self.c0).clamp(0.0, float(self.n))
        idx = local.floor().long()
        self.step[:, 0] += sign.sum(1)
        self.step.scatter_add_(1, idx, -sign)
        self.part.scatter_add_(1, idx, sign * (local - idx))

    def coverage(self) -> Tensor:
        cov = self.step.cumsum(1)[:, : self.n] + self.part[:, : self.n]
        return (cov / SUBROWS).clamp(0.0, 1.0)


# ---------------------------------------------------------------------------------------------------------
# Area resampling and placement of images (mask images, layers)


def _place_axis(arr: Tensor, dim: int, n_dst: int, start: float, length: float) -> Tensor:
    """Box-filter ``arr`` along ``dim`` onto ``n_dst`` frame pixels, its n_src pixels spanning
    [start, start + length) in frame pixel units.

    Output pixel i gets sum_k arr_k * |[i, i+1) ∩ footprint of source pixel k| (in frame px): a coverage
    weighted sum, so a source of ones yields the fraction of each frame pixel the source covers, and with
    start = 0, length = n_dst this is exact area averaging. Computed from the running integral
    C(u) = ∫_0^u arr (piecewise linear), so memory stays O(n) for any pair of sizes.
    """
    n_src = arr.shape[dim]
    arr = arr.movedim(dim, -1)
    cum = torch.cat([torch.zeros_like(arr[..., :1]), arr.cumsum(-1)], dim=-1)  # C at integer u
    per_src = n_src / length  # source pixels per frame pixel
    edges = (torch.arange(n_dst + 1, dtype=_F64) - start) * per_src
    edges = edges.clamp(0.0, float(n_src))
    idx = edges.floor().clamp(max=n_src - 1).long()
    frac = (edges - idx).to(arr.dtype)
    c_at = cum.index_select(-1, idx) + frac * arr.index_select(-1, idx)
    out = (c_at[..., 1:] - c_at[..., :-1]) / per_src
    return out.movedim(-1, dim)


def _place(img: Tensor, box: tuple[float, float, float, float], width: int, height: int) -> Tensor:
    """Place img [h, w, ...] into the frame box (x0, y0, w, h), in frame pixels: [height, width, ...]."""
    x0, y0, bw, bh = box
    out = _place_axis(img, 0, height, y0, bh)
    return _place_axis(out, 1, width, x0, bw)


def from_image(gray: np.ndarray | Tensor, width: int, height: int, invert: bool = False) -> Tensor:
    """A grayscale mask image [h, w] in 0..1 area-resampled to fill the frame (stretching if the aspect
    differs: ``hmedit.masks.checks`` reports that as an error before rendering)."""
    _check_size(width, height)
    src = torch.as_tensor(np.asarray(gray) if not isinstance(gray, Tensor) else gray).to(_F64)
    if src.ndim != 2 or src.shape[0] == 0 or src.shape[1] == 0:
        raise ValueError(f"mask image must be a non-empty [h, w] array, got shape {tuple(src.shape)}")
    if invert:
        src = 1.0 - src
    out = _place(src, (0.0, 0.0, float(width), float(height)), width, height)
    return out.clamp(0.0, 1.0).to(torch.float32)


def layer_box(
    layer_size: tuple[int, int],
    at: tuple[float, float],
    scale: float | None,
    ref_size: tuple[int, int],
) -> tuple[float, float, float, float]:
    """Where a layer of ``layer_size`` (w, h) pixels lands, as (x, y, w, h) fractions of the image.

    Without ``scale`` a layer pixel is a pixel of the scene's reference size ``ref_size`` (w, h), so a layer
    drawn for the reference canvas keeps its size at any render size. With ``scale`` the layer's width is
    ``scale`` times the image width and its aspect ratio is kept (judged on the reference canvas).
    """
    lw, lh = layer_size
    rw, rh = ref_size
    if lw <= 0 or lh <= 0 or rw <= 0 or rh <= 0:
        raise ValueError(f"layer size {layer_size} and reference size {ref_size} must be positive")
    if scale is None:
        w, h = lw / rw, lh / rh
    else:
        w = float(scale)
        h = w * (lh / lw) * (rw / rh)
    return float(at[0]), float(at[1]), w, h


def _frame_box(box: tuple[float, float, float, float], width: int, height: int) -> tuple[float, ...]:
    x, y, w, h = box
    return x * width, y * height, w * width, h * height


def layer_alpha(
    alpha: np.ndarray | Tensor,
    at: tuple[float, float],
    width: int,
    height: int,
    scale: float | None = None,
    ref_size: tuple[int, int] | None = None,
    layer_size: tuple[int, int] | None = None,
) -> Tensor:
    """The layer's alpha [h, w] placed on the frame with its top-left at ``at`` (fractions); [height, width].

    Placement as in :func:`layer_box` (``ref_size`` defaults to the render size). Frame pixels the layer
    only partly covers get the covered fraction of the alpha; parts outside the frame are clipped.
    ``layer_size`` (w, h): the layer file's size when ``alpha`` was decoded reduced (default: its shape).
    """
    _check_size(width, height)
    a = torch.as_tensor(np.asarray(alpha) if not isinstance(alpha, Tensor) else alpha).to(_F64)
    if a.ndim != 2:
        raise ValueError(f"layer alpha must be [h, w], got shape {tuple(a.shape)}")
    box = layer_box(layer_size or (a.shape[1], a.shape[0]), at, scale, ref_size or (width, height))
    out = _place(a, _frame_box(box, width, height), width, height)
    return out.clamp(0.0, 1.0).to(torch.float32)


def layer_rgba_on_canvas(
    rgba: np.ndarray | Tensor,
    at: tuple[float, float],
    width: int,
    height: int,
    scale: float | None = None,
    ref_size: tuple[int, int] | None = None,
) -> Tensor:
    """The layer's RGBA [h, w, 4] (straight alpha) placed as in :func:`layer_alpha`: [height, width, 4].

    Colour is resampled premultiplied (so transparent pixels do not bleed their colour) and returned
    straight; where the placed alpha is 0 the colour is 0. Composite with ``c * (1 - a) + rgb * a``.
    """
    _check_size(width, height)
    src = torch.as_tensor(np.asarray(rgba) if not isinstance(rgba, Tensor) else rgba).to(_F64)
    if src.ndim != 3 or src.shape[-1] != 4:
        raise ValueError(f"layer must be [h, w, 4] RGBA, got shape {tuple(src.shape)}")
    box = layer_box((src.shape[1], src.shape[0]), at, scale, ref_size or (width, height))
    a = src[..., 3:]
    premul = torch.cat([src[..., :3] * a, a], dim=-1)
    placed = _place(premul, _frame_box(box, width, height), width, height)
    alpha = placed[..., 3:].clamp(0.0, 1.0)
    rgb = torch.where(alpha > 1e-12, placed[..., :3] / alpha.clamp(min=1e-12), 0.0).clamp(0.0, 1.0)
    return torch.cat([rgb, alpha], dim=-1).to(torch.float32)


# ---------------------------------------------------------------------------------------------------------
# Feathering


def _gauss_kernel(sigma: float, dtype: torch.dtype) -> Tensor:
    radius = max(1, math.ceil(3.0 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=_F64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).to(dtype)


MAX_DIRECT_SIGMA = 48.0
"""Above this sigma (px) a feather blurs a mask area-averaged by an integer factor and interpolates it back
(bilinear): the cost stays O(pixels) for any sigma instead of O(pixels x sigma), and a blur that wide is
smooth on the scale of the factor (at most sigma / 24 px)."""


def _feather_coarse(x: Tensor, sigma: float) -> Tensor:
    """:func:`feather` of x [N, 1, h, w] for a large ``sigma``: area-reduce by d, blur by sigma / d,
    expand."""
    h, w = x.shape[-2:]
    d = math.ceil(sigma / (MAX_DIRECT_SIGMA / 2))
    ph, pw = -h % d, -w % d
    dtype = x.dtype if x.dtype.is_floating_point else torch.float32
    small = F.avg_pool2d(F.pad(x.to(dtype), (0, pw, 0, ph), mode="replicate"), d)
    small = feather(small, sigma / d)
    big = F.interpolate(small, size=(h + ph, w + pw), mode="bilinear", align_corners=False)
    return big[..., :h, :w]


def feather(mask: Tensor, sigma_px: float, scale: float = 1.0) -> Tensor:
    """Separable Gaussian blur of ``mask`` [..., H, W] with standard deviation ``sigma_px * scale`` pixels.

    ``sigma_px`` is measured at the scene's reference size; pass ``scale = render width / reference width``
    so the feather looks the same at every render size. The kernel is truncated at 3 sigma and normalised,
    and the border is padded by replication, so a full-frame mask stays exactly 1 and a mask away from the
    border keeps its mass (sum). Differentiable in ``mask``.
    """
    sigma = float(sigma_px) * float(scale)
    if not math.isfinite(sigma):
        raise ValueError(f"feather sigma must be finite, got {sigma}")
    if sigma <= 0:
        return mask
    if mask.ndim < 2:
        raise ValueError(f"mask must be [..., H, W], got shape {tuple(mask.shape)}")
    lead = mask.shape[:-2]
    h, w = mask.shape[-2:]
    x = mask.reshape(-1, 1, h, w)
    if sigma > MAX_DIRECT_SIGMA:
        return _feather_coarse(x, sigma).reshape(*lead, h, w)
    k = _gauss_kernel(sigma, x.dtype if x.dtype.is_floating_point else torch.float32)
    x = x.to(k.dtype)
    r = (k.numel() - 1) // 2
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return x.reshape(*lead, h, w)


# ---------------------------------------------------------------------------------------------------------
# Scene nodes


def reference_size(scene: Scene, default: tuple[int, int] | None = None) -> tuple[int, int] | None:
    """The size (w, h) a scene's pixel quantities (feather, layer pixel sizes) refer to: ``scene.size``,
    else the init image's size, else ``default`` (the model's native size, which only the caller knows)."""
    if scene.size is not None:
        return (int(scene.size[0]), int(scene.size[1]))
    if scene.init_image is not None:
        return image_size(scene.init_image, field="init_image")  # from the header: nothing is decoded
    return default


def _region_field(node: Node) -> str:
    if node.layer is not None:
        return "layer"
    if isinstance(node.mask, ImageMask):
        return "mask.image"
    return "mask"


def rasterize_node(
    node: Node,
    width: int,
    height: int,
    ref_size: tuple[int, int],
    *,
    feathered: bool = True,
    field: str | None = None,
) -> Tensor:
    """A node's intrinsic mask m^k [height, width]: its mask or its layer's alpha (placed at ``node.at``,
    sized by ``node.scale`` or by ``ref_size``), feathered by ``node.feather`` px at ``ref_size``. A node
    without mask and layer (the root) covers the whole frame. ``field`` names the node's region in messages.
    """
    _check_size(width, height)
    spec = node.mask
    if node.layer is not None:
        rgba = load_rgba(node.layer, require_alpha=True, field=field)
        m = layer_alpha(rgba[..., 3], node.at, width, height, node.scale, ref_size)
    elif spec is None:
        m = torch.ones(height, width)
    elif isinstance(spec, RectMask):
        m = rect(*spec.rect, width, height)
    elif isinstance(spec, EllipseMask):
        m = ellipse(*spec.ellipse, width, height)
    elif isinstance(spec, PolygonMask):
        m = polygon(spec.polygon, width, height)
    elif isinstance(spec, ImageMask):
        m = from_image(load_gray(spec.image, field=field), width, height, invert=spec.invert)
    else:  # pragma: no cover - the spec's union is closed
        raise TypeError(f"unknown mask type {type(spec).__name__}")
    if feathered and node.feather > 0:
        m = feather(m, node.feather, scale=width / ref_size[0])
    return m


def rasterize_scene(
    scene: Scene,
    width: int,
    height: int,
    ref_size: tuple[int, int] | None = None,
    *,
    given: dict[str, Tensor] | None = None,
) -> tuple[list[str], Tensor]:
    """Node ids and intrinsic masks [K, height, width] in ``scene.flat()`` order (index 0 = the root).

    ``ref_size`` defaults to :func:`reference_size` and, failing that, the render size. Problems with the
    mask and layer files are raised as ``HmeditError`` pointing at the field in the scene file.
    ``given``: the masks of attention-mask nodes by id, [height, width] (read from a first pass; absent:
    empty), feathered here like any other. A band is made from the mask of the node it follows.
    """
    ref = ref_size or reference_size(scene, default=(width, height))
    assert ref is not None
    flats = scene.flat()
    ids = [f.node.id for f in flats]
    masks: list[Tensor | None] = [None] * len(flats)
    bands = []
    for flat in flats:
        node = flat.node
        if isinstance(node.mask, BandMask):
            bands.append(flat)
            continue
        if isinstance(node.mask, AttentionMask):
            m = (given or {}).get(node.id)
            m = torch.zeros(height, width) if m is None else m.float().to("cpu")
            if tuple(m.shape) != (height, width):
                raise ValueError(f"the given mask of {node.id!r} is {tuple(m.shape)}, not {(height, width)}")
            masks[flat.index] = feather(m, node.feather, scale=width / ref[0]) if node.feather > 0 else m
            continue
        path = f"{flat.path}.{_region_field(node)}"
        try:
            masks[flat.index] = rasterize_node(node, width, height, ref, field=path)
        except HmeditError as exc:
            raise HmeditError(exc.problem, **scene.where(path), hint=exc.hint) from exc
    while bands:  # in the order of their references (the scene's validation ruled out cycles)
        from hmedit.masks.attention import band

        ready = [f for f in bands if masks[ids.index(f.node.mask.band.of)] is not None]
        if not ready:
            raise ValueError(f"bands refer to each other: {[f.node.id for f in bands]}")
        for flat in ready:
            spec = flat.node.mask.band
            m = band(masks[ids.index(spec.of)], spec.width, scale=width / ref[0])
            if flat.node.feather > 0:
                m = feather(m, flat.node.feather, scale=width / ref[0])
            masks[flat.index] = m
            bands.remove(flat)
    return ids, torch.stack(masks)


def place_layer(node: Node, width: int, height: int, ref_size: tuple[int, int]) -> Tensor:
    """A layer node's RGBA placed on the frame [height, width, 4] (straight alpha, unfeathered), for
    pasting layers into the canvas; same placement as the node's mask."""
    if node.layer is None:
        raise ValueError(f"node {node.id!r} has no layer")
    rgba = load_rgba(node.layer, require_alpha=True, field="layer")
    return layer_rgba_on_canvas(rgba, node.at, width, height, node.scale, ref_size)


def _check_size(width: int, height: int) -> None:
    if int(width) != width or int(height) != height or width <= 0 or height <= 0:
        raise ValueError(f"frame size must be positive integers, got {width}x{height}")


def build_canvas(scene: Scene, flat: list[FlatNode], width: int, height: int) -> Tensor | None:
    """The source picture to edit: init_image (resized) with layer images pasted back to front; None to
    generate from noise. Without init_image, layers are pasted on mid-gray."""
    layers = [f.node for f in flat if f.node.layer is not None]
    if scene.init_image is None and not layers:
        return None
    if scene.init_image is not None:
        img = load_rgb(scene.init_image, field="init_image")
        t = torch.from_numpy(np.ascontiguousarray(img)).float().permute(2, 0, 1)[None]
        if t.max() > 1.5:
            t = t / 255.0
        if t.shape[-2:] != (height, width):
            t = F.interpolate(t, (height, width), mode="bicubic", antialias=True, align_corners=False).clamp(
                0, 1
            )
    else:
        t = torch.full((1, 3, height, width), 0.5)
    ref = reference_size(scene, default=(width, height))
    for node in layers:  # pre-order: parents before children, i.e. back to front
        rgba = place_layer(node, width, height, ref).permute(2, 0, 1)[None]
        a = rgba[:, 3:]
        t = a * rgba[:, :3] + (1 - a) * t
    return t * 2 - 1
