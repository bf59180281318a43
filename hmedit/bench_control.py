"""``hmedit bench control-net``: per-node ControlNet (Collage Diffusion §4.3) on generated collages.

Each scene is a collage of two RGBA layers of world objects (solid colour, no outline, apart from each other)
over an init image of plain background colour: the background is kept (noise 0) and both objects are re-made
from noise (noise 1), so their shape comes only from their prompt, their region and, for the first, its
control (``source: layer``, ``kind: edges``; the model's bundled ControlNet). Figures, side by side, same
seeds:

- structure: the controlled object's IoU with its layer's shape (pixels whose nearest palette colour is the
  object's), with the control and without it (the same scene with no control at all); and the same with the
  controlled node's region loosened to its layer's bounding box (``loose``), where only the control knows
  the shape (with the layer as region, hmedit's regional attention alone already draws the silhouette);
- locality: the uncontrolled object's mean absolute pixel change (0..255) between the two renders, over its
  region outside the controlled node's mask dilated by its feather plus a margin;
- cost: one scene timed with and without its control, alternating after a warm-up each (medians);
- tiling: a few scenes rendered untiled at ``untiled_size`` (256) and tiled at ``tiled_size`` (1024) with the
  control, few steps: the IoU at each size and the seam score at the tile borders (at the 256 px render: at
  the borders a tiled render of that size would have, for reference).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hmedit import metrics
from hmedit.scene.spec import Scene
from hmedit.toy import world

IOU_TARGET = 0.85
OUTSIDE_TARGET = 3.0  # 0..255 units
COST_TARGET = 1.4
SHAPES = ("circle", "square", "triangle", "star", "ring")
_STREAM = 5  # bench._STREAM's next free stream


@dataclass(frozen=True)
class ControlNetConfig:
    scenes: int = 20
    size: int = 128
    steps: int = 30
    guidance: float = 7.5
    feather: float = 2.0  # px at the scene's size
    margin: float = 4.0  # px beyond the feather that the locality figure ignores
    repeats: int = 3
    tiled_scenes: int = 2
    untiled_size: int = 256
    tiled_size: int = 1024
    tiled_steps: int = 6

    @classmethod
    def of(cls, cfg) -> ControlNetConfig:
        """From the bench's Config (quick: seconds; ``--seeds``: the number of scenes)."""
        if cfg.quick:
            return cls(
                scenes=min(cfg.control_scenes, 2),
                size=cfg.size,
                steps=cfg.steps,
                guidance=cfg.guidance,
                repeats=1,
                tiled_scenes=1,
                untiled_size=128,
                tiled_size=256,
                tiled_steps=2,
            )
        n = cfg.seeds if cfg.seeds is not None else cls.scenes  # --seeds N, else this suite's own count
        return cls(scenes=n, size=cfg.size, steps=cfg.steps, guidance=cfg.guidance, repeats=cfg.repeats)


def object_layer(shape: str, colour: str, cx: float, cy: float, r: float, size: int) -> np.ndarray:
    """A world object alone on a transparent frame: RGBA uint8 [size, size, 4] (alpha = its coverage)."""
    _, (cov,) = world.render("black", "solid", [(shape, colour, "solid", cx, cy, r)], size=size)
    out = np.zeros((size, size, 4), np.uint8)
    out[..., :3] = world.PALETTE[colour]
    out[..., 3] = np.clip(np.rint(cov * 255), 0, 255).astype(np.uint8)
    return out


def collage(seed: int, folder: Path, *, size: int = 128) -> dict[str, Any]:
    """The pictures of scene ``seed`` written into ``folder`` (init image, two layers, all ``size`` px) and
    what they show: background colour, and per object shape, colour, layer file."""
    rng = np.random.default_rng([_STREAM, seed])
    colours = [str(c) for c in rng.choice(world.COLOURS, 3, replace=False)]
    shapes = [str(s) for s in rng.choice(SHAPES, 2)]
    for _ in range(1000):
        r = rng.uniform(0.2, 0.27, 2) * size
        c = [rng.uniform(r[k] * 1.05, size - r[k] * 1.05, 2) for k in range(2)]
        if np.hypot(*(c[0] - c[1])) > (r[0] + r[1]) * 1.15:
            break
    from PIL import Image

    init = np.empty((size, size, 3), np.uint8)
    init[:] = world.PALETTE[colours[0]]
    Image.fromarray(init).save(folder / f"{seed}-init.png")
    objects = []
    for k in range(2):
        layer = object_layer(shapes[k], colours[k + 1], float(c[k][0]), float(c[k][1]), float(r[k]), size)
        name = folder / f"{seed}-layer{k}.png"
        Image.fromarray(layer, "RGBA").save(name)
        ys, xs = np.nonzero(layer[..., 3] > 127)
        box = [
            xs.min() / size,
            ys.min() / size,
            (xs.max() + 1 - xs.min()) / size,
            (ys.max() + 1 - ys.min()) / size,
        ]
        objects.append(
            {
                "shape": shapes[k],
                "colour": colours[k + 1],
                "layer": str(name),
                "box": [round(float(v), 4) for v in box],
            }
        )
    return {"background": colours[0], "init": str(folder / f"{seed}-init.png"), "objects": objects}


