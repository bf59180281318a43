"""Preprocessors: a picture -> the conditioning image a ControlNet takes (``control: {source, kind}``).

A preprocessor is a function ``(image: PIL RGBA) -> PIL RGB`` of the same size, registered by name with
:func:`register`. The picture is RGBA so that a layer's transparent surroundings are known: a preprocessor
may use the alpha (``edges`` draws the layer's silhouette from it); pictures without alpha come with alpha
255. Pure numpy / PIL: the same picture gives the same bytes on every machine.

Adding one::

    from hmedit.control.preprocess import register

    @register("gray")
    def gray(image):
        return image.convert("L").convert("RGB")
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

from hmedit.control.edges import edge_map

Preprocessor = Callable[[Image.Image], Image.Image]

PREPROCESSORS: dict[str, Preprocessor] = {}
"""Name -> preprocessor; ``kind:`` in a scene names one of these."""

DEFAULT_KIND = "edges"


def register(name: str) -> Callable[[Preprocessor], Preprocessor]:
    """Decorator: make ``fn`` available as ``kind: <name>``."""

    def add(fn: Preprocessor) -> Preprocessor:
        PREPROCESSORS[name] = fn
        return fn

    return add


@register("edges")
def edges(image: Image.Image) -> Image.Image:
    """hmedit's edge detector (:func:`hmedit.control.edges.edge_map`, the bundled ControlNet's conditioning)
    on the colours over black, joined with the edges of the alpha (a layer's outline, whatever its colour
    against black)."""
    rgba = np.asarray(image.convert("RGBA"))
    a = rgba[..., 3:4].astype(np.float32) / 255.0
    rgb = np.rint(rgba[..., :3] * a).astype(np.uint8)
    out = np.asarray(edge_map(rgb))
    if (rgba[..., 3] < 255).any():
        alpha = np.repeat(rgba[..., 3:4], 3, axis=-1)
        out = np.maximum(out, np.asarray(edge_map(alpha)))
    return Image.fromarray(out, mode="RGB")


@register("none")
def identity(image: Image.Image) -> Image.Image:
    """The picture itself, over black where it is transparent (for a ControlNet that takes plain images)."""
    rgba = np.asarray(image.convert("RGBA"))
    a = rgba[..., 3:4].astype(np.float32) / 255.0
    return Image.fromarray(np.rint(rgba[..., :3] * a).astype(np.uint8), mode="RGB")


def preprocess(kind: str, image: Image.Image) -> Image.Image:
    """The conditioning image of ``image`` by preprocessor ``kind`` (KeyError if there is none)."""
    out = PREPROCESSORS[kind](image)
    if out.size != image.size:
        raise ValueError(f"preprocessor {kind!r} changed the size {image.size} to {out.size}")
    return out.convert("RGB")
