"""``hmedit bench``: cost over plain diffusers and region quality on a model; the work is in hmedit.bench."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from hmedit.cli.options import DeviceOpt, DtypeOpt
from hmedit.errors import HmeditError


def bench_command(
    suites: Annotated[
        list[str] | None,
        typer.Argument(
            help="Suites: cost, control, hierarchy, locality, inversion, tiling, memory, scale "
            "(default: all but scale).",
            metavar="[SUITE...]",
            show_default=False,
        ),
    ] = None,
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            help="'toy' (the quality suites describe its world), a diffusers folder, a hub id in the local "
            "cache, a .safetensors file, or random:sd15 / random:sd2 (published architectures, random "
            "weights: for speed and memory).",
        ),
    ] = "toy",
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output folder: bench.json and images/<suite>/*.png.")
    ] = Path("bench-results"),
    seeds: Annotated[
        int | None,
        typer.Option(
            "--seeds",
            min=1,
            metavar="N",
            help="Scenes per quality suite (default: control 24, hierarchy 12, locality 6; inversion: 3 "
            "seeds per layer).",
            show_default=False,
        ),
    ] = None,
    repeats: Annotated[
        int | None,
        typer.Option(
            "--repeats",
            min=1,
            metavar="R",
            help="Timed runs per contender in cost (default 3).",
            show_default=False,
        ),
    ] = None,
    sizes: Annotated[
        list[int] | None,
        typer.Option(
            "--size",
            min=64,
            max=16384,
            metavar="PX",
            help="scale: a size to measure (repeat the option for several; default 2048 and 4096).",
            show_default=False,
        ),
    ] = None,
    quick: Annotated[
        bool,
        typer.Option(
            "--quick",
            help="64x64, 2 steps, 2 scenes per suite, 1 timed run, 2 learn steps: checks the code, not the "
            "model.",
        ),
    ] = False,
    images: Annotated[
        bool, typer.Option("--images/--no-images", help="Save every render under OUT/images/.")
    ] = True,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """Measure hmedit on a model: its cost over plain diffusers, and how well regions keep their prompts.

    [bold]cost[/]: a 4-node scene at 256x256 (30 DDIM steps, guidance 7.5) against diffusers' StableDiffusionPipeline on the same modules and root prompt; medians of alternating runs after a warm-up. Target: hmedit / diffusers <= 1.15.

    [bold]control[/]: 2-4 coloured squares and circles on a background at 128x128, with the regional attention on and off, and as regions: fusion (each region denoised over its own crop, fused by its mask; CPU seconds per image beside); a region matches when >= 30% of it shows its colour, and bleeds when >= 30% shows another region's.

    [bold]hierarchy[/]: a circle inside a square, with each composition scheme and as a flat list.

    [bold]locality[/]: re-colour one region of a rendered image (noise 0.8, feather 2 px, the rest kept). Targets: mean change outside the region (beyond a margin) <= 1/255, inside >= 20/255.

    [bold]inversion[/]: teal, olive and salmon square layers (colours the toy palette has no word for) re-made at noise 0.8 with the prompt "a square", with and without the layer's learned token, same seeds. Targets: the mean colour error inside the layer drops by >= 50% for every layer; learning one token (default settings) <= 180 s; a cached rerun <= 1 s.

    [bold]tiling[/]: every example scene at 1024x1024, 6 DDIM steps, by hmedit at its defaults; two of them (hires_garden, nested_rings) also by hmedit with plain tiles (no offsets, no fading) and by diffusers' StableDiffusionPanoramaPipeline at its defaults with the root prompt. Seam scores at the tile borders, plain and phase-matched (against the same offsets modulo 8 px elsewhere). Targets: seam score <= 1.10 and no worse than Panorama's; hmedit >= 3x faster. Composition: 12 control scenes from noise at 128, 1024 and 2048 px (20 steps), at hmedit's defaults and with plain tiling (tiling.coarse false); target: the region colour match within 3 points of the native size's.

    [bold]memory[/]: a 3-region 4096x4096 render through hmedit render in a child process. Target: peak RSS <= 4 GiB.

    [bold]attention-masks[/] (asked for by name): 24 root-only toy scenes from world captions; the mask an attention node would read for each object's shape word (and for the colour-and-shape phrase), thresholded at 0.4, 0.3, 0.5 and auto, as read, sharpened with self-attention (refine: self) and snapped to the picture (refine: image), against the pixels of the object's colour (the oracle). Target: mIoU >= 0.75 for the phrase with refine: image and threshold: auto. Then hmedit dataset on the example scenes up to 256 px, 4 seeds: the COCO file read back by pycocotools, the masks' mIoU against the colour the node's prompt names within its effective mask, seconds per image.

    [bold]scale[/] (asked for by name; for GPUs): the memory scene at 2048x2048 and 4096x4096, 3 DDIM steps, by hmedit and by the Panorama pipeline, each at its defaults: seconds per sampling step, decoding seconds, peak GPU memory. --model random:sd15 (or random:sd2) builds that architecture with random weights: speed does not depend on them.

    [bold]masks[/] (asked for by name): click masks on 20 procedural backgrounds ("a {colour} {shape}" at a random click): colour in the final mask, object centroid within 0.15 of the click, change outside the mask <= 1/255, IoU mask / object >= 0.6; refinement on 12 world images whose drawn box is off (shifted and grown 30%): region colour match and IoU with the object, drawn and refined (both must improve).
    [bold]edit-pairs[/] (asked for by name; also part of [bold]edit[/]): edit pairs from noise (scene key edits) on control scenes, one region recoloured, added or removed, as regions: fusion, attention without injection and attention with injection: colour oracle, SSIM-e and SSIM-i of the target against the source. Target: SSIM-i >= 0.9 with injection.

    Writes [bold]OUT/bench.json[/] (figures, per-scene scores, machine, library versions, model hash) after each suite; suites of an earlier bench.json of the same model that this run does not repeat are kept.

    [bold]Examples[/]

      [green]hmedit bench[/]                                    every suite on the toy model

      [green]hmedit bench cost --model ./my-sd15 --repeats 5[/]

      [green]hmedit bench --quick --model ./tiny -o /tmp/b[/]    every code path in seconds

      [green]hmedit bench scale --model random:sd15 --device cuda[/]

      [green]hmedit bench scale --model random:sdxl --device cuda --size 2048[/]    one size only
    """  # noqa: E501 - one line per paragraph: rich re-wraps help text to the terminal

    from hmedit import bench
    from hmedit.cli.options import stdout
    from hmedit.cli.report import progress_bar, wide
    from hmedit.models.load import load

    names = bench.check_suites(suites)
    bad = [x for x in sizes or () if x % 64]
    if bad:
        raise HmeditError(
            f"--size {bad[0]} is not a multiple of 64",
            field="--size",
            hint="e.g. --size 2048",
        )
    config = bench.Config.make(quick=quick, seeds=seeds, repeats=repeats, scale_sizes=sizes)
    console = stdout()
    console.print(f"loading {model}")
    loaded = load(model, device=device, dtype=dtype)
    if "scale" in names and loaded.device.type == "cpu" and not quick:
        console.print(
            "[yellow]note:[/] the scale suite on a CPU runs the Panorama pipeline at 4096x4096 (thousands of "
            "views a step): expect hours; it is meant for GPUs (--quick checks it in seconds)"
        )
    progress = progress_bar(console)
    total = sum(bench.render_count(n, config) for n in names)
    with progress:
        task = progress.add_task("bench", total=total)

        done, start = [0], time.perf_counter()

        def tick(label: str) -> None:
            progress.update(task, advance=1, description=f"bench {label}")
            done[0] += 1
            if not console.is_terminal:  # a log (CI, a cluster job): one line per step instead of the bar
                console.print(f"bench {label} ({done[0]}/{total}, {time.perf_counter() - start:.0f} s)")

        b = bench.Bench(loaded, config, tick, out / "images" if images else None)
        for name, figures in bench.run(b, names, out):
            progress.console.print(table(name, figures))
    wide(console).print(f"wrote {out / 'bench.json'}")


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _mark(ok: bool) -> str:
    return "[green]pass[/]" if ok else "[bold red]fail[/]"


def table(name: str, f: dict):
    """One suite's figures as a rich table."""
    from rich.table import Table

    if name == "cost":
        t = Table(
            title=f"cost: {f['nodes']} nodes, {f['size'][0]}x{f['size'][1]}, {f['steps']} steps "
            f"(median of {f['repeats']})",
            title_justify="left",
        )
        for col in ("", "seconds", "vs diffusers"):
            t.add_column(col, justify="left" if not col else "right")
        s = f["seconds"]
        t.add_row("diffusers", f"{s['diffusers']:.3f}", "1.00")
        t.add_row(
            "hmedit",
            f"{s['hmedit']:.3f}",
            f"{f['ratio']:.2f} {_mark(f['pass'])} (target <= {f['target_ratio']})",
        )
        t.add_row("hmedit, no recording", f"{s['hmedit_no_record']:.3f}", f"{f['ratio_no_record']:.2f}")
        return t
    if name == "control":
        t = Table(
            title=f"control: {f['scenes']} scenes, {f['regions']} regions, {f['size'][0]}x{f['size'][1]}",
            title_justify="left",
        )
        for col in ("attention", "regions matched", "regions bleeding", "scenes all matched", "CLIP"):
            t.add_column(col, justify="left" if col == "attention" else "right")
        t.add_column("CPU s/image", justify="right")
        names = {"masked": "on", "unmasked": "off (pos 0, neg 0)", "fusion": "regions: fusion"}
        for v in (v for v in names if v in f):
            clip = f[v].get("clip_mean")  # toy-clip: region vs its prompt (cosine); absent in older results
            cost = f[v].get("cpu_s_per_image")
            t.add_row(
                names[v],
                _pct(f[v]["match_rate"]),
                _pct(f[v]["bleed_rate"]),
                _pct(f[v]["scene_match_rate"]),
                "n/a" if clip is None else f"{clip:.3f}",
                "-" if cost is None else f"{cost:.1f}",
            )
        return t
    if name == "hierarchy":
        t = Table(
            title=f"hierarchy: {f['scenes']} nested scenes, {f['size'][0]}x{f['size'][1]}",
            title_justify="left",
        )
        for col in ("scheme", "circle", "square ring", "both"):
            t.add_column(col, justify="left" if col == "scheme" else "right")
        for scheme, r in f["schemes"].items():
            t.add_row(scheme, _pct(r["child"]), _pct(r["ring"]), _pct(r["both"]))
        return t
    if name == "inversion":
        return _inversion_table(f)
    if name == "tiling":
        return _tiling_table(f)
    if name == "scale":
        return _scale_table(f)
    if name == "control-net":
        from hmedit.bench_control import table as control_net_table

        return control_net_table(f)
    if name == "edit":
        from hmedit.bench_edit import table as edit_table

        return edit_table(f)
    if name == "edit-pairs":
        from hmedit.bench_edit import pairs_table

        return pairs_table(f)
    if name == "attention-masks":
        from hmedit.bench_attention import table as attention_table

        return attention_table(f)
    if name == "masks":
        from hmedit.bench_masks import table as masks_table

        return masks_table(f)
    if name == "memory":
        t = Table(title=f"memory: {f['size'][0]}x{f['size'][1]}, {f['steps']} steps", title_justify="left")
        for col in ("figure", "value", "target"):
            t.add_column(col, justify="left" if col == "figure" else "right")
        t.add_row("peak RSS (GiB)", f"{f['peak_rss_gib']:.2f}", f"<= {f['target_gib']:g} {_mark(f['pass'])}")
        t.add_row("seconds", f"{f['seconds']:.0f}", "")
        if "vae" in f:
            from hmedit.bench_vae import table_rows

            for row in table_rows(f["vae"], _mark):
                t.add_row(*row)
        return t
    t = Table(
        title=f"locality: {f['scenes']} edits, noise {f['noise']}, feather {f['feather_px']:g} px, "
        f"margin {f['margin_px']:g} px",
        title_justify="left",
    )
    for col in ("figure", "value", "target"):
        t.add_column(col, justify="left" if col == "figure" else "right")
    out_ok = f["outside_mean"] <= f["target_outside_max"]
    in_ok = f["inside_mean"] >= f["target_inside_min"]
    t.add_row(
        "mean change outside (/255)",
        f"{f['outside_mean']:.3f}",
        f"<= {f['target_outside_max']:g} {_mark(out_ok)}",
    )
    t.add_row("worst scene outside (/255)", f"{f['outside_max']:.3f}", "")
    t.add_row(
        "mean change inside (/255)",
        f"{f['inside_mean']:.1f}",
        f">= {f['target_inside_min']:g} {_mark(in_ok)}",
    )
    t.add_row("new colour shows", _pct(f["new_colour_rate"]), "")
    return t


