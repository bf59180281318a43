"""``hmedit bench``: what hmedit costs over plain diffusers, and how well its regions work, on one model.

Suites (each a function ``suite_<name>(bench) -> dict`` of JSON-ready figures):

- cost: a 4-node scene against diffusers' StableDiffusionPipeline built from the same modules, same prompt
  (the root's), size, steps, guidance, scheduler and seed; alternating runs after one warm-up each, medians.
- control: generated scenes of 2-4 coloured squares and circles on a background, rendered with the regional
  attention on (the scene's default weights) and off (``attention: {pos: 0, neg: 0}``), same seeds; a region
  matches when >= 30% of its pixels show its prompt's colour, and bleeds when >= 30% show another region's.
- hierarchy: a circle nested in a square, rendered with each composition scheme and as a flat list.
- locality: a rendered 3-region image edited in one region (noise 0.8 there, 0 elsewhere, feathered): the
  change outside the region (plus a margin) and inside it.
- inversion: square layers in colours off the toy palette (teal, olive, salmon) on a plain background, re-made
  at noise 0.8 with the generic prompt "a square", with and without the layer's learned token (same seeds):
  the mean colour error inside the layer, the time to learn a token, and the time of a cached rerun.

Scenes are plain dicts built by pure functions of a seed (``control_scene``, ``hierarchy_scene``,
``edit_scene``...), validated by ``Scene.model_validate``; the colours they are scored against are the palette
words of their prompts (``colour_of``). The quality suites mean something on the bundled ``toy`` model, whose
world these prompts describe; on any other model they only exercise the code.
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from hmedit import metrics
from hmedit.errors import HmeditError
from hmedit.scene.spec import Scene
from hmedit.toy.world import COLOURS, PALETTE

SUITES = (
    "cost",
    "control",
    "hierarchy",
    "locality",
    "inversion",
    "tiling",
    "memory",
    "scale",
    "control-net",
    "edit",
    "edit-pairs",
    "attention-masks",
    "masks",
)
OPT_IN_SUITES = (
    "scale",
    "control-net",
    "edit",
    "edit-pairs",
    "attention-masks",
    "masks",
)  # run when asked for by name (accelerators, the bundled ControlNet, edits)
DEFAULT_SUITES = tuple(s for s in SUITES if s not in OPT_IN_SUITES)
FORMAT = "hmedit-bench"
FORMAT_VERSION = 1

COST_TARGET = 1.15  # hmedit / diffusers seconds
OUTSIDE_TARGET = 1.0  # locality: mean change outside the region, 0..255 units, at most
INSIDE_TARGET = 20.0  # locality: mean change inside the region, 0..255 units, at least
DROP_TARGET = 50.0  # inversion: % by which the learned token cuts the mean colour error, at least
LEARN_TARGET_S = 180.0  # inversion: seconds to learn one layer's token at default settings, at most
CACHED_TARGET_S = 1.0  # inversion: seconds a cached rerun adds, at most

# inversion: layer colours the toy palette has no word for, the generic prompt, the background
INVERSION_COLOURS: dict[str, tuple[int, int, int]] = {
    "teal": (30, 140, 140),
    "olive": (128, 128, 0),
    "salmon": (250, 128, 114),
}
INVERSION_PROMPT = "a square"
INVERSION_BACKGROUND = "white"
INVERSION_BOX = (0.3, 0.3, 0.4)  # the square layer: x, y, side (fractions of the image)

# A different random stream per suite, so that control scene 3 and hierarchy scene 3 are unrelated.
_STREAM = {"cost": 0, "control": 1, "hierarchy": 2, "locality": 3, "inversion": 4}

SHAPE_OF = {"rect": "square", "ellipse": "circle"}

# name -> how the nested square/circle scene is composed; "flat" puts both regions directly under the root.
HIERARCHY_SCHEMES: dict[str, dict[str, Any]] = {
    "multiplicative": {"composition": "multiplicative"},
    "normalized": {"composition": "normalized"},
    "top_down": {"composition": "top_down"},
    "depth_weighted": {"composition": "depth_weighted"},
    "hybrid": {"composition": "hybrid", "parent": "normalized", "child": "multiplicative"},
    "flat": {"composition": "normalized", "flat": True},
    "flat_top_down": {"composition": "top_down", "flat": True},
}


@dataclass(frozen=True)
class Config:
    """Sizes and counts of every suite; ``Config.quick_config()`` shrinks them to run in seconds."""

    size: int = 128  # control, hierarchy, locality (the toy model's native size)
    cost_size: int = 256
    steps: int = 30
    guidance: float = 7.5
    control_scenes: int = 24
    hierarchy_scenes: int = 12
    locality_scenes: int = 6
    repeats: int = 3  # timed runs per contender in the cost suite
    threshold: float = 0.3  # a region matches a colour when this fraction of its pixels shows it
    edit_noise: float = 0.8
    feather: float = 2.0  # px, at the render size
    margin: float = 4.0  # px beyond the feather that the locality figure ignores
    inversion_seeds: int = 3  # renders with and without the learned token, per layer colour
    learn_steps: int | None = None  # inversion: None = the default learn settings
    learn_batch: int | None = None
    tiling_size: int = 1024  # tiling: example scenes rendered at this size
    tiling_steps: int = 6  # both contenders; Panorama needs ~1.3 s per view per step here on one CPU core
    tiling_scenes: tuple[str, ...] | None = None  # hmedit: None = every example scene in scenes/
    panorama_scenes: tuple[str, ...] = ("hires_garden", "nested_rings")  # also plain tiles and Panorama
    composition_scenes: int = 12  # tiling: control scenes rendered at the native size and above
    composition_sizes: tuple[int, ...] = (1024, 2048)
    composition_steps: int = 20
    composition_plain: bool = True  # also with the tiling of old (tiling.coarse: false), for comparison
    memory_size: int = 4096
    memory_steps: int = 2  # memory does not grow with steps
    scale_sizes: tuple[int, ...] = (2048, 4096)
    scale_steps: int = 3  # seconds per step are what is compared
    clip: str = "toy"  # masks: the CLIP that click masks and refinement score with
    quick: bool = False
    seeds: int | None = None  # --seeds N as given (suites with their own counts take it when set)

    @classmethod
    def quick_config(cls) -> Config:
        return cls(
            size=64,
            cost_size=64,
            steps=2,
            control_scenes=2,
            hierarchy_scenes=2,
            locality_scenes=2,
            repeats=1,
            inversion_seeds=1,
            learn_steps=2,
            learn_batch=2,
            tiling_size=128,
            tiling_steps=2,
            tiling_scenes=("nested_rings", "hires_edit"),
            panorama_scenes=("nested_rings",),
            composition_scenes=1,
            composition_sizes=(128,),
            composition_steps=2,
            memory_size=256,
            memory_steps=1,
            scale_sizes=(128,),
            scale_steps=1,
            quick=True,
        )

    @classmethod
    def make(
        cls,
        *,
        quick: bool = False,
        seeds: int | None = None,
        repeats: int | None = None,
        scale_sizes: Sequence[int] | None = None,
    ) -> Config:
        cfg = cls.quick_config() if quick else cls()
        if scale_sizes:
            cfg = replace(cfg, scale_sizes=tuple(scale_sizes))
        if seeds is not None:
            cfg = replace(
                cfg,
                control_scenes=seeds,
                hierarchy_scenes=seeds,
                locality_scenes=seeds,
                inversion_seeds=seeds,
                seeds=seeds,
            )
        if repeats is not None:
            cfg = replace(cfg, repeats=repeats)
        return cfg


# ------------------------------------------------------------------------------------------------
# Scenes: pure functions of a seed


def _rng(suite: str, seed: int) -> np.random.Generator:
    return np.random.default_rng([_STREAM[suite], seed])


def colour_of(prompt: str) -> str:
    """The one palette colour named in a prompt ("a red circle" -> "red")."""
    found = [w for w in prompt.replace(",", " ").split() if w in PALETTE]
    if len(found) != 1:
        raise ValueError(f"expected one colour in {prompt!r}, found {found}")
    return found[0]


def _apart(a: Sequence[float], b: Sequence[float], gap: float) -> bool:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    return ax + aw + gap <= bx or bx + bw + gap <= ax or ay + ah + gap <= by or by + bh + gap <= ay


def place_boxes(
    rng: np.random.Generator, n: int, lo: float = 0.25, hi: float = 0.45, gap: float = 0.03
) -> list[tuple[float, float, float, float]]:
    """``n`` square boxes [x, y, w, h] (fractions) of side lo..hi, inside the frame, ``gap`` apart."""
    for _ in range(200):
        sides = sorted((round(float(s), 3) for s in rng.uniform(lo, hi, n)), reverse=True)
        boxes: list[tuple[float, float, float, float]] = []
        for s in sides:
            for _ in range(200):
                x, y = (round(float(v), 3) for v in rng.uniform(0, 1 - s, 2))
                if all(_apart((x, y, s, s), b, gap) for b in boxes):
                    boxes.append((x, y, s, s))
                    break
            else:
                break
        if len(boxes) == n:
            return boxes
    raise RuntimeError(f"could not place {n} boxes of side {lo}..{hi}")  # not reached for n <= 4


def _region(node_id: str, kind: str, colour: str, box: Sequence[float], **extra: Any) -> dict:
    return {"id": node_id, "prompt": f"a {colour} {SHAPE_OF[kind]}", "mask": {kind: list(box)}, **extra}


def _base(name: str, size: int, steps: int, guidance: float, seed: int) -> dict:
    return {
        "name": name,
        "size": [size, size],
        "seed": seed,
        "steps": steps,
        "guidance": guidance,
        "scheduler": "ddim",
    }


def control_scene(
    seed: int,
    *,
    n: int | None = None,
    size: int = 128,
    steps: int = 30,
    guidance: float = 7.5,
    masking: bool = True,
    suite: str = "control",
) -> dict:
    """2-4 (or ``n``) non-overlapping squares ("a {c} square", rect) and circles ("a {c} circle", ellipse)
    of 25-45% of the width on "a {bg} background", all colours distinct. ``masking=False``: attention
    weights 0 (the regions' prompts still condition their regions, without the attention bias)."""
    rng = _rng(suite, seed)
    n = int(rng.integers(2, 5)) if n is None else n
    colours = [str(c) for c in rng.choice(COLOURS, n + 1, replace=False)]
    boxes = place_boxes(rng, n)
    kinds = [str(k) for k in rng.choice(list(SHAPE_OF), n)]
    scene = _base(f"{suite}-{seed}", size, steps, guidance, seed)
    if not masking:
        scene["attention"] = {"pos": 0.0, "neg": 0.0}
    scene["root"] = {
        "prompt": f"a {colours[0]} background",
        "children": [
            _region(f"r{i}", kind, colour, box)
            for i, (kind, colour, box) in enumerate(zip(kinds, colours[1:], boxes, strict=True))
        ],
    }
    return scene


def cost_scene(size: int = 256, steps: int = 30, guidance: float = 7.5, seed: int = 0) -> dict:
    """The cost suite's 4-node scene: a background and 3 regions."""
    scene = control_scene(seed, n=3, size=size, steps=steps, guidance=guidance, suite="cost")
    scene["tiling"] = False  # the same job as the plain pipeline: the whole latent at once
    return scene


def hierarchy_scene(
    seed: int, scheme: str, *, size: int = 128, steps: int = 30, guidance: float = 7.5
) -> dict:
    """ "a {bg} background" > "a {c1} square" (rect, 50-70% of the image) > "a {c2} circle" (ellipse, 40% of
    the square, inside it), composed by ``scheme`` (a key of HIERARCHY_SCHEMES); the geometry and colours
    depend on the seed only."""
    if scheme not in HIERARCHY_SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}")
    how = HIERARCHY_SCHEMES[scheme]
    rng = _rng("hierarchy", seed)
    bg, c1, c2 = (str(c) for c in rng.choice(COLOURS, 3, replace=False))
    side = round(float(rng.uniform(0.5, 0.7)), 3)
    px, py = (round(float(v), 3) for v in rng.uniform(0, 1 - side, 2))
    inner = round(0.4 * side, 3)
    ox, oy = (
        round(float(v) * side, 3) for v in rng.uniform(0.1, 0.5, 2)
    )  # the circle's offset in the square
    parent = _region("parent", "rect", c1, (px, py, side, side))
    child = _region("child", "ellipse", c2, (round(px + ox, 3), round(py + oy, 3), inner, inner))
    if "parent" in how:
        parent["composition"] = how["parent"]
        child["composition"] = how["child"]
    scene = _base(f"hierarchy-{seed}-{scheme}", size, steps, guidance, seed)
    scene["composition"] = how["composition"]
    children = [parent, child] if how.get("flat") else [{**parent, "children": [child]}]
    scene["root"] = {"prompt": f"a {bg} background", "children": children}
    return scene