def control_net_scene(
    seed: int,
    pics: dict,
    *,
    size: int,
    steps: int,
    guidance: float,
    feather: float,
    control: bool = True,
    loose: bool = False,
) -> dict:
    """The collage as a scene: node ``ctl`` (the first object, with its layer's edges as control when
    ``control``) and node ``free`` (the second, never controlled). ``loose``: ``ctl``'s region is its
    layer's bounding box instead of the layer (a rect mask), so that only the control gives the shape; its
    control is then the layer picture's edges (``source: <file>``)."""
    nodes = []
    for node_id, obj in zip(("ctl", "free"), pics["objects"], strict=True):
        node: dict[str, Any] = {
            "id": node_id,
            "prompt": world.object_phrase(obj["colour"], obj["shape"]),
            "layer": obj["layer"],
            "scale": 1.0,
            "noise": 1.0,
            "feather": feather,
        }
        if loose and node_id == "ctl":
            del node["layer"], node["scale"]
            node["mask"] = {"rect": obj["box"]}
        if control and node_id == "ctl":
            source = obj["layer"] if loose else "layer"
            node["control"] = {"source": source, "kind": "edges"}
        nodes.append(node)
    return {
        "name": f"control-net-{seed}{'' if control else '-plain'}",
        "size": [size, size],
        "seed": seed,
        "steps": steps,
        "guidance": guidance,
        "scheduler": "ddim",
        "init_image": pics["init"],
        "root": {"prompt": world.background_phrase(pics["background"]), "noise": 0.0, "children": nodes},
    }


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def object_iou(image: np.ndarray, shape_mask: np.ndarray, colour: str) -> float:
    """IoU of the pixels showing ``colour`` (nearest palette colour) with the shape ``shape_mask``."""
    shown = world.nearest_palette(image) == world.COLOURS.index(colour)
    return iou(shown, metrics.inside(shape_mask))


def _render(b, raw: dict, label: str, size: int | None = None, steps: int | None = None):
    import torch

    from hmedit.pipeline import Settings, render

    sc = Scene.model_validate(raw)
    s = Settings.of(
        sc, b.model, sc.seed_list[0], size=(size, size) if size else None, steps=steps, record=False
    )
    start, cpu = time.perf_counter(), time.process_time()
    with torch.no_grad():
        result = render(sc, b.model, s)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    if b.images is not None:
        from hmedit.outputs.write import save_png

        save_png(b.images / "control-net" / f"{label}.png", result.image)
    b.tick(f"control-net {label}")
    # cpu: this process's CPU seconds (on a shared machine, the fairer cost)
    return result, s, seconds, cpu


def _masks(raw: dict, size: int) -> dict[str, np.ndarray]:
    from hmedit.bench import region_masks

    return region_masks(Scene.model_validate(raw), size, size)


