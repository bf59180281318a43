"""``hmedit bench edit``: editing real images by inversion (``inversion: none | ddim | negative_prompt |
null_text``), side by side on one model.

- cost: on one held-out world image at the configured size and steps, the plain render (``none``, re-noised
  source), the null-text inversion in an empty cache, the render from the cached null-text inversion, and the
  negative-prompt render (inverting its DDIM trajectory). Wall seconds and this process's CPU seconds (with
  one torch thread the CPU seconds are the time on an idle core; on a shared machine the wall clock also
  counts the other processes).
- reconstruction: held-out procedural images (``hmedit.toy.world``, seeds from ``HELD_OUT_FROM``, never
  trained on) and the shipped photographs (tests/assets/photos, when present), each rendered back from
  itself (root prompt = its caption, noise 1) with every method at guidance 1 and at the configured guidance;
  PSNR against the source beside the VAE round trip's (posterior mean, decoded: the ceiling).
- edits: held-out world images with a solid background and a solid object, one node per object (its
  visible region as an image mask); the chosen object's colour word changed (its ``source_prompt`` the old
  phrase), noise 0.8 on it (feathered 2 px), 0 elsewhere. Per method: the colour oracle on the object's
  pixels, the IoU of the object's foreground (pixels within 6 px of it whose nearest palette colour is not
  the background's) before and after, SSIM-i and SSIM-e (MRGD's: SSIM farther than 6 px from the edited
  object, and in an 8 px band around it).

- pairs (MRGD, Li et al., AAAI 2024, Table 1's three tasks; also alone as ``hmedit bench edit-pairs``):
  edit pairs from noise (the scene key ``edits``) on generated control scenes: one region's colour changed
  (attribute), one region added (addition), one removed (removal), each rendered as ``regions: fusion``
  (the MultiDiffusion baseline), with the attention bias and no injection, and with the attention bias and
  the source's attention injected in the untouched nodes for half of the steps (prompt-to-prompt). Per
  task and variant: the colour oracle on the edited region of the target (the new colour; removal: the
  background's), SSIM-i and SSIM-e between source and target around the edited region, seconds per pair.

Every inversion goes to a temporary cache, so each is computed once per run (ddim and negative_prompt share
their trajectory).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from hmedit import metrics
from hmedit.scene.spec import Scene
from hmedit.toy import world
from hmedit.toy.world import COLOURS, PALETTE

METHODS = ("none", "ddim", "negative_prompt", "null_text")
HELD_OUT_FROM = 10_000_000  # hmedit.toy.train.HELD_OUT: seeds at and above it are never trained on
RECON_SEEDS = HELD_OUT_FROM + 1_000  # reconstruction images: seeds from here
EDIT_SEEDS = HELD_OUT_FROM + 2_000  # edit images: candidate seeds from here
RECON_IMAGES = 20
EDIT_IMAGES = 24
WORKERS = 4  # on a CPU the images are spread over this many forked processes (the cost part runs alone first)
EDIT_NOISE = 0.8
FEATHER_PX = 2.0
MARGIN_PX = 6.0  # SSIM-i: pixels farther than this from the edited object; IoU: pixels nearer
BAND_PX = 8.0  # SSIM-e: the band around the edited object
MIN_OBJECT_FRACTION = 0.03  # edit images: the edited object covers at least this share of the image
PHOTO_PROMPTS = {
    "astronaut": "a photo of an astronaut",
    "coffee": "a photo of a cup of coffee",
    "chelsea": "a photo of a cat",
}
# targets (issue 14)
TARGET_NTI_CEILING_DB = 1.5  # null_text within this of the VAE round trip (procedural images, guidance)
TARGET_NTI_OVER_DDIM_DB = 6.0
TARGET_ORACLE = 0.9
TARGET_IOU = 0.9
TARGET_SSIM_I = 0.98
TARGET_NTI_S = 60.0
TARGET_CACHED_S = 1.0
TARGET_NPI_RATIO = 2.0
COST_RENDERS = 10  # _cost: six reconstructions, then one edit rendered plain and with negative_prompt, twice
PAIR_TASKS = ("attribute", "addition", "removal")
PAIR_VARIANTS = {  # name -> (regions, inject, blend)
    "fusion": ("fusion", 0.0, 0.0),
    "attention": ("attention", 0.0, 0.0),
    "attention+inject": ("attention", 0.5, 0.0),
    "attention+inject+blend": ("attention", 0.5, 1.0),
}
PAIR_SCENES = 10  # per task
PAIR_SEEDS = 20_000
TARGET_PAIR_SSIM_I = 0.9  # attention with injection


def photos_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "tests" / "assets" / "photos"


def _inverting_scene(
    name: str, init: str, method: str, size: int, steps: int, guidance: float, root: dict
) -> dict:
    """A square DDIM scene (seed 0) over ``init`` with ``inversion: method``: what every case of the suite
    renders."""
    return {
        "name": name,
        "size": [size, size],
        "seed": 0,
        "steps": steps,
        "guidance": guidance,
        "scheduler": "ddim",
        "init_image": init,
        "inversion": method,
        "root": root,
    }


def recon_scene(init: str, prompt: str, method: str, guidance: float, size: int, steps: int) -> dict:
    return _inverting_scene("recon", init, method, size, steps, guidance, {"prompt": prompt, "noise": 1.0})


def recolour_cases(
    first_seed: int, size: int, min_fraction: float, salt: int
) -> Iterator[tuple[int, world.WorldImage, int, str, np.random.Generator]]:
    """Held-out world images from ``first_seed`` up that are fit for a colour edit, without end: (seed,
    image, object index, new colour, the case's generator). The object is the largest solid one and covers
    at least ``min_fraction`` of the image; the background is solid; nothing is outlined; the new colour is
    one the image does not use, drawn by a generator seeded by (seed, ``salt``)."""
    seed = first_seed
    while True:
        w = world.sample(seed, size)
        seed += 1
        if w.background_texture != "solid" or w.outlined or not w.objects:
            continue
        areas = [float((o.mask > 0.5).mean()) if o.texture == "solid" else 0.0 for o in w.objects]
        k = int(np.argmax(areas))
        if areas[k] < min_fraction:
            continue
        rng = np.random.default_rng([seed, salt])
        used = {w.background} | {o.colour for o in w.objects}
        yield seed - 1, w, k, str(rng.choice([c for c in COLOURS if c not in used])), rng


def edit_images(count: int, size: int) -> list[tuple[int, world.WorldImage, int, str]]:
    """``count`` held-out world images fit for a colour edit (:func:`recolour_cases`): (seed, image, object
    index, new colour)."""
    cases = recolour_cases(EDIT_SEEDS, size, MIN_OBJECT_FRACTION, 0xED17)
    return [case[:4] for case, _ in zip(cases, range(count))]


def write_masks(w: world.WorldImage, folder: Path, name: str) -> list[str]:
    """Each object's visible region (its coverage > 0.5) as a grayscale PNG: the nodes' masks."""
    from PIL import Image

    paths = []
    for j, o in enumerate(w.objects):
        path = folder / f"{name}-o{j}.png"
        Image.fromarray(((o.mask > 0.5) * 255).astype(np.uint8)).save(path)
        paths.append(str(path))
    return paths


def edit_scene(
    w: world.WorldImage,
    k: int,
    colour: str,
    init: str,
    masks: list[str],
    method: str,
    size: int,
    steps: int,
    guidance: float,
) -> dict:
    """A node per object (its visible region, ``masks``; its phrase); object ``k`` recoloured to ``colour``
    at noise 0.8 and feathered (``source_prompt``: its old phrase), the rest at noise 0 (as
    ``hmedit.bench.edit_scene`` edits a region)."""
    children = []
    for j, o in enumerate(w.objects):
        node: dict[str, Any] = {
            "id": f"o{j}",
            "prompt": o.phrase,
            "mask": {"image": masks[j]},
            "noise": 0.0,
        }
        if j == k:
            node.update(
                prompt=world.object_phrase(colour, o.shape, o.texture),
                source_prompt=o.phrase,
                noise=EDIT_NOISE,
                feather=FEATHER_PX,
            )
        children.append(node)
    root = {"prompt": world.background_phrase(w.background), "noise": 0.0, "children": children}
    return _inverting_scene("edit", init, method, size, steps, guidance, root)


def foreground(image: np.ndarray, box: np.ndarray, background: str) -> np.ndarray:
    """Pixels inside the mask ``box`` whose nearest palette colour is not ``background``."""
    idx = metrics.nearest_colour(image, PALETTE)
    return box & (idx != metrics.colour_index(background, PALETTE))


def vae_round_trip(model, image: np.ndarray) -> np.ndarray:
    import torch

    x = (
        torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float().to(model.device, model.vae.dtype)
        / 127.5
        - 1
    )
    with torch.no_grad():
        z = model.vae.encode(x).latent_dist.mean
        y = model.vae.decode(z).sample
    return ((y[0].float().permute(1, 2, 0) / 2 + 0.5).clamp(0, 1) * 255).round().byte().cpu().numpy()


class _Runner:
    def __init__(self, b, cache: Path) -> None:
        from hmedit.sampling.inversion import InversionCache

        self.b, self.cache = b, InversionCache(cache)

    def render(self, raw: dict, label: str = ""):
        from hmedit.pipeline import Settings, render

        sc = Scene.model_validate(raw)
        model = self.b.model
        wall, cpu = time.perf_counter(), time.process_time()
        result = render(sc, model, Settings.of(sc, model, 0, record=False), inversions=self.cache)
        result.timings["wall_s"] = time.perf_counter() - wall
        result.timings["cpu_s"] = time.process_time() - cpu
        if self.b.images is not None and label:
            from hmedit.outputs.write import save_png

            save_png(self.b.images / "edit" / f"{label}.png", result.image)
        self.b.tick(f"edit {label}".strip())
        return result


def _mean(xs) -> float:
    xs = [x for x in xs if x is not None and np.isfinite(x)]
    return float(np.mean(xs)) if xs else float("nan")


def _cost(run: _Runner, tmp: Path, size: int, steps: int, guidance: float) -> dict:
    """Null-text inversion in an empty cache, a rerun from the cache and negative-prompt inversion (twice,
    each inverting in an empty cache), against the plain render (same scene, same settings, twice), timed
    side by side; the ratio is of the faster of each pair. Then an edit, plain and with negative_prompt,
    twice each."""
    from PIL import Image

    from hmedit.sampling.inversion import InversionCache

    w = world.sample(RECON_SEEDS - 1, size)
    init = tmp / "cost.png"
    Image.fromarray(w.image).save(init)
    run.cache = InversionCache(tmp / "cost-cache")  # empty
    out: dict[str, Any] = {"image_seed": RECON_SEEDS - 1, "prompt": w.caption}
    for name, method in (
        ("plain", "none"),
        ("null_text_first", "null_text"),
        ("null_text_cached", "null_text"),
        ("negative_prompt", "negative_prompt"),
        ("plain_again", "none"),
        ("negative_prompt_again", "negative_prompt"),
    ):
        if name.startswith("negative_prompt"):
            run.cache = InversionCache(tmp / f"cost-cache-{name}")  # inverts, as a first render does
        r = run.render(recon_scene(str(init), w.caption, method, guidance, size, steps), f"cost-{name}")
        out[name] = {
            "wall_s": round(r.timings["wall_s"], 3),
            "cpu_s": round(r.timings["cpu_s"], 3),
            "invert_wall_s": r.timings.get("invert"),
        }
    plain_cpu = min(out["plain"]["cpu_s"], out["plain_again"]["cpu_s"])
    plain_wall = min(out["plain"]["wall_s"], out["plain_again"]["wall_s"])
    nti_cpu = out["null_text_first"]["cpu_s"] - plain_cpu
    cached_cpu = out["null_text_cached"]["cpu_s"] - plain_cpu
    npi = [out[k] for k in ("negative_prompt", "negative_prompt_again")]
    ratio_cpu = min(r["cpu_s"] for r in npi) / plain_cpu
    out.update(
        null_text_inversion_cpu_s=round(nti_cpu, 3),
        null_text_inversion_wall_s=out["null_text_first"]["invert_wall_s"],
        cached_adds_cpu_s=round(cached_cpu, 3),
        cached_adds_wall_s=round(out["null_text_cached"]["wall_s"] - plain_wall, 3),
        negative_prompt_ratio_cpu=round(ratio_cpu, 3),
        negative_prompt_ratio_wall=round(min(r["wall_s"] for r in npi) / plain_wall, 3),
        pass_null_text=nti_cpu <= TARGET_NTI_S,
        pass_cached=cached_cpu <= TARGET_CACHED_S,
        pass_negative_prompt=ratio_cpu <= TARGET_NPI_RATIO,
    )
    # an edit (one object recoloured at noise 0.8): negative-prompt inversion (its DDIM inversion included)
    # guides the edited object against the negatives with one more UNet branch (EditGuidance)
    seed, ew, k, colour = edit_images(1, size)[0]
    Image.fromarray(ew.image).save(tmp / "cost-edit.png")
    masks = write_masks(ew, tmp, "cost-edit")
    edit_cpu: dict[str, list[float]] = {"none": [], "negative_prompt": []}
    for rep in range(2):
        for name, method in (("plain_edit", "none"), ("negative_prompt_edit", "negative_prompt")):
            run.cache = InversionCache(tmp / f"cost-cache-edit-{rep}")  # empty: the edit inverts
            raw = edit_scene(ew, k, colour, str(tmp / "cost-edit.png"), masks, method, size, steps, guidance)
            r = run.render(raw, f"cost-{name}-{rep}")
            edit_cpu[method].append(round(r.timings["cpu_s"], 3))
    out["plain_edit"] = {"cpu_s": min(edit_cpu["none"]), "runs_cpu_s": edit_cpu["none"]}
    out["negative_prompt_edit"] = {
        "cpu_s": min(edit_cpu["negative_prompt"]),
        "runs_cpu_s": edit_cpu["negative_prompt"],
    }
    out["negative_prompt_edit_ratio_cpu"] = round(
        out["negative_prompt_edit"]["cpu_s"] / out["plain_edit"]["cpu_s"], 3
    )
    return out


def recon_case(run: _Runner, tmp: Path, name: str, image: np.ndarray, prompt: str, cfg) -> dict:
    """One image rendered back from itself with every method, at guidance 1 and the configured one."""
    from PIL import Image

    init = tmp / f"recon-{name}.png"
    Image.fromarray(image).save(init)
    case: dict[str, Any] = {
        "image": name,
        "prompt": prompt,
        "ceiling_db": round(metrics.psnr(vae_round_trip(run.b.model, image), image), 3),
    }
    for g in (1.0, float(cfg.guidance)):
        for method in METHODS:
            raw = recon_scene(str(init), prompt, method, g, cfg.size, cfg.steps)
            r = run.render(raw, f"recon-{name}-{method}-g{g:g}")
            case[f"{method}@{g:g}"] = round(metrics.psnr(r.image, image), 3)
    return case


def recon_summary(cases: list[dict], cfg) -> dict:
    summary = {"ceiling_db": _mean(c["ceiling_db"] for c in cases)}
    for g in (1.0, float(cfg.guidance)):
        for method in METHODS:
            summary[f"{method}@{g:g}"] = _mean(c[f"{method}@{g:g}"] for c in cases)
    return {"images": len(cases), "mean_psnr_db": summary, "cases": cases}


def edit_case(run: _Runner, tmp: Path, seed: int, w: world.WorldImage, k: int, colour: str, cfg) -> dict:
    """One attribute edit with every method, scored against the source."""
    from PIL import Image

    size = cfg.size
    init = tmp / f"edit-{seed}.png"
    Image.fromarray(w.image).save(init)
    o = w.objects[k]
    masks = write_masks(w, tmp, f"edit-{seed}")
    edited = o.mask > 0.5
    near = metrics.dilate(edited, MARGIN_PX)  # where the object's foreground is compared
    before_fg = foreground(w.image, near, w.background)
    from hmedit.clip.score import bench_scores

    case: dict[str, Any] = {"seed": seed, "object": o.phrase, "to": colour, "methods": {}}
    new_prompt = world.object_phrase(colour, o.shape, o.texture)
    for method in METHODS:
        raw = edit_scene(w, k, colour, str(init), masks, method, size, cfg.steps, cfg.guidance)
        after = run.render(raw, f"edit-{seed}-{method}").image
        after_fg = foreground(after, near, w.background)
        case["methods"][method] = {
            "oracle": metrics.region_match(after, o.mask, colour, cfg.threshold, palette=PALETTE),
            "new_fraction": round(metrics.region_colour_fraction(after, o.mask, colour, palette=PALETTE), 4),
            "iou": round(metrics.iou(before_fg, after_fg), 4),
            "ssim_i": round(metrics.ssim_inherent(w.image, after, edited, MARGIN_PX), 4),
            "ssim_e": round(metrics.ssim_edge(w.image, after, edited, BAND_PX), 4),
            # MRGD's CLIP metric: the edited region (the object's mask) vs its new prompt, by toy-clip
            "clip": (bench_scores(after, {"o": o.mask}, {"o": new_prompt}) or {}).get("o"),
        }
    return case


def edit_summary(cases: list[dict], cfg) -> dict:
    from hmedit.clip.score import mean_of

    summary = {}
    for method in METHODS:
        per = [c["methods"][method] for c in cases]
        s = {
            "oracle_rate": _mean(float(p["oracle"]) for p in per),
            "iou_mean": _mean(p["iou"] for p in per),
            "iou_rate": _mean(float(p["iou"] >= TARGET_IOU) for p in per),
            "ssim_i": _mean(p["ssim_i"] for p in per),
            "ssim_e": _mean(p["ssim_e"] for p in per),
            "clip": mean_of(p.get("clip") for p in per),
        }
        s["pass"] = (
            s["oracle_rate"] >= TARGET_ORACLE and s["iou_mean"] >= TARGET_IOU and s["ssim_i"] >= TARGET_SSIM_I
        )
        summary[method] = s
    return {
        "images": len(cases),
        "noise": EDIT_NOISE,
        "feather_px": FEATHER_PX,
        "margin_px": MARGIN_PX,
        "band_px": BAND_PX,
        "threshold": cfg.threshold,
        "summary": summary,
        "cases": cases,
    }


# ------------------------------------------------------------------------------------------ edit pairs
def pair_scene(task: str, seed: int, size: int, steps: int, guidance: float) -> tuple[dict, dict, str]:
    """A control scene (2-3 regions on a background, :func:`hmedit.bench.control_scene`) and one edit of
    ``task``, with the colour the edited region should show in the target."""
    from hmedit import bench

    rng = np.random.default_rng([seed, PAIR_TASKS.index(task), 0x9A1E])
    n = int(rng.integers(2, 4))
    kw = dict(size=size, steps=steps, guidance=guidance)
    seed = PAIR_SEEDS + 1000 * PAIR_TASKS.index(task) + seed  # control scenes the control suite does not use
    if task == "addition":
        scene = bench.control_scene(seed, n=n + 1, **kw)
        added = scene["root"]["children"].pop(int(rng.integers(n + 1)))
        return scene, {"id": "edit", "add": added}, bench.colour_of(added["prompt"])
    scene = bench.control_scene(seed, n=n, **kw)
    if task == "attribute":
        node, colour = bench.edit_target(scene, seed)
        region = next(r for r in scene["root"]["children"] if r["id"] == node)
        prompt = region["prompt"].replace(bench.colour_of(region["prompt"]), colour)
        return scene, {"id": "edit", "node": node, "prompt": prompt}, colour
    node = scene["root"]["children"][int(rng.integers(n))]["id"]
    return scene, {"id": "edit", "node": node, "remove": True}, bench.colour_of(scene["root"]["prompt"])


def pair_case(run: _Runner, task: str, seed: int, cfg) -> dict:
    """One edit pair of ``task`` in every variant, scored target against source."""
    from hmedit import bench
    from hmedit.pipeline import Settings, render

    scene, edit, colour = pair_scene(task, seed, cfg.size, cfg.steps, cfg.guidance)
    edited_scene = Scene.model_validate({**scene, "edits": [edit]})
    node = edited_scene.edits[0].touched
    target = edited_scene.edit_target(edited_scene.edits[0])
    masks = bench.region_masks(target if task == "addition" else edited_scene, cfg.size, cfg.size)
    mask = masks[node]
    edited = mask > 0.5
    case: dict[str, Any] = {"task": task, "seed": seed, "node": node, "colour": colour, "variants": {}}
    model = run.b.model
    for name, (regions, inject, blend) in PAIR_VARIANTS.items():
        sc = Scene.model_validate(
            {**scene, "regions": regions, "edits": [{**edit, "inject": inject, "blend": blend}]}
        )
        wall, cpu = time.perf_counter(), time.process_time()
        r = render(sc, model, Settings.of(sc, model, sc.seed_list[0], record=False))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        src, tgt = r.image, r.edits["edit"].image
        if run.b.images is not None:
            from hmedit.outputs.write import save_png

            save_png(run.b.images / "pairs" / f"{task}-{seed}-{name}.png", np.concatenate([src, tgt], 1))
        run.b.tick(f"pairs {task} {seed} {name}")
        case["variants"][name] = {
            "oracle": metrics.region_match(tgt, mask, colour, cfg.threshold, palette=PALETTE),
            "fraction": round(metrics.region_colour_fraction(tgt, mask, colour, palette=PALETTE), 4),
            "ssim_i": round(metrics.ssim_inherent(src, tgt, edited, MARGIN_PX), 4),
            "ssim_e": round(metrics.ssim_edge(src, tgt, edited, BAND_PX), 4),
            "wall_s": round(wall, 3),
            "cpu_s": round(cpu, 3),
        }
    return case


def pair_summary(cases: list[dict], cfg) -> dict:
    tasks: dict[str, Any] = {}
    for task in PAIR_TASKS:
        per = [c for c in cases if c["task"] == task]
        if not per:
            continue
        tasks[task] = {
            v: {
                "oracle_rate": _mean(float(c["variants"][v]["oracle"]) for c in per),
                "ssim_e": _mean(c["variants"][v]["ssim_e"] for c in per),
                "ssim_i": _mean(c["variants"][v]["ssim_i"] for c in per),
                "cpu_s": _mean(c["variants"][v]["cpu_s"] for c in per),
            }
            for v in PAIR_VARIANTS
        }
        tasks[task]["scenes"] = len(per)
        # the target with injection alone, and with injection and prompt-to-prompt's local blending
        tasks[task]["pass"] = bool(tasks[task]["attention+inject"]["ssim_i"] >= TARGET_PAIR_SSIM_I)
        tasks[task]["pass_blend"] = bool(
            tasks[task]["attention+inject+blend"]["ssim_i"] >= TARGET_PAIR_SSIM_I
        )
    ok = [t["pass"] for t in tasks.values()]
    ok_blend = [t["pass_blend"] for t in tasks.values()]
    return {
        "size": [cfg.size, cfg.size],
        "steps": cfg.steps,
        "guidance": cfg.guidance,
        "threshold": cfg.threshold,
        "margin_px": MARGIN_PX,
        "band_px": BAND_PX,
        "variants": {k: {"regions": r, "inject": i, "blend": bl} for k, (r, i, bl) in PAIR_VARIANTS.items()},
        "tasks": tasks,
        "target_ssim_i": TARGET_PAIR_SSIM_I,
        "pass": bool(ok) and all(ok),
        "pass_blend": bool(ok_blend) and all(ok_blend),
        "cases": cases,
    }


def pair_count(cfg) -> int:
    """Edit pairs per task: 10; ``--seeds N``: N; quick: 1."""
    if cfg.quick:
        return 1
    if cfg.seeds is not None:
        return cfg.seeds
    return PAIR_SCENES


def pair_items(cfg) -> list[tuple]:
    n = pair_count(cfg)
    return [("pair", k * n + i, (task, i)) for i in range(n) for k, task in enumerate(PAIR_TASKS)]


def suite_pairs(b) -> dict:
    """``hmedit bench edit-pairs``: the pairs part alone."""
    cfg = b.config
    with tempfile.TemporaryDirectory(prefix="hmedit-bench-pairs-") as tmp_name:
        tmp = Path(tmp_name)
        run = _Runner(b, tmp / "cache")
        cpu = getattr(b.model.device, "type", str(b.model.device)) == "cpu"
        cases = _run_all(b, run, tmp, cfg, pair_items(cfg), WORKERS if cpu else 1)
    out = pair_summary(cases.get("pair", []), cfg)
    out["workers"] = WORKERS if cpu else 1
    return out


# Work items run in forked worker processes (one torch thread each), the model inherited from the parent.
_WORK: dict[str, Any] = {}


def _run_item(item: tuple) -> tuple[str, int, dict]:
    import torch

    torch.set_num_threads(1)
    run, tmp, cfg = _WORK["run"], _WORK["tmp"], _WORK["cfg"]
    if _WORK.get("forked"):
        run.b.tick = lambda label: None  # this process's copy: the parent ticks as results arrive
    kind, index, args = item
    if kind == "edit":
        return kind, index, edit_case(run, tmp, *args, cfg)
    if kind == "pair":
        return kind, index, pair_case(run, *args, cfg)
    return kind, index, recon_case(run, tmp, *args, cfg)


def _quiet_worker() -> None:
    """A forked worker ends on SIGTERM (the CLI's handler turns it into Ctrl-C, which would print a traceback
    from every worker when the pool is torn down) and leaves Ctrl-C to the parent, which stops the pool."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run_all(b, run: _Runner, tmp: Path, cfg, items: list[tuple], workers: int) -> dict[str, list[dict]]:
    """Every item's case, in item order per kind; ``workers`` > 1: forked processes (CPU only). With an
    images folder, the cases finished so far are also written to ``edit-partial.json`` beside it as they
    arrive (a long run that is stopped keeps them)."""
    import multiprocessing as mp

    out: dict[str, dict[int, dict]] = {}

    def keep() -> None:
        if b.images is not None:
            from hmedit.outputs.write import save_json

            save_json(b.images.parent / "edit-partial.json", out)

    renders = {
        "edit": len(METHODS),
        "recon": 2 * len(METHODS),
        "photo": 2 * len(METHODS),
        "pair": len(PAIR_VARIANTS),
    }
    _WORK.update(run=run, tmp=tmp, cfg=cfg)
    try:
        if workers > 1:
            _WORK["forked"] = True
            with mp.get_context("fork").Pool(workers, initializer=_quiet_worker) as pool:
                for kind, index, case in pool.imap_unordered(_run_item, items):
                    out.setdefault(kind, {})[index] = case
                    keep()
                    for _ in range(renders[kind]):
                        b.tick(f"edit {kind} {index}")
                pool.close()  # done: let the workers end instead of terminating them
                pool.join()
        else:
            for item in items:
                kind, index, case = _run_item(item)
                out.setdefault(kind, {})[index] = case
    finally:
        _WORK.clear()
    return {k: [v[i] for i in sorted(v)] for k, v in out.items()}


def image_counts(cfg) -> tuple[int, int]:
    """Reconstruction and edit images: 20 and 24; ``--seeds N``: N each; quick: 2 each."""
    if cfg.quick:
        return 2, 2
    if cfg.seeds is not None:  # --seeds N sets every suite's count
        return cfg.seeds, cfg.seeds
    return RECON_IMAGES, EDIT_IMAGES


def suite_edit(b) -> dict:
    """The suite (see the module docstring). Quick mode: 2 images each, the configured (quick) steps."""
    cfg = b.config
    n_recon, n_edit = image_counts(cfg)
    size = cfg.size
    out: dict[str, Any] = {
        "size": [size, size],
        "steps": cfg.steps,
        "guidance": cfg.guidance,
        "methods": list(METHODS),
    }
    with tempfile.TemporaryDirectory(prefix="hmedit-bench-edit-") as tmp_name:
        tmp = Path(tmp_name)
        run = _Runner(b, tmp / "cache")
        out["cost"] = _cost(run, tmp, size, cfg.steps, cfg.guidance)
        if b.images is not None:
            from hmedit.outputs.write import save_json

            save_json(b.images.parent / "edit-cost.json", out["cost"])
        run = _Runner(b, tmp / "cache")
        items: list[tuple] = []
        for i in range(n_recon):
            w = world.sample(RECON_SEEDS + i, size)
            items.append(("recon", i, (f"world-{RECON_SEEDS + i}", w.image, w.caption)))
        folder = photos_dir()
        for i, (name, prompt) in enumerate(PHOTO_PROMPTS.items()):
            path = folder / f"{name}.png"
            if path.is_file():
                from PIL import Image

                img = np.asarray(Image.open(path).convert("RGB").resize((size, size)))
                items.append(("photo", i, (name, img, prompt)))
        for i, (seed, w, k, colour) in enumerate(edit_images(n_edit, size)):
            items.append(("edit", i, (seed, w, k, colour)))
        items += pair_items(cfg)
        # interleaved, so that a stopped run has some of each: world reconstructions, edits, photographs
        rank = {"recon": 0, "edit": 1, "photo": 2, "pair": 3}
        items.sort(key=lambda it: (it[1] + (0.5 if it[0] == "photo" else 0), rank[it[0]]))
        cpu = getattr(b.model.device, "type", str(b.model.device)) == "cpu"
        cases = _run_all(b, run, tmp, cfg, items, WORKERS if cpu else 1)
        out["workers"] = WORKERS if cpu else 1
        out["reconstruction"] = recon_summary(cases.get("recon", []), cfg)
        out["photos"] = recon_summary(cases["photo"], cfg) if cases.get("photo") else {"images": 0}
        out["edits"] = edit_summary(cases.get("edit", []), cfg)
        out["pairs"] = pair_summary(cases.get("pair", []), cfg)
    rec = out["reconstruction"]["mean_psnr_db"]
    g = f"{float(cfg.guidance):g}"
    nti, ddim, ceiling = rec[f"null_text@{g}"], rec[f"ddim@{g}"], rec["ceiling_db"]
    out["pass_reconstruction"] = (
        nti >= ceiling - TARGET_NTI_CEILING_DB and nti >= ddim + TARGET_NTI_OVER_DDIM_DB
    )
    out["pass_edits_null_text"] = out["edits"]["summary"]["null_text"]["pass"]
    cost = out["cost"]
    out["pass_cost"] = cost["pass_null_text"] and cost["pass_cached"] and cost["pass_negative_prompt"]
    out["targets"] = {
        "null_text_within_ceiling_db": TARGET_NTI_CEILING_DB,
        "null_text_over_ddim_db": TARGET_NTI_OVER_DDIM_DB,
        "oracle_rate": TARGET_ORACLE,
        "iou": TARGET_IOU,
        "ssim_i": TARGET_SSIM_I,
        "null_text_s": TARGET_NTI_S,
        "cached_s": TARGET_CACHED_S,
        "negative_prompt_ratio": TARGET_NPI_RATIO,
    }
    out["pass"] = out["pass_reconstruction"] and out["pass_edits_null_text"] and out["pass_cost"]
    return out


def render_count(cfg) -> int:
    """Renders of the suite (for the progress bar)."""
    n_recon, n_edit = image_counts(cfg)
    photos = sum((photos_dir() / f"{n}.png").is_file() for n in PHOTO_PROMPTS)
    pairs = len(PAIR_TASKS) * pair_count(cfg) * len(PAIR_VARIANTS)
    return COST_RENDERS + (n_recon + photos) * 2 * len(METHODS) + n_edit * len(METHODS) + pairs


def pairs_table(p: dict):
    """The edit pairs' figures (MRGD Table 1's layout: per task, oracle / SSIM-e / SSIM-i per variant)."""
    from rich.table import Table

    t = Table(
        title=f"edit pairs from noise: {p['size'][0]}x{p['size'][1]}, {p['steps']} DDIM steps, guidance "
        f"{p['guidance']:g} (oracle / SSIM-e / SSIM-i / CPU s per pair)",
        title_justify="left",
    )
    t.add_column("variant", justify="left")
    for task, f in p["tasks"].items():
        t.add_column(f"{task} ({f['scenes']})", justify="right")
    for v in PAIR_VARIANTS:
        t.add_row(
            v,
            *(
                f"{100 * f[v]['oracle_rate']:.0f}% / {f[v]['ssim_e']:.3f} / {f[v]['ssim_i']:.3f} / "
                f"{f[v]['cpu_s']:.1f}"
                for f in p["tasks"].values()
            ),
        )

    def mark(ok) -> str:
        return "" if ok is None else "[green]pass[/]" if ok else "[bold red]fail[/]"

    target = p["target_ssim_i"]
    t.add_row(
        "target", *(f"SSIM-i >= {target} with injection {mark(f.get('pass'))}" for f in p["tasks"].values())
    )
    t.add_row("", *(f"and local blending {mark(f.get('pass_blend'))}" for f in p["tasks"].values()))
    return t


def table(f: dict):
    """The suite's figures as a rich table (``hmedit bench edit``)."""
    from rich.table import Table

    def mark(ok: bool) -> str:
        return "[green]pass[/]" if ok else "[bold red]fail[/]"

    g = f"{float(f['guidance']):g}"
    t = Table(
        title=f"edit: {f['size'][0]}x{f['size'][1]}, {f['steps']} DDIM steps, guidance 1 and {g}",
        title_justify="left",
    )
    t.add_column("figure", justify="left")
    for m in METHODS:
        t.add_column(m, justify="right")
    for part in ("reconstruction", "photos"):
        r = f.get(part) or {}
        if not r.get("images"):
            continue
        p = r["mean_psnr_db"]
        for gg in ("1", g):
            t.add_row(
                f"{part} PSNR dB, guidance {gg} ({r['images']} images; VAE {p['ceiling_db']:.2f})",
                *(f"{p[f'{m}@{gg}']:.2f}" for m in METHODS),
            )
    e = f["edits"]["summary"]
    n = f["edits"]["images"]
    t.add_row(f"edits: oracle ({n} images)", *(f"{100 * e[m]['oracle_rate']:.0f}%" for m in METHODS))
    t.add_row("edits: shape IoU", *(f"{e[m]['iou_mean']:.3f}" for m in METHODS))
    t.add_row("edits: SSIM-i", *(f"{e[m]['ssim_i']:.4f}" for m in METHODS))
    t.add_row("edits: SSIM-e", *(f"{e[m]['ssim_e']:.4f}" for m in METHODS))
    t.add_row(
        "edits: CLIP (toy-clip, region vs prompt)",
        *("n/a" if e[m].get("clip") is None else f"{e[m]['clip']:.3f}" for m in METHODS),
    )
    c = f["cost"]
    t.add_row(
        "cost (CPU s)",
        f"render {min(c['plain']['cpu_s'], c['plain_again']['cpu_s']):.1f}",
        "",
        f"x{c['negative_prompt_ratio_cpu']:.2f} {mark(c['pass_negative_prompt'])}",
        f"invert {c['null_text_inversion_cpu_s']:.1f} {mark(c['pass_null_text'])}, cached "
        f"+{c['cached_adds_cpu_s']:.2f} {mark(c['pass_cached'])}",
    )
    if "negative_prompt_edit_ratio_cpu" in c:
        t.add_row(
            "cost of an edit (CPU s)",
            f"render {c['plain_edit']['cpu_s']:.1f}",
            "",
            f"x{c['negative_prompt_edit_ratio_cpu']:.2f} (inversion included)",
            "",
        )
    t.add_row(
        "targets",
        "",
        "",
        "",
        f"recon {mark(f['pass_reconstruction'])}, edits {mark(f['pass_edits_null_text'])}",
    )
    if f.get("pairs", {}).get("tasks"):
        from rich.console import Group

        return Group(t, pairs_table(f["pairs"]))
    return t