def edit_target(scene: dict, seed: int) -> tuple[str, str]:
    """Which region of a scene to recolour, and to which colour (one the scene does not use)."""
    rng = _rng("locality", 10_000 + seed)
    regions = scene["root"]["children"]
    used = {colour_of(scene["root"]["prompt"])} | {colour_of(r["prompt"]) for r in regions}
    node = regions[int(rng.integers(len(regions)))]["id"]
    colour = str(rng.choice([c for c in COLOURS if c not in used]))
    return node, colour


def edit_scene(
    scene: dict, node_id: str, colour: str, init_image: str, *, noise: float = 0.8, feather: float = 2.0
) -> dict:
    """``scene`` as an edit of ``init_image``: region ``node_id`` recoloured to ``colour`` with ``noise`` and
    ``feather`` px; the root and the other regions at noise 0 (kept)."""
    out = copy.deepcopy(scene)
    out["name"] = f"{scene['name']}-edit"
    out["init_image"] = str(init_image)
    out["root"]["noise"] = 0.0
    found = False
    for region in out["root"]["children"]:
        region["noise"] = 0.0
        if region["id"] == node_id:
            region["prompt"] = region["prompt"].replace(colour_of(region["prompt"]), colour)
            region["noise"] = noise
            region["feather"] = feather
            found = True
    if not found:
        raise ValueError(f"no region {node_id!r} under the root")
    return out