def suite_control_net(b) -> dict:
    cc = ControlNetConfig.of(b.config)
    kw = dict(size=cc.size, steps=cc.steps, guidance=cc.guidance, feather=cc.feather)
    cases = []
    with tempfile.TemporaryDirectory(prefix="hmedit-bench-") as tmp:
        folder = Path(tmp)
        for seed in range(cc.scenes):
            pics = collage(seed, folder, size=cc.size)
            raws = {
                v: control_net_scene(seed, pics, control=v == "control", **kw) for v in ("control", "plain")
            }
            masks = _masks(raws["control"], cc.size)
            images = {v: _render(b, raw, f"{seed}-{v}")[0].image for v, raw in raws.items()}
            loose = {
                v: _render(
                    b,
                    control_net_scene(seed, pics, control=v == "control", loose=True, **kw),
                    f"{seed}-loose-{v}",
                )[0].image
                for v in ("control", "plain")
            }
            ctl, free = pics["objects"]
            ctl_shape = masks["ctl"] > 0.5
            outside = metrics.inside(masks["free"]) & ~metrics.dilate(ctl_shape, cc.feather + cc.margin)
            change = np.abs(images["control"].astype(float) - images["plain"].astype(float)).mean(-1)
            whole = ~metrics.dilate(ctl_shape, cc.feather + cc.margin)
            cases.append(
                {
                    "seed": seed,
                    "background": pics["background"],
                    "controlled": f"{ctl['colour']} {ctl['shape']}",
                    "free": f"{free['colour']} {free['shape']}",
                    "iou_control": round(object_iou(images["control"], ctl_shape, ctl["colour"]), 4),
                    "iou_plain": round(object_iou(images["plain"], ctl_shape, ctl["colour"]), 4),
                    "iou_loose_control": round(object_iou(loose["control"], ctl_shape, ctl["colour"]), 4),
                    "iou_loose_plain": round(object_iou(loose["plain"], ctl_shape, ctl["colour"]), 4),
                    "free_change": round(float(change[outside].mean()) if outside.any() else 0.0, 3),
                    "outside_change": round(float(change[whole].mean()), 3),
                }
            )
        cost = _cost(b, folder, cc, kw)
        tiled = _tiled(b, folder, cc)
    iou_c = float(np.mean([c["iou_control"] for c in cases]))
    iou_p = float(np.mean([c["iou_plain"] for c in cases]))
    free_change = float(np.mean([c["free_change"] for c in cases]))
    passes = {
        "pass_iou": iou_c >= IOU_TARGET,
        "pass_locality": free_change <= OUTSIDE_TARGET,
        "pass_cost": cost["ratio"] <= COST_TARGET,
    }
    return {
        "scenes": cc.scenes,
        "size": [cc.size, cc.size],
        "steps": cc.steps,
        "guidance": cc.guidance,
        "feather_px": cc.feather,
        "margin_px": cc.feather + cc.margin,
        "iou_control": iou_c,
        "iou_plain": iou_p,
        "iou_control_min": min(c["iou_control"] for c in cases),
        "iou_loose_control": float(np.mean([c["iou_loose_control"] for c in cases])),
        "iou_loose_plain": float(np.mean([c["iou_loose_plain"] for c in cases])),
        "free_change_mean": free_change,
        "free_change_max": max(c["free_change"] for c in cases),
        "outside_change_mean": float(np.mean([c["outside_change"] for c in cases])),
        "target_iou": IOU_TARGET,
        "target_free_change": OUTSIDE_TARGET,
        "cost": cost,
        "tiling": tiled,
        **passes,
        "pass": all(passes.values()),
        "cases": cases,
    }


def _cost(b, folder: Path, cc: ControlNetConfig, kw: dict) -> dict:
    """Scene 0 with and without its control: alternating runs after one warm-up each, medians of wall and
    of CPU seconds. ``ratio`` is the CPU seconds' when torch runs one thread (then a render's CPU time is
    its work, which other jobs on a shared machine do not inflate as they inflate wall time), else the
    wall seconds'."""
    import torch

    pics = collage(0, folder, size=cc.size)
    raws = {v: control_net_scene(0, pics, control=v == "control", **kw) for v in ("control", "plain")}
    runs: dict[str, list[float]] = {v: [] for v in raws}
    cpu: dict[str, list[float]] = {v: [] for v in raws}
    stages: dict[str, list[dict]] = {v: [] for v in raws}
    for v, raw in raws.items():
        _render(b, raw, f"cost-warmup-{v}")
    for _ in range(cc.repeats):
        for v, raw in raws.items():
            result, _, seconds, cpu_s = _render(b, raw, f"cost-{v}")
            runs[v].append(round(seconds, 4))
            cpu[v].append(round(cpu_s, 4))
            stages[v].append(result.timings)
    med = {v: float(statistics.median(r)) for v, r in runs.items()}
    med_cpu = {v: float(statistics.median(r)) for v, r in cpu.items()}
    by_cpu = torch.get_num_threads() == 1
    ratio_wall, ratio_cpu = med["control"] / med["plain"], med_cpu["control"] / med_cpu["plain"]
    return {
        "repeats": cc.repeats,
        "runs_s": runs,
        "cpu_runs_s": cpu,
        "seconds": med,
        "cpu_seconds": med_cpu,
        "ratio_wall": ratio_wall,
        "ratio_cpu": ratio_cpu,
        "ratio_of": "cpu" if by_cpu else "wall",
        "ratio": ratio_cpu if by_cpu else ratio_wall,
        "target_ratio": COST_TARGET,
        "sample_s": {v: float(statistics.median(t["sample"] for t in ts)) for v, ts in stages.items()},
    }


