"""``hmedit bench`` suites for sampling above the native size (registered in :mod:`hmedit.bench`).

- tiling: example scenes rendered at ``tiling_size`` (1024) by hmedit at its defaults, by hmedit with the
  peers' plain tiling (no window offsets, no fading weights), and by diffusers'
  StableDiffusionPanoramaPipeline at its defaults (views of 64 latent px, stride 8, one view per UNet call)
  with the scene's root prompt, same seed, steps, guidance and DDIM scheduler. Whole calls are timed (prompt
  encoding, sampling, decoding); each image gets a seam score at its own tile borders
  (:func:`hmedit.metrics.seam_score`).
- scale (opt-in, for accelerators): the memory scene at each of ``scale_sizes`` (2048, 4096) by hmedit at its
  defaults and by the Panorama pipeline at its defaults: seconds per sampling step, decoding seconds and peak
  accelerator memory (CUDA's allocator), each contender measured alone. Runs on any model; ``--model
  random:sd15`` is SD 1.5's published architecture with random weights (speed does not depend on them).
- memory: a ``memory_size`` (4096) render through ``hmedit render`` in a child process, which reports its peak
  resident memory (ru_maxrss) at the end; the render's outputs (image, influence maps) are written as usual.
  Then the exact tiled VAE decode at that size against four untiled decodes of its quarters, each in a child
  process (:mod:`hmedit.bench_vae`: seconds, peak RSS, pixels against the pass-based engine), under "vae".
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hmedit import metrics
from hmedit.errors import HmeditError
from hmedit.sampling.tiling import Window, panorama_views, windows

SCENES_DIR = Path(__file__).resolve().parents[1] / "scenes"
SEAM_TARGET = 1.10
SPEED_TARGET = 3.0  # Panorama seconds / hmedit seconds, at least
MEMORY_TARGET_GIB = 4.0


def borders(wins: list[Window], scale: int, height: int, width: int) -> tuple[list[int], list[int]]:
    """Pixel coordinates (x, y) where windows start or end inside the image: the tile borders."""
    xs = {v * scale for w in wins for v in (w.x0, w.x1) if 0 < v * scale < width}
    ys = {v * scale for w in wins for v in (w.y0, w.y1) if 0 < v * scale < height}
    return sorted(xs), sorted(ys)


WORLD_REFERENCE_IMAGES = 200
WORLD_REFERENCE_SEED = 20_000_000  # above the training seeds and the held-out ones


def world_reference(n: int = WORLD_REFERENCE_IMAGES, scale: int = 8, every: int = 4) -> dict:
    """The seam score of the bundled model's own world, where no tiling ever happened: ``n`` procedural
    images at the native size, scored at latent-grid lines ``every`` latent px apart (as tile borders lie:
    always on latent-pixel boundaries), and at lines half a latent pixel off that grid. The world draws its
    textures (stripes, dots, checks) on an 8 px lattice, so its grid-line score is well above 1: a render
    that reproduces the world scores so too at any latent-grid line, tile border or not."""
    from hmedit.toy import world

    size = world.SIZE
    grid = list(range(every * scale, size, every * scale))
    off = [g + scale // 2 for g in grid if g + scale // 2 < size]
    on_grid, off_grid = [], []
    for i in range(n):
        img = world.sample(WORLD_REFERENCE_SEED + i).image
        on_grid.append(metrics.seam_score(img, grid, grid))
        off_grid.append(metrics.seam_score(img, off, off))
    return {
        "images": n,
        "size": size,
        "grid_lines_px": grid,
        "seam_on_latent_grid": round(float(sum(on_grid) / n), 4),
        "seam_off_grid": round(float(sum(off_grid) / n), 4),
    }


def vae_lattice(vae, n: int = 40, size: int = 120, shifts: tuple[int, ...] = (0, 4)) -> dict:
    """How much the VAE relies on the world's texture lattice: mean PSNR (dB) of encode-decode round trips of
    the textured world images among ``n`` (stripes, dots or checks anywhere), cut at ``size`` px from
    offsets (0: textures in step with the latent grid; 4: half a latent pixel off it)."""
    import math

    import torch

    from hmedit.toy import world

    scores: dict[str, list[float]] = {str(s): [] for s in shifts}
    for i in range(n):
        w = world.sample(WORLD_REFERENCE_SEED + 10_000 + i)
        if w.background_texture == "solid" and all(o.texture == "solid" for o in w.objects):
            continue
        for s in shifts:
            img = torch.from_numpy(w.image[s : s + size, s : s + size].copy()).permute(2, 0, 1)[None]
            x = (img.float() / 127.5 - 1).to(vae.device, vae.dtype)
            with torch.no_grad():
                y = vae.decode(vae.encode(x).latent_dist.mode()).sample
            out = ((y.float().clamp(-1, 1) + 1) * 127.5).round().cpu()
            p = metrics.psnr(out.numpy(), img.numpy())
            scores[str(s)].append(99.0 if math.isinf(p) else p)  # JSON has no infinity
    return {s: round(sum(v) / len(v), 2) if v else None for s, v in scores.items()} | {
        "images": len(scores[str(shifts[0])])
    }


def _scene_path(name: str) -> Path:
    path = Path(name) if name.endswith(".yaml") else SCENES_DIR / f"{name}.yaml"
    if not path.exists():
        raise HmeditError(
            f"bench scene {path} not found", hint="run the tiling suite from a checkout of hmedit (scenes/)"
        )
    return path


def suite_tiling(b) -> dict:
    import torch

    from hmedit.pipeline import Settings, render
    from hmedit.scene.load import load_scene
    from hmedit.scene.spec import Tiling

    cfg, model = b.config, b.model
    size, steps = cfg.tiling_size, cfg.tiling_steps
    f = model.vae_scale_factor
    pipe = _panorama_pipe(model)
    scenes: dict[str, Any] = {}
    names = tiling_scene_names(cfg)
    for name in [*names, *(n for n in cfg.panorama_scenes if n not in names)]:
        sc = load_scene(_scene_path(name))
        seed = sc.seed_list[0]
        row: dict[str, Any] = {"seed": seed, "prompt": sc.root.prompt}
        variants = {"hmedit": sc}
        compare = name in cfg.panorama_scenes
        if compare:
            plain = (sc.tiling or Tiling()).model_copy(update={"offsets": False, "fade": False})
            variants["hmedit_plain"] = sc.model_copy(update={"tiling": plain})
        for label, variant in variants.items():
            s = Settings.of(variant, model, seed, steps=steps, size=(size, size), record=False)
            start = time.perf_counter()
            with torch.no_grad():
                result = render(variant, model, s)
            seconds = time.perf_counter() - start
            ts = s.tiling
            grid = windows(size // f, size // f, ts.tile, ts.overlap) if ts else []
            bx, by = borders(grid, f, size, size)
            row[label] = {
                "seconds": round(seconds, 2),
                "seam": round(metrics.seam_score(result.image, bx, by), 4),
                "seam_phase": round(metrics.seam_score(result.image, bx, by, period=f), 4),
                "tiling": None if ts is None else asdict(ts),
                "windows_per_step": len(grid),
            }
            _save(b, f"{name}-{label}", result.image)
            b.tick(f"tiling {name} {label}")
        if compare:
            row["panorama"] = _panorama(pipe, sc, size, steps, seed, b, name, s.guidance)
            row["speedup"] = round(row["panorama"]["seconds"] / row["hmedit"]["seconds"], 2)
        scenes[name] = row
    seams = [r["hmedit"]["seam"] for r in scenes.values()]
    reference = None
    if model.ref.source == "bundled":
        reference = world_reference(8 if cfg.quick else WORLD_REFERENCE_IMAGES)
        reference["vae_psnr_by_offset_px"] = vae_lattice(model.vae, 8 if cfg.quick else 40)
    comp = composition(b)
    compared = [r for r in scenes.values() if "panorama" in r]
    speedups = [r["speedup"] for r in compared]
    no_worse = all(r["hmedit"]["seam"] <= max(r["panorama"]["seam"], SEAM_TARGET) for r in compared)
    return {
        "size": [size, size],
        "steps": steps,
        "scheduler": "ddim",
        "scenes": scenes,
        "seam_max": max(seams),
        "seam_phase_max": max(r["hmedit"]["seam_phase"] for r in scenes.values()),
        "seam_target": SEAM_TARGET,
        "speedup_min": min(speedups) if speedups else None,
        "speedup_target": SPEED_TARGET,
        "seam_no_worse_than_panorama": no_worse,
        "world_reference": reference,
        "composition": comp,
        "pass": max(seams) <= SEAM_TARGET
        and bool(speedups)
        and min(speedups) >= SPEED_TARGET
        and no_worse
        and comp["pass"],
    }


COMPOSITION_TARGET = 0.03  # region colour match above the native size: at most this far below native's


def composition_scene(seed: int, size: int, steps: int, variant: str = "defaults") -> dict:
    """The composition check's scene ``seed``: the control suite's scene (2-4 coloured squares and circles
    on a background, :func:`hmedit.bench.control_scene`) at ``size`` px from noise, at hmedit's defaults;
    ``variant`` "plain": the tiling of old, every window denoised from noise (``tiling.coarse: false``)."""
    from hmedit.bench import control_scene

    raw = control_scene(seed, size=size, steps=steps)
    raw["name"] = f"composition-{seed}-{size}-{variant}"
    if variant == "plain":
        raw["tiling"] = {"coarse": False}
    elif variant != "defaults":
        raise ValueError(f"unknown variant {variant!r}")
    return raw


def composition_case(b, seed: int, size: int, variant: str = "defaults") -> dict:
    """One render of :func:`composition_scene`, scored by the control suite's oracle: per region, the
    fraction of its pixels that show its colour (:func:`hmedit.metrics.region_colour_fraction`), and whether
    it matches (>= the control threshold); whole-call seconds."""
    import torch

    from hmedit.bench import _score_regions, colour_of, region_masks
    from hmedit.pipeline import Settings, render
    from hmedit.scene.spec import Scene

    cfg, model = b.config, b.model
    sc = Scene.model_validate(composition_scene(seed, size, cfg.composition_steps, variant))
    settings = Settings.of(sc, model, seed, record=False)
    start, cpu = time.perf_counter(), time.process_time()
    with torch.no_grad():
        result = render(sc, model, settings)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    masks = region_masks(sc, size, size)
    colours = {n.id: colour_of(n.prompt) for n in sc.root.children}
    scores = _score_regions(result.image, masks, colours, cfg.threshold)
    _save(b, sc.name, result.image, suite="composition")
    b.tick(f"composition {seed} {size} {variant}")
    ts = settings.tiling
    return {
        "seed": seed,
        "size": size,
        "variant": variant,
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu, 2),  # this process's CPU time: on a shared machine, the fairer cost
        "timings": result.timings,
        "tiling": None if ts is None else asdict(ts),
        "matched": sum(r["match"] for r in scores.values()),
        "regions": len(scores),
        "fraction_mean": round(sum(r["fraction"] for r in scores.values()) / len(scores), 4),
        "scores": scores,
    }


def composition_cases(cfg, native: int) -> list[tuple[int, int, str]]:
    """(seed, size, variant) of every render of the composition check, in the order they run: every scene
    at the ``native`` size, then each size at the defaults and (``composition_plain``) with plain tiling."""
    cases = [(seed, native, "defaults") for seed in range(cfg.composition_scenes)]
    for size in cfg.composition_sizes:
        for variant in ("defaults", "plain") if cfg.composition_plain else ("defaults",):
            cases += [(seed, size, variant) for seed in range(cfg.composition_scenes)]
    return cases


def summarise_composition(rows: list[dict], native: int) -> dict:
    """Per size and variant: regions matched / regions (the match rate), mean region colour fraction,
    mean seconds per image, over the scenes that ran; ``drop``: native's match rate minus this one's, on the
    same scenes; ``pass``: every size at the defaults within COMPOSITION_TARGET of native."""
    groups: dict[str, dict[str, Any]] = {}
    base = {r["seed"]: r for r in rows if r["size"] == native}
    for r in rows:
        key = "native" if r["size"] == native else f"{r['size']}-{r['variant']}"
        groups.setdefault(key, {"size": r["size"], "variant": r["variant"], "rows": []})["rows"].append(r)
    out: dict[str, Any] = {}
    for key, g in groups.items():
        rs = g.pop("rows")
        matched, regions = sum(r["matched"] for r in rs), sum(r["regions"] for r in rs)
        seeds = [r["seed"] for r in rs]
        nat = [base[s] for s in seeds if s in base]
        nat_rate = sum(r["matched"] for r in nat) / max(1, sum(r["regions"] for r in nat))
        out[key] = g | {
            "scenes": len(rs),
            "seeds": seeds,
            "matched": matched,
            "regions": regions,
            "match": round(matched / regions, 4),
            "native_match_same_scenes": round(nat_rate, 4),
            "drop": round(nat_rate - matched / regions, 4),
            "fraction_mean": round(sum(r["fraction_mean"] for r in rs) / len(rs), 4),
            "seconds_mean": round(sum(r["seconds"] for r in rs) / len(rs), 2),
        }
    checked = [g for k, g in out.items() if k != "native" and g["variant"] == "defaults"]
    return {
        "by": out,
        "target_drop": COMPOSITION_TARGET,
        "pass": bool(checked) and all(g["drop"] <= COMPOSITION_TARGET for g in checked),
    }


def composition(b) -> dict:
    """Whether renders above the native size keep the native composition: the control suite's region
    scenes at the native size and at each of ``composition_sizes`` from noise, at hmedit's defaults and with
    plain tiling, scored by the same oracle."""
    cfg, native = b.config, b.model.native_size
    rows = [composition_case(b, *case) for case in composition_cases(cfg, native)]
    return {
        "scenes": cfg.composition_scenes,
        "sizes": [native, *cfg.composition_sizes],
        "steps": cfg.composition_steps,
        "threshold": cfg.threshold,
        **summarise_composition(rows, native),
        "cases": rows,
    }


def _panorama_pipe(model):
    """diffusers' Panorama pipeline on the model's own modules, with DDIM (as hmedit's contender uses)."""
    from diffusers import StableDiffusionPanoramaPipeline

    from hmedit.models.load import make_scheduler

    pipe = StableDiffusionPanoramaPipeline(
        **model.components(), scheduler=make_scheduler("ddim", model.scheduler_config)
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiling_scene_names(cfg) -> list[str]:
    """The example scenes the tiling suite renders: the configured ones, else every scene in scenes/."""
    if cfg.tiling_scenes is not None:
        return list(cfg.tiling_scenes)
    return sorted(p.stem for p in SCENES_DIR.glob("*.yaml"))


def _panorama(pipe, sc, size: int, steps: int, seed: int, b, name: str, guidance: float) -> dict:
    """diffusers' Panorama pipeline at its defaults on the scene's root prompt: seconds and seam score."""
    import torch

    start = time.perf_counter()
    with torch.no_grad():
        img = pipe(
            sc.root.prompt,
            negative_prompt=sc.root.negative or None,
            height=size,
            width=size,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=torch.Generator("cpu").manual_seed(seed),
            output_type="np",
        ).images[0]
    seconds = time.perf_counter() - start
    img = (img * 255).round().astype("uint8")
    f = pipe.vae_scale_factor
    views = panorama_views(size // f, size // f)  # get_views' defaults: window 64, stride 8 (latent px)
    bx, by = borders(views, f, size, size)
    _save(b, f"{name}-panorama", img)
    b.tick(f"tiling {name} panorama")
    return {
        "seconds": round(seconds, 2),
        "seam": round(metrics.seam_score(img, bx, by), 4),
        "seam_phase": round(metrics.seam_score(img, bx, by, period=f), 4),
        "views_per_step": len(views),
    }


def _save(b, label: str, image, suite: str = "tiling") -> None:
    if b.images is not None:
        from hmedit.outputs.write import save_png

        save_png(b.images / suite / f"{label}.png", image)


def memory_scene(size: int, steps: int) -> dict:
    """A 3-region scene at ``size`` px, generated from noise, tiled at the defaults."""
    return {
        "name": f"memory-{size}",
        "size": [size, size],
        "steps": steps,
        "guidance": 5.0,
        "seed": 0,
        "root": {
            "prompt": "a yellow background",
            "children": [
                {"id": "square", "prompt": "a blue square", "mask": {"rect": [0.1, 0.1, 0.4, 0.4]}},
                {"id": "circle", "prompt": "a red circle", "mask": {"ellipse": [0.55, 0.5, 0.35, 0.35]}},
                {"id": "star", "prompt": "a green star", "mask": {"rect": [0.1, 0.6, 0.3, 0.3]}},
            ],
        },
    }


class _Meter:
    """Wall time (synchronised on CUDA) and peak accelerator memory of what runs inside ``with``."""

    def __init__(self, device) -> None:
        import torch

        self.torch, self.cuda = torch, getattr(device, "type", "") == "cuda"
        self.device, self.seconds, self.peak_gib = device, 0.0, None

    def __enter__(self) -> _Meter:
        if self.cuda:
            self.torch.cuda.synchronize(self.device)
            self.torch.cuda.reset_peak_memory_stats(self.device)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self.torch.cuda.synchronize(self.device)
            self.peak_gib = round(self.torch.cuda.max_memory_allocated(self.device) / 2**30, 3)
        self.seconds = round(time.perf_counter() - self.start, 3)


def _out_of_memory(e: BaseException) -> bool:
    return isinstance(e, MemoryError) or "out of memory" in str(e).lower()


def suite_scale(b) -> dict:
    import torch

    from hmedit.pipeline import Settings, render
    from hmedit.scene.spec import Scene

    cfg, model = b.config, b.model
    steps, f = cfg.scale_steps, model.vae_scale_factor
    # diffusers' Panorama pipeline is SD 1.x/2.x only: on other families hmedit runs alone
    pipe = _panorama_pipe(model) if model.family.name in ("sd1", "sd2") else None
    sizes: dict[str, Any] = {}
    for size in cfg.scale_sizes:
        scene = Scene.model_validate(memory_scene(size, steps))
        settings = Settings.of(scene, model, 0)
        with _Meter(model.device) as m, torch.no_grad():
            result = render(scene, model, settings)
        hm = {
            "seconds": m.seconds,
            "s_per_step": round(result.timings["sample"] / steps, 3),
            "decode_s": result.timings["decode"],
            "peak_gib": m.peak_gib,
            "windows_per_step": result.stats.get("windows_total", 0) // max(steps, 1),
            "timings": result.timings,
        }
        _save(b, f"scale-{size}-hmedit", result.image, suite="scale")
        b.tick(f"scale {size} hmedit")
        if pipe is None:
            sizes[str(size)] = {
                "hmedit": hm,
                "panorama": {"skipped": f"no Panorama pipeline for {model.family.label}"},
            }
            continue
        sizes[str(size)] = {
            "hmedit": hm,
            "panorama": _panorama_scale(pipe, scene, size, steps, f, model, settings.guidance),
        }
        b.tick(f"scale {size} panorama")
    return {"steps": steps, "scheduler": settings.scheduler, "family": model.family.name, "sizes": sizes}


def _panorama_scale(pipe, scene, size: int, steps: int, f: int, model, guidance: float) -> dict:
    """Panorama at its defaults: sampling (to latents) and decoding (its untiled VAE) measured apart; an
    out-of-memory failure is a figure, not an error."""
    import torch

    row: dict[str, Any] = {"views_per_step": len(panorama_views(size // f, size // f))}
    try:
        with _Meter(model.device) as m, torch.no_grad():
            latents = pipe(
                scene.root.prompt,
                height=size,
                width=size,
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=torch.Generator("cpu").manual_seed(0),
                output_type="latent",
            ).images
        row.update(s_per_step=round(m.seconds / steps, 3), sample_peak_gib=m.peak_gib)
        with _Meter(model.device) as m, torch.no_grad():
            pipe.vae.decode(latents.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor)
        row.update(decode_s=m.seconds, decode_peak_gib=m.peak_gib)
    except (RuntimeError, MemoryError) as e:
        if not _out_of_memory(e):
            raise
        row["failed"] = "out of memory"
    finally:
        if getattr(model.device, "type", "") == "cuda":
            torch.cuda.empty_cache()
    return row


def suite_memory(b) -> dict:
    import yaml

    from hmedit.models.load import dtype_flag

    cfg, model = b.config, b.model
    with tempfile.TemporaryDirectory(prefix="hmedit-memory-") as tmp:
        scene = Path(tmp) / "memory.yaml"
        scene.write_text(yaml.safe_dump(memory_scene(cfg.memory_size, cfg.memory_steps)), encoding="utf-8")
        cmd = [sys.executable, "-m", "hmedit.bench_tiled", str(scene), str(Path(tmp) / "out"), model.ref.name]
        dtype = dtype_flag(model.dtype)
        cmd += ["--device", str(model.device), "--dtype", dtype]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            raise HmeditError(f"the {cfg.memory_size} px memory render failed: {proc.stderr.strip()[-500:]}")
        child = json.loads(proc.stdout.strip().splitlines()[-1])
    b.tick("memory")
    gib = child["max_rss_kib"] / 2**20
    from hmedit import bench_vae

    vae = bench_vae.measure(model.vae, cfg.memory_size, compare="half" if cfg.quick else "full", tick=b.tick)
    return {
        "vae": vae,
        "size": [cfg.memory_size, cfg.memory_size],
        "steps": cfg.memory_steps,
        "seconds": round(seconds, 1),
        "peak_rss_gib": round(gib, 3),
        "target_gib": MEMORY_TARGET_GIB,
        "timings": child["timings"],
        "pass": gib <= MEMORY_TARGET_GIB,
    }


def _memory_child(argv: list[str]) -> None:
    """Render one scene as ``hmedit render`` does and print {"max_rss_kib", "timings"} as the last line."""
    import resource

    from hmedit.batch import Batch, Options

    scene, out, model = argv[:3]
    device = argv[argv.index("--device") + 1] if "--device" in argv else "auto"
    dtype = argv[argv.index("--dtype") + 1] if "--dtype" in argv else "auto"
    (result,) = Batch(Options(out=Path(out), model=model, device=device, dtype=dtype)).run([Path(scene)])
    if result.error:
        sys.exit(f"memory render: {result.error}")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"max_rss_kib": rss, "timings": (result.record or {}).get("timings")}, default=str))


if __name__ == "__main__":
    _memory_child(sys.argv[1:])
