"""``hmedit dataset``: render scenes for several seeds into images plus COCO masks read from the model's
attention; the work is done by hmedit.dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from hmedit.cli.options import CacheDirOpt, DeviceOpt, DtypeOpt, ModelOpt, ScenePaths


def _threshold(value: str) -> str:
    """--threshold: a number in (0, 1) or auto."""
    if value == "auto":
        return value
    try:
        t = float(value)
    except ValueError:
        t = float("nan")
    if not 0 < t < 1:
        raise typer.BadParameter(f"{value!r} is neither a number in (0, 1) nor auto (e.g. 0.4, or auto)")
    return value


def dataset_command(
    ctx: typer.Context,
    paths: ScenePaths,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Dataset folder: images/ and annotations.json.")
    ] = Path("dataset"),
    seeds: Annotated[int, typer.Option("--seeds", min=1, max=100000, help="Seeds per scene: 0..N-1.")] = 4,
    threshold: Annotated[
        str,
        typer.Option(
            "--threshold",
            callback=_threshold,
            help="Threshold on the normalised attention map, 0..1 (DAAM: 0.4), or auto: the one whose mask "
            "the image's edges agree with best (Free-Mask).",
        ),
    ] = "0.4",
    refine: Annotated[
        Literal["none", "self", "image"],
        typer.Option(
            "--refine",
            help="self: sharpen the maps with the aggregated self-attention; image: snap their edges to "
            "the render's (a guided filter).",
        ),
    ] = "none",
    categories: Annotated[
        Literal["id", "prompt"], typer.Option("--categories", help="COCO categories: node ids or prompts.")
    ] = "id",
    model: ModelOpt = None,
    steps: Annotated[
        int | None, typer.Option("--steps", min=1, max=1000, help="Sampling steps (default: the scene's).")
    ] = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    cache_dir: CacheDirOpt = None,
) -> None:
    """Render scenes for N seeds into a segmentation dataset: images and COCO masks.

    Each node but the root gets one mask per image: where the model drew its prompt (cross-attention summed over steps, averaged over heads, layers and levels, as DAAM does; normalised, thresholded), kept within the node's effective mask.

    Into [bold]OUT/[/]: [bold]images/<scene name>-<seed>.png[/] and [bold]annotations.json[/] (COCO instances, masks as RLE; pycocotools reads it), each file written atomically; annotations.json is rewritten after every scene.

    A failing scene is reported in one line and the others go on. Exit code 2 if any scene failed (1 if only internal errors did); 130 on Ctrl-C.

    [bold]Examples[/]

      [green]hmedit dataset scenes/ --out data/ --seeds 4[/]

      [green]hmedit dataset scenes/many_regions.yaml --seeds 100 --refine self --categories prompt[/]

      [green]hmedit dataset scenes/ --refine image --threshold auto[/]   (the best masks on the toy world)
    """  # noqa: E501 - one line per paragraph: rich re-wraps help text to the terminal
    from hmedit.batch import Options, prepare
    from hmedit.cli.options import stdout
    from hmedit.cli.render import scene_files
    from hmedit.cli.report import SceneLoop, error_line, progress_bar
    from hmedit.dataset import Dataset, render_scene
    from hmedit.jobs import default_models as models
    from hmedit.models.load import pick_device
    from hmedit.outputs import check_writable, lock_folder

    files = scene_files(paths)
    pick_device(device, dtype)  # a bad --device or --dtype fails before the first scene
    options = Options(model=model, device=device, dtype=dtype, cache_dir=cache_dir, steps=steps)
    check_writable(out if out.exists() else out.parent)
    console = stdout()
    debug = bool(ctx.find_root().params.get("debug"))
    failed: list[Path] = []
    progress = progress_bar(console, transient=False)
    loop = SceneLoop(progress, lambda f, status: failed.append(f), debug=debug)
    data = Dataset(out, categories)
    done = 0
    with lock_folder(out), progress:
        images = progress.add_task("images", total=len(files) * seeds)
        for file in files:
            with loop.scene(file):
                job = prepare(
                    file,
                    options,
                    on_warning=lambda w, f=file: progress.console.print(error_line(w, f, "warning")),
                )
                loaded, _ = models.get(job.model_ref, job.device, job.dtype)
                task = progress.add_task(file.name, total=None)

                def on_step(i: int, n: int, task: int = task) -> None:
                    progress.update(task, completed=i, total=n)

                try:
                    for seed, result, masks, secs in render_scene(
                        job,
                        loaded,
                        list(range(seeds)),
                        cutoff=threshold if threshold == "auto" else float(threshold),
                        refine=refine,
                        on_step=on_step,
                    ):
                        data.add(job.scene, str(job.scene.name), seed, result, masks, secs)
                        done += 1
                        progress.advance(images)
                finally:
                    progress.remove_task(task)
                    data.save()
            if loop.interrupted:
                break
    n = len(data.coco.annotations)
    per = sum(data.seconds) / len(data.seconds) if data.seconds else 0.0
    line = (
        f"{done} images, {n} masks, {len(data.coco.categories)} categories into {out} ({per:.1f}s per image)"
    )
    if failed:
        line += f"; {len(failed)} scene{'s' * (len(failed) != 1)} failed"
    console.print(line)
    loop.exit()


def register(app: typer.Typer) -> None:
    from hmedit.cli.options import Command

    app.command("dataset", cls=Command)(dataset_command)
