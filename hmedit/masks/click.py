"""Click masks: a region grown from one click (Click2Mask: Local Editing with Dynamic Mask Generation, Regev
et al., arXiv:2409.08272, §3).

The mask is the level set of a potential field P (values 0..1) at :data:`LEVEL`. It starts as a Gaussian bump
around the click whose level set is a circle of the node's radius (§3.1: "a large Gaussian mask around the
click"). During blended latent diffusion the potential moves along the gradient of a masked CLIP loss with
respect to the mask, only near the mask's boundary (§3.2: the pixels where the loss gradient is large are the
ones that matter to the prompt; the mask evolves there), with a small contraction everywhere on the boundary
so that a region the loss does not care about shrinks away (Click2Mask starts large and contracts).
Model-free: the gradient comes from the caller (:mod:`hmedit.sampling.mask_search` runs the diffusion
and the CLIP).

    p = initial_potential((0.4, 0.6), 0.2, 128, 128)
    m = soft_mask(p)                                # [H, W] in 0..1
    p = update_potential(p, dloss_dmask, step=0.25)  # pure: a new field
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from hmedit.masks.raster import feather

__all__ = ["LEVEL", "boundary_band", "initial_potential", "soft_mask", "update_potential"]

LEVEL = 0.5
"""The mask is where the potential is above this level."""
EDGE = 0.04
"""Softness of the mask's edge, in potential units (the sigmoid's temperature)."""
BAND = 3
"""Half-width of the boundary band the potential moves in, in pixels."""


def initial_potential(click: tuple[float, float], radius: float, height: int, width: int) -> Tensor:
    """The starting potential [height, width]: exp(-d^2 / 2 sigma^2) around ``click`` ([x, y], fractions of
    the image), with sigma such that the mask's level set is a circle of ``radius`` (a fraction of the
    shorter side)."""
    if radius <= 0:
        raise ValueError(f"radius must be > 0, got {radius}")
    r = radius * min(height, width)
    sigma = r / math.sqrt(-2 * math.log(LEVEL))
    ys = torch.arange(height, dtype=torch.float32)[:, None] + 0.5
    xs = torch.arange(width, dtype=torch.float32)[None, :] + 0.5
    d2 = (xs - click[0] * width) ** 2 + (ys - click[1] * height) ** 2
    return torch.exp(-d2 / (2 * sigma**2))


def soft_mask(potential: Tensor, edge: float = EDGE) -> Tensor:
    """The mask of a potential: sigmoid((P - LEVEL) / edge), 0..1, differentiable."""
    return torch.sigmoid((potential - LEVEL) / edge)


def boundary_band(potential: Tensor, width: int = BAND) -> Tensor:
    """Where the potential may move: 4 m (1 - m) of the soft mask m (1 on the level set, 0 away from it),
    spread to every pixel within ``width`` px (a max filter), so that the front can travel."""
    m = soft_mask(potential)
    edge = (4 * m * (1 - m))[None, None]
    return F.max_pool2d(edge, 2 * width + 1, stride=1, padding=width)[0, 0]


def update_potential(
    potential: Tensor,
    grad: Tensor,
    *,
    step: float,
    shrink: float = 0.1,
    band: int = BAND,
    smooth: float = 1.0,
) -> Tensor:
    """One move of the potential along the loss gradient near the boundary (pure: returns a new field).

    ``grad`` is dL/dm [H, W] (the loss's gradient with respect to the mask). It is smoothed (Gaussian,
    ``smooth`` px) and scaled so that its largest magnitude in the boundary band is 1; the potential then
    moves by ``-step * band(P) * (g + shrink)``: where enlarging the mask lowers the loss (g < 0) the mask
    grows, where it raises it the mask shrinks, ``shrink`` contracts the boundary where the gradient is flat,
    and pixels far from the boundary (band ~ 0) do not move. The result stays in 0..1.
    """
    if grad.shape != potential.shape:
        raise ValueError(f"gradient {tuple(grad.shape)} does not fit the potential {tuple(potential.shape)}")
    g = feather(grad.detach().float(), smooth) if smooth > 0 else grad.detach().float()
    near = boundary_band(potential, band)
    top = (g * near).abs().max()  # scaled where the boundary can move, not by gradients far from it
    g = g / top if top > 0 else g
    moved = potential - step * near * (g + shrink)
    return moved.clamp(0.0, 1.0)