def _gib(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _scale_table(f: dict):
    from rich.table import Table

    sampler = str(f.get("scheduler", "ddim")).upper()
    title = f"scale: {f['steps']} {sampler} steps, {f.get('family', 'sd1')}, at each tool's defaults"
    t = Table(title=title, title_justify="left")
    for col in ("size", "tool", "s/step", "decode s", "peak GiB (sampling / decoding)"):
        t.add_column(col, justify="left" if col in ("size", "tool") else "right")
    for size, row in f["sizes"].items():
        h, p = row["hmedit"], row["panorama"]
        t.add_row(
            f"{size}x{size}", "hmedit", f"{h['s_per_step']:.2f}", f"{h['decode_s']:.1f}", _gib(h["peak_gib"])
        )
        if "skipped" in p:
            t.add_row("", "Panorama", p["skipped"], "", "")
            continue
        if "failed" in p and "s_per_step" not in p:
            t.add_row("", "Panorama", p["failed"], "", "")
            continue
        decode = p["failed"] if "failed" in p else f"{p['decode_s']:.1f}"
        peaks = f"{_gib(p.get('sample_peak_gib'))} / {_gib(p.get('decode_peak_gib'))}"
        t.add_row("", "Panorama", f"{p['s_per_step']:.2f}", decode, peaks)
    return t


def _tiling_table(f: dict):
    from rich.table import Table

    t = Table(
        title=f"tiling: {f['size'][0]}x{f['size'][1]}, {f['steps']} steps; seam score (1 = no seam, target "
        f"<= {f['seam_target']}; phase-matched in brackets) and seconds; speed-up over Panorama (target >= "
        f"{f['speedup_target']:g}x)",
        title_justify="left",
    )
    for col in ("scene", "hmedit", "hmedit, plain tiles", "Panorama", "speed-up"):
        t.add_column(col, justify="left" if col == "scene" else "right")
    for scene, r in f["scenes"].items():
        cells = [
            f"{r[k]['seam']:.3f} ({r[k].get('seam_phase', float('nan')):.3f}) / {r[k]['seconds']:.0f} s"
            if k in r
            else ""
            for k in ("hmedit", "hmedit_plain", "panorama")
        ]
        t.add_row(scene, *cells, f"{r['speedup']:.1f}x" if "speedup" in r else "")
    ref = f.get("world_reference")
    if ref:
        t.add_row(
            f"the toy world itself ({ref['images']} images, untiled)",
            f"{ref['seam_on_latent_grid']:.3f} on latent-grid lines, {ref['seam_off_grid']:.3f} off them",
            "",
            "",
            "",
        )
        vae = ref.get("vae_psnr_by_offset_px")
        if vae and vae.get("0") is not None:
            t.add_row(
                f"its VAE on {vae['images']} textured images",
                f"{vae['0']:.1f} dB in step with the latent grid, {vae['4']:.1f} dB 4 px off",
                "",
                "",
                "",
            )
    comp = f.get("composition")
    if comp:  # the control scenes from noise at the native size and above, hmedit's defaults / plain tiles
        for key, g in comp["by"].items():
            t.add_row(
                f"region colour match, {g['scenes']} control scenes, {key}",
                f"{_pct(g['match'])} (native {_pct(g['native_match_same_scenes'])})",
                "",
                "",
                f"{g['seconds_mean']:.0f} s/image",
            )
    t.add_row("", "", "", "", _mark(f["pass"]))
    return t


def _inversion_table(f: dict):
    from rich.table import Table

    t = Table(
        title=f"inversion: {len(f['colours'])} layers, noise {f['noise']}, prompt '{f['prompt']}', "
        f"{f['seeds']} seed{'s' * (f['seeds'] != 1)} each; mean colour error inside the layer (/255)",
        title_justify="left",
    )
    for col in ("layer", "prompt", "token", "drop", "learn", "cached"):
        t.add_column(col, justify="left" if col == "layer" else "right")
    for colour, r in f["layers"].items():
        t.add_row(
            colour,
            f"{r['error_prompt']:.1f}",
            f"{r['error_token']:.1f}",
            f"{r['drop_pct']:.0f}%",
            f"{r['learn_s']:.1f} s",
            f"{r['cached_s']:.3f} s",
        )
    t.add_row(
        "target",
        "",
        "",
        f">= {f['target_drop_pct']:g}% {_mark(f['pass_drop'])}",
        f"<= {f['target_learn_s']:g} s {_mark(f['pass_learn'])}",
        f"<= {f['target_cached_s']:g} s {_mark(f['pass_cached'])}",
    )
    return t


def register(app: typer.Typer) -> None:
    from hmedit.cli.options import Command

    app.command("bench", cls=Command)(bench_command)