def inversion_images(rgb: Sequence[int], size: int) -> tuple[np.ndarray, np.ndarray]:
    """The inversion suite's pictures: a plain ``INVERSION_BACKGROUND`` init image [size, size, 3] and an
    opaque square RGBA layer [s, s, 4] of colour ``rgb`` (s = the INVERSION_BOX side at ``size``)."""
    side = round(INVERSION_BOX[2] * size)
    init = np.empty((size, size, 3), np.uint8)
    init[:] = PALETTE[INVERSION_BACKGROUND]
    layer = np.empty((side, side, 4), np.uint8)
    layer[:] = (*(int(c) for c in rgb), 255)
    return init, layer


def inversion_scene(
    colour: str,
    init_image: str,
    layer: str,
    seed: int,
    *,
    learn: dict | bool = False,
    size: int = 128,
    steps: int = 30,
    guidance: float = 7.5,
    noise: float = 0.8,
) -> dict:
    """The square ``layer`` (of ``inversion_images``) on ``init_image``, re-made at ``noise`` with the generic
    prompt ``INVERSION_PROMPT``, the background kept (noise 0); ``learn``: the node's learn key (true, or a
    mapping), False for the prompt alone."""
    x, y, _ = INVERSION_BOX
    node: dict[str, Any] = {
        "id": "layer",
        "prompt": INVERSION_PROMPT,
        "layer": str(layer),
        "at": [x, y],
        "noise": noise,
    }
    if learn:
        node["learn"] = learn
    scene = _base(f"inversion-{colour}-{seed}{'-learned' if learn else ''}", size, steps, guidance, seed)
    scene["init_image"] = str(init_image)
    scene["root"] = {"prompt": f"a {INVERSION_BACKGROUND} background", "noise": 0.0, "children": [node]}
    return scene


