"""``hmedit render``: render scenes with a diffusion model; the work is done by hmedit.batch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hmedit.cli.options import (
    CacheDirOpt,
    DeviceOpt,
    DtypeOpt,
    ModelOpt,
    OutDir,
    RayCpusOpt,
    RayOpt,
    ScenePaths,
    SizeOpt,
)
from hmedit.scene.spec import Scheduler


def options_from(
    *,
    out: Path,
    model: str | None,
    size: str | None,
    device: str,
    dtype: str,
    seed: int | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    scheduler: str | None = None,
    attention: bool = True,
    force: bool = False,
    fail_fast: bool = False,
    cache_dir: Path | None = None,
    preset: str | None = None,
    words: bool = False,
):
    """The batch options from the command line (shared with ``hmedit check``)."""
    from hmedit.batch import Options
    from hmedit.cli.masks import parse_size

    return Options(
        out=out,
        model=model,
        seed=seed,
        steps=steps,
        guidance=guidance,
        scheduler=scheduler,
        size=parse_size(size),
        preset=preset,
        device=device,
        dtype=dtype,
        attention=attention,
        force=force,
        fail_fast=fail_fast,
        cache_dir=cache_dir,
        words=words,
    )


def scene_files(paths: list[Path]) -> list[Path]:
    from hmedit.errors import HmeditError
    from hmedit.scene import find_scenes

    files = find_scenes(paths)
    if not files:
        raise HmeditError(
            "no scene files found", file=", ".join(map(str, paths)), hint="scene files end in .yaml or .yml"
        )
    return files


def render_command(
    ctx: typer.Context,
    paths: ScenePaths,
    out: OutDir = Path("out"),
    model: ModelOpt = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Render this one seed instead of the scene's seeds.")
    ] = None,
    steps: Annotated[
        int | None, typer.Option("--steps", min=1, max=1000, help="Sampling steps (default: the scene's).")
    ] = None,
    guidance: Annotated[
        float | None, typer.Option("--guidance", min=0.0, help="Guidance scale (default: the scene's).")
    ] = None,
    size: SizeOpt = None,
    scheduler: Annotated[
        Scheduler | None, typer.Option("--scheduler", help="Sampler (default: the scene's).")
    ] = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    force: Annotated[
        bool, typer.Option("--force", help="Render even the scenes that are up to date.")
    ] = False,
    fail_fast: Annotated[bool, typer.Option("--fail-fast", help="Stop at the first failing scene.")] = False,
    no_attention: Annotated[
        bool, typer.Option("--no-attention", help="Do not record attention maps (a little faster).")
    ] = False,
    cache_dir: CacheDirOpt = None,
    preset: Annotated[
        str | None,
        typer.Option(
            "--preset",
            help="Defaults for the model (steps, scheduler, guidance, dtype, tiling, ...): toy, sd15, sd21, "
            "sdxl or a preset YAML file. Default: the scene's preset, else the model family's.",
            show_default=False,
        ),
    ] = None,
    words: Annotated[
        bool,
        typer.Option(
            "--words",
            help="Also write each word's cross-attention map of the first seed, attention/<id>/<word>.png "
            "(untiled renders).",
        ),
    ] = False,
    ray: RayOpt = None,
    ray_cpus: RayCpusOpt = None,
) -> None:
    """Render scenes: one image per seed, plus influence maps and provenance.

    Per scene, into [bold]OUT/<name>/[/]:

      [bold]image.png[/] or [bold]image-<seed>.png[/]   the render, with the scene and settings in its text

      [bold]influence.safetensors[/], [bold]influence/<id>.png[/], [bold]influence.png[/]   first seed's maps

      [bold]attention/<id>/<word>.png[/]   with [bold]--words[/]: where each word of a node's prompt drew (first seed; DAAM)

      [bold]render.json[/]   model and hash, versions, settings, scene, asset hashes, timings

    Scenes whose file, assets, model, settings and device are unchanged are skipped ([bold]--force[/]: not).

    Nodes with [bold]learn:[/] get their token first: cached, else learned now ([bold]hmedit learn[/]).

    A failing scene is reported in one line and the others go on.

    [bold]--ray[/] renders on a Ray cluster: one worker per GPU (or CPU), each keeping its models loaded.

    Exit code 2 if any scene failed (1 if only internal errors did); 130 on Ctrl-C and 143 on SIGTERM (the summary is printed first), and a rerun resumes.

    [bold]Examples[/]

      [green]hmedit render scenes/[/]                                  every scene below the folder

      [green]hmedit render scenes/nested_rings.yaml --seed 3 --steps 20[/]

      [green]hmedit render scenes/ --model ./my-sd15 --size 512x512 -o out/sd15[/]

      [green]hmedit render scenes/ --ray auto -o /shared/out[/]       on the cluster of ray start --head
    """  # noqa: E501 - one line per paragraph: rich re-wraps help text to the terminal
    from hmedit.batch import Batch, exit_code, runner
    from hmedit.cli.options import stdout
    from hmedit.cli.report import ConsoleReporter, print_summary

    options = options_from(
        out=out,
        model=model,
        size=size,
        device=device,
        dtype=dtype,
        seed=seed,
        steps=steps,
        guidance=guidance,
        scheduler=scheduler,
        attention=not no_attention,
        force=force,
        fail_fast=fail_fast,
        cache_dir=cache_dir,
        preset=preset,
        words=words,
    )
    files = scene_files(paths)
    console = stdout()
    debug = bool(ctx.find_root().params.get("debug"))
    with runner(ray, device=device, cpus=ray_cpus) as elsewhere, ConsoleReporter(console) as reporter:
        batch = Batch(options, reporter, debug=debug, runner=elsewhere)
        results = batch.run(files)
    print_summary(console, results)
    code = exit_code(results, batch.interrupted)
    if code:
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    from hmedit.cli.options import Command

    app.command("render", cls=Command)(render_command)
