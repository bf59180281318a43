"""Composition operators C: intrinsic masks M -> effective masks M~ (Hierarchical Mask Composition for
High-Resolution Text-Guided Image Editing, Adhikari and Shrestha, no arXiv id: §3, §4 and Table 3).

Inputs everywhere: intrinsic masks ``masks`` [K, ...] (node axis first, any spatial shape after it, index 0
the root), ``parents`` (parents[k] is k's parent index, -1 for a root; parents precede their children, as
``Scene.flat()`` orders them) and strengths s [K]. Output: effective masks [K, ...], differentiable in the
masks and the strengths. The paper's equations are unnumbered, so citations give the section and the
symbol defined (e.g. "§3 a^j"); the paper's extracted text lost its "+" signs and parentheses, and where that
leaves a formula ambiguous the reading chosen is stated next to it.

Schemes (Table 3):
    multiplicative   M~^k = s^k m^k a^k, a^k = prod_{l in ch_k} (1 - w^l m^l)     child overrides parent
    normalized       M~^k = s^k m^k / (sum_j s^j m^j + eps)                       bounded total per pixel
    top_down         residual allocation root -> leaves, M~^k = s^k r^k           conserves influence
                     (children's share q = m / max(sum m, 1) by default, "capped"; the paper's
                     q = m / (sum m + eps) as share="ratio")
    depth_weighted   s^k = gamma^{h_k} (x user strength), then normalized          precedence by depth
    hybrid           each node takes its row from the scheme it names             per-node combination
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "SCHEMES",
    "NormalizedComposition",
    "compose",
    "depth_weighted",
    "depths",
    "hybrid",
    "multiplicative",
    "normalized",
    "normalized_vjp",
    "top_down",
]

SCHEMES = ("multiplicative", "normalized", "top_down", "depth_weighted", "hybrid")

StrengthsLike = Tensor | Sequence[float] | None


# ---------------------------------------------------------------------------------------------------------
# The tree


def _check_tree(parents: Sequence[int], k: int) -> list[int]:
    parents = [int(p) for p in parents]
    if len(parents) != k:
        raise ValueError(f"{len(parents)} parents for {k} masks")
    for i, p in enumerate(parents):
        if p != -1 and not 0 <= p < i:
            raise ValueError(f"parent of node {i} is {p}: parents must precede their children (or be -1)")
    return parents


def _children(parents: Sequence[int]) -> list[list[int]]:
    ch: list[list[int]] = [[] for _ in parents]
    for i, p in enumerate(parents):
        if p >= 0:
            ch[p].append(i)
    return ch


def depths(parents: Sequence[int]) -> list[int]:
    """h_k, the number of edges from node k up to its root (h_r = 0, §4)."""
    out: list[int] = []
    for i, p in enumerate(parents):
        if p != -1 and not 0 <= p < i:
            raise ValueError(f"parent of node {i} is {p}: parents must precede their children (or be -1)")
        out.append(0 if p < 0 else out[p] + 1)
    return out


def _strengths(strengths: StrengthsLike, masks: Tensor) -> Tensor:
    """s [K] as a tensor shaped to broadcast over masks [K, ...] (autograd kept when s is a tensor)."""
    k = masks.shape[0]
    if strengths is None:
        s = torch.ones(k, dtype=masks.dtype, device=masks.device)
    else:
        s = torch.as_tensor(strengths, dtype=masks.dtype, device=masks.device)
    if s.shape != (k,):
        raise ValueError(f"strengths must have shape ({k},), got {tuple(s.shape)}")
    return s.reshape(k, *([1] * (masks.ndim - 1)))


def _check_masks(masks: Tensor) -> None:
    if masks.ndim < 1 or masks.shape[0] == 0:
        raise ValueError(f"masks must be [K, ...] with K >= 1, got shape {tuple(masks.shape)}")


# ---------------------------------------------------------------------------------------------------------
# Multiplicative attenuation (§3, eqs. for m~^k and a^j; Table 3 row 1)


def multiplicative(
    masks: Tensor, parents: Sequence[int], strengths: StrengthsLike = None, *, weights: StrengthsLike = None
) -> Tensor:
    """Multiplicative attenuation: where a child is active its parent's influence is reduced (§3).

    The paper writes m~^k = m^k prod_{j in pi^k \\ {k}} a^j with a^j "an attenuation factor derived from the
    children of node j", a^j = 1 - prod_{l in ch_j} m^l w^l, and states the intent: "where a child is
    active, its parent influence is reduced" (Table 3: "strong child override of parents"). Read literally,
    the path product would attenuate a child by its own mask and never attenuate the root, the opposite of
    that intent, and "1 - prod" over several children would attenuate a parent only where all its children
    overlap. We implement the stated intent, identical to the formula for a single child:

        M~^k = s^k m^k a^k,   a^k = prod_{l in ch_k} (1 - w^l m^l),   w^l in [0, 1] (default 1)

    so inside a child (m^l = 1, w^l = 1) the parent is silenced and the child has precedence; nested
    children pass precedence down level by level. ``weights`` w (per node, used where the node is a child)
    soften the override; values are clamped to [0, 1], the bound the paper asks for nonnegativity.
    """
    _check_masks(masks)
    parents = _check_tree(parents, masks.shape[0])
    s = _strengths(strengths, masks)
    w = None if weights is None else _strengths(weights, masks).clamp(0.0, 1.0)
    kids = _children(parents)
    rows = []
    for k in range(masks.shape[0]):
        row = masks[k]
        for l in kids[k]:
            row = row * (1.0 - (masks[l] if w is None else w[l] * masks[l]))
        rows.append(row)
    return s * torch.stack(rows)


# ---------------------------------------------------------------------------------------------------------
# Normalisation (§3 alpha^k; §4 M~ = M diag(s) ⊘ d 1^T, d_i = sum_j s_j M_ij + eps; gradient in §4)


def normalized(
    masks: Tensor, strengths: StrengthsLike = None, *, eps: float = 1e-6, analytic_grad: bool = False
) -> Tensor:
    """M~_ik = s_k M_ik / d_i, d_i = sum_j s_j M_ij + eps (§4, matrix form of §3's alpha^k).

    Every pixel's effective masks sum to sum_k c_k / (sum_k c_k + eps) < 1 (Table 4, bounded sum), and are
    nonnegative for nonnegative masks and strengths. With ``analytic_grad`` the backward pass uses the
    paper's closed-form derivative (:class:`NormalizedComposition`) instead of autograd's chain rule.
    """
    _check_masks(masks)
    s = _strengths(strengths, masks)
    if analytic_grad:
        return NormalizedComposition.apply(masks, s.reshape(-1), eps)
    c = s * masks  # c^k = s^k m^k (§3)
    return c / (c.sum(0, keepdim=True) + eps)


def normalized_vjp(
    grad_out: Tensor, masks: Tensor, strengths: StrengthsLike = None, *, eps: float = 1e-6
) -> tuple[Tensor, Tensor]:
    """dL/dM and dL/ds for :func:`normalized` given g = dL/dM~: the §4 chain rule, contracted in closed form.

    dL/dM_ik = sum_l g_il dM~_il/dM_ik = s_k (g_ik - sum_l g_il M~_il) / d_i, and since c_k = s_k M_k the
    strength gradient is dL/ds_k = sum_i M_ik (g_ik - sum_l g_il M~_il) / d_i.
    """
    s = _strengths(strengths, masks)
    d = (s * masks).sum(0, keepdim=True) + eps
    out = s * masks / d
    u = (grad_out - (grad_out * out).sum(0, keepdim=True)) / d
    grad_s = (masks * u).reshape(masks.shape[0], -1).sum(1)
    return s * u, grad_s


class NormalizedComposition(torch.autograd.Function):
    """The normalized operator with the paper's analytic backward (§4), so gradcheck can test the formula."""

    @staticmethod
    def forward(ctx, masks: Tensor, strengths: Tensor, eps: float) -> Tensor:  # type: ignore[override]
        s = strengths.reshape(-1, *([1] * (masks.ndim - 1)))
        out = s * masks / ((s * masks).sum(0, keepdim=True) + eps)
        ctx.save_for_backward(masks, strengths)
        ctx.eps = eps
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        masks, strengths = ctx.saved_tensors
        grad_m, grad_s = normalized_vjp(grad_out, masks, strengths, eps=ctx.eps)
        return grad_m, grad_s, None


# ---------------------------------------------------------------------------------------------------------
# Top-down residual allocation (§3 r^k, a^{k->l}, q^l; §4 R, A, Q)


def top_down(
    masks: Tensor,
    parents: Sequence[int],
    strengths: StrengthsLike = None,
    *,
    eps: float = 1e-6,
    share: Literal["capped", "ratio"] = "capped",
) -> Tensor:
    """Top-down residual allocation: influence flows from the root to the leaves and is conserved (§3).

    The root starts with residual r^r (the paper's R_ir = 1; we use the root's own mask m^r, which is 1 for
    the full-frame root ``rasterize_node`` produces and keeps a partial root from acting outside itself).
    Each node k hands its children the allocations a^{k->l} = r^k q^l and keeps what is left:

        r^l = r^k q^l,   kept^k = r^k (1 - sum_{l in ch_k} q^l),   M~^k = s^k kept^k

    (the paper's "residual influence remains attached to the parent"; M~^k = s^k r^k read with r^k the part
    k keeps, because counting what k passes on as well would count it twice and break conservation).
    Summing kept^k over all nodes telescopes to r^r: with unit strengths every pixel's total is exactly the
    root's mask, and with strengths in [0, 1] it is at most that.

    ``share`` picks the normalised mask over children q^l (the paper gives one "for example"):
      "capped" q^l = m^l / max(sum_{j in ch_k} m^j, 1), the default: siblings are normalised only where
               their masks sum to more than 1, and elsewhere a parent keeps r^k (1 - sum m), so a child's
               feathered edge gets a share in proportion to its mask value (soft edges stay soft).
               Influence is conserved as with "ratio".
      "ratio"  q^l = m^l / (sum_{j in ch_k} m^j + eps), the paper's example. A parent keeps
               r^k eps / (sum m + eps), i.e. nearly nothing wherever any child is above ~eps, so a child's
               feathered edge takes the parent's full influence (soft edges act hard).
    """
    _check_masks(masks)
    parents = _check_tree(parents, masks.shape[0])
    if share not in ("ratio", "capped"):
        raise ValueError(f"share must be 'ratio' or 'capped', not {share!r}")
    s = _strengths(strengths, masks)
    kids = _children(parents)
    incoming: list[Tensor | None] = [masks[k] if p < 0 else None for k, p in enumerate(parents)]
    kept: list[Tensor] = []
    for k in range(masks.shape[0]):
        r = incoming[k]
        assert r is not None  # parents precede children, so k's allocation is already made
        if not kids[k]:
            kept.append(r)
            continue
        total = torch.stack([masks[l] for l in kids[k]]).sum(0)
        if share == "ratio":
            denom = total + eps
            left = eps / denom  # 1 - sum q, written without cancellation so it stays >= 0
        else:
            denom = total.clamp(min=1.0)
            left = (1.0 - total).clamp(min=0.0) / denom
        for l in kids[k]:
            incoming[l] = r * masks[l] / denom  # a^{k->l} = r^k q^l; r^l = a^{k->l}
        kept.append(r * left)
    return s * torch.stack(kept)


# ---------------------------------------------------------------------------------------------------------
# Depth weighting (§4 s_k = gamma^{h_k}; Table 3 row 4) and hybrid (Table 3 row 5)


def depth_weighted(
    masks: Tensor,
    parents: Sequence[int],
    strengths: StrengthsLike = None,
    *,
    gamma: float = 0.8,
    eps: float = 1e-6,
) -> Tensor:
    """Normalized composition with depth strengths s_k = gamma^{h_k} (§4): gamma < 1 favours coarse nodes,
    gamma > 1 deep ones.

    The paper sets s_k = gamma^{h_k} alone. Given user ``strengths`` we use gamma^{h_k} * strength_k (the
    paper lists depth and user priority as sources of s_k); with unit strengths that is the paper exactly.
    """
    _check_masks(masks)
    h = torch.tensor(depths(_check_tree(parents, masks.shape[0])), dtype=masks.dtype, device=masks.device)
    s = torch.as_tensor(gamma, dtype=masks.dtype, device=masks.device) ** h
    if strengths is not None:
        s = s * _strengths(strengths, masks).reshape(-1)
    return normalized(masks, s, eps=eps)


def _scheme_name(name: str) -> str:
    key = str(name).strip().lower().replace("-", "_")
    if key not in SCHEMES:
        raise ValueError(f"unknown composition scheme {name!r}; choose one of {', '.join(SCHEMES)}")
    return key


def hybrid(
    masks: Tensor,
    parents: Sequence[int],
    strengths: StrengthsLike = None,
    node_schemes: Sequence[str | None] | None = None,
    *,
    default: str = "normalized",
    gamma: float = 0.8,
    eps: float = 1e-6,
    share: Literal["capped", "ratio"] = "capped",
) -> Tensor:
    """Hybrid composition, "combination per node" (Table 3): node k's effective mask is row k of the scheme
    ``node_schemes[k]`` names (None: ``default``), each scheme applied to the whole hierarchy.

    Mixing schemes gives up the per-pixel guarantees of any single one (e.g. the sum bound); each row keeps
    its own scheme's meaning. Only the schemes that some node names are computed.
    """
    _check_masks(masks)
    k = masks.shape[0]
    parents = _check_tree(parents, k)
    if node_schemes is None:
        node_schemes = [None] * k
    if len(node_schemes) != k:
        raise ValueError(f"{len(node_schemes)} node schemes for {k} masks")
    names = [_scheme_name(n if n is not None else default) for n in node_schemes]
    if "hybrid" in names:
        raise ValueError("a node's scheme in a hybrid composition cannot itself be 'hybrid'")
    results = {
        name: compose(masks, parents, strengths, name, gamma=gamma, eps=eps, share=share)
        for name in dict.fromkeys(names)
    }
    return torch.stack([results[name][i] for i, name in enumerate(names)])


def compose(
    masks: Tensor,
    parents: Sequence[int],
    strengths: StrengthsLike,
    scheme: str,
    *,
    gamma: float = 0.8,
    node_schemes: Sequence[str | None] | None = None,
    eps: float = 1e-6,
    hybrid_default: str = "normalized",
    share: Literal["capped", "ratio"] = "capped",
) -> Tensor:
    """Effective masks [K, ...] from intrinsic masks [K, ...] by ``scheme`` (one of :data:`SCHEMES`;
    "top-down" spellings accepted). ``node_schemes`` is used by "hybrid" only, ``gamma`` by "depth_weighted"
    (also inside hybrid), ``share`` by "top_down" (also inside hybrid; "capped" by default, "ratio" for the
    paper's q = m / (sum m + eps), see :func:`top_down`)."""
    name = _scheme_name(scheme)
    if name == "multiplicative":
        return multiplicative(masks, parents, strengths)
    if name == "normalized":
        _check_tree(parents, masks.shape[0])
        return normalized(masks, strengths, eps=eps)
    if name == "top_down":
        return top_down(masks, parents, strengths, eps=eps, share=share)
    if name == "depth_weighted":
        return depth_weighted(masks, parents, strengths, gamma=gamma, eps=eps)
    return hybrid(
        masks, parents, strengths, node_schemes, default=hybrid_default, gamma=gamma, eps=eps, share=share
    )