def region_masks(scene: Scene, width: int, height: int) -> dict[str, np.ndarray]:
    """Each node's intrinsic (rasterised, feathered) mask as float32 [H, W], by id."""
    from hmedit.masks.raster import rasterize_scene

    ids, masks = rasterize_scene(scene, width, height)
    return {i: m.numpy() for i, m in zip(ids, masks, strict=True)}


# ------------------------------------------------------------------------------------------------
# Running


@dataclass
class Bench:
    """A loaded model, the configuration, and where a suite reports each finished render."""

    model: Any  # hmedit.models.load.Model
    config: Config
    tick: Callable[[str], None] = lambda label: None
    images: Path | None = None  # save every render here (<images>/<suite>/<name>.png)

    def render(
        self, scene: dict | Scene, *, record: bool = True, suite: str = "", label: str = ""
    ) -> np.ndarray:
        """Render a scene (a dict, or a Scene, e.g. with prompts rewritten to use learned tokens)."""
        from hmedit.pipeline import Settings, render

        sc = scene if isinstance(scene, Scene) else Scene.model_validate(scene)
        result = render(sc, self.model, Settings.of(sc, self.model, sc.seed_list[0], record=record))
        if self.images is not None and suite:
            from hmedit.outputs.write import save_png

            save_png(self.images / suite / f"{label or sc.name}.png", result.image)
        self.tick(f"{suite} {label or sc.name}".strip())
        return result.image


def render_count(suite: str, cfg: Config) -> int:
    """How many renders a suite makes (for the progress bar)."""
    return {
        "cost": 3 + 3 * cfg.repeats,
        "control": 3 * cfg.control_scenes,
        "hierarchy": len(HIERARCHY_SCHEMES) * cfg.hierarchy_scenes,
        "locality": 2 * cfg.locality_scenes,
        "inversion": len(INVERSION_COLOURS) * (1 + 2 * cfg.inversion_seeds),
        "tiling": len(_tiled().tiling_scene_names(cfg))
        + 2 * len(cfg.panorama_scenes)
        + len(_tiled().composition_cases(cfg, 0)),
        "memory": 1,
        "scale": 2 * len(cfg.scale_sizes),
        "control-net": _control().render_count(cfg),
        "edit": _edit().render_count(cfg),
        "edit-pairs": len(_edit().pair_items(cfg)) * len(_edit().PAIR_VARIANTS),
        "attention-masks": _attention().render_count(cfg),
        "masks": _masks().render_count(cfg),
    }[suite]


def _median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def _rate(flags: Sequence[bool]) -> float:
    return float(np.mean(flags)) if len(flags) else 0.0


