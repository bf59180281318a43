"""Masks found while rendering, before the render proper: click masks grown during blended latent diffusion
(Click2Mask, Regev et al., arXiv:2409.08272) and drawn masks refined through the composition operator (paper
000 §5). The masks are pure tensor work (:mod:`hmedit.masks.click`, :mod:`hmedit.masks.refine`); this module
runs the model and the CLIP for them. :func:`search_masks` returns the nodes' new intrinsic masks, which the
render's plan then uses like any drawn mask (composed with their parents, pasted back outside).

Click nodes, parents first: for each of ``candidates`` noise draws, blended latent diffusion (Avrahami et al.,
"Blended Latent Diffusion", arXiv:2206.02779: at every step the latents outside the mask are the source's,
re-noised to the step) under the node's prompt, from the node's noise level, on DDIM. In the ``window`` of the
schedule, the predicted clean image x0 is decoded, blended with the source through the current mask, scored
by the masked CLIP loss against the prompt, and the potential moves along the loss's gradient near the mask's
boundary (:data:`ITERS` moves per step). A candidate stops at the window's end; the one with the lowest loss
there is kept, feathered by the node's ``feather``.

Refined nodes: one render with the masks as drawn (click masks grown), the refined nodes at half their noise,
gives the edit E; the refined nodes' masks are then optimised against E and the source
(:func:`hmedit.masks.refine.refine_masks`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from hmedit.masks.click import initial_potential, soft_mask, update_potential
from hmedit.masks.levels import downsample
from hmedit.masks.raster import build_canvas, feather, rasterize_scene, reference_size
from hmedit.masks.refine import RefineWeights, refine_masks
from hmedit.scene.spec import ClickMask, Scene

__all__ = ["MaskSearch", "grow_click", "needs_search", "search_masks", "search_size"]

CLICK_STREAM = 0xC11C  # candidate c's noise: seed + CLICK_STREAM + c, apart from the sampler's stream
ITERS = 4  # potential moves per diffusion step in the window (the x0 prediction is fixed within a step)
SHRINK = 0.15  # the boundary's contraction where the CLIP gradient is flat (update_potential's shrink)
PROPOSAL_NOISE = 0.5  # refinement: the edit E renders the refined nodes at this fraction of their noise
SMOOTH_PX = 2.0  # the CLIP gradient is blurred this much before it moves the boundary (patch-sized noise)
SNAP = 0.02  # a grown mask's values below this are 0 (rescaled): the sigmoid's tail would leak the edit


@dataclass
class MaskSearch:
    """The nodes' new intrinsic masks (index -> [H, W]), their masks before (``drawn``: a click's starting
    bump, a refined node's drawn mask) and what the search measured."""

    ids: list[str]
    masks: dict[int, Tensor] = field(default_factory=dict)
    drawn: dict[int, Tensor] = field(default_factory=dict)
    info: dict[str, dict] = field(default_factory=dict)

    def maps(self) -> dict[str, Tensor]:
        """Influence maps of the masks before the search: ``drawn/<id>``."""
        return {f"drawn/{self.ids[k]}": m.float() for k, m in self.drawn.items()}


def needs_search(scene: Scene) -> bool:
    return any(isinstance(f.node.mask, ClickMask) or f.node.refine is not None for f in scene.flat())


def search_size(width: int, height: int, native: int, multiple: int) -> tuple[int, int]:
    """Where the search runs: the render's size, or its native-size frame above the native size (blended
    latent diffusion at the model's own size; the masks are upsampled)."""
    if max(width, height) <= native:
        return width, height
    from hmedit.pipeline import coarse_size

    return coarse_size(width, height, native, multiple)


