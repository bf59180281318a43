"""Bounds on what a scene may ask for, so that a careless or hostile scene costs seconds, not the machine.

Every limit has a default here and can be raised (or lowered) with an environment variable of the same name
prefixed ``HMEDIT_``, e.g. ``HMEDIT_MAX_IMAGE_PIXELS=200000000``. Messages name the variable to set.

The limits are checked where the data is first seen: the file size before reading, the YAML depth and the
number of values (aliases expanded) while composing, image sizes from the file header before decoding,
and the memory plan of a render (:func:`check_render_size`) before anything is allocated.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from hmedit.errors import HmeditError

__all__ = [
    "LIMITS",
    "Limit",
    "check_image_pixels",
    "check_render_size",
    "limit",
    "render_map_bytes",
]


@dataclass(frozen=True)
class Limit:
    name: str  # the environment variable is HMEDIT_<name>
    default: int
    meaning: str

    @property
    def env(self) -> str:
        return f"HMEDIT_{self.name}"


LIMITS: dict[str, Limit] = {
    lim.name: lim
    for lim in (
        Limit("MAX_SCENE_BYTES", 1 << 20, "size of a scene file in bytes"),
        Limit("MAX_YAML_DEPTH", 100, "nesting depth of the YAML in a scene file"),
        Limit("MAX_YAML_VALUES", 250_000, "values in a scene file, counting every use of an alias"),
        Limit("MAX_NODES", 256, "nodes in a scene's tree"),
        Limit("MAX_TREE_DEPTH", 32, "levels of children below the root"),
        Limit("MAX_IMAGE_PIXELS", 8192 * 8192, "pixels of an image a scene reads (width x height)"),
        Limit("MAX_PIXELS", 8192 * 8192, "pixels of a tiled render (width x height)"),
        Limit("MAX_UNTILED_PIXELS", 4096 * 4096, "pixels of a render with tiling: off"),
        Limit("MAX_MAP_MIB", 16 * 1024, "memory of a render's influence maps, in MiB"),
    )
}


def limit(name: str) -> int:
    """The current value of a limit: ``HMEDIT_<name>`` from the environment, else the default."""
    lim = LIMITS[name]
    raw = os.environ.get(lim.env, "").strip()
    if not raw:
        return lim.default
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        value = -1
    if value < 1:
        raise HmeditError(
            f"{lim.env}={raw!r} is not a positive whole number",
            hint=f"it sets the limit on {lim.meaning}; unset it for the default {lim.default}",
        )
    return value


def raise_hint(name: str, needed: int | None = None) -> str:
    """'set HMEDIT_X=... to raise the limit' for a message's hint."""
    env = LIMITS[name].env
    return f"set {env}={needed} to allow it" if needed else f"set {env} to raise the limit"


def _mpx(pixels: int) -> str:
    return f"{pixels / 1e6:.1f} Mpx"


def check_image_pixels(width: int, height: int, *, what: str = "the image", **where) -> None:
    """Refuse an image larger than ``HMEDIT_MAX_IMAGE_PIXELS`` (read its size from the header first)."""
    allowed = limit("MAX_IMAGE_PIXELS")
    if width * height > allowed:
        raise HmeditError(
            f"{what} is {width}x{height} ({_mpx(width * height)}), more than the limit of {_mpx(allowed)}",
            **where,
            hint=f"scale the image down, or {raise_hint('MAX_IMAGE_PIXELS', width * height)}",
        )


MAP_BYTES_PER_NODE_PIXEL = 3 * 4
"""A render keeps three float32 maps per node at full size: intrinsic, effective and attention."""


def render_map_bytes(width: int, height: int, n_nodes: int) -> int:
    """Memory of a render's influence maps in bytes (what grows with nodes x pixels)."""
    return int(width) * int(height) * int(n_nodes) * MAP_BYTES_PER_NODE_PIXEL


def check_render_size(
    width: int,
    height: int,
    n_nodes: int,
    *,
    tiled: bool,
    field: str | None = None,
    **where,
) -> None:
    """Refuse a render whose memory plan is out of bounds, before anything is allocated.

    Limits: ``HMEDIT_MAX_PIXELS`` pixels for a tiled render (tiling keeps the UNet's memory bounded by the
    window), ``HMEDIT_MAX_UNTILED_PIXELS`` for an untiled one, and ``HMEDIT_MAX_MAP_MIB`` MiB for the
    influence maps (3 float32 maps per node at full size). Raises ``HmeditError`` naming the limit and the
    environment variable that raises it. ``where`` (file, line, column) points the message at the scene.
    """
    pixels = int(width) * int(height)
    name = "MAX_PIXELS" if tiled else "MAX_UNTILED_PIXELS"
    allowed = limit(name)
    size = f"{int(width)}x{int(height)}"
    if pixels > allowed:
        kind = "a tiled render" if tiled else "a render with tiling: off"
        other = "" if tiled else "turn tiling on (remove tiling: off), or "
        raise HmeditError(
            f"size {size} ({_mpx(pixels)}) is more than the limit of {_mpx(allowed)} for {kind}",
            field=field,
            **where,
            hint=f"use a smaller size, or {other}{raise_hint(name, pixels)}",
        )
    need = render_map_bytes(width, height, n_nodes)
    budget = limit("MAX_MAP_MIB")
    if need > budget * 2**20:
        mib = -(-need // 2**20)
        raise HmeditError(
            f"the influence maps of {n_nodes} node{'s' * (n_nodes != 1)} at {size} need {mib} MiB, "
            f"more than the limit of {budget} MiB",
            field=field,
            **where,
            hint=f"use a smaller size or fewer nodes, or {raise_hint('MAX_MAP_MIB', mib)}",
        )