def suite_cost(b: Bench) -> dict:
    """hmedit's render (regions, recording on / off) against StableDiffusionPipeline: whole calls (prompt
    encoding, sampling, decoding; hmedit also plans masks and, when recording, builds the influence maps),
    models already loaded. The contenders alternate, after one warm-up each; medians of ``repeats`` runs."""
    import torch
    from diffusers import StableDiffusionPipeline

    from hmedit.models.load import make_scheduler
    from hmedit.pipeline import Settings, render

    cfg, model = b.config, b.model
    raw = cost_scene(cfg.cost_size, cfg.steps, cfg.guidance)
    sc = Scene.model_validate(raw)
    seed = sc.seed_list[0]
    pipe = StableDiffusionPipeline(
        **model.components(), scheduler=make_scheduler("ddim", model.scheduler_config)
    )
    pipe.set_progress_bar_config(disable=True)
    cuda = getattr(model.device, "type", str(model.device)) == "cuda"
    timings: dict[str, list[dict]] = {"hmedit": [], "hmedit_no_record": []}

    def run_diffusers() -> None:
        pipe(
            sc.root.prompt,
            negative_prompt=sc.root.negative or None,
            num_inference_steps=cfg.steps,
            guidance_scale=cfg.guidance,
            height=cfg.cost_size,
            width=cfg.cost_size,
            generator=torch.Generator("cpu").manual_seed(seed),
            output_type="np",
        )

    def run_hmedit(record: bool) -> Callable[[], None]:
        def go() -> None:
            result = render(sc, model, Settings.of(sc, model, seed, record=record))
            timings["hmedit" if record else "hmedit_no_record"].append(result.timings)

        return go

    contenders = {
        "diffusers": run_diffusers,
        "hmedit": run_hmedit(True),
        "hmedit_no_record": run_hmedit(False),
    }

    def timed(name: str) -> float:
        if cuda:
            torch.cuda.synchronize(model.device)
        start = time.perf_counter()
        with torch.no_grad():
            contenders[name]()
        if cuda:
            torch.cuda.synchronize(model.device)
        seconds = time.perf_counter() - start
        b.tick(f"cost {name}")
        return seconds

    for name in contenders:  # warm-up: kernels, allocator, caches
        timed(name)
    for t in timings.values():
        t.clear()
    runs: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(cfg.repeats):
        for name in contenders:
            runs[name].append(round(timed(name), 4))
    med = {name: _median(r) for name, r in runs.items()}
    ratio = med["hmedit"] / med["diffusers"]
    stages = {key: {k: _median([t[k] for t in ts]) for k in ts[0]} for key, ts in timings.items() if ts}
    return {
        "scene": raw,
        "nodes": len(sc.flat()),
        "size": [cfg.cost_size, cfg.cost_size],
        "steps": cfg.steps,
        "guidance": cfg.guidance,
        "scheduler": "ddim",
        "repeats": cfg.repeats,
        "runs_s": runs,
        "seconds": med,
        "ratio": ratio,
        "ratio_no_record": med["hmedit_no_record"] / med["diffusers"],
        "target_ratio": COST_TARGET,
        "pass": ratio <= COST_TARGET,
        "hmedit_stages_s": stages,
    }


def _score_regions(image: np.ndarray, masks: dict[str, np.ndarray], colours: dict[str, str], thr: float):
    """Per region: the fraction of its own colour, the largest fraction of another region's, match, bleed."""
    out = {}
    for rid, colour in colours.items():
        own = metrics.region_colour_fraction(image, masks[rid], colour, palette=PALETTE)
        others = {
            c: metrics.region_colour_fraction(image, masks[rid], c, palette=PALETTE)
            for r, c in colours.items()
            if r != rid
        }
        other = max(others.values(), default=0.0)
        out[rid] = {
            "colour": colour,
            "fraction": round(own, 4),
            "other_fraction": round(other, 4),
            "match": own >= thr,
            "bleed": other >= thr,
        }
    return out


def suite_control(b: Bench) -> dict:
    cfg = b.config
    variants = {"masked": True, "unmasked": False, "fusion": True}  # fusion: regions: fusion
    from hmedit.clip.score import bench_scores, mean_of

    cases, flags = [], {v: {"match": [], "bleed": [], "scene": [], "clip": []} for v in variants}
    cpu = {v: 0.0 for v in variants}
    for seed in range(cfg.control_scenes):
        kw = dict(size=cfg.size, steps=cfg.steps, guidance=cfg.guidance)
        scenes = {v: control_scene(seed, masking=m, **kw) for v, m in variants.items()}
        scenes["fusion"]["regions"] = "fusion"
        sc = Scene.model_validate(scenes["masked"])
        masks = region_masks(sc, cfg.size, cfg.size)
        colours = {r.id: colour_of(r.prompt) for r in sc.root.children}
        prompts = {r.id: r.prompt for r in sc.root.children}
        case: dict[str, Any] = {"seed": seed, "background": colour_of(sc.root.prompt), "regions": {}}
        for v, raw in scenes.items():
            clock = time.process_time()
            image = b.render(raw, suite="control", label=f"{seed}-{v}")
            cpu[v] += time.process_time() - clock
            scores = _score_regions(image, masks, colours, cfg.threshold)
            clip = bench_scores(image, masks, prompts)  # MRGD's CLIP metric: region vs its prompt
            for rid, s in scores.items():
                s["clip"] = None if clip is None else clip.get(rid)
                flags[v]["clip"].append(s["clip"])
            case["regions"][v] = scores
            flags[v]["match"] += [s["match"] for s in scores.values()]
            flags[v]["bleed"] += [s["bleed"] for s in scores.values()]
            flags[v]["scene"].append(all(s["match"] for s in scores.values()))
        cases.append(case)
    return {
        "scenes": cfg.control_scenes,
        "regions": len(flags["masked"]["match"]),
        "size": [cfg.size, cfg.size],
        "steps": cfg.steps,
        "guidance": cfg.guidance,
        "threshold": cfg.threshold,
        **{
            v: {
                "match_rate": _rate(f["match"]),
                "bleed_rate": _rate(f["bleed"]),
                "scene_match_rate": _rate(f["scene"]),
                "clip_mean": mean_of(f["clip"]),
                "attention": {"pos": 1.0, "neg": 1.0} if variants[v] else {"pos": 0.0, "neg": 0.0},
                "regions": "fusion" if v == "fusion" else "attention",
                "cpu_s_per_image": round(cpu[v] / max(cfg.control_scenes, 1), 3),
            }
            for v, f in flags.items()
        },
        "cases": cases,
    }


