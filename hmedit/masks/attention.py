"""Masks computed from other nodes: boundary bands, and masks read from the model's cross-attention.

Pure torch, no model: the attention processor (:mod:`hmedit.attention.processor`) records per-token
cross-attention probabilities (cond branch, mean over heads, mean over the layers of a level and summed over
steps up to a constant) and, on request, self-attention; everything after that is here.

- :func:`band`: a soft band along a mask's boundary, inside and outside (the "blend smoothly" regions of
  Hierarchical Mask Composition, Tables 2 and 8).
- :func:`aggregate`: DAAM's heat map (Tang et al., "What the DAAM: Interpreting Stable Diffusion Using Cross
  Attention", arXiv:2210.04885): each level's map upsampled (bicubic) to one size, averaged over levels.
- :func:`sharpen`: the map propagated through the aggregated self-attention, A_self^k · map (DiffSegmenter,
  Wang et al., arXiv:2309.02773; Free-Mask), so it follows the objects' outlines.
- :func:`guided_filter` (refine: image): the map filtered with the rendered image as the guide (He et al.,
  "Guided Image Filtering", 2010), so its edges move to the image's edges within one attention cell.
- :func:`normalise` and :func:`threshold`: min-max to [0, 1], then ``>= t`` (DAAM: 0.4).
- :func:`auto_threshold` (threshold: auto): Free-Mask's threshold selection (§3.1.2): of several thresholds,
  the one whose mask the image's affinity agrees with best, with a guided filter of the mask standing in for
  Free-Mask's trained AffinityNet.
- :func:`word_tokens` and :func:`token_position`: which cond tokens a word of a node's prompt is.
- :func:`first_pass_scene`: the scene without its attention-mask nodes, whose render gives their maps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from hmedit.masks.raster import feather
from hmedit.scene.spec import AttentionMask, BandMask, Node, Scene, prompt_words

__all__ = [
    "Probe",
    "aggregate",
    "auto_threshold",
    "band",
    "find_tokens",
    "first_pass_scene",
    "guided_filter",
    "level_shape",
    "normalise",
    "sharpen",
    "threshold",
    "token_position",
    "word_tokens",
]

GUIDE_EPS = 1e-3
"""The guided filter's regulariser: colour variances (0..1 scale) below it are flat (about 8/255 of noise)."""
AUTO_THRESHOLDS = tuple(round(0.2 + 0.05 * i, 2) for i in range(11))
"""The thresholds ``threshold: auto`` chooses from: 0.2, 0.25, ..., 0.7."""

SELF_MAX_QUERIES = 4096
"""Self-attention is recorded at the finest level with at most this many queries (64 x 64: SD at 512 px,
DiffSegmenter's level); its [N, N] sum costs N^2 floats."""

READ_NOISE = 0.5
"""An edit whose first pass would keep every pixel (noise 0 everywhere) is read at this noise level instead:
no step would run, so the model would never look at the picture."""


@dataclass(frozen=True)
class Probe:
    """A map to read from a render: the cross-attention of node ``node``'s prompt (``word`` None) or of one
    of its words, sharpened by self-attention when ``refine`` is "self"."""

    node: str
    word: str | None = None
    refine: str = "none"


def band(mask: Tensor, width_px: float, scale: float = 1.0) -> Tensor:
    """A soft band [..., H, W] along the boundary of ``mask`` [..., H, W] (values 0..1), ``width_px`` wide
    across it (at the reference size; ``scale`` = render / reference width).

    The mask is blurred by a Gaussian of σ = width / 2 into b, and the band is 4·b·(1 − b): 1 on the boundary
    (b = 1/2), 0.54 at σ from a straight edge on either side (inside and outside alike), 0.09 at 2σ; so its
    half-maximum width is about ``width`` px."""
    sigma = float(width_px) / 2.0
    if not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"band width must be positive and finite, got {width_px}")
    b = feather(mask.float(), sigma, scale=scale).clamp(0.0, 1.0)
    return (4.0 * b * (1.0 - b)).clamp(0.0, 1.0)


def normalise(maps: Tensor) -> Tensor:
    """Each map [..., H, W] min-max scaled to [0, 1] (a constant map becomes 0)."""
    flat = maps.flatten(-2)
    lo = flat.amin(-1, keepdim=True)
    span = flat.amax(-1, keepdim=True) - lo
    out = torch.where(span > 0, (flat - lo) / span.clamp(min=1e-12), torch.zeros_like(flat))
    return out.view_as(maps)


def threshold(maps: Tensor, t: float) -> Tensor:
    """Binary masks (float 0/1): the normalised maps at or above ``t``."""
    return (normalise(maps) >= t).float()


def _box(x: Tensor, r: int) -> Tensor:
    """Mean of ``x`` [C, H, W] over (2r+1)^2 windows, the border replicated."""
    padded = F.pad(x[None], (r, r, r, r), mode="replicate")
    return F.avg_pool2d(padded, 2 * r + 1, stride=1)[0]


