"""A scene's per-node tokens: learned (``learn:``) or loaded (``embedding:``), installed into the model, and
the prompts rewritten to use them ("a square" -> "<hm-sq-1a2b3c4d> a square").

This is what ``hmedit learn`` and ``hmedit render`` call (:func:`install_tokens`). For a node with ``learn``:

1. The composite of layers 1..i (the init image, or mid-gray, with the layers up to and including the node
   pasted back to front) is built at the scene's reference size, and the node's alpha (its layer's alpha,
   or its mask) with it, unfeathered.
2. Both are cropped to a square window around the node's bounding box: its longer side plus some context, but
   at least the model's native size (clipped to the image), and resized so that the window's longer side is
   the native size. So learning costs the same however large (or tiled) the render is; a layer smaller than
   the native size keeps its scale (a scene at the native size learns on the whole composite, as in the
   paper), and a larger one is scaled down to fit.
3. The cache key is a hash of the model, that crop, its alpha, the node's prompt and the learn settings
   (the guidance and negative prompt among them); a cached embedding is installed without training,
   otherwise the token is learned (Collage Diffusion, Sarukkai et al., arXiv:2303.00262, eq. 1, only its
   row trained, under the scene's
   classifier-free guidance: see :mod:`hmedit.conditioning.textual_inversion`) and cached in diffusers'
   format.

Token names are ``<hm-<node id>-<8 hex digits of the key or file hash>>``: unique per node and embedding, so
tokens of several scenes live side by side in one loaded model, and prompts without them encode exactly as
before.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from hmedit.conditioning import textual_inversion as inv
from hmedit.errors import HmeditError
from hmedit.scene.presets import LearnDefaults
from hmedit.scene.spec import FlatNode, LearnSpec, Node, Scene

__all__ = [
    "CONTEXT",
    "NodeToken",
    "Progress",
    "SceneTokens",
    "install_tokens",
    "learn_settings",
    "learn_source",
    "needs_tokens",
    "with_prompts",
]

CONTEXT = 0.25
"""The learning window's side is at least the node's bounding box's longer side times 1 + CONTEXT (and the
native size; clipped to the image): the UNet sees some of the composite around the layer, the loss only the
layer's alpha."""
PLACEHOLDER = "<hm>"
"""The token as written in the prompt the cache key hashes: the key must not depend on the token's name."""

Progress = Callable[[str, int, int, "float | None"], None]
"""``progress(node_id, i, n, loss)``: (i=0, loss None) when a node starts training, then after each step."""


@dataclass
class NodeToken:
    """The token one node uses: what was installed, where it came from, and what it cost."""

    node_id: str
    field: str  # the scene field it comes from: "root.children[0].learn" / "...embedding"
    text: str  # what is put before the node's prompt (one token, or several for a multi-vector file)
    source: str  # "learned", "cached" or "file"
    key: str | None = None  # learned / cached: the cache key
    path: Path | None = None  # learned / cached: the cached diffusers file; file: the embedding file
    sha256: str | None = None  # file: its sha256
    settings: dict[str, Any] | None = None  # learned / cached: the LearnSettings
    crop: list[int] | None = None  # learned / cached: [x, y, w, h] on the composite at the reference size
    learn_size: list[int] | None = None  # learned / cached: [w, h] the crop was resized to
    seconds: float = 0.0  # learned: training time
    loss: float | None = None  # learned: the last step's loss
    vectors: int = 1
    vector: Tensor | None = field(default=None, repr=False)  # the embedding, [D] or [n, D] (fp32, CPU)

    def describe(self) -> dict[str, Any]:
        """JSON-ready, for ``render.json``."""
        out = {
            "field": self.field,
            "token": self.text,
            "source": self.source,
            "vectors": self.vectors,
        }
        if self.source == "file":
            out.update(path=str(self.path), sha256=self.sha256)
        else:
            out.update(
                key=self.key,
                cache_file=str(self.path) if self.path is not None else None,
                settings=self.settings,
                crop=self.crop,
                learn_size=self.learn_size,
            )
            if self.source == "learned":
                out.update(seconds=round(self.seconds, 3), loss=self.loss)
        return out


@dataclass
class SceneTokens:
    """The tokens of one scene, by node id, and its prompts rewritten to use them."""

    tokens: dict[str, NodeToken] = field(default_factory=dict)
    prompts: dict[str, str] = field(default_factory=dict)  # node id -> rewritten prompt

    def apply(self, scene: Scene) -> Scene:
        """``scene`` with the rewritten prompts (what the model is given); ``scene`` itself is unchanged."""
        return with_prompts(scene, self.prompts) if self.prompts else scene

    @property
    def learn_seconds(self) -> float:
        return round(sum(t.seconds for t in self.tokens.values()), 4)

    def describe(self) -> dict[str, Any]:
        return {node_id: t.describe() for node_id, t in self.tokens.items()}


