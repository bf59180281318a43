"""Masks: intrinsic masks rasterised from the scene (raster), the composition operators (compose) of
Hierarchical Mask Composition for High-Resolution Text-Guided Image Editing (Adhikari and Shrestha; no arXiv
id), per-level and per-step masks for the UNet (levels), and mask checks for validation (checks).

Pure torch, model-free and differentiable; nothing here imports diffusers.
"""

from hmedit.masks.compose import (
    SCHEMES,
    compose,
    depth_weighted,
    depths,
    hybrid,
    multiplicative,
    normalized,
    normalized_vjp,
    top_down,
)
from hmedit.masks.levels import downsample, level_names, level_sizes
from hmedit.masks.raster import (
    ellipse,
    feather,
    from_image,
    layer_alpha,
    layer_box,
    layer_rgba_on_canvas,
    place_layer,
    polygon,
    rasterize_node,
    rasterize_scene,
    rect,
    reference_size,
)

__all__ = [
    "SCHEMES",
    "compose",
    "depth_weighted",
    "depths",
    "downsample",
    "ellipse",
    "feather",
    "from_image",
    "hybrid",
    "layer_alpha",
    "layer_box",
    "layer_rgba_on_canvas",
    "level_names",
    "level_sizes",
    "multiplicative",
    "normalized",
    "normalized_vjp",
    "place_layer",
    "polygon",
    "rasterize_node",
    "rasterize_scene",
    "rect",
    "reference_size",
    "top_down",
]
