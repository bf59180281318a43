"""Mask checks run when a scene is validated: everything that needs the masks rasterised.

Masks are rasterised small (long side ``CHECK_LONG_SIDE``) and unfeathered (feathering spreads a region by
design). Each finding points at the node's region field (``root.children[1].mask``) and its line/column.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from torch import Tensor

from hmedit.errors import Diagnostics, HmeditError
from hmedit.masks.raster import (
    ellipse,
    from_image,
    layer_alpha,
    layer_box,
    polygon,
    rect,
    reference_size,
)
from hmedit.scene.assets import has_alpha, image_size, load_gray, load_rgba
from hmedit.scene.spec import DERIVED_MASKS, EllipseMask, ImageMask, Node, PolygonMask, RectMask, Scene

__all__ = [
    "ASPECT_TOLERANCE",
    "CHECK_LONG_SIDE",
    "FALLBACK_REF_SIZE",
    "OUTSIDE_FRAME_TOLERANCE",
    "OUTSIDE_PARENT_TOLERANCE",
    "check_masks",
    "check_size",
]

CHECK_LONG_SIDE = 128
OUTSIDE_PARENT_TOLERANCE = 0.05
"""A child with more than this fraction of its area outside its parent gets a warning."""
OUTSIDE_FRAME_TOLERANCE = 0.01
"""A region with more than this fraction of its area outside the image gets a warning (rasterisation of
ellipses and polygons at the check size is accurate to far better than 1%)."""
ASPECT_TOLERANCE = 0.01
"""A mask image whose aspect ratio differs from the scene's by more than this (relative) is an error."""
FALLBACK_REF_SIZE = (512, 512)
"""Reference size assumed for a scene with neither ``size`` nor ``init_image`` (the model decides)."""
_EMPTY = 1e-6  # fraction of the image area below which a region counts as empty


CHECK_SIDE = 1024
"""Mask and layer images are decoded at most this many pixels a side for the checks (areas and overlaps at
the check size need no more); the render decodes them whole."""


def check_size(ref_size: tuple[int, int], long_side: int = CHECK_LONG_SIDE) -> tuple[int, int]:
    """(width, height) with the long side ``long_side`` and the aspect ratio of ``ref_size``."""
    w, h = ref_size
    if w >= h:
        return long_side, max(1, round(long_side * h / w))
    return max(1, round(long_side * w / h)), long_side


def _region_field(node: Node) -> str:
    if node.layer is not None:
        return "layer"
    return "mask.image" if isinstance(node.mask, ImageMask) else "mask"


def _polygon_area(points, width: int, height: int) -> float:
    """Area of a polygon (fraction of the image) under the even-odd rule, clipping nothing: rasterised
    into its own bounding box."""
    xs = [float(p[0]) for p in points]
    ys = [float(p[1]) for p in points]
    x0, y0 = min(xs), min(ys)
    bw, bh = max(xs) - x0, max(ys) - y0
    if bw <= 0 or bh <= 0:
        return 0.0
    local = [((x - x0) / bw, (y - y0) / bh) for x, y in zip(xs, ys, strict=True)]
    return float(polygon(local, width, height).mean()) * bw * bh


def _node_region(
    node: Node, width: int, height: int, ref: tuple[int, int], gray: np.ndarray | None = None
) -> tuple[Tensor, float]:
    """(mask clipped to the frame [height, width], the region's full area as a fraction of the image).
    ``gray`` is the node's mask image when the caller has already read it."""
    spec = node.mask
    if node.layer is not None:
        # checks need the shape, not every pixel: a large layer is decoded reduced, placed by its real size
        full = image_size(node.layer)
        alpha = load_rgba(node.layer, max_side=CHECK_SIDE)[..., 3]
        _, _, bw, bh = layer_box(full, node.at, node.scale, ref)
        placed = layer_alpha(alpha, node.at, width, height, node.scale, ref, layer_size=full)
        return placed, bw * bh * float(alpha.mean())
    if isinstance(spec, RectMask):
        x, y, w, h = spec.rect
        return rect(x, y, w, h, width, height), w * h
    if isinstance(spec, EllipseMask):
        x, y, w, h = spec.ellipse
        return ellipse(x, y, w, h, width, height), math.pi / 4 * w * h
    if isinstance(spec, PolygonMask):
        return polygon(spec.polygon, width, height), _polygon_area(spec.polygon, width, height)
    if isinstance(spec, ImageMask):
        gray = load_gray(spec.image, max_side=CHECK_SIDE) if gray is None else gray
        m = from_image(gray, width, height, invert=spec.invert)
        return m, float(m.mean())
    return torch.ones(height, width), 1.0