def needs_tokens(scene: Scene) -> bool:
    """Whether any node of ``scene`` learns or loads a token."""
    return any(n.learn is not None or n.embedding is not None for n in scene.root.walk())


def learn_settings(
    spec: LearnSpec, guidance: float = 1.0, negative: str = "", defaults: LearnDefaults | None = None
) -> inv.LearnSettings:
    """A node's ``learn:`` keys as the settings of :func:`hmedit.conditioning.textual_inversion.learn_token`.

    ``guidance`` and ``negative``: the scene's guidance and the node's negative prompt, what the token is
    rendered with; ``learn.guidance`` overrides the first. A guidance of 1 or less (no classifier-free
    guidance at render time) learns by eq. 1 as written. Keys the node leaves out come from the preset's
    ``learn:`` ``defaults``."""
    d = defaults or LearnDefaults()
    g = float(spec.guidance if spec.guidance is not None else guidance)
    return inv.LearnSettings(
        steps=spec.steps or d.steps,
        lr=float(spec.lr or d.lr),
        batch=spec.batch or d.batch,
        init=spec.init,
        guidance=max(g, 1.0),
        negative=negative if g > 1.0 else "",
    )


def with_prompts(scene: Scene, prompts: dict[str, str]) -> Scene:
    """A copy of ``scene`` whose nodes named in ``prompts`` have those prompts (nothing else changes)."""

    def rebuild(node: Node) -> Node:
        update: dict[str, Any] = {"children": tuple(rebuild(c) for c in node.children)}
        if node.id in prompts:
            update["prompt"] = prompts[node.id]
        return node.model_copy(update=update)

    return scene.model_copy(update={"root": rebuild(scene.root)})


def _size_multiple(model) -> int:
    """Image sizes the UNet takes without padding: the VAE factor times the UNet's total downsampling."""
    return model.vae_scale_factor * 2 ** (len(model.unet.config.block_out_channels) - 1)


def learn_source(
    scene: Scene, flat: FlatNode, native: int, multiple: int = 8
) -> tuple[Tensor, Tensor, list[int]]:
    """What node ``flat`` learns from: the composite of layers 1..i [1, 3, h, w] in [-1, 1], the node's alpha
    [h, w] in 0..1, cropped around the node (see the module docstring) and resized so that the longer side is
    ``native`` (the shorter a multiple of ``multiple``); and the crop [x, y, w, h] in reference pixels.
    ``native``: the model's native size, in pixels at the scene's reference size."""
    from hmedit.masks.raster import build_canvas, rasterize_node, reference_size

    flats = scene.flat()
    ref = reference_size(scene, default=(native, native))
    assert ref is not None
    width, height = int(ref[0]), int(ref[1])
    node = flat.node
    region = "layer" if node.layer is not None else "mask"
    where = scene.where(f"{flat.path}.{region}")
    try:
        canvas = build_canvas(scene, flats[: flat.index + 1], width, height)
        alpha = rasterize_node(node, width, height, ref, feathered=False, field=where["field"])
    except HmeditError as err:
        raise HmeditError(err.problem, **where, hint=err.hint) from None
    if canvas is None:  # the spec forbids this (learn needs a layer or init_image); a scene built in code
        raise HmeditError(
            "nothing to learn from: the node has no layer and the scene no init_image",
            **scene.where(f"{flat.path}.learn"),
        )
    rows = torch.nonzero(alpha.amax(1) > 1e-3).flatten()
    cols = torch.nonzero(alpha.amax(0) > 1e-3).flatten()
    if rows.numel() == 0:
        raise HmeditError(
            "the region is empty: there is nothing to learn",
            **where,
            hint="check that the layer or mask lies inside the image",
        )
    x0, x1 = int(cols[0]), int(cols[-1]) + 1
    y0, y1 = int(rows[0]), int(rows[-1]) + 1
    side = max(math.ceil(max(x1 - x0, y1 - y0) * (1 + CONTEXT)), native)
    ww, wh = min(width, side), min(height, side)
    x = min(max(round((x0 + x1 - ww) / 2), 0), width - ww)
    y = min(max(round((y0 + y1 - wh) / 2), 0), height - wh)
    crop_img = canvas[:, :, y : y + wh, x : x + ww].float()
    crop_alpha = alpha[y : y + wh, x : x + ww].float()
    long_side = max(ww, wh)
    out_w = max(multiple, round(native * ww / long_side / multiple) * multiple)
    out_h = max(multiple, round(native * wh / long_side / multiple) * multiple)
    image = F.interpolate(crop_img, (out_h, out_w), mode="bicubic", antialias=True, align_corners=False)
    small = F.interpolate(
        crop_alpha[None, None], (out_h, out_w), mode="bilinear", antialias=True, align_corners=False
    )
    return image.clamp(-1, 1), small[0, 0].clamp(0, 1), [x, y, ww, wh]


