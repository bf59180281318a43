"""What a render's controls need before sampling, model-free: each control node's conditioning image at the
output size and its weight map, and the nodes grouped by the ControlNet pass they share.

Weight maps follow Collage Diffusion (Sarukkai et al., arXiv:2303.00262, §4.3): the user's per-layer weight
w_i painted where the layer is on top. hmedit's effective masks already say who is on top (later siblings over
earlier, children over parents, feathered), so a node's map is ``weight · effective mask``; its residuals are
multiplied by that map resized bilinearly to each residual's size (:mod:`hmedit.control.residuals`).

Nodes that name the same ControlNet (and guess mode) share one pass per step: its conditioning image is the
nodes' images composed by their effective masks (each pixel from the nodes owning it, in proportion; where
no control node has any mass, the brightest of the images, so that a layer's outline just outside its mask
stays), and its weight map is the sum of the nodes' maps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from hmedit.control.preprocess import preprocess
from hmedit.errors import HmeditError
from hmedit.scene.spec import AssetRef, FlatNode, Scene

COMPOSE_EPS = 1e-6


@dataclass
class ControlNode:
    """One node's control, ready for sampling."""

    index: int  # in scene.flat()
    id: str
    field: str  # "root.children[0].control"
    weight: float
    start: float
    end: float
    guess: bool
    image: Tensor  # [3, H, W] float in 0..1, the conditioning image at the output size
    map: Tensor  # [H, W] weight · effective mask

    def keep(self, i: int, n: int) -> bool:
        """Whether the control acts at step ``i`` of ``n``, as diffusers' ``control_guidance_start/end``:
        not when i/n < start or (i + 1)/n > end."""
        return not (i / n < self.start or (i + 1) / n > self.end)


@dataclass
class ControlGroup:
    """Control nodes sharing one ControlNet pass per step."""

    key: str  # the ControlNet's place on disk (+ guess mode)
    guess: bool
    nodes: list[ControlNode]
    image: Tensor = field(init=False)  # [3, H, W] composed conditioning image

    def __post_init__(self) -> None:
        self.image = compose_images([c.image for c in self.nodes], [c.map for c in self.nodes])

    def active(self, i: int, n: int) -> tuple[bool, ...]:
        return tuple(c.keep(i, n) for c in self.nodes)

    def weight_map(self, active: tuple[bool, ...]) -> Tensor:
        """[H, W]: the sum of the active nodes' maps."""
        maps = [c.map for c, on in zip(self.nodes, active, strict=True) if on]
        return torch.stack(maps).sum(0) if maps else torch.zeros_like(self.nodes[0].map)


def compose_images(images: list[Tensor], maps: list[Tensor]) -> Tensor:
    """Images [3, H, W] composed by their nodes' maps (see the module docstring); one image is itself."""
    if len(images) == 1:
        return images[0]
    own = torch.stack(maps).clamp(min=0)  # [k, H, W]
    total = own.sum(0)
    stack = torch.stack(images)  # [k, 3, H, W]
    mixed = (stack * own[:, None]).sum(0) / total.clamp(min=COMPOSE_EPS)
    return torch.where(total[None] > COMPOSE_EPS, mixed, stack.amax(0))


def _as_pil_rgb(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8), mode="RGB")


def _as_pil_rgba(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8), mode="RGBA")


def _fit(img: Image.Image, width: int, height: int) -> Image.Image:
    """Resized to the output size with Lanczos, as diffusers' control image processor does."""
    return img if img.size == (width, height) else img.resize((width, height), Image.Resampling.LANCZOS)


def conditioning_image(scene: Scene, flat: FlatNode, width: int, height: int) -> Image.Image:
    """The node's conditioning image (RGB, ``width`` × ``height``): its ready ``image`` resized, or its
    ``source`` (layer placed on the frame, init image, picture) resized and run through ``kind``."""
    from hmedit.masks.raster import place_layer, reference_size
    from hmedit.scene.assets import load_rgb, load_rgba

    c = flat.node.control
    assert c is not None
    if c.image is not None:
        return _fit(_as_pil_rgb(load_rgb(c.image, field=f"{flat.path}.control.image")), width, height)
    if c.source == "layer":
        ref = reference_size(scene, default=(width, height))
        picture = _as_pil_rgba(place_layer(flat.node, width, height, ref).numpy())
    elif c.source == "init_image":
        picture = _fit(_as_pil_rgb(load_rgb(scene.init_image, field="init_image")), width, height)
    else:
        assert isinstance(c.source, AssetRef)
        picture = _fit(_as_pil_rgba(load_rgba(c.source, field=f"{flat.path}.control.source")), width, height)
    return preprocess(c.preprocessor or "edges", picture.convert("RGBA"))


def _image_field(flat: FlatNode) -> str:
    c = flat.node.control
    if c is not None and c.image is not None:
        return f"{flat.path}.control.image"
    return f"{flat.path}.control.source"


def control_nodes(
    scene: Scene, flat: list[FlatNode], effective: Tensor, width: int, height: int
) -> list[ControlNode]:
    """Every control node of the scene (tree order), its image at ``width`` × ``height`` and its map from the
    effective masks [K, H, W]. A missing, corrupt or too large image is an ``HmeditError`` naming the file,
    the node and the field."""
    out = []
    for f in flat:
        c = f.node.control
        if c is None:
            continue
        where = _image_field(f)
        try:
            img = conditioning_image(scene, f, width, height)
        except HmeditError as exc:
            problem = f"{exc.problem} (the control image of node {f.node.id!r})"
            raise HmeditError(problem, **scene.where(where), hint=exc.hint) from exc
        t = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()
        out.append(
            ControlNode(
                f.index,
                f.node.id,
                f"{f.path}.control",
                float(c.weight),
                float(c.start),
                float(c.end),
                bool(c.guess),
                t,
                float(c.weight) * effective[f.index].float(),
            )
        )
    return out


def group_controls(nodes: list[ControlNode], keys: dict[int, str]) -> list[ControlGroup]:
    """Nodes grouped by ControlNet (``keys``: flat index -> the ControlNet's key) and guess mode, in the
    order of their first node."""
    groups: dict[tuple[str, bool], list[ControlNode]] = {}
    for c in nodes:
        groups.setdefault((keys[c.index], c.guess), []).append(c)
    return [ControlGroup(k, guess, members) for (k, guess), members in groups.items()]
