"""Image metrics: PSNR (the one every module uses), and for the benchmarks the colour of a region, the
locality of an edit and the visibility of tile seams.

Pure numpy on uint8 images [H, W, 3]; masks are [H, W], boolean or float in 0..1 (a float mask counts a pixel
as inside where it is > 0.5). Model-free and world-free: a colour is a name in the ``palette`` the caller
passes (colour name -> RGB, e.g. the toy world's ``hmedit.toy.world.PALETTE``); a pixel "is" the palette
colour nearest to it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

Palette = Mapping[str, Sequence[float]]  # colour name -> RGB in 0..255

INSIDE = 0.5  # a float mask's pixel is inside the region where its value is above this


def psnr(a, b, peak: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB, 10 log10(peak^2 / MSE), of two images (arrays, or CPU tensors) of
    the same shape: ``peak`` 255 for uint8 pixels, 1 for [0, 1], 2 for [-1, 1]; ``inf`` when identical."""
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if x.shape != y.shape:
        raise ValueError(f"images differ in shape: {x.shape} and {y.shape}")
    mse = float(np.mean((x - y) ** 2)) if x.size else 0.0
    return math.inf if mse == 0 else 10.0 * math.log10(peak**2 / mse)


def inside(mask: np.ndarray) -> np.ndarray:
    """A boolean [H, W] mask: ``mask`` itself if boolean, else ``mask > 0.5``."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"a mask is [H, W], got shape {m.shape}")
    return m if m.dtype == bool else m > INSIDE


def _check_pair(image: np.ndarray, mask: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"an image is [H, W, 3], got shape {image.shape}")
    if image.shape[:2] != np.shape(mask):
        raise ValueError(f"image {image.shape[:2]} and mask {np.shape(mask)} differ in size")


def colour_index(colour: str, palette: Palette) -> int:
    """The position of ``colour`` in ``palette`` (its order); a ValueError names the palette's colours."""
    names = list(palette)
    if colour not in palette:
        raise ValueError(f"unknown colour {colour!r}; the palette has {', '.join(names)}")
    return names.index(colour)


def nearest_colour(pixels: np.ndarray, palette: Palette) -> np.ndarray:
    """Per pixel of ``pixels`` [..., 3], the index (in ``palette``'s order) of the nearest palette colour."""
    pal = np.asarray(list(palette.values()), np.float32)
    d = ((np.asarray(pixels)[..., None, :].astype(np.float32) - pal) ** 2).sum(-1)
    return d.argmin(-1)


def region_colour_fraction(image: np.ndarray, mask: np.ndarray, colour: str, *, palette: Palette) -> float:
    """The fraction of the mask's pixels whose nearest ``palette`` colour is ``colour`` (0 if it is empty)."""
    image = np.asarray(image)
    _check_pair(image, mask)
    m = inside(mask)
    if not m.any():
        return 0.0
    idx = nearest_colour(image[m], palette)
    return float(np.mean(idx == colour_index(colour, palette)))


def region_match(
    image: np.ndarray, mask: np.ndarray, colour: str, threshold: float = 0.3, *, palette: Palette
) -> bool:
    """Whether at least ``threshold`` of the region shows ``colour`` (nearest colour in ``palette``)."""
    return region_colour_fraction(image, mask, colour, palette=palette) >= threshold


def mean_colour_error(image: np.ndarray, mask: np.ndarray, rgb: Sequence[float]) -> float:
    """How far the region's mean colour is from ``rgb`` (0..255 per channel): the Euclidean RGB distance
    divided by sqrt(3), so 0..255 (255 from black to white); nan for an empty mask."""
    image = np.asarray(image)
    _check_pair(image, mask)
    m = inside(mask)
    if not m.any():
        return float("nan")
    mean = image[m].astype(np.float64).mean(0)
    return float(np.linalg.norm(mean - np.asarray(rgb, np.float64)) / np.sqrt(3))


def dilate(mask: np.ndarray, radius: float) -> np.ndarray:
    """Boolean mask grown by every pixel within Euclidean distance ``radius`` (a disk structuring element).

    Written as an OR over the disk's offsets, one shifted copy each, which is exact and cheap for the radii
    used here (a few pixels: ~113 offsets for radius 6).
    """
    m = inside(mask)
    r = int(np.floor(radius))
    if r <= 0 or not m.any():
        return m.copy()
    h, w = m.shape
    padded = np.zeros((h + 2 * r, w + 2 * r), bool)
    padded[r : r + h, r : r + w] = m
    out = np.zeros_like(m)
    for dy in range(-r, r + 1):
        half = int(np.floor(np.sqrt(radius * radius - dy * dy)))
        for dx in range(-half, half + 1):
            out |= padded[r + dy : r + dy + h, r + dx : r + dx + w]
    return out


def locality(before: np.ndarray, after: np.ndarray, mask: np.ndarray, margin_px: float) -> dict[str, float]:
    """How much an edit changed the image outside and inside the edited region, in 0..255 units.

    ``outside_mean``: mean absolute change (over pixels and channels) of the pixels farther than
    ``margin_px`` from the region (the mask dilated by a disk of that radius), where a local edit should
    change nothing. ``inside_mean``: the same over the region itself. A part with no pixels gives 0.0.
    """
    before, after = np.asarray(before), np.asarray(after)
    if before.shape != after.shape:
        raise ValueError(f"before {before.shape} and after {after.shape} differ in size")
    _check_pair(before, mask)
    change = np.abs(before.astype(np.float64) - after.astype(np.float64)).mean(-1)
    region = inside(mask)
    outside = ~dilate(region, margin_px)
    return {
        "outside_mean": float(change[outside].mean()) if outside.any() else 0.0,
        "inside_mean": float(change[region].mean()) if region.any() else 0.0,
    }