def suite_hierarchy(b: Bench) -> dict:
    cfg = b.config
    flags = {s: {"child": [], "ring": [], "both": []} for s in HIERARCHY_SCHEMES}
    cases = []
    for seed in range(cfg.hierarchy_scenes):
        case: dict[str, Any] = {"seed": seed, "schemes": {}}
        for scheme in HIERARCHY_SCHEMES:
            raw = hierarchy_scene(seed, scheme, size=cfg.size, steps=cfg.steps, guidance=cfg.guidance)
            sc = Scene.model_validate(raw)
            masks = region_masks(sc, cfg.size, cfg.size)
            child = metrics.inside(masks["child"])
            ring = metrics.inside(masks["parent"]) & ~child
            c1, c2 = colour_of(sc.node("parent").prompt), colour_of(sc.node("child").prompt)
            case.update(background=colour_of(sc.root.prompt), square=c1, circle=c2)
            image = b.render(raw, suite="hierarchy", label=f"{seed}-{scheme}")
            fc = metrics.region_colour_fraction(image, child, c2, palette=PALETTE)
            fr = metrics.region_colour_fraction(image, ring, c1, palette=PALETTE)
            ok_c, ok_r = fc >= cfg.threshold, fr >= cfg.threshold
            case["schemes"][scheme] = {"child_fraction": round(fc, 4), "ring_fraction": round(fr, 4)}
            flags[scheme]["child"].append(ok_c)
            flags[scheme]["ring"].append(ok_r)
            flags[scheme]["both"].append(ok_c and ok_r)
        cases.append(case)
    return {
        "scenes": cfg.hierarchy_scenes,
        "size": [cfg.size, cfg.size],
        "steps": cfg.steps,
        "guidance": cfg.guidance,
        "threshold": cfg.threshold,
        "schemes": {
            s: {"how": HIERARCHY_SCHEMES[s], **{k: _rate(v) for k, v in f.items()}} for s, f in flags.items()
        },
        "cases": cases,
    }


def suite_locality(b: Bench) -> dict:
    from PIL import Image

    cfg = b.config
    margin = cfg.feather + cfg.margin
    cases = []
    with tempfile.TemporaryDirectory(prefix="hmedit-bench-") as tmp:
        for seed in range(cfg.locality_scenes):
            raw = control_scene(
                seed, n=3, size=cfg.size, steps=cfg.steps, guidance=cfg.guidance, suite="locality"
            )
            before = b.render(raw, suite="locality", label=f"{seed}-before")
            init = Path(tmp) / f"{seed}.png"
            Image.fromarray(before).save(init)
            node, colour = edit_target(raw, seed)
            edit = edit_scene(raw, node, colour, str(init), noise=cfg.edit_noise, feather=cfg.feather)
            after = b.render(edit, suite="locality", label=f"{seed}-after")
            mask = region_masks(Scene.model_validate(edit), cfg.size, cfg.size)[node]
            change = metrics.locality(before, after, mask, margin)
            old = next(colour_of(r["prompt"]) for r in raw["root"]["children"] if r["id"] == node)
            cases.append(
                {
                    "seed": seed,
                    "node": node,
                    "from": old,
                    "to": colour,
                    **{k: round(v, 4) for k, v in change.items()},
                    "new_colour": metrics.region_match(after, mask, colour, cfg.threshold, palette=PALETTE),
                    "new_fraction": round(
                        metrics.region_colour_fraction(after, mask, colour, palette=PALETTE), 4
                    ),
                    "old_fraction": round(
                        metrics.region_colour_fraction(after, mask, old, palette=PALETTE), 4
                    ),
                }
            )
    outside = float(np.mean([c["outside_mean"] for c in cases]))
    inside_ = float(np.mean([c["inside_mean"] for c in cases]))
    return {
        "scenes": cfg.locality_scenes,
        "size": [cfg.size, cfg.size],
        "steps": cfg.steps,
        "guidance": cfg.guidance,
        "noise": cfg.edit_noise,
        "feather_px": cfg.feather,
        "margin_px": margin,
        "outside_mean": outside,
        "inside_mean": inside_,
        "outside_max": float(max(c["outside_mean"] for c in cases)),
        "new_colour_rate": _rate([c["new_colour"] for c in cases]),
        "target_outside_max": OUTSIDE_TARGET,
        "target_inside_min": INSIDE_TARGET,
        "pass": outside <= OUTSIDE_TARGET and inside_ >= INSIDE_TARGET,
        "cases": cases,
    }