GUIDE_BAND = 512
"""Rows per band of :func:`guided_filter` on large images (memory: about 30 floats per pixel of a band)."""


def guided_filter(
    p: Tensor, guide: Tensor, radius: int, eps: float = GUIDE_EPS, band: int = GUIDE_BAND
) -> Tensor:
    """``p`` [H, W] filtered with the colour image ``guide`` [3, H, W] (0..1) as the guide (He et al., "Guided
    Image Filtering", ECCV 2010, Alg. 2): in every (2r+1)^2 window the output is a linear function of the
    guide's colour fitted to ``p`` by least squares (``eps``: ridge), and the fits are averaged. Where the
    guide is flat the map is smoothed; where it has an edge, the map's step moves onto it. Images taller
    than ``band`` rows are filtered in bands with a 2r-row halo (the filter reaches 2r rows), which gives the
    same result with memory bounded by the band."""
    if guide.shape[-2:] != p.shape[-2:] or guide.shape[0] != 3:
        raise ValueError(f"guide {tuple(guide.shape)} does not fit map {tuple(p.shape)}")
    h = p.shape[0]
    r = max(1, int(radius))
    r = min(r, (min(p.shape[-2:]) - 1) // 2) or 1
    if h <= band:
        return _guided(p, guide, r, eps)
    halo = 2 * r
    rows = []
    for y0 in range(0, h, band):
        y1 = min(h, y0 + band)
        a, b = max(0, y0 - halo), min(h, y1 + halo)
        rows.append(_guided(p[a:b], guide[:, a:b], r, eps)[y0 - a : y0 - a + (y1 - y0)])
    return torch.cat(rows)


def _guided(p: Tensor, guide: Tensor, r: int, eps: float) -> Tensor:
    g, q = guide.float(), p.float()[None]
    size = g.shape[-2:]
    mean_g = _box(g, r)  # [3, H, W]
    mean_p = _box(q, r)[0]
    cov_gp = _box(g * q, r) - mean_g * mean_p
    pairs = torch.stack([g[i] * g[j] for i in range(3) for j in range(3)])
    var = (_box(pairs, r) - (mean_g[:, None] * mean_g[None, :]).reshape(9, *size)).reshape(3, 3, *size)
    var = var.permute(2, 3, 0, 1) + eps * torch.eye(3, dtype=var.dtype)
    a = torch.linalg.solve(var, cov_gp.permute(1, 2, 0)[..., None])[..., 0].permute(2, 0, 1)  # [3, H, W]
    b = mean_p - (a * mean_g).sum(0)
    out = (_box(a, r) * g).sum(0) + _box(b[None], r)[0]
    return out.to(p.dtype)


def auto_threshold(
    maps: Tensor, guide: Tensor, radius: int, candidates: Sequence[float] = AUTO_THRESHOLDS
) -> tuple[Tensor, float]:
    """Free-Mask's threshold selection (§3.1.2) for one map [H, W]: for each candidate t, the mask
    ``normalise(maps) >= t`` and its affinity refinement A (the mask's :func:`guided_filter` with the image,
    at or above 1/2); the t whose mask A agrees with best (IoU) wins, and its A is the mask. Returns (mask as
    float 0/1, t). Ties go to the lower threshold."""
    norm = normalise(maps)
    best: tuple[float, float, Tensor] | None = None
    for t in candidates:
        m = (norm >= t).float()
        a = (guided_filter(m, guide, radius) >= 0.5).float()
        union = float(torch.maximum(m, a).sum())
        score = float(torch.minimum(m, a).sum()) / union if union > 0 else 0.0
        if best is None or score > best[0]:
            best = (score, float(t), a)
    assert best is not None, "no candidate threshold"
    return best[2], best[1]


def level_shape(n: int, latent: tuple[int, int]) -> tuple[int, int]:
    """The (h, w) of a UNet level with ``n`` queries on a latent of ``latent`` (h, w)."""
    h, w = latent
    f = max(1, round((h * w / n) ** 0.5))
    shape = (-(-h // f), -(-w // f))
    if shape[0] * shape[1] != n:
        raise ValueError(f"{n} queries are no level of a {h}x{w} latent")
    return shape


def aggregate(
    levels: Mapping[int, Tensor],
    latent: tuple[int, int],
    size: tuple[int, int],
    *,
    skip: Sequence[int] = (),
) -> Tensor:
    """DAAM's aggregation: ``levels`` maps query length N -> [T, N] (per token, mean over heads and the
    level's layers); each level is upsampled bicubically to ``size`` (h, w) and the levels are averaged
    (the levels in ``skip`` left out; DAAM drops SD's 8 x 8). Returns [T, h, w], clamped at 0 (bicubic
    overshoot)."""
    ups = []
    for n, m in sorted(levels.items()):
        if n in skip:
            continue
        lh, lw = level_shape(n, latent)
        grid = m.float().reshape(1, -1, lh, lw)
        if (lh, lw) != tuple(size):
            grid = F.interpolate(grid, size=tuple(size), mode="bicubic", align_corners=False)
        ups.append(grid[0])
    if not ups:
        raise ValueError("no level to aggregate")
    return torch.stack(ups).mean(0).clamp(min=0.0)


def sharpen(maps: Tensor, self_attn: Tensor, iterations: int = 1) -> Tensor:
    """``maps`` [T, h, w] propagated through self-attention ``self_attn`` [N, N] (N = h·w; rows are queries
    and are normalised to sum to 1): m <- A·m, ``iterations`` times (DiffSegmenter's S @ c)."""
    t, h, w = maps.shape
    if self_attn.shape != (h * w, h * w):
        raise ValueError(f"self-attention {tuple(self_attn.shape)} does not fit maps of {h}x{w}")
    a = self_attn.float()
    a = a / a.sum(-1, keepdim=True).clamp(min=1e-12)
    m = maps.float().reshape(t, h * w).T  # [N, T]
    for _ in range(iterations):
        m = a @ m
    return m.T.reshape(t, h, w)


def find_tokens(ids: Sequence[int], want: Sequence[int], start: int = 0) -> list[int] | None:
    """Indices of the first run of ``want`` in ``ids`` at or after ``start``, or None."""
    want = list(want)
    if not want:
        return None
    for i in range(start, len(ids) - len(want) + 1):
        if list(ids[i : i + len(want)]) == want:
            return list(range(i, i + len(want)))
    return None


def word_tokens(prompt: str, tokenize: Callable[[str], list[int]]) -> list[tuple[str, list[int]]]:
    """Each word of ``prompt`` (:func:`hmedit.scene.spec.prompt_words`) with the indices of its tokens in
    ``tokenize(prompt)`` (word tokens, no start token), matched left to right. A word the tokenizer merges
    with its neighbours is left out; a repeated word's tokens are all counted under it."""
    ids = tokenize(prompt)
    out: dict[str, list[int]] = {}
    cursor = 0
    for word in prompt_words(prompt):
        found = find_tokens(ids, tokenize(word), cursor)
        if found is None:
            continue
        out.setdefault(word, []).extend(found)
        cursor = found[-1] + 1
    return list(out.items())


def phrase_tokens(prompt: str, phrase: str, tokenize: Callable[[str], list[int]]) -> list[int] | None:
    """The indices of ``phrase`` (one or more words) in ``tokenize(prompt)``, every occurrence, or None."""
    ids, want = tokenize(prompt), tokenize(" ".join(prompt_words(phrase)))
    out: list[int] = []
    found = find_tokens(ids, want)
    while found is not None:
        out += found
        found = find_tokens(ids, want, found[-1] + 1)
    return out or None


def token_position(i: int, *, root: bool, start: int, window: int) -> int:
    """Where word token ``i`` of a prompt sits in the cond token sequence (hmedit.conditioning.encode): the
    root's prompt in ``window``-token chunks of [start, words, end, padding]; another node's from ``start``
    in chunks of [words, end]."""
    body = window - 2
    chunk, j = divmod(i, body)
    if root:
        return chunk * window + 1 + j
    return start + chunk * (body + 1) + j


def attention_nodes(scene: Scene) -> list[Node]:
    """The nodes whose mask is read from attention."""
    return [n for n in scene.root.walk() if isinstance(n.mask, AttentionMask)]


def first_pass_scene(scene: Scene) -> Scene:
    """``scene`` without its attention-mask nodes (with their children), and without the bands of nodes
    so removed: what the model draws before those nodes exist. When what is left keeps the whole input
    image (every noise level 0: an edit whose only changes are the attention nodes), every node is read at
    ``READ_NOISE`` instead, so that sampling runs and the model attends to the picture."""
    gone = {n.id for n in attention_nodes(scene)}
    bands = {n.id: n.mask.band.of for n in scene.root.walk() if isinstance(n.mask, BandMask)}
    changed = True
    while changed:  # a band of a removed node goes too (and a band of that band)
        changed = False
        for node_id, of in bands.items():
            if of in gone and node_id not in gone:
                gone.add(node_id)
                changed = True

    def prune(node: Node) -> Node:
        kids = tuple(prune(c) for c in node.children if c.id not in gone)
        return node if kids == node.children else node.model_copy(update={"children": kids})

    first = scene.model_copy(update={"root": prune(scene.root)})
    if all(f.noise == 0 for f in first.flat()):

        def read(node: Node) -> Node:
            kids = tuple(read(c) for c in node.children)
            return node.model_copy(update={"noise": READ_NOISE, "children": kids})

        first = first.model_copy(update={"root": read(first.root)})
    return first