def search_masks(scene: Scene, model, settings, clip=None) -> MaskSearch:
    """Grow the click masks and refine the ``refine:`` masks of ``scene`` for a render with ``settings``
    (:class:`hmedit.pipeline.Settings`) on ``model``; ``clip``: (CLIPModel, CLIPProcessor), else the scene's
    ``clip`` loaded."""
    if clip is None:
        from hmedit.clip.loss import load

        clip = load(scene.clip, device=model.device, base_dir=scene.base_dir)
    s = settings
    align = model.vae_scale_factor * max(model.family.factors(model.unet))
    w, h = search_size(s.width, s.height, model.native_size, align)
    flat = scene.flat()
    ref = reference_size(scene, default=(s.width, s.height))
    ids, intrinsic = rasterize_scene(scene, w, h, ref_size=ref)
    canvas = build_canvas(scene, flat, w, h)
    assert canvas is not None  # the spec asks click and refine nodes for an init_image
    out = MaskSearch(ids)
    for f in flat:
        spec = f.node.mask
        if not isinstance(spec, ClickMask):
            continue
        out.drawn[f.index] = intrinsic[f.index].clone()
        limit = intrinsic[f.parent] if f.parent > 0 else None
        mask, info = grow_click(model, s, canvas, f.node, spec, f.noise, clip, limit)
        if f.node.feather > 0:
            mask = feather(mask, f.node.feather, scale=w / ref[0])
        intrinsic[f.index] = mask
        out.masks[f.index] = mask
        out.info[f.node.id] = info
    refined = {f.index: RefineWeights.of(f.node.refine) for f in flat if f.node.refine is not None}
    if refined:
        for k in refined:
            out.drawn.setdefault(k, intrinsic[k].clone())
        result = _refine(scene, model, s, (w, h), intrinsic, refined, canvas, clip, dict(out.masks))
        for k in refined:  # the optimised logits are speckled: the region is where they are above 0.5
            m = (result.masks[k] > 0.5).float()
            out.masks[k] = (
                feather(m, flat[k].node.feather, scale=w / ref[0]) if flat[k].node.feather > 0 else m
            )
            out.info[ids[k]] = {"loss_first": result.history[0], "loss_last": result.history[-1]}
    if (w, h) != (s.width, s.height):
        up = {k: _resize(m, s.width, s.height) for k, m in out.masks.items()}
        out.masks = up
        out.drawn = {k: _resize(m, s.width, s.height) for k, m in out.drawn.items()}
    return out


def _resize(m: Tensor, width: int, height: int) -> Tensor:
    return F.interpolate(m[None, None].float(), (height, width), mode="bilinear", align_corners=False)[0, 0]


# ---------------------------------------------------------------------------------------------------------
# Click nodes


def _encode(model, prompt: str, negative: str, guidance):
    """The UNet inputs of a single prompt (as a root-only scene): text embeddings, SDXL's pooled ones."""
    from hmedit.conditioning.encode import encode_scene

    fam = model.family
    cond = encode_scene(
        fam.text(model), [prompt], [negative], zero_empty_negative=fam.zero_empty_negative(model)
    )
    return guidance.select(cond.batch()[0]), (
        guidance.select(cond.pooled) if cond.pooled is not None else None
    )


def grow_click(
    model, settings, canvas: Tensor, node, spec: ClickMask, noise: float, clip, limit: Tensor | None
) -> tuple[Tensor, dict]:
    """The best of ``spec.candidates`` click masks [H, W] grown for ``node`` on ``canvas`` [1, 3, H, W] in
    [-1, 1], inside ``limit`` (the parent's mask; None: the frame), and what was measured."""
    from hmedit.clip.loss import MaskedClipLoss
    from hmedit.models.load import make_scheduler
    from hmedit.sampling.denoise import AddedConditioning, Denoiser, Guidance, TextEmbeddings

    s = settings
    dev, dt = model.device, model.dtype
    h, w = canvas.shape[-2:]
    guidance = Guidance(s.guidance)
    embeds, pooled = _encode(model, node.prompt, node.negative, guidance)
    parts: list = [TextEmbeddings(embeds.to(dev, dt))]
    if model.family.uses_time_ids:
        parts.append(AddedConditioning(model.family, pooled.to(dev, dt), (h, w), model.vae_scale_factor))
    loss = MaskedClipLoss(*clip, node.prompt)
    src_img = (canvas.float() / 2 + 0.5).clamp(0, 1)
    sf = model.vae.config.scaling_factor
    with torch.no_grad():
        source = model.vae.encode(canvas.to(dev, model.vae.dtype)).latent_dist.mean.to(dt) * sf
    lat = source.shape[-2:]
    start = initial_potential(spec.click, spec.radius, h, w)
    inside = torch.ones(h, w) if limit is None else limit.float()
    if min(int(s.steps * noise), s.steps) == 0:  # nothing is re-noised: the bump is all there is
        return soft_mask(start) * inside, {"scores": [], "best": 0, "moves": 0}
    results = []
    for c in range(spec.candidates):
        sched = make_scheduler("ddim", model.scheduler_config)
        sched.set_timesteps(s.steps, device=dev)
        t_start = max(s.steps - min(int(s.steps * noise), s.steps), 0)
        timesteps = sched.timesteps[t_start:]
        gen = torch.Generator("cpu").manual_seed((s.seed + CLICK_STREAM + c) % 2**63)
        eps_noise = torch.randn(source.shape, generator=gen).to(dev, dt)
        x = sched.add_noise(source, eps_noise, timesteps[:1]) if len(timesteps) else source
        den = Denoiser(model.unet, sched, parts, guidance)
        p, score, moves = start.clone(), None, 0
        for i, t in enumerate(timesteps):
            frac = (t_start + i) / s.steps
            if frac >= spec.window[1] and score is not None:
                break
            with torch.no_grad():
                out = sched.step(den(x, t, i), t, x)
            if frac >= spec.window[0] or i == len(timesteps) - 1:
                with torch.no_grad():
                    x0 = model.vae.decode(out.pred_original_sample.to(model.vae.dtype) / sf).sample
                x0 = (x0.float() / 2 + 0.5).clamp(0, 1).cpu()
                for _ in range(ITERS):
                    m = (soft_mask(p) * inside).requires_grad_(True)
                    value = loss(m * x0 + (1 - m) * src_img, m[None])[0]
                    (grad,) = torch.autograd.grad(value, m)
                    p = update_potential(p, grad, step=spec.step, shrink=SHRINK, smooth=SMOOTH_PX)
                    moves += 1
                score = float(value.detach())
            m_lat = downsample((soft_mask(p) * inside)[None], tuple(lat), "area").to(dev, dt)
            if i + 1 < len(timesteps):
                bg = sched.add_noise(source, eps_noise, timesteps[i + 1 : i + 2])
            else:
                bg = source
            x = m_lat * out.prev_sample + (1 - m_lat) * bg
        final = soft_mask(p) * inside
        final = ((final - SNAP) / (1 - 2 * SNAP)).clamp(0, 1)
        with torch.no_grad():
            score = float(loss(x0 * final + (1 - final) * src_img, final[None])[0])
        results.append((score, c, final, moves))
    best = min(results, key=lambda r: (r[0], r[1]))
    info = {
        "scores": [round(r[0], 5) for r in results],
        "best": best[1],
        "moves": best[3],
        "area": round(float(best[2].mean()), 5),
    }
    return best[2], info


