"""Edit pairs (MRGD, Li et al., "Multi-Region Text-Driven Manipulation of Diffusion Imagery", AAAI 2024,
Alg. 1 and eq. 5): a scene's ``edits`` rendered beside it in one batch from the same latents.

The UNet batch holds C copies of the image, the source (copy 0) and one per edit, each with its own nodes,
prompts and masks: [uncond × C, cond × C] with guidance. :class:`Copies` is the one part that stacks the
copies' inputs (each copy's own :class:`~hmedit.sampling.denoise.TextEmbeddings`, added conditioning and
:class:`~hmedit.sampling.denoise.RegionalAttention`), padding their tokens to one length (padding is
invalid: left out of the softmax). In the first ``inject`` fraction of the steps a target's tokens of the
nodes its edit does not touch take the source's cross-attention probabilities (prompt-to-prompt: Hertz et
al., "Prompt-to-Prompt Image Editing with Cross Attention Control", arXiv:2208.01626, on the conditional
branch, without renormalising); the edited or added node's tokens keep their own (:func:`injection_map`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import Tensor

from hmedit.attention.processor import RegionCall
from hmedit.conditioning.encode import Branch, Conditioning
from hmedit.sampling.denoise import (
    Denoiser,
    Guidance,
    RegionalAttention,
    TextEmbeddings,
    conditioning_parts,
    merge,
    region_part,
)
from hmedit.sampling.plan import Plan
from hmedit.scene.spec import EditSpec


def root_tokens(cond: Conditioning) -> int:
    """How many tokens the root's window holds (they come first, before the nodes' words)."""
    return min((a for a, _ in cond.ranges.values()), default=len(cond.cond))


def injection_map(source: Plan, src: Conditioning, target: Plan, tgt: Conditioning, edit: EditSpec) -> Tensor:
    """[T_target] per conditional token of the target, the source token whose attention it takes (-1: its
    own): the tokens of every node the edit does not touch (the root's window included), matched by node id
    and position; the edited or added node's tokens are its own."""
    out = torch.full((len(tgt.cond),), -1, dtype=torch.long)
    src_index = {nid: k for k, nid in enumerate(source.ids)}
    for k, nid in enumerate(target.ids):
        if nid == edit.touched or nid not in src_index:
            continue
        ks = src_index[nid]
        if k == 0:
            a_s, b_s, a_t, b_t = 0, root_tokens(src), 0, root_tokens(tgt)
        elif k in tgt.ranges and ks in src.ranges:
            (a_s, b_s), (a_t, b_t) = src.ranges[ks], tgt.ranges[k]
        else:
            continue
        if b_s - a_s == b_t - a_t:
            out[a_t:b_t] = torch.arange(a_s, b_s)
    return out


def source_uncond(start_cond: Conditioning, source: Plan, target: Plan, tgt: Conditioning):
    """A target's conditioning with the source's unconditional branch (negative-prompt and null-text
    inversion: the source prompts), its owners renamed to the target's nodes by id; tokens of nodes the
    target lacks are dropped. Returns the conditioning and the kept token mask (for per-step embeddings)."""
    rename = {k: (target.ids.index(nid) if nid in target.ids else None) for k, nid in enumerate(source.ids)}
    owner = start_cond.uncond.owner
    new = torch.tensor(
        [o if o < 0 else (rename[int(o)] if rename[int(o)] is not None else -2) for o in owner]
    )
    keep = new > -2
    pooled = tgt.pooled
    if pooled is not None and start_cond.pooled is not None:
        pooled = torch.stack([start_cond.pooled[0], tgt.pooled[1]])
    branch = Branch(start_cond.uncond.embeds[keep], new[keep].to(owner.dtype))
    return replace(tgt, uncond=branch, pooled=pooled), keep


def _pad_tokens(e: Tensor, t: int) -> Tensor:
    return (
        torch.cat([e, e.new_zeros(e.shape[0], t - e.shape[1], *e.shape[2:])], dim=1) if e.shape[1] < t else e
    )


def _pad(x: Tensor, size: int, value, dim: int = -1) -> Tensor:
    missing = size - x.shape[dim]
    if missing <= 0:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([x, x.new_full(shape, value)], dim=dim)


def _rows(xs: Sequence[Tensor]) -> Tensor:
    """Per-copy [B, ...] tensors as one branch-major batch [B·C, ...] (uncond of every copy, then cond)."""
    return torch.stack(list(xs), dim=1).flatten(0, 1)


class Copies:
    """The one part of an edit pair's denoiser: the copies' inputs stacked (see the module docstring).
    ``parts[c]``: copy c's parts but its regional attention; ``regions[c]``: its regional attention (built
    for every copy, recording off: the pair records here, per copy); ``inject[c]``: its injection map
    ([T_c], None for the source) and ``until[c]`` the fraction of the steps it applies in."""

    def __init__(
        self,
        parts: Sequence[Sequence],
        regions: Sequence[RegionalAttention],
        inject: Sequence[Tensor | None],
        until: Sequence[float],
        n_run: int,
        *,
        regional: bool,
        record: bool,
        device,
    ) -> None:
        self.parts, self.regions = [list(p) for p in parts], list(regions)
        self.inject, self.until, self.n_run = list(inject), list(until), n_run
        self.regional, self.device = regional, device
        self.k = max(len(r.plan.ids) for r in regions)
        self.record = (
            {n: torch.zeros(len(regions), self.k, n, device=device) for n in regions[0].masks}
            if record
            else None
        )
        self.record_count: dict[int, int] = {}

    def injecting(self, i: int) -> bool:
        return any(m is not None and i < u * self.n_run for m, u in zip(self.inject, self.until))

    def inputs(self, i: int, windows, n: int) -> dict:
        dicts = []
        for ps in self.parts:
            d: dict = {}
            for p in ps:
                merge(d, p.inputs(i, None, 1))
            dicts.append(d)
        calls = [r.call(i, None) for r in self.regions]
        t = max(c.owners.shape[1] for c in calls)
        out: dict = {
            "encoder_hidden_states": _rows([_pad_tokens(d["encoder_hidden_states"], t) for d in dicts])
        }
        if "added_cond_kwargs" in dicts[0]:
            out["added_cond_kwargs"] = {
                k: _rows([d["added_cond_kwargs"][k] for d in dicts]) for k in dicts[0]["added_cond_kwargs"]
            }
        inject = self._inject(i, t)
        if inject is not None or self.regional or len({c.owners.shape[1] for c in calls}) > 1:
            out["cross_attention_kwargs"] = {"region": self._combine(calls, t, inject)}
        return out

    def _inject(self, i: int, t: int) -> Tensor | None:
        if not self.injecting(i):
            return None
        rows = [
            _pad(m, t, -1) if m is not None and i < u * self.n_run else torch.full((t,), -1, dtype=torch.long)
            for m, u in zip(self.inject, self.until)
        ]
        return torch.stack(rows).to(self.device)

    def _combine(self, calls: list[RegionCall], t: int, inject: Tensor | None) -> RegionCall:
        k = self.k

        def per_copy(get, size, value, dim=-1):
            return torch.stack([_pad(get(c), size, value, dim) for c in calls])

        masks = {n: torch.cat([_pad(c.masks[n], k, 0.0, 1) for c in calls]) for n in calls[0].masks}
        owner = [r.record_owner for r in self.regions]
        return RegionCall(
            masks,
            {n: per_copy(lambda c, n=n: c.active[n], k, False) for n in calls[0].active},
            torch.stack([_pad(c.owners, t, -1) for c in calls], dim=1),
            torch.stack([_pad(c.valid, t, False) for c in calls], dim=1),
            per_copy(lambda c: c.pos, k, 0.0),
            per_copy(lambda c: c.neg, k, 0.0),
            calls[0].y_sigma,
            record=self.record,
            record_owner=torch.stack([_pad(o, t, -1) for o in owner]),
            record_count=self.record_count,
            inject=inject,
        )

    def attention_maps(self, c: int) -> dict[int, Tensor] | None:
        """Copy ``c``'s mean recorded attention mass per level: query length -> [K_c, N]."""
        if self.record is None:
            return None
        kc = len(self.regions[c].plan.ids)
        return {n: self.record[n][c, :kc] / max(self.record_count.get(n, 0), 1) for n in self.record}


def edited_region(regions: Sequence[RegionalAttention], touched: str, size: tuple[int, int]) -> Tensor:
    """[h, w] the region of node ``touched`` in the source or a target plan (``regions``' plans), max-pooled
    to ``size`` and grown by one position."""
    import torch.nn.functional as F

    from hmedit.masks.levels import downsample

    edited = torch.zeros(regions[0].plan.intrinsic.shape[-2:])
    for region in regions:
        plan = region.plan
        if touched in plan.ids:
            edited = torch.maximum(edited, plan.intrinsic[plan.ids.index(touched)].float())
    m = downsample(edited, size, "max")[None, None]
    return F.max_pool2d(m, 3, stride=1, padding=1)[0, 0]


def blend_masks(regions: Sequence[RegionalAttention], touched: Sequence[str | None]) -> Tensor:
    """[C, h, w] True where copy c's latents are blended to the source's: outside its edited region (the
    source: nowhere)."""
    src = regions[0].plan
    rows = [torch.zeros(src.latent, dtype=torch.bool)]
    for c in range(1, len(regions)):
        rows.append(edited_region([regions[0], regions[c]], str(touched[c]), src.latent) <= 0)
    return torch.stack(rows)


class StackedHolds:
    """Per-node noise levels of each copy (its own plan's), applied to its row of the batch; then, with
    ``blend``, local blending (prompt-to-prompt's: Hertz et al. 2022, §3.2; MRGD eq. 4 as a hard
    constraint): for copy c, in the first ``until[c]`` fraction of the steps, its latents outside the
    region its edit touches (``keep[c]`` [h, w], True) are the source's."""

    def __init__(self, holds: Sequence, keep: Tensor | None = None, until: Sequence[float] = (), n: int = 0):
        self.holds, self.keep, self.until, self.n = list(holds), keep, list(until), n

    def after_step(self, x: Tensor, i: int) -> Tensor:
        x = self._holds(x, i)
        if self.keep is None or not any(i < u * self.n for u in self.until):
            return x
        on = torch.tensor([i < u * self.n for u in self.until], device=x.device)
        keep = (self.keep.to(x.device) & on[:, None, None])[:, None]  # [C, 1, h, w]
        return torch.where(keep, x[:1], x)

    def held_after(self, i: int) -> Tensor | None:
        """[C, 1, h, w] True where copy c's result of step ``i`` is replaced by its held latents (None: no
        copy holds any)."""
        rows = [h.held_after(i) if h is not None else None for h in self.holds]
        ref = next((r for r in rows if r is not None), None)
        if ref is None:
            return None
        return torch.stack([r if r is not None else torch.zeros_like(ref) for r in rows])[:, None]

    def _holds(self, x: Tensor, i: int) -> Tensor:
        if all(h is None for h in self.holds):
            return x
        return torch.cat(
            [
                h.after_step(x[c : c + 1], i) if h is not None else x[c : c + 1]
                for c, h in enumerate(self.holds)
            ]
        )


def copy_parts(
    model,
    plans: Sequence[Plan],
    conds: Sequence[Conditioning],
    guidance: Guidance,
    sched,
    timesteps,
    texts: Sequence[TextEmbeddings | None] | None = None,
    branches: Sequence[int] | None = None,
) -> tuple[list[list], list[RegionalAttention]]:
    """:class:`Copies`' ``parts`` and ``regions``: each copy's parts but its regional attention, and its
    regional attention (built for every copy, recording off); ``texts``: a copy's own embeddings (None: its
    conditioning's), ``branches``: the guidance branches the batch holds (None: as ``guidance`` needs)."""
    parts, regions = [], []
    for k, (p, c) in enumerate(zip(plans, conds)):
        text = texts[k] if texts is not None else None
        ps = conditioning_parts(model, p, c, guidance, sched, timesteps, branches=branches, text=text)
        region = region_part(ps) or RegionalAttention(
            p,
            c,
            guidance,
            sched,
            timesteps,
            device=model.device,
            dtype=model.dtype,
            record=False,
            branches=branches,
        )
        regions.append(region)
        parts.append([q for q in ps if q is not region])
    return parts, regions


def edit_guidance(den, model, plans: Sequence[Plan], conds: Sequence[Conditioning], regional: bool):
    """The pair's denoiser ``den`` (sampling from a negative-prompt or null-text inversion) with each copy's
    edited nodes guided against its own negatives (:class:`hmedit.sampling.inversion.EditGuidance`), the
    extra branch a :class:`Copies` of every copy's negatives; ``den`` itself when no copy has an edited node
    or guidance is off."""
    from hmedit.sampling.inversion import EditGuidance, edit_mask

    masks = [edit_mask(p) for p in plans]
    if all(m is None for m in masks) or not den.guidance.on:
        return den
    one, sched = Guidance(1.0), den.scheduler
    parts, regions = copy_parts(model, plans, conds, one, sched, sched.timesteps, branches=(0,))
    n = len(plans)
    null = Copies(
        parts,
        regions,
        [None] * n,
        [0.0] * n,
        len(sched.timesteps),
        regional=regional,
        record=False,
        device=model.device,
    )
    zero = torch.zeros(1, 1, *plans[0].latent)
    mask = torch.cat([m if m is not None else zero for m in masks])
    return EditGuidance(den, Denoiser(model.unet, sched, [null], one), mask)


def copy_text(
    cond: Conditioning,
    guidance: Guidance,
    uncond_steps: Tensor | None,
    t_start: int,
    steps: int,
    device,
    dtype,
) -> TextEmbeddings | None:
    """Null-text's per-step embeddings for a copy (``uncond_steps`` [n, T_u, D] in its layout), else None
    (the copy's own embeddings)."""
    if uncond_steps is None:
        return None
    from hmedit.sampling.inversion import with_uncond

    per = [
        guidance.select(with_uncond(cond, uncond_steps[t_start + i]).batch()[0]).to(device, dtype)
        for i in range(steps)
    ]
    return TextEmbeddings(per_step=lambda i: per[i])
