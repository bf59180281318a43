"""Keyword selection (MRGD, Multi-Region Guided Diffusion, eq. 6): which words of a long node prompt keep
the regional bias, read from their cross-attention maps.

Pure torch, no model. A word's map (the attention a first pass paid to its tokens, :mod:`hmedit.masks.
attention`) is min-max scaled to 0..255 and its *image entropy* is taken over the 256-bin histogram of its
values, H = -Σ p(j) log p(j) (eq. 6): a map that is near 0 everywhere but on one object has most pixels in
a few bins (low H); a map spread evenly over the frame fills many bins (high H). The N words of lowest
entropy are the keywords. A constant map says nothing about place and gets the largest entropy, log 256.

``auto`` picks N by splitting the sorted entropies in two classes of least within-class variance (Otsu's /
Jenks' two-class break on the 1-D values) and keeping the low class (at least one word).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["BINS", "auto_count", "image_entropy", "select_keywords"]

BINS = 256


def image_entropy(maps: Tensor) -> Tensor:
    """MRGD eq. 6 for each map [T, H, W]: the entropy (nats) of the histogram of the map scaled to 0..255
    (rounded to integer levels). [T]; a constant map: log 256 (the largest)."""
    flat = maps.float().flatten(1)
    lo = flat.amin(1, keepdim=True)
    span = flat.amax(1, keepdim=True) - lo
    flat_const = (span <= 0).squeeze(1)
    levels = ((flat - lo) / span.clamp(min=1e-12) * (BINS - 1)).round().clamp(0, BINS - 1).long()
    hist = torch.zeros(flat.shape[0], BINS).scatter_add_(1, levels, torch.ones_like(flat))
    p = hist / flat.shape[1]
    h = -(p * torch.log(p.clamp(min=1e-30))).sum(1)
    return torch.where(flat_const, torch.full_like(h, math.log(BINS)), h)


def auto_count(entropies: Tensor) -> int:
    """How many of ``entropies`` are keywords under ``auto``: the size of the low class of the two-class
    split of least within-class variance of the sorted values; all of them when they are equal; >= 1."""
    v = entropies.double().sort().values
    t = v.numel()
    if t <= 1 or float(v[-1] - v[0]) <= 1e-9:
        return t
    best, best_k = math.inf, 1
    for k in range(1, t):
        lo, hi = v[:k], v[k:]
        cost = float(((lo - lo.mean()) ** 2).sum() + ((hi - hi.mean()) ** 2).sum())
        if cost < best - 1e-12:
            best, best_k = cost, k
    return best_k


def select_keywords(maps: Tensor, n: int | str) -> list[int]:
    """Indices (ascending) of the keywords among the words whose maps are ``maps`` [T, H, W]: the ``n`` of
    lowest image entropy (all T when ``n`` >= T), or ``auto`` (:func:`auto_count`). Ties go to the earlier
    word."""
    if maps.ndim != 3 or maps.shape[0] == 0:
        raise ValueError(f"expected maps [T, H, W] with T >= 1, got {tuple(maps.shape)}")
    h = image_entropy(maps)
    if n == "auto":
        k = auto_count(h)
    elif isinstance(n, int) and not isinstance(n, bool) and n >= 1:
        k = min(n, h.numel())
    else:
        raise ValueError(f"n is auto or a positive int, got {n!r}")
    order = sorted(range(h.numel()), key=lambda i: (float(h[i]), i))
    return sorted(order[:k])