def _empty_hint(node: Node) -> str:
    if node.layer is not None:
        return "the layer image is fully transparent"
    if isinstance(node.mask, ImageMask):
        if node.mask.invert:
            return "the mask image is all white and invert: true makes black mark the region"
        return "the mask image is all black; white marks the region, or set invert: true"
    return "give the region a positive size"


def check_masks(scene: Scene, ref_size: tuple[int, int] | None = None) -> Diagnostics:
    """Problems with the scene's regions, as errors and warnings with field paths and positions.

    Errors: an empty region; a region entirely outside the image; a mask image whose aspect ratio differs
    from the scene's by more than 1% (it would be stretched); a layer file with no alpha channel; an
    unreadable mask or layer file. Warnings: a region partly (> 1%) outside the image; a child with more
    than 5% of its area outside its parent.

    ``ref_size`` is the scene's reference size when the caller knows it (the model's native size);
    otherwise it is ``scene.size``, the init image's size, or ``FALLBACK_REF_SIZE``. The mask image aspect
    check runs only when the scene's size is known from ``size``, ``init_image`` or ``ref_size``.
    """
    diags = Diagnostics()
    try:
        known = ref_size or reference_size(scene)
    except HmeditError as exc:
        diags.error(exc.problem, **scene.where("init_image"), hint=exc.hint)
        known = None
    ref = known or FALLBACK_REF_SIZE
    width, height = check_size(ref)

    flats = scene.flat()
    masks: list[Tensor | None] = [None] * len(flats)
    for flat in flats:
        node = flat.node
        if node.mask is None and node.layer is None:
            masks[flat.index] = torch.ones(height, width)
            continue
        if isinstance(node.mask, DERIVED_MASKS):  # computed from other nodes at render time
            continue
        path = f"{flat.path}.{_region_field(node)}"
        where = scene.where(path)
        try:
            if node.layer is not None and not has_alpha(node.layer):
                diags.error(
                    f"layer file {node.layer.raw} has no alpha channel, so the layer's shape is unknown",
                    **where,
                    hint="save it as a PNG with transparency, or use a mask and put the image elsewhere",
                )
                continue
            is_image = isinstance(node.mask, ImageMask)
            img = load_gray(node.mask.image, max_side=CHECK_SIDE) if is_image else None
            if img is not None and known is not None:
                img_aspect, aspect = img.shape[1] / img.shape[0], known[0] / known[1]
                if abs(img_aspect / aspect - 1.0) > ASPECT_TOLERANCE:
                    diags.error(
                        f"mask of the wrong size: {node.mask.image.raw} is {img.shape[1]}x{img.shape[0]}, "
                        f"the scene is {known[0]}x{known[1]} (aspect {img_aspect:.3f} vs {aspect:.3f})",
                        **where,
                        hint=f"resize the mask image to {known[0]}x{known[1]} or to the same aspect ratio",
                    )
                    continue
            m, total = _node_region(node, width, height, ref, img)
        except HmeditError as exc:
            diags.errors.append(HmeditError(exc.problem, **where, hint=exc.hint))
            continue
        inside = float(m.mean())
        if total <= _EMPTY:
            diags.error("the region is empty", **where, hint=_empty_hint(node))
            continue
        if inside <= _EMPTY:
            diags.error(
                "the region lies entirely outside the image",
                **where,
                hint="coordinates are fractions of the image: x and y run from 0 to 1",
            )
            continue
        cut = 1.0 - inside / total
        if cut > OUTSIDE_FRAME_TOLERANCE:
            diags.warn(
                f"{cut:.0%} of the region lies outside the image and is cut off",
                **where,
                hint="coordinates are fractions of the image: x and y run from 0 to 1",
            )
        masks[flat.index] = m

    for flat in flats:
        child = masks[flat.index]
        parent = masks[flat.parent] if flat.parent >= 0 else None
        if child is None or parent is None:
            continue
        mass = float(child.sum())
        outside = float((child - parent).clamp(min=0.0).sum()) / mass if mass > 0 else 0.0
        if outside > OUTSIDE_PARENT_TOLERANCE:
            pid = flats[flat.parent].node.id
            diags.warn(
                f"{outside:.0%} of the region lies outside its parent {pid!r}",
                **scene.where(f"{flat.path}.{_region_field(flat.node)}"),
                hint=f"a child refines its parent: keep it inside {pid!r}, or move it up a level",
            )
    return diags


def validate(path: str | os.PathLike) -> tuple[Scene | None, Diagnostics]:
    """A scene file checked as ``hmedit validate`` and ``hmedit render`` check it: the format, its inputs
    (:func:`hmedit.scene.validate`) and its masks (:func:`check_masks`); never raises for a user mistake."""
    from hmedit.scene.load import validate as validate_scene

    return validate_scene(path, checks=[check_masks])
