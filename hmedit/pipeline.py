"""Render one scene with one seed: plan -> conditioning -> sampler -> decode -> paste-back -> influence maps.

With a root-only scene this is, step for step, the family's diffusers pipeline: StableDiffusion(XL)Pipeline
(no init image) or StableDiffusion(XL)Img2ImgPipeline (init image, strength = the root's noise): same random
draws in the same order, same scheduler calls, same decoding. Every extra feature is measured against that
baseline.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hmedit.attention.processor import regional_attention
from hmedit.conditioning.encode import encode_scene
from hmedit.control.residuals import has_controls, make_controls
from hmedit.errors import HmeditError
from hmedit.masks.attention import Probe, attention_nodes
from hmedit.models.load import Model, make_scheduler
from hmedit.sampling import vae as tiled_vae
from hmedit.sampling.denoise import (
    Denoiser,
    Guidance,
    NoiseHolds,
    RegionalAttention,
    conditioning_parts,
    region_part,
)
from hmedit.sampling.loop import sample, step_kwargs
from hmedit.sampling.plan import Plan, build_plan, noise_steps
from hmedit.sampling.tiled import Tiler, TileSettings, resolve_tiling
from hmedit.scene.limits import check_render_size
from hmedit.scene.presets import Preset
from hmedit.scene.settings import Request
from hmedit.scene.spec import Scene

OFFSET_STREAM = 0x7113  # the window offsets' random stream (seed + this), apart from the sampler's


@dataclass
class Settings:
    """Every setting of a render after the preset, the scene and the overrides (kept in the provenance)."""

    seed: int
    width: int
    height: int
    steps: int
    guidance: float
    scheduler: str
    record_attention: bool = True
    tiling: TileSettings | None = None
    preset: str = ""
    decode_tile: int = tiled_vae.DECODE_TILE  # latent px
    encode_tiled_above: int = 1024  # image px: init images larger than this are VAE-encoded in tiles

    @classmethod
    def of(
        cls,
        scene: Scene,
        model: Model,
        seed: int | None = None,
        *,
        steps: int | None = None,
        guidance: float | None = None,
        scheduler: str | None = None,
        size: tuple[int, int] | None = None,
        record: bool = True,
        preset: str | None = None,
    ) -> Settings:
        """The settings one seed of ``scene`` renders with on ``model``, planned as ``hmedit render`` plans
        them (:func:`hmedit.scene.settings.plan_requests`): the scene's values, else its preset's,
        overridden by these."""
        from hmedit.masks.raster import reference_size
        from hmedit.models.load import default_preset
        from hmedit.scene.settings import Overrides, plan_requests

        overrides = Overrides(seed, steps, guidance, scheduler, size, preset, record)
        found, reqs = plan_requests(
            scene, overrides, default_preset(model.ref), image_size=reference_size(scene)
        )
        return cls.from_request(scene, model, reqs[0], found)

    @classmethod
    def from_request(cls, scene: Scene, model: Model, request: Request, preset: Preset) -> Settings:
        """The settings of ``request`` on ``model``: a size left to the model is its native size, and the
        tiling follows from the size (latent px, aligned to the UNet's coarsest level)."""
        w, h = request.size or (model.native_size, model.native_size)
        # the memory plan, before anything is allocated (the size may come from --size or the model)
        tiled_ok = scene.tiling is None or scene.tiling.enabled
        check_render_size(w, h, len(scene.flat()), tiled=tiled_ok, field="size", file=scene.source)
        f = model.vae_scale_factor
        if w % f or h % f:
            raise HmeditError(
                f"size {w}x{h} is not a multiple of {f}", field="size", hint=f"use {w // f * f}x{h // f * f}"
            )
        tiling = resolve_tiling(
            scene.tiling,
            (int(h) // f, int(w) // f),
            model.native_size // f,
            max(model.family.factors(model.unet)),
            preset.tiling,
            from_noise=scene.init_image is None and not any(f.node.layer is not None for f in scene.flat()),
        )
        return cls(
            request.seed,
            int(w),
            int(h),
            request.steps,
            request.guidance,
            request.scheduler,
            request.record_attention,
            tiling,
            preset.name,
            preset.vae.decode_tile_on(model.device.type),
            preset.vae.encode_tiled_above,
        )


@dataclass
class RenderResult:
    image: np.ndarray  # uint8 [H, W, 3]
    settings: Settings
    maps: dict[str, Tensor]  # "intrinsic/<id>", "effective/<id>", "attention/<id>": float32 [H, W]
    timings: dict[str, float] = field(default_factory=dict)
    plan: Plan | None = None
    stats: dict[str, int] = field(default_factory=dict)  # tiled: windows denoised / scheduled
    probes: dict = field(default_factory=dict)  # Probe -> its attention map [H, W], normalised to 0..1
    masks: dict[str, dict] = field(default_factory=dict)  # click / refine nodes: what their search measured
    edits: dict[str, RenderResult] = field(default_factory=dict)  # edit id -> the target (scene's edits)


def _randn(shape, generator, device, dtype) -> Tensor:
    from diffusers.utils.torch_utils import randn_tensor

    return randn_tensor(shape, generator=generator, device=device, dtype=dtype)


def render(
    scene: Scene,
    model: Model,
    settings: Settings,
    progress=None,
    *,
    inversions=None,
    on_invert=None,
    probes: Sequence[Probe] = (),
    words: bool = False,
    masks: dict[int, Tensor] | None = None,
    keep_words: dict[str, list[str]] | None = None,
) -> RenderResult:
    """Render ``scene`` on ``model``. ``progress(i, n)`` is called after each sampling step. With the scene's
    ``inversion``, the init image is inverted first (or taken from ``inversions``, an
    :class:`~hmedit.sampling.inversion.InversionCache`; None: the default one), ``on_invert(i, n)`` after
    each inversion step. ``probes``: attention maps to read (:class:`~hmedit.masks.attention.Probe`), into
    the result's ``probes``; ``words``: also every word of every node's prompt (the words the tokenizer
    finds as tokens of the prompt). Nodes with ``mask: {attention: ...}`` get their masks from a first
    pass; so do nodes with ``keywords`` their keywords (:func:`node_keywords`). ``keep_words``: node id ->
    the words of its prompt that keep the regional bias (its other tokens act globally), instead of
    selecting them. Click masks are grown and ``refine:`` masks refined first
    (:mod:`hmedit.sampling.mask_search`), unless ``masks`` (node index -> [H, W]) gives them."""
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        if model.device.type == "cuda":  # kernels run asynchronously: time their end, not their launch
            torch.cuda.synchronize(model.device)
        now = time.perf_counter()
        timings[name] = round(now - clock, 4)
        clock = now

    s = settings
    if scene.inversion != "none" and s.scheduler != "ddim":
        s = replace(s, scheduler="ddim")  # sampling from an inversion: DDIM, the inversion's exact reverse
    if scene.edits:
        return render_edits(scene, model, s, progress, inversions=inversions, on_invert=on_invert)
    fam = model.family
    search = None
    if masks is None:
        from hmedit.sampling.mask_search import needs_search, search_masks

        if needs_search(scene):
            search = search_masks(scene, model, s)
            masks = search.masks
            lap("masks")
    refine, noise_scale = None, 1.0
    if s.tiling is not None and s.tiling.coarse:
        refine, coarse_words = coarse_pass(scene, model, s, masks, keep_words)
        if keep_words is None:  # the coarse render selected them: no second (tiled) keyword pass
            keep_words = coarse_words
        noise_scale = s.tiling.refine
        lap("coarse")
    given = None
    if attention_nodes(scene):
        given, first_maps = attention_masks(scene, model, s, progress, inversions=inversions)
        lap("attention")
    if keep_words is None and any(n.keywords is not None for n in scene.root.walk()):
        keep_words = node_keywords(scene, model, s, progress, inversions=inversions)
        lap("keywords")
    plan = plan_of(scene, model, s, refine=refine, noise_scale=noise_scale, given=given, masks=masks)
    lap("plan")
    cond = encode(model, plan)
    if keep_words:
        cond = keep_regional(cond, plan, fam.text(model), keep_words)
    lap("encode")
    sched, gen, timesteps, t_start, latents, source, noise = initial_latents(model, s, plan, plan.max_noise)
    lap("prepare")
    inverted = None
    if scene.inversion != "none" and plan.canvas is not None:
        from hmedit.sampling.inversion import prepare

        inverted = prepare(model, plan, s, cond, sched, timesteps, t_start, inversions, on_invert)
        own_cond, (latents, cond) = cond, (inverted.latents, inverted.cond)
        lap("invert")
    guidance = Guidance(s.guidance)
    if inverted is not None:  # per-step embeddings (null_text); the inversion's fixed windows and holds
        text, tiler, holds = inverted.text, inverted.tiler, inverted.holds
    else:
        text = None
        tiler = (
            Tiler(s.tiling, plan, torch.Generator("cpu").manual_seed(s.seed + OFFSET_STREAM))
            if s.tiling is not None
            else None
        )
        holds = None
        if source is not None and plan.noise_map is not None:
            holds = NoiseHolds(plan, sched, timesteps, source, noise, t_start, s.steps)
    region = None
    probe_tokens = None
    if words:
        probes = [*probes, *word_probes(scene)]
    if probes:
        if tiler is not None and any(p.refine == "self" for p in probes):
            raise HmeditError(
                "sharpening attention maps with self-attention (refine: self) needs an untiled render",
                file=scene.source,
                field="size",
                hint="render at the model's native size, or set tiling: off, or leave refine out",
            )
        probe_tokens = probe_positions(fam.text(model), plan, cond, probes, strict=not words)
        probes = [p for p in probes if p in probe_tokens]
    controls = None
    if scene.regions == "fusion":
        from hmedit.sampling.tiled import fusion_denoiser

        check_fusion(scene, tiler, probe_tokens is not None)
        den = fusion_denoiser(model, plan, guidance, sched, timesteps, holds=holds)
    else:
        regional = plan.regional and cond.regional
        kw: dict = {}
        if probe_tokens is not None:
            tokens = sorted({i for idx in probe_tokens.values() for i in idx})
            kw = dict(
                tokens=torch.tensor(tokens, dtype=torch.long),
                self_level=self_level(plan, fam.cross_attention_factors(model.unet))
                if any(p.refine == "self" for p in probes)
                else None,
                record_only=not regional,
            )
        parts = conditioning_parts(
            model,
            plan,
            cond,
            guidance,
            sched,
            timesteps,
            text=text,
            record=s.record_attention or probe_tokens is not None,
            tiler=tiler,
            region=regional or probe_tokens is not None,
            **kw,
        )
        region = region_part(parts)
        if has_controls(scene):
            controls = make_controls(scene, plan, model, guidance, len(timesteps))
            parts.append(controls)
        den = Denoiser(model.unet, sched, parts, guidance, tiler=tiler, holds=holds)
        if inverted is not None and inverted.inversion.method in ("negative_prompt", "null_text"):
            from hmedit.sampling.inversion import edit_guidance

            extra = make_controls(scene, plan, model, Guidance(1.0), len(timesteps)) if controls else None
            den = edit_guidance(den, model, plan, own_cond, extra)
    with torch.no_grad(), regional_attention(model.unet), controls.attention() if controls else nullcontext():
        latents = sample(den, sched, latents, timesteps, step_kwargs(sched, gen), progress)
    lap("sample")
    image = decode(model, s, plan, latents)
    lap("decode")
    maps = influence_maps(plan, region.attention_maps() if region is not None else None)
    if controls is not None:
        maps.update(controls.maps())
    if given is not None:
        maps.update(first_maps)
    if search is not None:
        maps.update(search.maps())
    read = (
        read_probes(region, plan, probe_tokens, probes, image, attention_cell(model))
        if probe_tokens is not None
        else {}
    )
    lap("influence")
    stats = {"windows_run": tiler.windows_run, "windows_total": tiler.windows_total} if tiler else {}
    if keep_words:
        stats["keywords"] = {k: list(v) for k, v in keep_words.items()}
    return RenderResult(
        image, s, maps, timings, plan, stats, probes=read, masks=search.info if search is not None else {}
    )


def word_probes(scene: Scene) -> list[Probe]:
    """One probe per word of every node's prompt (``hmedit render --words``)."""
    from hmedit.scene.spec import prompt_words

    return [Probe(f.node.id, w) for f in scene.flat() for w in dict.fromkeys(prompt_words(f.node.prompt))]


def self_level(plan: Plan, cross_factors: list[int]) -> int | None:
    """The query length at which self-attention is recorded for sharpening: the finest cross-attention level
    with at most SELF_MAX_QUERIES queries."""
    from hmedit.masks.attention import SELF_MAX_QUERIES
    from hmedit.masks.levels import level_sizes

    sizes = level_sizes(plan.latent, cross_factors)
    ns = [h * w for h, w in sizes.values() if h * w <= SELF_MAX_QUERIES]
    return max(ns) if ns else None


def probe_positions(
    text, plan: Plan, cond, probes: Sequence[Probe], *, strict: bool = True
) -> dict[Probe, list[int]]:
    """Each probe's positions in the cond token sequence: the node's word tokens (all of them, or those of
    the probe's word). A word the tokenizer does not find is an error (``strict``), else left out."""
    from hmedit.masks.attention import phrase_tokens, token_position

    def tokenize(t: str) -> list[int]:
        return list(text.word_ids(t)[0])

    out: dict[Probe, list[int]] = {}
    for p in probes:
        if p.node not in plan.ids:
            raise HmeditError(f"no node has id {p.node!r}", file=plan.scene.source, hint=f"ids: {plan.ids}")
        k = plan.ids.index(p.node)
        prompt = plan.flat[k].node.prompt
        where = plan.scene.where(f"{plan.flat[k].path}.prompt")
        if p.word is None:
            idx = list(range(len(tokenize(prompt))))
        else:
            idx = phrase_tokens(prompt, p.word, tokenize) or []
        if k == 0:
            idx = [i for i in idx if i < cond.root_words or len(cond.cond) > text.window]
        if not idx or (k > 0 and k not in cond.ranges):
            if not strict:
                continue
            what = f"the word {p.word!r}" if p.word else "a word"
            raise HmeditError(
                f"the model's tokenizer finds {what} in no token of the prompt of {p.node!r}",
                **where,
                hint="attention maps need the words in the node's prompt",
            )
        start = cond.ranges.get(k, (0, 0))[0]
        out[p] = [token_position(i, root=k == 0, start=start, window=text.window) for i in idx]
    return out


def attention_cell(model: Model) -> int:
    """The side in pixels of one cell of the finest cross-attention level: the window of refine: image and
    threshold: auto (8 on SD1/SD2, 16 on SDXL)."""
    return int(model.vae_scale_factor * min(model.family.cross_attention_factors(model.unet)))


def image_guide(image) -> Tensor:
    """A rendered image (uint8 [H, W, 3]) as a guided filter's guide [3, H, W] in 0..1."""
    return torch.as_tensor(np.asarray(image)).permute(2, 0, 1).float() / 255


def read_probes(
    region: RegionalAttention,
    plan: Plan,
    positions: dict,
    probes: Sequence[Probe],
    image,
    cell: int,
) -> dict:
    """The probes' maps [H, W] from the recorded attention (:func:`hmedit.masks.attention.aggregate`, then
    :func:`~hmedit.masks.attention.sharpen` for refine: self, or
    :func:`~hmedit.masks.attention.guided_filter` with the rendered ``image`` over ``cell`` px for refine:
    image), normalised to 0..1. The coarsest level is left out, as DAAM leaves out SD's 8 x 8 (on the toy
    model's 4 x 4 it costs 0.04-0.08 mIoU in ``hmedit bench attention-masks``)."""
    from hmedit.masks.attention import aggregate, guided_filter, level_shape, normalise, sharpen

    guide = image_guide(image) if any(p.refine == "image" for p in probes) else None
    tokens = sorted({i for idx in positions.values() for i in idx})
    row = {t: j for j, t in enumerate(tokens)}
    levels = region.token_maps()
    size = (plan.height, plan.width)
    skip = [min(levels)] if len(levels) > 2 else []
    full = aggregate(levels, plan.latent, size, skip=skip)
    out = {}
    for p in probes:
        rows = [row[i] for i in positions[p]]
        if p.refine == "self" and region.self_record is not None:
            ((n, attn),) = region.self_attention().items()
            shape = level_shape(n, plan.latent)
            small = aggregate(levels, plan.latent, shape, skip=skip)[rows].sum(0, keepdim=True)
            m = sharpen(small, attn.cpu())
            m = F.interpolate(m[None], size, mode="bicubic", align_corners=False)[0, 0].clamp(min=0)
        else:
            m = full[rows].sum(0)
        m = normalise(m.cpu())
        if guide is not None and p.refine == "image":
            m = normalise(guided_filter(m, guide, cell))
        out[p] = m
    return out


def attention_masks(
    scene: Scene, model: Model, s: Settings, progress=None, *, inversions=None
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The masks of the scene's attention-mask nodes, by id, from a first pass that renders the scene without
    them (:func:`hmedit.masks.attention.first_pass_scene`), thresholded; and the first pass's maps
    ("source/<id>": the normalised map each was thresholded from)."""
    from hmedit.masks.attention import first_pass_scene

    nodes = attention_nodes(scene)
    sharp = [n for n in nodes if n.mask.attention.refine == "self"]
    if s.tiling is not None and sharp:
        path = next(f.path for f in scene.flat() if f.node.id == sharp[0].id)
        raise HmeditError(
            "refine: self (self-attention sharpening) needs an untiled render",
            **scene.where(f"{path}.mask.attention.refine"),
            hint="render at the model's native size, or set tiling: off, or leave refine out",
        )
    wanted = {n.id: Probe(n.mask.attention.of, n.mask.attention.word, n.mask.attention.refine) for n in nodes}
    first = render(
        first_pass_scene(scene),
        model,
        replace(s, record_attention=False),
        progress,
        inversions=inversions,
        probes=list(dict.fromkeys(wanted.values())),
    )
    masks, maps = {}, {}
    for n in nodes:
        m = first.probes[wanted[n.id]]
        masks[n.id] = cut(m, n.mask.attention.threshold, first.image, attention_cell(model))
        maps[f"source/{n.id}"] = m
    return masks, maps


def cut(m: Tensor, t: float | str, image, cell: int) -> Tensor:
    """A normalised attention map thresholded at ``t``, or at the threshold ``auto`` picks against the
    rendered ``image`` (:func:`hmedit.masks.attention.auto_threshold`): float 0/1 [H, W]."""
    from hmedit.masks.attention import auto_threshold, threshold

    if t == "auto":
        return auto_threshold(m, image_guide(image), cell)[0]
    return threshold(m, float(t))


def plan_of(scene: Scene, model: Model, s: Settings, **kw) -> Plan:
    """:func:`hmedit.sampling.plan.build_plan` of ``scene`` for ``model`` at the settings' size."""
    fam = model.family
    return build_plan(
        scene,
        fam.factors(model.unet),
        s.width,
        s.height,
        model.vae_scale_factor,
        cross_attention=fam.cross_attention_factors(model.unet),
        **kw,
    )


def encode(model: Model, plan: Plan):
    """The plan's prompts and negatives through the model's text encoders."""
    fam = model.family
    return encode_scene(
        fam.text(model),
        [f.node.prompt for f in plan.flat],
        [f.node.negative for f in plan.flat],
        zero_empty_negative=fam.zero_empty_negative(model),
    )


def render_edits(
    scene: Scene, model: Model, s: Settings, progress=None, *, inversions=None, on_invert=None
) -> RenderResult:
    """A scene with ``edits``: the source and every target (:meth:`Scene.edit_target`) denoised in one batch
    from the same latents (noise, or the inverted init image), the targets taking the source's attention in
    the nodes their edit does not touch for the first ``inject`` fraction of the steps
    (:mod:`hmedit.sampling.edits`). Returns the source's result with each target's in ``edits``.
    ``regions: fusion`` (the MultiDiffusion baseline: no attention to inject) renders each copy on its own
    from the same seed."""
    from hmedit.sampling import edits as E

    base = scene.model_copy(update={"edits": ()})
    targets = [scene.edit_target(e) for e in scene.edits]
    if scene.regions == "fusion":
        result = render(base, model, s, progress, inversions=inversions, on_invert=on_invert)
        for e, t in zip(scene.edits, targets):
            result.edits[e.id] = render(t, model, s, progress, inversions=inversions, on_invert=on_invert)
        return result
    where = scene.where("edits")
    if s.tiling is not None:
        raise HmeditError(
            "edits are rendered untiled: this size needs tiling",
            **where,
            hint="render at the model's native size, or set tiling: off",
        )
    if attention_nodes(scene) or any(attention_nodes(t) for t in targets):
        raise HmeditError(
            "edits do not work with attention masks (mask: {attention: ...}) yet",
            **where,
            hint="give the nodes drawn masks",
        )
    if has_controls(scene) or any(has_controls(t) for t in targets):
        raise HmeditError(
            "edits do not work with ControlNets (control:) yet", **where, hint="remove control:"
        )
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    plans = [plan_of(base, model, s)] + [plan_of(t, model, s) for t in targets]
    conds = [encode(model, p) for p in plans]
    top = max(p.max_noise for p in plans)
    sched, gen, timesteps, t_start, latents, source, noise = initial_latents(model, s, plans[0], top)
    guidance = Guidance(s.guidance)
    dev, dt = model.device, model.dtype
    texts: list = [None] * len(plans)
    holds: list = [None] * len(plans)
    own = list(conds)  # each copy's own negatives (the extra branch of edit guidance)
    edited = False
    if scene.inversion != "none" and plans[0].canvas is not None:
        from hmedit.sampling.inversion import TrajectoryHolds, prepare

        start = prepare(model, plans[0], s, conds[0], sched, timesteps, t_start, inversions, on_invert)
        latents, conds[0], texts[0], holds[0] = start.latents, start.cond, start.text, start.holds
        inv = start.inversion
        edited = inv.method in ("negative_prompt", "null_text")
        for c in range(1, len(plans)):
            uncond_steps = None
            if inv.method in ("negative_prompt", "null_text"):
                conds[c], keep = E.source_uncond(start.cond, plans[0], plans[c], conds[c])
                if inv.method == "null_text" and inv.uncond is not None:
                    uncond_steps = inv.uncond[:, keep]
            texts[c] = E.copy_text(conds[c], guidance, uncond_steps, t_start, len(timesteps), dev, dt)
            if plans[c].noise_map is not None:
                holds[c] = TrajectoryHolds(plans[c], sched, timesteps, inv, t_start, s.steps, dev, dt)
    elif source is not None:
        holds = [
            NoiseHolds(p, sched, timesteps, source, noise, t_start, s.steps)
            if p.noise_map is not None
            else None
            for p in plans
        ]
    timings["prepare"] = round(time.perf_counter() - clock, 4)
    parts, regions = E.copy_parts(model, plans, conds, guidance, sched, timesteps, texts)
    inject = [None] + [
        E.injection_map(plans[0], conds[0], p, c, e) for p, c, e in zip(plans[1:], conds[1:], scene.edits)
    ]
    until = [0.0] + [float(e.inject) for e in scene.edits]
    regional = any(p.regional and c.regional for p, c in zip(plans, conds))
    copies = E.Copies(
        parts,
        regions,
        inject,
        until,
        len(timesteps),
        regional=regional,
        record=s.record_attention,
        device=dev,
    )
    blend = [0.0] + [float(e.blend) for e in scene.edits]
    keep = E.blend_masks(regions, [None] + [e.touched for e in scene.edits]) if any(blend) else None
    stacked = E.StackedHolds(holds, keep, blend, len(timesteps))
    den = Denoiser(model.unet, sched, [copies], guidance, holds=stacked)
    if edited:
        den = E.edit_guidance(den, model, plans, own, regional)
    clock = time.perf_counter()
    x = latents.repeat(len(plans), 1, 1, 1)
    with torch.no_grad(), regional_attention(model.unet):
        x = sample(den, sched, x, timesteps, step_kwargs(sched, gen), progress)
    timings["sample"] = round(time.perf_counter() - clock, 4)
    results = []
    for c, p in enumerate(plans):
        clock = time.perf_counter()
        image = decode(model, s, p, x[c : c + 1])
        maps = influence_maps(p, copies.attention_maps(c) if regional else None)
        results.append(RenderResult(image, s, maps, {"decode": round(time.perf_counter() - clock, 4)}, p))
    out = results[0]
    out.timings = {**timings, **out.timings}
    out.edits = {e.id: r for e, r in zip(scene.edits, results[1:])}
    return out


def initial_latents(model: Model, s: Settings, plan: Plan, max_noise: float):
    """The scheduler (set to ``s.steps``), the generator, the timesteps from the first step on, that step,
    the first latents [1, C, h, w], and with an init image its latent and the noise drawn for it. From noise:
    StableDiffusion(XL)Pipeline's draw. With an init image, StableDiffusion(XL)Img2ImgPipeline's: encode
    (sampling the posterior first), truncate the schedule to ``max_noise``, noise the source to the first
    remaining timestep."""
    dev, dt = model.device, model.dtype
    sched = make_scheduler(s.scheduler, model.scheduler_config)
    sched.set_timesteps(s.steps, device=dev)
    gen = torch.Generator("cpu").manual_seed(s.seed)
    h, w = plan.latent
    sf = model.vae.config.scaling_factor
    source = noise = None
    t_start = 0
    timesteps = sched.timesteps
    if plan.canvas is None:
        latents = _randn((1, model.latent_channels, h, w), gen, dev, dt) * sched.init_noise_sigma
    else:
        canvas = plan.canvas.to(dev, model.vae.dtype)
        if max(canvas.shape[-2:]) > s.encode_tiled_above:
            posterior = tiled_vae.encode_tiled(model.vae, canvas)
        else:
            posterior = model.vae.encode(canvas).latent_dist
        source = posterior.sample(gen).to(dt) * sf
        t_start = s.steps - noise_steps(s.steps, max_noise)
        timesteps = sched.timesteps[t_start * sched.order :]
        if hasattr(sched, "set_begin_index"):
            sched.set_begin_index(t_start * sched.order)
        noise = _randn(source.shape, gen, dev, dt)
        latents = sched.add_noise(source, noise, timesteps[:1]) if len(timesteps) else source
    return sched, gen, timesteps, t_start, latents, source, noise


def decode(model: Model, s: Settings, plan: Plan, latents: Tensor) -> np.ndarray:
    """The image of ``latents`` [1, C, h, w] (uint8 [H, W, 3]); with an init image, its untouched regions
    are the source pixels, pasted back with the feathered mask, not re-decoded."""
    sf = model.vae.config.scaling_factor
    with torch.no_grad():
        img = tiled_vae.decode(model.vae, latents.to(model.vae.dtype) / sf, s.decode_tile)
    if not torch.isfinite(img).all():
        raise HmeditError("the VAE decoded NaN/inf pixels", hint="try --dtype fp32 (the VAE overflowed)")
    img = (img.float() / 2 + 0.5).clamp(0, 1)
    if plan.canvas is not None:
        keep = plan.keep_alpha.to(img.device)[None, None]
        img = keep * img + (1 - keep) * (plan.canvas.to(img.device).float() / 2 + 0.5)
    return (img[0].permute(1, 2, 0).cpu().numpy() * 255).round().astype("uint8")


def check_fusion(scene: Scene, tiler, probes: bool = False) -> None:
    """``regions: fusion`` runs its own windows (one per node): not with tiling, ControlNets, inversion or
    attention probes (there is no one cross-attention to read)."""
    for what, on, key in (
        ("tiling", tiler is not None, "tiling"),
        ("a ControlNet", has_controls(scene), "regions"),
        ("an inversion", scene.inversion != "none", "inversion"),
        ("attention maps read from the render (probes, --words, attention masks)", probes, "regions"),
    ):
        if on:
            raise HmeditError(
                f"regions: fusion does not work with {what} yet",
                **scene.where(key),
                hint="use regions: attention (the default) for this scene",
            )


def coarse_size(width: int, height: int, native: int, multiple: int) -> tuple[int, int]:
    """The native-size frame of a ``width`` × ``height`` render: its longer side ``native``, sides rounded to
    ``multiple`` px."""
    scale = native / max(width, height)
    return (
        max(multiple, round(width * scale / multiple) * multiple),
        max(multiple, round(height * scale / multiple) * multiple),
    )


def coarse_pass(
    scene: Scene,
    model: Model,
    s: Settings,
    masks: dict[int, Tensor] | None = None,
    keep_words: dict[str, list[str]] | None = None,
) -> tuple[Tensor, dict[str, list[str]] | None]:
    """``tiling.coarse``: the scene rendered whole at the model's native size, upscaled to the target size
    ([1, 3, H, W] in [-1, 1]), so the tiled pass refines one composition instead of one per window. ``masks``
    (found masks at the target size) are resized to the native frame. Also returns the nodes' keywords
    (``keywords:``) the coarse render selected (or was given as ``keep_words``), for the tiled pass to keep;
    None when no node has keywords."""
    align = model.vae_scale_factor * max(model.family.factors(model.unet))
    cw, ch = coarse_size(s.width, s.height, model.native_size, align)
    small = replace(s, width=cw, height=ch, tiling=None, record_attention=False)
    if masks:
        masks = {
            k: F.interpolate(m[None, None].float(), (ch, cw), mode="area")[0, 0] for k, m in masks.items()
        }
    result = render(scene, model, small, masks=masks, keep_words=keep_words)
    t = torch.from_numpy(result.image).permute(2, 0, 1)[None].float() / 255.0
    t = F.interpolate(t, (s.height, s.width), mode="bicubic", align_corners=False).clamp(0, 1)
    return t * 2 - 1, result.stats.get("keywords")


def influence_maps(plan: Plan, attention: dict[int, Tensor] | None) -> dict[str, Tensor]:
    """Intrinsic and effective masks, and measured attention upsampled to the image and averaged over levels
    (DAAM: per-layer maps upsampled and aggregated; What the DAAM: Interpreting Stable Diffusion Using
    Cross Attention, Tang et al., arXiv:2210.04885)."""
    out: dict[str, Tensor] = {}
    for k, node_id in enumerate(plan.ids):
        out[f"intrinsic/{node_id}"] = plan.intrinsic[k].float()
        out[f"effective/{node_id}"] = plan.effective[k].float()
    if attention:
        h, w = plan.latent
        ups = []
        for n, m in attention.items():
            f = round((h * w / n) ** 0.5)
            lh, lw = -(-h // f), -(-w // f)
            ups.append(
                F.interpolate(
                    m.reshape(1, -1, lh, lw).float().cpu(),
                    (plan.height, plan.width),
                    mode="bilinear",
                    align_corners=False,
                )[0]
            )
        att = torch.stack(ups).mean(0)
        for k, node_id in enumerate(plan.ids):
            out[f"attention/{node_id}"] = att[k]
    return out


def node_keywords(scene: Scene, model: Model, s: Settings, progress=None, *, inversions=None) -> dict:
    """The keywords of the scene's nodes with ``keywords`` (MRGD eq. 6, :mod:`hmedit.masks.keywords`), by
    node id: a first pass renders the scene with those nodes' tokens all global (where the model puts each
    word on its own) and reads each of their words' cross-attention maps; the words of lowest image entropy
    are kept (``keywords: N``, or ``auto``)."""
    from hmedit.masks.keywords import select_keywords
    from hmedit.scene.spec import prompt_words

    nodes = [n for n in scene.root.walk() if n.keywords is not None and n is not scene.root]
    wanted = {n.id: [Probe(n.id, w) for w in dict.fromkeys(prompt_words(n.prompt))] for n in nodes}
    first = render(
        scene,
        model,
        replace(s, record_attention=False),
        progress,
        inversions=inversions,
        words=True,
        keep_words={n.id: [] for n in nodes},
    )
    out: dict[str, list[str]] = {}
    for n in nodes:
        found = [p for p in wanted[n.id] if p in first.probes]
        if not found:
            out[n.id] = []
            continue
        maps = torch.stack([first.probes[p] for p in found])
        out[n.id] = [found[i].word for i in select_keywords(maps, n.keywords)]
    return out


def keep_regional(cond, plan: Plan, text, keep: dict[str, list[str]]):
    """``cond`` with the cond-branch tokens of each node in ``keep`` made global (owner -1), but for those of
    the words listed (every occurrence) and, when any word is kept, the node's end tokens."""
    from copy import copy

    from hmedit.masks.attention import phrase_tokens, token_position

    def tokenize(t: str) -> list[int]:
        return list(text.word_ids(t)[0])

    owner = cond.cond.owner.clone()
    for node_id, words in keep.items():
        k = plan.ids.index(node_id)
        if k == 0 or k not in cond.ranges:
            continue
        start, end = cond.ranges[k]
        prompt = plan.flat[k].node.prompt
        n_words = len(tokenize(prompt))
        word_pos = {token_position(i, root=False, start=start, window=text.window) for i in range(n_words)}
        kept = set()
        for w in words:
            kept |= {
                token_position(i, root=False, start=start, window=text.window)
                for i in phrase_tokens(prompt, w, tokenize) or []
            }
        for t in range(start, end):
            if t in kept or (t not in word_pos and words):  # a kept word, or an end token of a keyword node
                continue
            owner[t] = -1
    out = copy(cond)
    out.cond = replace(cond.cond, owner=owner)
    return out