# ---------------------------------------------------------------------------------------------------------
# Refinement


def _proposal(scene: Scene, nodes) -> Scene:
    """The scene the edit E is rendered from: the refined nodes at PROPOSAL_NOISE of their noise, so that E
    keeps the source's layout and differs from it where the prompt changes something (on the toy model a
    region at noise 0.8 is repainted whole, and E - S would only repeat the drawn mask)."""
    flat = scene.flat()
    ids = {flat[k].node.id: flat[k].noise for k in nodes}

    def visit(node):
        update: dict = {"children": tuple(visit(c) for c in node.children)}
        if node.id in ids:
            update["noise"] = ids[node.id] * PROPOSAL_NOISE
        return node.model_copy(update=update)

    return scene.model_copy(update={"root": visit(scene.root)})


def _refine(scene: Scene, model, s, size, intrinsic: Tensor, nodes, canvas: Tensor, clip, grown: dict):
    """One render with the current masks (the edit E), then the refined nodes' masks optimised against it."""
    from hmedit.clip.loss import MaskedClipLoss
    from hmedit.pipeline import render

    w, h = size
    flat = scene.flat()
    small = replace(s, width=w, height=h, tiling=None, record_attention=False)
    edit = render(_proposal(scene, nodes), model, small, masks=grown)
    edited = torch.from_numpy(edit.image).permute(2, 0, 1).float() / 255
    source = (canvas[0].float() / 2 + 0.5).clamp(0, 1)
    # only the refined nodes' prompts: with the root's as well (the paper sums l_txt over every node), the
    # toy root's "a yellow background" pulled every other object of the picture into the refined mask
    scored = sorted(nodes)
    losses = {k: MaskedClipLoss(*clip, flat[k].node.prompt) for k in scored}

    def text_loss(image: Tensor, mask: Tensor, k: int) -> Tensor:
        return losses[k](image, mask[None])[0]

    parents = [f.parent for f in flat]
    strengths = torch.tensor([float(f.node.strength) for f in flat])
    active = torch.tensor([f.noise > 0 for f in flat])
    kw = {"gamma": float(scene.depth_gamma), "node_schemes": [f.node.composition for f in flat]}
    return refine_masks(
        intrinsic,
        parents,
        strengths,
        scene.composition,
        nodes,
        active=active,
        edited=edited,
        source=source,
        text_loss=text_loss,
        text_nodes=scored,
        compose_kw=kw,
    )