def suite_inversion(b: Bench) -> dict:
    """Per layer colour: learn its token in an empty cache (timed), install it again from the cache (timed),
    then render each seed with the prompt alone and with the token; the mean colour error inside the layer
    (``metrics.mean_colour_error``), averaged over the seeds, and how much the token cuts it."""
    from PIL import Image

    from hmedit.conditioning.tokens import install_tokens

    cfg = b.config
    learn: dict[str, Any] = {}
    if cfg.learn_steps is not None:
        learn["steps"] = cfg.learn_steps
    if cfg.learn_batch is not None:
        learn["batch"] = cfg.learn_batch
    learn_key: dict | bool = learn or True
    layers: dict[str, Any] = {}
    learn_settings: dict | None = None
    with tempfile.TemporaryDirectory(prefix="hmedit-bench-") as tmp:
        for colour, rgb in INVERSION_COLOURS.items():
            init, layer = inversion_images(rgb, cfg.size)
            init_path, layer_path = Path(tmp) / f"{colour}-init.png", Path(tmp) / f"{colour}-layer.png"
            Image.fromarray(init).save(init_path)
            Image.fromarray(layer, "RGBA").save(layer_path)
            kw = dict(size=cfg.size, steps=cfg.steps, guidance=cfg.guidance, noise=cfg.edit_noise)
            learned = Scene.model_validate(
                inversion_scene(colour, str(init_path), str(layer_path), 0, learn=learn_key, **kw)
            )
            cache = Path(tmp) / "cache"  # empty: the first install learns
            start = time.perf_counter()
            tokens = install_tokens(learned, b.model, cache_dir=cache)
            learn_s = time.perf_counter() - start
            start = time.perf_counter()
            again = install_tokens(learned, b.model, cache_dir=cache)
            cached_s = time.perf_counter() - start
            tok, hit = tokens.tokens["layer"], again.tokens["layer"]
            learn_settings = tok.settings
            b.tick(f"inversion learn {colour}")
            mask = region_masks(learned, cfg.size, cfg.size)["layer"]
            cases = []
            for seed in range(cfg.inversion_seeds):
                plain = inversion_scene(colour, str(init_path), str(layer_path), seed, **kw)
                with_token = again.apply(
                    Scene.model_validate(
                        inversion_scene(colour, str(init_path), str(layer_path), seed, learn=learn_key, **kw)
                    )
                )
                before = b.render(plain, suite="inversion", label=f"{colour}-{seed}-prompt")
                after = b.render(with_token, suite="inversion", label=f"{colour}-{seed}-token")
                cases.append(
                    {
                        "seed": seed,
                        "error_prompt": round(metrics.mean_colour_error(before, mask, rgb), 3),
                        "error_token": round(metrics.mean_colour_error(after, mask, rgb), 3),
                    }
                )
                if seed == 0 and b.images is not None:
                    from hmedit.outputs.write import save_png

                    save_png(
                        b.images / "inversion" / f"{colour}-compare.png",
                        np.concatenate([init_with_layer(init, layer), before, after], axis=1),
                    )
            without = float(np.mean([c["error_prompt"] for c in cases]))
            with_ = float(np.mean([c["error_token"] for c in cases]))
            drop = 100.0 * (1.0 - with_ / without) if without > 0 else 0.0
            layers[colour] = {
                "rgb": list(rgb),
                "error_prompt": without,
                "error_token": with_,
                "drop_pct": drop,
                "learn_s": round(learn_s, 3),
                "cached_s": round(cached_s, 4),
                "learned": tok.source == "learned",
                "cache_hit": hit.source == "cached",
                "final_loss": tok.loss,
                "token": tok.text,
                "learn_size": tok.learn_size,
                "cases": cases,
            }
    drops = [v["drop_pct"] for v in layers.values()]
    learn_max = max(v["learn_s"] for v in layers.values())
    cached_max = max(v["cached_s"] for v in layers.values())
    passes = {
        "pass_drop": min(drops) >= DROP_TARGET,
        "pass_learn": learn_max <= LEARN_TARGET_S,
        "pass_cached": cached_max <= CACHED_TARGET_S,
    }
    return {
        "colours": list(INVERSION_COLOURS),
        "size": [cfg.size, cfg.size],
        "steps": cfg.steps,
        "guidance": cfg.guidance,
        "noise": cfg.edit_noise,
        "prompt": INVERSION_PROMPT,
        "background": INVERSION_BACKGROUND,
        "seeds": cfg.inversion_seeds,
        "learn": learn_settings,
        "error_prompt": float(np.mean([v["error_prompt"] for v in layers.values()])),
        "error_token": float(np.mean([v["error_token"] for v in layers.values()])),
        "drop_pct_min": min(drops),
        "drop_pct_mean": float(np.mean(drops)),
        "learn_s_max": learn_max,
        "cached_s_max": cached_max,
        "target_drop_pct": DROP_TARGET,
        "target_learn_s": LEARN_TARGET_S,
        "target_cached_s": CACHED_TARGET_S,
        **passes,
        "pass": all(passes.values()),
        "layers": layers,
    }


