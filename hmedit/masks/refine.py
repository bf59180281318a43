"""Mask refinement (Hierarchical Mask Composition for High-Resolution Text-Guided Image Editing, Adhikari and
Shrestha, §5, Table 5, Fig. 5): the drawn masks of some nodes are re-parameterised as sigmoid logits
m^k = sigma(u^k) and optimised through the composition operator under

    L = w_txt l_txt + w_id l_id + w_tv R_TV + w_area mean(m^k) + w_hier mean(relu(m^child - m^parent))

- l_txt: the CLIP text loss of each refined node's prompt inside its effective mask M~^k (a callable the
  caller gives: :class:`hmedit.clip.loss.MaskedClipLoss` in the pipeline), on the edited image;
- l_id: the change from the source left outside the active masks (Table 5: "distance to original image,
  complement of active masks");
- R_TV: total variation, sqrt(dx^2 + dy^2) per pixel (§5, R_TV);
- area: the mask's mean value (§5, "a term proportional to sum m");
- hierarchy: a child active where its parent is not (§5, "child not <= parent").

The edited image is the paper's D z_T as a function of the masks. Backpropagating through the diffusion
(Fig. 5) is replaced by its first-order stand-in: one edit E rendered with the drawn masks, and the picture
the masks make of it, I(m) = a(m) E + (1 - a(m)) S, where a is the weight of the active (re-noised) nodes in
the effective masks, exactly as the pipeline pastes source pixels back. l_id then reads: the pixels where E
differs from the source S that the active masks leave out, mean((1 - a) |E - S|). Model-free: torch only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from hmedit.masks.compose import compose
from hmedit.scene.spec import RefineSpec

__all__ = ["RefineWeights", "Refined", "active_weight", "refine_masks", "total_variation"]

LOGIT_CLAMP = 0.02  # a drawn 0 and 1 start at logit(0.02) and logit(0.98), within the optimiser's reach


_DEFAULT = {k: f.default for k, f in RefineSpec.model_fields.items()}  # the scene's defaults, held there once


@dataclass(frozen=True)
class RefineWeights:
    """One node's refinement settings (the scene's ``refine:`` keys, with its defaults)."""

    steps: int = _DEFAULT["steps"]
    text: float = _DEFAULT["text"]
    identity: float = _DEFAULT["identity"]
    tv: float = _DEFAULT["tv"]
    area: float = _DEFAULT["area"]
    hierarchy: float = _DEFAULT["hierarchy"]
    lr: float = _DEFAULT["lr"]

    @classmethod
    def of(cls, spec) -> RefineWeights:
        """From a :class:`hmedit.scene.spec.RefineSpec` (or anything with the same attributes)."""
        return cls(**{k: getattr(spec, k) for k in cls.__dataclass_fields__})


@dataclass
class Refined:
    masks: Tensor  # [K, H, W] intrinsic masks, refined rows replaced
    history: list[dict[str, float]] = field(default_factory=list)  # the loss terms at every step


def total_variation(m: Tensor, eps: float = 1e-6) -> Tensor:
    """Mean isotropic total variation of ``m`` [..., H, W]: sqrt((m[i+1,j] - m)^2 + (m[i,j+1] - m)^2)."""
    dy = torch.nn.functional.pad(m[..., 1:, :] - m[..., :-1, :], (0, 0, 0, 1))
    dx = torch.nn.functional.pad(m[..., :, 1:] - m[..., :, :-1], (0, 1, 0, 0))
    return (dx * dx + dy * dy + eps).sqrt().mean()


def active_weight(effective: Tensor, active: Tensor) -> Tensor:
    """[H, W]: the share of the active nodes (``active`` [K] bool) in the effective masks [K, H, W] at each
    pixel (as :func:`hmedit.sampling.plan.noise_levels` weighs them); 0 where no node acts."""
    total = effective.sum(0)
    share = (effective * active.to(effective)[:, None, None]).sum(0) / total.clamp(min=1e-6)
    return torch.where(total > 1e-6, share, torch.zeros_like(share)).clamp(0, 1)


def _logit(m: Tensor) -> Tensor:
    m = m.clamp(LOGIT_CLAMP, 1 - LOGIT_CLAMP)
    return torch.log(m) - torch.log1p(-m)


def refine_masks(
    masks: Tensor,
    parents: Sequence[int],
    strengths: Tensor,
    scheme: str,
    nodes: dict[int, RefineWeights],
    *,
    active: Tensor,
    edited: Tensor,
    source: Tensor,
    text_loss: Callable[[Tensor, Tensor, int], Tensor] | None = None,
    text_nodes: Sequence[int] | None = None,
    compose_kw: dict | None = None,
) -> Refined:
    """Refine the rows ``nodes`` (index -> weights) of the intrinsic masks ``masks`` [K, H, W].

    ``active`` [K] bool: the nodes that re-noise (noise > 0); ``edited`` and ``source`` [3, H, W] in 0..1;
    ``text_loss(image [1, 3, H, W], mask [H, W], k)`` -> a scalar, node k's CLIP loss (None: no text term),
    summed over ``text_nodes`` (default: the refined ones), as the paper's
    l_txt = -sum_k w_k s(phi_k(I), psi e^k) sums over every node: a parent's prompt in its own effective
    region also says where its child belongs. A refined node's term is weighted by its ``text``, any other
    node's by the refined nodes' mean ``text``.
    The masks are optimised with Adam (one optimiser; the steps and learning rate of the first refined node
    drive it, each node's weights weigh its own terms). Deterministic for the same inputs.
    """
    if not nodes:
        return Refined(masks)
    k_all = masks.shape[0]
    order = sorted(nodes)
    first = nodes[order[0]]
    logits = torch.stack([_logit(masks[k].float()) for k in order]).requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=first.lr)
    base = masks.detach().float()
    change = (edited.float() - source.float()).abs().mean(0)  # [H, W]
    kids = [[c for c in range(k_all) if parents[c] == k] for k in range(k_all)]
    history: list[dict[str, float]] = []
    scored = sorted(text_nodes) if text_nodes is not None else order
    mean_text = sum(nodes[k].text for k in order) / len(order)

    def current() -> Tensor:
        rows = {k: torch.sigmoid(logits[i]) for i, k in enumerate(order)}
        return torch.stack([rows.get(k, base[k]) for k in range(k_all)])

    for _ in range(first.steps):
        opt.zero_grad()
        m = current()
        eff = compose(m, parents, strengths, scheme, **(compose_kw or {}))
        keep = active_weight(eff, active)
        image = (keep * edited + (1 - keep) * source)[None]
        terms = {"text": 0.0, "identity": 0.0, "tv": 0.0, "area": 0.0, "hierarchy": 0.0}
        total = torch.zeros(())
        ident = ((1 - keep) * change).mean()
        for k in order:
            w = nodes[k]
            mk = m[k]
            parts = {
                "identity": ident,
                "tv": total_variation(mk),
                "area": mk.mean(),
                "hierarchy": _violation(m, k, parents, kids),
            }
            for name, value in parts.items():
                total = total + getattr(w, name) * value
                terms[name] += float(value.detach())
        for k in scored if text_loss is not None else ():
            weight = nodes[k].text if k in nodes else mean_text
            if weight > 0:
                value = text_loss(image, eff[k].clamp(0, 1), k).reshape(())
                total = total + weight * value
                terms["text"] += float(value.detach())
        total.backward()
        opt.step()
        history.append({"loss": float(total.detach()), **terms})
    with torch.no_grad():
        out = current()
        for k in order:  # undo the start's squeeze into [c, 1 - c]: a pixel left at the floor is exactly 0
            out[k] = ((out[k] - LOGIT_CLAMP) / (1 - 2 * LOGIT_CLAMP)).clamp(0, 1)
    return Refined(out.to(masks.dtype), history)


def _violation(m: Tensor, k: int, parents: Sequence[int], kids: list[list[int]]) -> Tensor:
    """Where node k is active and its parent is not, and where k's children are active and k is not."""
    out = torch.zeros(())
    if parents[k] >= 0:
        out = out + torch.relu(m[k] - m[parents[k]]).mean()
    for c in kids[k]:
        out = out + torch.relu(m[c] - m[k]).mean()
    return out