def _tiled(b, folder: Path, cc: ControlNetConfig) -> dict:
    """Untiled at ``untiled_size`` and tiled at ``tiled_size``, with the control: IoU and seam scores."""
    from hmedit.bench_tiled import borders
    from hmedit.sampling.tiling import windows

    f = b.model.vae_scale_factor
    rows = []
    for seed in range(cc.tiled_scenes):
        pics = collage(100 + seed, folder, size=cc.untiled_size)
        raw = control_net_scene(
            100 + seed,
            pics,
            size=cc.untiled_size,
            steps=cc.tiled_steps,
            guidance=cc.guidance,
            feather=cc.feather,
        )
        ctl = pics["objects"][0]
        row: dict[str, Any] = {"seed": 100 + seed, "controlled": f"{ctl['colour']} {ctl['shape']}"}
        for label, size in (("untiled", cc.untiled_size), ("tiled", cc.tiled_size)):
            variant = {**raw, "tiling": {"force": True} if label == "tiled" else False}
            result, s, seconds, _ = _render(b, variant, f"tiled-{100 + seed}-{label}", size=size)
            shape = _masks(raw, size)["ctl"] > 0.5
            ts = s.tiling
            if ts is None:  # the borders a tiled render of this size would have
                from hmedit.sampling.tiled import resolve_tiling
                from hmedit.scene.presets import load_preset
                from hmedit.scene.spec import Tiling

                ts = resolve_tiling(
                    Tiling(force=True),
                    (size // f, size // f),
                    b.model.native_size // f,
                    max(b.model.family.factors(b.model.unet)),
                    load_preset(s.preset).tiling,
                )
            bx, by = borders(windows(size // f, size // f, ts.tile, ts.overlap), f, size, size)
            row[label] = {
                "size": size,
                "seconds": round(seconds, 2),
                "iou": round(object_iou(result.image, shape, ctl["colour"]), 4),
                "seam": round(metrics.seam_score(result.image, bx, by), 4),
                "windows_run": result.stats.get("windows_run"),
            }
        rows.append(row)
    return {
        "steps": cc.tiled_steps,
        "untiled_size": cc.untiled_size,
        "tiled_size": cc.tiled_size,
        "iou_untiled": float(np.mean([r["untiled"]["iou"] for r in rows])),
        "iou_tiled": float(np.mean([r["tiled"]["iou"] for r in rows])),
        "seam_untiled": float(np.mean([r["untiled"]["seam"] for r in rows])),
        "seam_tiled": float(np.mean([r["tiled"]["seam"] for r in rows])),
        "cases": rows,
    }


def render_count(cfg) -> int:
    cc = ControlNetConfig.of(cfg)
    return 4 * cc.scenes + 2 + 2 * cc.repeats + 2 * cc.tiled_scenes


def table(f: dict):
    """The suite's figures as a rich table (``hmedit bench control-net``)."""
    from rich.table import Table

    def mark(ok: bool) -> str:
        return "[green]pass[/]" if ok else "[bold red]fail[/]"

    t = Table(
        title=f"control-net: {f['scenes']} collages, {f['size'][0]}x{f['size'][1]}, {f['steps']} steps",
        title_justify="left",
    )
    for col in ("figure", "with control", "without", "target"):
        t.add_column(col, justify="left" if col == "figure" else "right")
    t.add_row(
        "controlled object IoU",
        f"{f['iou_control']:.3f}",
        f"{f['iou_plain']:.3f}",
        f">= {f['target_iou']} " + mark(f["pass_iou"]),
    )
    t.add_row(
        "IoU, region = bounding box", f"{f['iou_loose_control']:.3f}", f"{f['iou_loose_plain']:.3f}", ""
    )
    t.add_row(
        "free object change (/255)",
        f"{f['free_change_mean']:.2f}",
        "",
        f"<= {f['target_free_change']:g} {mark(f['pass_locality'])}",
    )
    c = f["cost"]
    key = "cpu_seconds" if c.get("ratio_of") == "cpu" else "seconds"
    t.add_row(
        "CPU seconds per render" if key == "cpu_seconds" else "seconds per render",
        f"{c[key]['control']:.2f}",
        f"{c[key]['plain']:.2f}",
        f"ratio {c['ratio']:.2f} <= {c['target_ratio']} {mark(f['pass_cost'])}",
    )
    tl = f["tiling"]
    t.add_row(
        f"IoU, untiled {tl['untiled_size']} / tiled {tl['tiled_size']}",
        f"{tl['iou_untiled']:.3f} / {tl['iou_tiled']:.3f}",
        "",
        "",
    )
    t.add_row("seam score, untiled / tiled", f"{tl['seam_untiled']:.3f} / {tl['seam_tiled']:.3f}", "", "")
    return t