def init_with_layer(init: np.ndarray, layer: np.ndarray) -> np.ndarray:
    """The inversion suite's input picture: ``layer`` pasted on ``init`` at INVERSION_BOX."""
    out = init.copy()
    size = init.shape[0]
    x, y = (round(v * size) for v in INVERSION_BOX[:2])
    h, w = layer.shape[:2]
    a = layer[..., 3:4].astype(np.float32) / 255
    region = out[y : y + h, x : x + w]
    blended = a * layer[..., :3] + (1 - a) * region
    out[y : y + h, x : x + w] = blended.round().astype(np.uint8)
    return out


SUITE_FUNCTIONS: dict[str, Callable[[Bench], dict]] = {
    "cost": suite_cost,
    "control": suite_control,
    "hierarchy": suite_hierarchy,
    "locality": suite_locality,
    "inversion": suite_inversion,
    "tiling": lambda b: _tiled().suite_tiling(b),
    "memory": lambda b: _tiled().suite_memory(b),
    "scale": lambda b: _tiled().suite_scale(b),
    "control-net": lambda b: _control().suite_control_net(b),
    "edit": lambda b: _edit().suite_edit(b),
    "edit-pairs": lambda b: _edit().suite_pairs(b),
    "attention-masks": lambda b: _attention().suite_attention_masks(b),
    "masks": lambda b: _masks().suite_masks(b),
}


def _control():
    from hmedit import bench_control

    return bench_control


def _tiled():
    from hmedit import bench_tiled

    return bench_tiled


def _edit():
    from hmedit import bench_edit

    return bench_edit


def _attention():
    from hmedit import bench_attention

    return bench_attention


def _masks():
    from hmedit import bench_masks

    return bench_masks


def check_suites(names: Sequence[str] | None) -> list[str]:
    """The suites to run, in the canonical order; all but the opt-in ``scale`` for none named."""
    if not names:
        return list(DEFAULT_SUITES)
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        raise HmeditError(f"unknown suite '{unknown[0]}'", hint="use one or more of " + ", ".join(SUITES))
    return [s for s in SUITES if s in names]


def machine(model: Any) -> dict:
    """Where the figures were measured: CPU, accelerator, library versions."""
    import os
    import platform

    import torch

    from hmedit.provenance import versions

    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "device": str(model.device),
        "dtype": str(model.dtype).replace("torch.", ""),
        **versions(),
    }
    if getattr(model.device, "type", "") == "cuda":
        info["gpu"] = torch.cuda.get_device_name(model.device)
    return info


def run(bench: Bench, suites: Sequence[str], out: Path) -> Iterator[tuple[str, dict]]:
    """Run ``suites`` one after another, yielding (name, figures) and rewriting ``<out>/bench.json`` after
    each, so an interrupted run keeps the suites it finished. Suites of an earlier bench.json for the same
    model (same hash) and mode (quick or not) that this run does not repeat are kept."""
    from hmedit.outputs.write import save_json

    path = out / "bench.json"
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": bench.model.describe(),
        "machine": machine(bench.model),
        "config": asdict(bench.config),
        "suites": {},
    }
    previous = _previous(path, doc["model"]["hash"], bench.config.quick)
    doc["suites"] = {k: v for k, v in previous.items() if k not in suites}
    for name in suites:
        start = time.perf_counter()
        figures = SUITE_FUNCTIONS[name](bench)
        figures["elapsed_s"] = round(time.perf_counter() - start, 2)
        figures["machine"] = doc["machine"]
        figures["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        doc["suites"][name] = figures
        save_json(path, doc)
        yield name, figures


def _previous(path: Path, model_hash: str, quick: bool) -> dict:
    import json

    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(old, dict) or old.get("format") != FORMAT:
        return {}
    if old.get("model", {}).get("hash") != model_hash or old.get("config", {}).get("quick") != quick:
        return {}
    suites = old.get("suites")
    return suites if isinstance(suites, dict) else {}
