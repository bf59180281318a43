"""Everything that does not change during sampling, computed once per render: masks (intrinsic, effective,
per UNet level), node weights and step ranges, the source canvas and the per-node noise-level map."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from hmedit.errors import HmeditError
from hmedit.masks.compose import compose
from hmedit.masks.levels import downsample, level_names, level_sizes
from hmedit.masks.raster import build_canvas, feather, rasterize_scene
from hmedit.scene.spec import FlatNode, Scene

NOISE_BLUR_LATENT_PX = 1.0  # σ of the Gaussian that softens the noise-level map at region boundaries


@dataclass
class Plan:
    scene: Scene
    width: int
    height: int
    latent: tuple[int, int]  # (h, w)
    flat: list[FlatNode]
    ids: list[str]
    intrinsic: Tensor  # [K, H, W]
    effective: Tensor  # [K, H, W]
    factors: list[int]  # UNet levels as downsampling factors of the latent
    level_masks: dict[int, Tensor]  # query length N -> [K, N]
    level_gate: dict[int, Tensor]  # query length N -> [K] bool: node acts at this level
    active: Tensor  # [K, 2] step-fraction ranges
    pos: Tensor  # [K] s_k · v_pos
    neg: Tensor  # [K] s_k · v_neg
    noise: Tensor  # [K] per-node noise levels
    canvas: Tensor | None  # [1, 3, H, W] in [-1, 1]: init image with layers pasted in, or None (generate)
    noise_map: Tensor | None  # [1, 1, h, w] latent noise-level map (fractions), edit mode only
    keep_alpha: Tensor | None  # [H, W] 1 where the output is generated, 0 where source pixels are pasted back

    @property
    def regional(self) -> bool:
        return len(self.ids) > 1

    def step_gate(self, fraction: float) -> Tensor:
        return (self.active[:, 0] <= fraction) & ((fraction < self.active[:, 1]) | (self.active[:, 1] >= 1))

    @property
    def max_noise(self) -> float:
        return float(self.noise_map.max()) if self.noise_map is not None else 1.0


def noise_steps(steps: int, max_noise: float) -> int:
    """How many of ``steps`` an edit whose largest noise level is ``max_noise`` samples (img2img's
    ``strength``: the last int(steps · max_noise)); sampling starts at step ``steps`` minus this."""
    return min(int(steps * max_noise), steps)


def build_plan(
    scene: Scene,
    unet_factors_: list[int],
    width: int,
    height: int,
    vae_scale: int,
    init: bool | None = None,
    *,
    refine: Tensor | None = None,
    noise_scale: float = 1.0,
    cross_attention: list[int] | None = None,
    given: dict[str, Tensor] | None = None,
    masks: dict[int, Tensor] | None = None,
) -> Plan:
    """Everything a render of ``scene`` at ``width`` × ``height`` needs. ``refine`` [1, 3, H, W] in [-1, 1]
    (a coarse render, upscaled) becomes the picture to edit wherever a node has noise > 0, with every node's
    noise multiplied by ``noise_scale``; untouched regions keep the scene's own source pixels. ``given``: the
    masks of attention-mask nodes, by id (:func:`hmedit.masks.raster.rasterize_scene`). ``masks`` (node
    index -> [H, W]) replace those nodes' drawn masks (click masks grown and masks refined before the render:
    :mod:`hmedit.sampling.mask_search`)."""
    flat = scene.flat()
    ids, intrinsic = rasterize_scene(scene, width, height, given=given)
    for k, m in (masks or {}).items():
        intrinsic[k] = m.to(intrinsic.dtype)
    parents = [f.parent for f in flat]
    strengths = torch.tensor([float(f.node.strength) for f in flat])
    schemes = [f.node.composition for f in flat]
    effective = compose(
        intrinsic, parents, strengths, scene.composition, gamma=float(scene.depth_gamma), node_schemes=schemes
    )
    latent = (height // vae_scale, width // vae_scale)
    xattn = sorted(cross_attention or unet_factors_)
    names = level_names(xattn)
    sizes = level_sizes(latent, unet_factors_)
    level_masks, level_gate = {}, {}
    for f, (h, w) in sizes.items():
        n = h * w
        # max-pool so that small regions survive at coarse levels (InvokeAI, peers.md)
        level_masks[n] = downsample(effective, (h, w), "max").reshape(len(ids), n)
        level_gate[n] = torch.tensor([f in names and (names[f] in f_.node.levels) for f_ in flat])
    for k, f_ in enumerate(flat):
        if k and not any(bool(level_gate[h * w][k]) for h, w in sizes.values()):
            have = ", ".join(f"{names[f]} ({f})" for f in xattn)
            raise HmeditError(
                f"levels {list(f_.node.levels)} select none of this model's cross-attention levels",
                **scene.where(f"{f_.path}.levels"),
                hint=f"this model has {have}; use names or factors among them, or all",
            )
    active = torch.tensor([[float(a) for a in f.node.active] for f in flat])
    att = [f.node.attention or scene.attention for f in flat]
    pos = strengths * torch.tensor([float(a.pos) for a in att])
    neg = strengths * torch.tensor([float(a.neg) for a in att])
    noise = torch.tensor([float(f.noise) for f in flat]) * noise_scale
    canvas = build_canvas(scene, flat, width, height)
    noise_map = keep_alpha = None
    if canvas is not None or refine is not None:
        noise_map, keep_alpha = noise_levels(effective, noise, latent)
    if refine is not None:
        keep = keep_alpha[None, None]
        canvas = refine if canvas is None else keep * refine + (1 - keep) * canvas
    return Plan(
        scene,
        width,
        height,
        latent,
        flat,
        ids,
        intrinsic,
        effective,
        list(unet_factors_),
        level_masks,
        level_gate,
        active,
        pos,
        neg,
        noise,
        canvas,
        noise_map,
        keep_alpha,
    )


def noise_levels(effective: Tensor, noise: Tensor, latent: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Collage Diffusion (Sarukkai et al., arXiv:2303.00262) §4.4: the noise-level map Σ_k m̃ᵏ(x)·t_k
    (normalised where the masks do not sum to one), at latent resolution and Gaussian-blurred at boundaries;
    and the pixel weight of the generated image (1 where any acting node has noise > 0, 0 where the source
    pixels are pasted back)."""
    total = effective.sum(0)
    weights = effective / total.clamp(min=1e-6)
    weights = torch.where(
        total[None] > 1e-6,
        weights,
        F.one_hot(torch.zeros((), dtype=torch.long), len(noise)).float()[:, None, None],
    )
    level_px = (weights * noise[:, None, None]).sum(0)
    level = downsample(level_px, latent, "area")
    # soften boundaries outwards only: a small region keeps its own level instead of being diluted by the blur
    level = torch.maximum(level, feather(level, NOISE_BLUR_LATENT_PX)) if NOISE_BLUR_LATENT_PX > 0 else level
    keep = (weights * (noise > 0).float()[:, None, None]).sum(0).clamp(0, 1)
    return level[None, None], keep