def _near(borders: Sequence[int], n_diffs: int, width: int) -> np.ndarray:
    """Which of the ``n_diffs`` differences between neighbouring pixels lie within ``width`` px of a border.

    Difference j sits between pixels j and j + 1, at coordinate j + 0.5; a border at b lies between pixels
    b - 1 and b, so difference j is near it when |j + 0.5 - b| < width (2·width differences per border).
    """
    pos = np.arange(n_diffs) + 0.5
    near = np.zeros(n_diffs, bool)
    for b in borders:
        if 0 < b < n_diffs + 1:  # borders at the image's edges are not seams
            near |= np.abs(pos - b) < width
    return near


def _same_phase(near: np.ndarray, period: int) -> np.ndarray:
    """Differences whose index modulo ``period`` is that of some difference in ``near``."""
    idx = np.arange(near.size)
    return np.isin(idx % period, np.unique(idx[near] % period))


def seam_score(
    image: np.ndarray,
    tile_borders_x: Sequence[int],
    tile_borders_y: Sequence[int],
    width: int = 2,
    period: int | None = None,
) -> float:
    """Mean absolute image gradient across tile borders over the mean gradient elsewhere (1: no visible seam).

    Borders are pixel coordinates where a new tile starts (x for vertical borders, y for horizontal ones).
    Gradients are differences between neighbouring pixels (mean over channels): across a vertical border
    the horizontal ones, across a horizontal border the vertical ones. "On a border" means within ``width``
    px of it; every other difference of the same direction is "elsewhere". A tiny epsilon keeps a flat
    image at 1.

    ``period`` (the VAE scale factor, 8 on SD): "elsewhere" keeps only differences at the same offsets modulo
    ``period`` as the on-border ones. Tile borders always fall on latent-pixel boundaries, and a decoder draws
    fine textures in step with its latent grid, so the plain ratio also measures that grid, not seams; with
    ``period`` the comparison is phase for phase.
    """
    img = np.asarray(image, np.float64)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3:
        raise ValueError(f"an image is [H, W] or [H, W, C], got shape {np.shape(image)}")
    h, w = img.shape[:2]
    gx = np.abs(np.diff(img, axis=1)).mean(-1)  # [H, W-1]
    gy = np.abs(np.diff(img, axis=0)).mean(-1)  # [H-1, W]
    near_x, near_y = _near(tile_borders_x, w - 1, width), _near(tile_borders_y, h - 1, width)
    far_x, far_y = ~near_x, ~near_y
    if period:
        far_x &= _same_phase(near_x, period)
        far_y &= _same_phase(near_y, period)
    on_x = np.broadcast_to(near_x[None, :], gx.shape)
    on_y = np.broadcast_to(near_y[:, None], gy.shape)
    off_x = np.broadcast_to(far_x[None, :], gx.shape)
    off_y = np.broadcast_to(far_y[:, None], gy.shape)
    on = np.concatenate([gx[on_x], gy[on_y]])
    off = np.concatenate([gx[off_x], gy[off_y]])
    if on.size == 0:
        return 1.0
    eps = 1e-6
    return float((on.mean() + eps) / ((off.mean() if off.size else 0.0) + eps))


# ------------------------------------------------------------------------------------------------
# SSIM (Wang et al. 2004) and MRGD's SSIM-i / SSIM-e, through torchmetrics' maintained implementation
# (Gaussian window 11 px, sigma 1.5, k1 0.01, k2 0.03: the paper's constants).


def ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The local SSIM of two uint8 images [H, W, 3] per pixel, averaged over channels: float [H, W]."""
    import torch
    from torchmetrics.functional.image import structural_similarity_index_measure

    x, y = np.asarray(a), np.asarray(b)
    if x.shape != y.shape:
        raise ValueError(f"images differ in shape: {x.shape} and {y.shape}")
    _check_pair(x, np.zeros(x.shape[:2]))
    tx, ty = (torch.from_numpy(v.astype(np.float32)).permute(2, 0, 1)[None] for v in (x, y))
    _, full = structural_similarity_index_measure(
        tx, ty, data_range=255.0, return_full_image=True, reduction="none"
    )
    return full[0].mean(0).numpy()


def ssim(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean SSIM of two uint8 images [H, W, 3], over ``mask``'s pixels (all without one); nan if empty."""
    m = ssim_map(a, b)
    if mask is None:
        return float(m.mean())
    inner = inside(mask)
    return float(m[inner].mean()) if inner.any() else float("nan")


def ssim_inherent(before: np.ndarray, after: np.ndarray, edited: np.ndarray, margin_px: float) -> float:
    """MRGD's SSIM-i: SSIM between source and edit over the inherent region, every pixel farther than
    ``margin_px`` from the edited region (``edited``, the union of the edited nodes' masks, dilated)."""
    return ssim(before, after, ~dilate(edited, margin_px))


def ssim_edge(before: np.ndarray, after: np.ndarray, edited: np.ndarray, band_px: float) -> float:
    """MRGD's SSIM-e: SSIM between source and edit in the neighbourhood of the edited region, the band of
    pixels within ``band_px`` of it and outside it (how much the edit disturbed its surroundings)."""
    region = inside(edited)
    return ssim(before, after, dilate(region, band_px) & ~region)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two masks (1.0 when both are empty)."""
    x, y = inside(a), inside(b)
    union = (x | y).sum()
    return float((x & y).sum() / union) if union else 1.0