def _token_name(node_id: str, digest: str) -> str:
    return f"<hm-{node_id}-{digest[:8]}>"


def install_tokens(
    scene: Scene,
    model,
    *,
    cache_dir: str | Path | None = None,
    progress: Progress | None = None,
    force: bool = False,
    on_token: Callable[[NodeToken], None] | None = None,
    guidance: float | None = None,
    defaults: LearnDefaults | None = None,
) -> SceneTokens:
    """Install every node's token into ``model.tokenizer`` / ``model.text_encoder`` and return them with the
    rewritten prompts. Learned tokens come from the cache under ``cache_dir`` (default: hmedit's cache folder,
    ``embeddings/``) or are learned and cached there (``force``: learned again). ``on_token`` is called as
    each node's token is ready. ``guidance``: the render's (default: the scene's, else 7.5); ``defaults``: the
    preset's learn defaults. Problems are ``HmeditError`` pointing at the node's field."""
    if guidance is None:
        guidance = float(scene.guidance) if scene.guidance is not None else 7.5
    cache = inv.EmbeddingCache(cache_dir)
    out = SceneTokens()
    native = model.native_size
    multiple = _size_multiple(model)
    for flat in scene.flat():
        node = flat.node
        if node.embedding is not None:
            tok = _load_file(scene, flat, model)
        elif node.learn is not None:
            tok = _learn(scene, flat, model, cache, native, multiple, progress, force, guidance, defaults)
        else:
            continue
        out.tokens[node.id] = tok
        out.prompts[node.id] = f"{tok.text} {node.prompt}".strip()
        if on_token is not None:
            on_token(tok)
    return out


def _learn(
    scene: Scene,
    flat: FlatNode,
    model,
    cache: inv.EmbeddingCache,
    native: int,
    multiple: int,
    progress: Progress | None,
    force: bool,
    guidance: float,
    defaults: LearnDefaults | None,
) -> NodeToken:
    node = flat.node
    assert node.learn is not None
    where = scene.where(f"{flat.path}.learn")
    settings = learn_settings(node.learn, guidance, node.negative, defaults)
    image, alpha, crop = learn_source(scene, flat, native, multiple)
    key = inv.cache_key(model.hash, image, alpha, f"{PLACEHOLDER} {node.prompt}", asdict(settings))
    token = _token_name(node.id, key)
    prompt = f"{token} {node.prompt}".strip()
    last: list[float] = []

    def step(i: int, n: int, loss: float) -> None:
        last[:] = [loss]
        if progress is not None:
            progress(node.id, i, n, loss)

    if progress is not None and (force or cache.get(key) is None):
        progress(node.id, 0, settings.steps, None)
    start = time.perf_counter()
    try:
        got = inv.learn_token(
            model, token, image, alpha, prompt, settings, cache=cache, progress=step, key=key, force=force
        )
    except HmeditError as err:
        raise HmeditError(err.problem, **where, hint=err.hint) from None
    seconds = time.perf_counter() - start
    path = cache.path(key)
    return NodeToken(
        node.id,
        where["field"],
        token,
        "cached" if got.cached else "learned",
        key=key,
        path=path if path.is_file() else None,
        settings=asdict(settings),
        crop=crop,
        learn_size=[int(image.shape[3]), int(image.shape[2])],
        seconds=0.0 if got.cached else seconds,
        loss=last[-1] if last else None,
        vector=got.embedding,
    )


def _load_file(scene: Scene, flat: FlatNode, model) -> NodeToken:
    from hmedit.provenance import file_sha256

    node = flat.node
    assert node.embedding is not None
    where = scene.where(f"{flat.path}.embedding")
    path = node.embedding.path
    try:
        found = inv.load_embedding(path, dim=sum(inv.widths(model)))
        digest = file_sha256(path)
    except HmeditError as err:
        raise HmeditError(f"{node.embedding.raw}: {err.problem}", **where, hint=err.hint) from None
    except OSError as err:
        raise HmeditError(f"cannot read {node.embedding.raw}: {err.strerror or err}", **where) from None
    (vectors,) = found.values()
    text = inv.install_embedding(model, _token_name(node.id, digest), vectors)
    return NodeToken(
        node.id,
        where["field"],
        text,
        "file",
        path=path,
        sha256=digest,
        vectors=1 if vectors.ndim == 1 else int(vectors.shape[0]),
        vector=vectors,
    )
