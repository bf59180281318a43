"""``hmedit masks``: rasterise and compose a scene's masks and write its influence maps, without a model."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from hmedit.cli.options import OutDir, ScenePaths

if TYPE_CHECKING:
    from rich.console import Console

    from hmedit.scene import Scene

MAX_SIDE = 8192
"""The largest width or height ``--size`` takes (larger scenes: the scene's own ``size``)."""
MIN_SIDE = 64
"""The smallest width or height of a render (as for a scene's ``size``); a mask map may be smaller."""

_SIZE_RE = re.compile(r"^\s*(\d{1,12})\s*[xX×,]\s*(\d{1,12})\s*$")


def parse_size(
    text: str | None, *, minimum: int = MIN_SIDE, multiple: int = 8, maximum: int = MAX_SIDE
) -> tuple[int, int] | None:
    """'256x192' -> (256, 192); None stays None. The defaults are a render's rules (as for a scene's
    ``size``): each side ``minimum``..``maximum`` px and a multiple of ``multiple``. Anything else is an
    ``HmeditError`` naming ``--size``, with the nearest valid size as the hint."""
    from hmedit.errors import HmeditError

    if text is None:
        return None
    match = _SIZE_RE.match(text)
    if not match:
        raise HmeditError(
            f"expected WIDTHxHEIGHT in pixels (got {text[:40]!r})", field="--size", hint="e.g. 512x384"
        )
    w, h = int(match.group(1)), int(match.group(2))

    def nearest(v: int) -> int:
        return min(maximum // multiple * multiple, max(minimum, round(v / multiple) * multiple))

    hint = f"nearest valid size: {nearest(w)}x{nearest(h)}"
    for what, v in (("width", w), ("height", h)):
        if not minimum <= v <= maximum:
            raise HmeditError(
                f"{what} must be {minimum}..{maximum} px (got {w}x{h})", field="--size", hint=hint
            )
        if v % multiple:
            raise HmeditError(
                f"{what} must be a multiple of {multiple} (got {w}x{h})", field="--size", hint=hint
            )
    return w, h


SizeOpt = Annotated[
    str | None,
    typer.Option(
        "--size",
        metavar="WxH",
        help="Mask size in pixels, e.g. 256x192. "
        "Default: the scene's size (or its init image's), else 512x512.",
        show_default=False,
    ),
]


@dataclass
class _Result:
    file: Path
    nodes: int | None = None
    size: tuple[int, int] | None = None
    output: Path | None = None
    warnings: int = 0
    error: str | None = None  # one line, None when the scene was written


def masks_command(
    ctx: typer.Context,
    paths: ScenePaths,
    out: OutDir = Path("out"),
    size: SizeOpt = None,
) -> None:
    """Write each scene's intrinsic and effective masks (influence maps), without running a model.

    Per scene, into [bold]OUT/<name>/[/]:

      [bold]influence.safetensors[/]   float32 maps named intrinsic/<id> and effective/<id>

      [bold]influence/<id>.png[/]      a heatmap of each node's effective map

      [bold]influence.png[/]           a contact sheet of the whole tree

    Effective maps follow the scene's composition, depth_gamma, strengths and per-node compositions.

    A failing scene is reported in one line and the others are still written; exit code 2 if any failed.

    [bold]Examples[/]

      [green]hmedit masks scenes/nested_rings.yaml[/]              writes out/nested_rings/

      [green]hmedit masks scenes/ --out /tmp/maps[/]               every scene below the folder

      [green]hmedit masks scenes/hybrid_edit.yaml --size 128x128[/]   at the toy model's native size
    """
    # Imported here so that `hmedit --help` stays fast.
    from hmedit.cli.options import problem_line, stdout
    from hmedit.cli.report import progress_bar
    from hmedit.errors import HmeditError
    from hmedit.outputs.folder import check_writable
    from hmedit.scene import find_scenes

    forced = parse_size(size, minimum=1, multiple=1)  # maps of any size: no model runs on them
    debug = bool(ctx.find_root().params.get("debug"))
    files = find_scenes(paths)
    if not files:
        raise HmeditError(
            "no scene files found", file=", ".join(map(str, paths)), hint="scene files end in .yaml or .yml"
        )
    check_writable(out)  # a file, a read-only folder or a full disk: said once, before the first scene

    console = stdout()
    results: list[_Result] = []
    claimed: dict[Path, Path] = {}  # output folder -> the scene file that wrote it in this run
    interrupted = False
    with progress_bar(console) as progress:
        task = progress.add_task("masks", total=len(files))
        for file in files:
            progress.update(task, description=f"masks {file.name}")
            result = _Result(file)
            try:
                _one_scene(file, out, forced, claimed, result, progress.console)
            except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the files written so far stay, the summary follows
                result.error, interrupted = "interrupted", True
                results.append(result)
                break
            except HmeditError as err:
                line = problem_line(err)
                others = len(getattr(err, "others", ()))
                if others:
                    line.append(f" (+{others} more: run hmedit validate {file})")
                progress.console.print(line)
                result.error = err.problem
            except Exception as exc:  # a bug in one scene must not stop the batch
                if debug:
                    progress.console.print_exception()
                message = str(exc).splitlines()[0] if str(exc) else ""
                progress.console.print(
                    f"error: {file}: internal error: {type(exc).__name__}: {message} "
                    "(run again with --debug for the traceback, and please report it)",
                    markup=False,
                )
                result.error = f"internal error: {type(exc).__name__}"
            results.append(result)
            progress.advance(task)

    _summary(console, results)
    if interrupted:
        raise typer.Exit(130)
    if any(r.error for r in results):
        raise typer.Exit(2)


def _one_scene(
    file: Path,
    out: Path,
    forced: tuple[int, int] | None,
    claimed: dict[Path, Path],
    result: _Result,
    console: Console,
) -> None:
    from hmedit.cli.options import problem_line
    from hmedit.errors import HmeditError
    from hmedit.masks.checks import validate
    from hmedit.outputs.folder import lock_folder

    scene, diags = validate(file)
    for warning in diags.warnings:
        console.print(problem_line(warning, "warning"))
    result.warnings = len(diags.warnings)
    diags.raise_if_errors()
    assert scene is not None and scene.name is not None

    target = out / scene.name
    key = Path(target.absolute())
    if key in claimed:
        raise HmeditError(
            f"output folder {target} is already written by {claimed[key]} in this run",
            **scene.where("name"),
            hint="give one of the scenes another name: ...",
        )
    claimed[key] = file
    with lock_folder(target):  # one process at a time in a folder; a symlinked folder is refused
        _write_maps(file, scene, target, forced, result)


def _write_maps(
    file: Path, scene: Scene, target: Path, forced: tuple[int, int] | None, result: _Result
) -> None:
    from hmedit.masks import compose, rasterize_scene, reference_size
    from hmedit.masks.checks import FALLBACK_REF_SIZE
    from hmedit.outputs import influence_tensors, write_influence

    flats = scene.flat()
    ref = reference_size(scene, default=FALLBACK_REF_SIZE)
    assert ref is not None
    width, height = forced or ref
    result.nodes, result.size, result.output = len(flats), (width, height), target

    ids, intrinsic = rasterize_scene(scene, width, height, ref_size=ref)
    effective = compose(
        intrinsic,
        [f.parent for f in flats],
        [f.node.strength for f in flats],
        scene.composition,
        gamma=scene.depth_gamma,
        node_schemes=[f.node.composition for f in flats],
    )
    metadata = {
        "scene": str(file),
        "name": scene.name,
        "composition": scene.composition,
        "depth_gamma": f"{scene.depth_gamma:g}",
        "size": f"{width}x{height}",
    }
    write_influence(
        target,
        ids,
        influence_tensors(ids, intrinsic=intrinsic, effective=effective),
        nodes=flats,
        base_image=_base_image(scene),
        metadata=metadata,
        title=f"{scene.name}: {scene.composition}, {width}x{height}",
    )


def _base_image(scene: Scene):
    """The scene's init image (float [H, W, 3]) to draw the contact sheet's heatmaps over, or None."""
    if scene.init_image is None:
        return None
    from hmedit.scene.assets import load_rgb

    return load_rgb(scene.init_image, field="init_image")


def _summary(console: Console, results: list[_Result]) -> None:
    from rich.table import Table

    table = Table(title=None, show_edge=False, pad_edge=False)
    for name in ("scene", "nodes", "size", "output", "status"):
        table.add_column(name, justify="right" if name == "nodes" else "left", overflow="fold")
    for r in results:
        if r.error == "interrupted":
            status = "[bold yellow]interrupted[/]"
        elif r.error:
            status = "[bold red]failed[/]"
        elif r.warnings:
            status = f"[yellow]ok, {r.warnings} warning{'s' * (r.warnings != 1)}[/]"
        else:
            status = "[green]ok[/]"
        table.add_row(
            str(r.file),
            "" if r.nodes is None else str(r.nodes),
            "" if r.size is None else f"{r.size[0]}x{r.size[1]}",
            "" if r.error or r.output is None else str(r.output),
            status,
        )
    console.print(table)
    failed = sum(1 for r in results if r.error)
    if len(results) > 1 or failed:
        total = len(results)
        console.print(f"{total} scene{'s' * (total != 1)}: {total - failed} written, {failed} failed")


def register(app: typer.Typer) -> None:
    from hmedit.cli.options import Command

    app.command("masks", cls=Command)(masks_command)
