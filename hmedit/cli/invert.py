"""``hmedit invert``: invert the init image of every scene with ``inversion:`` into the cache, so that
``hmedit render`` finds it; the work is done by hmedit.sampling.inversion."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from hmedit.cli.options import CacheDirOpt, DeviceOpt, DtypeOpt, ModelOpt, ScenePaths


@dataclass
class Row:
    """One line of the summary: a scene's inversion (one per distinct size, steps and guidance)."""

    file: Path
    method: str = ""
    status: str = ""  # inverted, cached, nothing to invert, failed, interrupted
    steps: str = ""  # "depth/n": the steps inverted, of the schedule's
    seconds: float = 0.0
    key: str = ""


def invert_command(
    ctx: typer.Context,
    paths: ScenePaths,
    model: ModelOpt = None,
    cache_dir: CacheDirOpt = None,
    force: Annotated[
        bool, typer.Option("--force", help="Invert again even the images that are in the cache.")
    ] = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """Invert the init image of every scene with [bold]inversion:[/] (ddim, negative_prompt or null_text).

    The image is inverted under the nodes' [bold]source_prompt[/] (default: their prompt), each region under its own text with the scene's regional attention. Inversions are cached (by model, image, source prompts, regions, steps, scheduler, guidance, method and tiling) in [bold]--cache-dir[/] (default: inversions/ in hmedit's cache folder), so [bold]hmedit render[/] and every later edit of the target prompts reuse them. It inverts as deep as the render samples (steps: inverted/of the schedule): an edit at noise 0.8 needs 24 of 30.

    A failing scene is reported in one line and the others go on. Exit code 2 if any scene failed (1 if only internal errors did); 130 on Ctrl-C.

    [bold]Examples[/]

      [green]hmedit invert my_photo_edit.yaml[/]

      [green]hmedit invert scenes/ --cache-dir cache/[/]
    """  # noqa: E501 - one line per paragraph: rich re-wraps help text to the terminal
    from hmedit.batch import Options, prepare
    from hmedit.cli.options import stdout
    from hmedit.cli.render import scene_files
    from hmedit.cli.report import SceneLoop, error_line, progress_bar
    from hmedit.conditioning.tokens import install_tokens, needs_tokens
    from hmedit.jobs import default_models as models
    from hmedit.models.load import pick_device
    from hmedit.pipeline import Settings
    from hmedit.sampling.inversion import InversionCache, invert_scene

    files = scene_files(paths)
    pick_device(device, dtype)  # a bad --device or --dtype fails before the first scene
    options = Options(model=model, device=device, dtype=dtype, cache_dir=cache_dir)
    cache = InversionCache(cache_dir)
    console = stdout()
    debug = bool(ctx.find_root().params.get("debug"))
    rows: list[Row] = []
    progress = progress_bar(console, transient=False)
    loop = SceneLoop(progress, lambda f, status: rows.append(Row(f, status=status)), debug=debug)
    with progress:
        for file in files:
            with loop.scene(file):
                job = prepare(
                    file,
                    options,
                    on_warning=lambda w, f=file: progress.console.print(error_line(w, f, "warning")),
                )
                scene = job.scene
                if scene.inversion == "none":
                    rows.append(Row(file, status="nothing to invert"))
                    continue
                loaded, _ = models.get(job.model_ref, job.device, job.dtype)
                if needs_tokens(scene):  # the source prompts use the learned tokens
                    tokens = install_tokens(
                        scene,
                        loaded,
                        cache_dir=cache_dir,
                        guidance=job.requests[0].guidance,
                        defaults=job.preset.learn,
                    )
                    scene = tokens.apply(scene)
                done: set[tuple] = set()
                for req in job.requests:  # seeds share an inversion unless their settings differ
                    settings = Settings.from_request(job.scene, loaded, req, job.preset)
                    what = (settings.width, settings.height, settings.steps, settings.guidance)
                    if what in done:
                        continue
                    done.add(what)
                    task = progress.add_task(f"{file.name}: {scene.inversion}", total=None)

                    def on_step(i: int, n: int, task: int = task) -> None:
                        progress.update(task, completed=i, total=n)

                    inv = invert_scene(scene, loaded, settings, cache=cache, force=force, progress=on_step)
                    if inv is None:
                        rows.append(Row(file, scene.inversion, "nothing to invert"))
                        progress.remove_task(task)
                        continue
                    progress.update(task, completed=1, total=1)
                    status = "cached" if inv.cached else "inverted"
                    rows.append(
                        Row(
                            file,
                            scene.inversion,
                            status,
                            f"{inv.depth}/{inv.steps}",
                            inv.seconds,
                            inv.key[:12],
                        )
                    )
            if loop.interrupted:
                break
    print_rows(console, rows)
    loop.exit()


_STYLE = {
    "inverted": "[green]inverted[/]",
    "cached": "[dim]cached[/]",
    "failed": "[bold red]failed[/]",
    "interrupted": "[bold yellow]interrupted[/]",
    "nothing to invert": "[dim]nothing to invert[/]",
}


def print_rows(console, rows: list[Row]) -> None:
    """The summary table (scene, method, status, steps, time, cache key) and a count line."""
    from rich.markup import escape
    from rich.table import Table

    from hmedit.cli.report import wide

    table = Table(show_edge=False, pad_edge=False)
    for name in ("scene", "method", "status", "steps", "time", "key"):
        table.add_column(name, justify="right" if name in ("steps", "time") else "left", overflow="fold")
    for r in rows:
        table.add_row(
            escape(str(r.file)),
            escape(r.method),
            _STYLE.get(r.status, r.status),
            r.steps,
            f"{r.seconds:.1f}s" if r.status == "inverted" else "",
            escape(r.key),
        )
    wide(console).print(table)
    count = {s: sum(r.status == s for r in rows) for s in _STYLE}
    line = f"{count['inverted']} inverted, {count['cached']} cached"
    failed = count["failed"] + count["interrupted"]
    if failed:
        line += f"; {failed} scene{'s' * (failed != 1)} failed"
    console.print(line)


def register(app: typer.Typer) -> None:
    from hmedit.cli.options import Command

    app.command("invert", cls=Command)(invert_command)
