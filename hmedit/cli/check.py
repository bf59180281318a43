"""``hmedit check``: re-render scenes and compare them with golden images; the work is in hmedit.check."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Literal

import typer

from hmedit.cli.options import DeviceOpt, DtypeOpt, ModelOpt, RayCpusOpt, RayOpt, ScenePaths


def check_command(
    ctx: typer.Context,
    paths: ScenePaths,
    golden: Annotated[
        Path,
        typer.Option(
            "--golden",
            "-g",
            help="Folder of golden images: GOLDEN/<scene name>/image*.png and golden.json.",
            show_default=False,
        ),
    ],
    tolerance: Annotated[
        float | None,
        typer.Option(
            "--tolerance",
            "-t",
            help="psnr: the lowest PSNR in dB that passes (default 35); maxdiff: the largest pixel "
            "difference in 0..255 that passes (default 2).",
            show_default=False,
        ),
    ] = None,
    metric: Annotated[
        Literal["psnr", "maxdiff"], typer.Option("--metric", help="How images are compared.")
    ] = "psnr",
    update: Annotated[
        bool, typer.Option("--update", help="Write (or overwrite) the goldens from this render instead.")
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Where the new renders and diff images go (default: a temporary folder, kept only "
            "when an image fails).",
            show_default=False,
        ),
    ] = None,
    junit: Annotated[
        Path | None,
        typer.Option(
            "--junit",
            help="Also write the result as JUnit XML to this file (one test case per scene and seed), "
            "for CI systems.",
            show_default=False,
        ),
    ] = None,
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    ray: RayOpt = None,
    ray_cpus: RayCpusOpt = None,
) -> None:
    """Re-render scenes and compare each image with its golden copy.

    Every scene is rendered (none skipped); each image is compared with [bold]GOLDEN/<name>/image*.png[/].

    A failing image gets [bold]<image>.diff.png[/] (difference x4) and [bold]<image>.compare.png[/].

    [bold]<image>.compare.png[/] shows the golden, the new image and the difference side by side.

    [bold]--update[/] writes the goldens instead: the images, and golden.json (settings, model hash).

    The result goes to OUT/check.json (for [bold]hmedit report[/]) and with [bold]--junit F[/] to JUnit XML.

    [bold]--ray[/] renders on a Ray cluster; on several machines give [bold]--out[/] a folder they all share.

    Exit code 1 if any image regressed, 2 for a user mistake (no goldens yet, a broken scene), else 0.

    [bold]Examples[/]

      [green]hmedit check scenes/ --golden tests/golden --update[/]     make the goldens

      [green]hmedit check scenes/ --golden tests/golden[/]              compare with them

      [green]hmedit check scenes/ -g tests/golden --metric maxdiff -t 0[/]   bit-exact

      [green]hmedit check scenes/ -g tests/golden -o out --junit out/junit.xml[/]   for CI
    """
    import shutil
    import tempfile

    from hmedit.batch import OK, Batch, runner
    from hmedit.batch import exit_code as batch_exit_code
    from hmedit.check import DEFAULT_TOLERANCE, Comparison, compare_scene, exit_code, update_scene
    from hmedit.cli.options import stdout
    from hmedit.cli.render import options_from, scene_files
    from hmedit.cli.report import ConsoleReporter, print_summary
    from hmedit.errors import HmeditError

    files = scene_files(paths)
    if not update and not golden.is_dir():
        shown = " ".join(str(p) for p in paths) + (f" --model {model}" if model else "")
        raise HmeditError(
            "golden folder not found",
            file=golden,
            hint=f"create it with: hmedit check {shown} --golden {golden} --update",
        )
    if update and junit is not None:
        raise HmeditError("--junit reports a comparison; --update makes none", hint="leave out one of them")
    tol = DEFAULT_TOLERANCE[metric] if tolerance is None else tolerance
    temporary = out is None
    out_dir = Path(tempfile.mkdtemp(prefix="hmedit-check-")) if out is None else out
    options = options_from(out=out_dir, model=model, size=None, device=device, dtype=dtype, force=True)

    console = stdout()
    debug = bool(ctx.find_root().params.get("debug"))
    verb = "update" if update else "check"
    with runner(ray, device=device, cpus=ray_cpus) as elsewhere, ConsoleReporter(console, verb) as reporter:
        batch = Batch(options, reporter, debug=debug, runner=elsewhere)
        results = batch.run(files)
    if batch.interrupted:
        print_summary(console, results)
        raise typer.Exit(130)

    if update:
        written = 0
        for r in results:
            if r.status == OK:
                written += len(update_scene(r, golden))
        print_summary(console, results)
        console.print(f"{written} golden image{'s' * (written != 1)} written to {golden}")
        if temporary:
            shutil.rmtree(out_dir, ignore_errors=True)
        code = batch_exit_code(results)
        if code:
            raise typer.Exit(code)
        return

    comparisons: list[Comparison] = []
    for r in results:
        if r.status == OK:
            comparisons += compare_scene(r, golden, metric, tol)
        else:
            c = Comparison(r.file, r.name or r.file.stem, None, "", problem=f"render {r.status}")
            c.user_error, c.internal = not r.internal, r.internal
            comparisons.append(c)
    _table(console, comparisons, metric, tol)
    code = exit_code(comparisons)
    kept = not temporary or bool(code and any(c.diff for c in comparisons))
    _write_results(
        comparisons, results, golden=golden, out=out_dir, metric=metric, tolerance=tol, junit=junit, kept=kept
    )
    if code and any(c.diff for c in comparisons):
        console.print(f"new renders and diff images are in {out_dir}")
    elif temporary:
        shutil.rmtree(out_dir, ignore_errors=True)
    if code:
        raise typer.Exit(code)


def _write_results(comparisons, results, *, golden, out, metric, tolerance, junit, kept) -> None:
    """check.json into the output folder and, if asked, the JUnit XML file (naming the files in the output
    folder only if it is ``kept``)."""
    from hmedit.check import CHECK_JSON, check_record
    from hmedit.outputs import save_json
    from hmedit.outputs.junit import write_junit

    record = check_record(comparisons, results, golden=golden, out=out, metric=metric, tolerance=tolerance)
    save_json(out / CHECK_JSON, record)
    if junit is not None:
        write_junit(junit, record, out=out if kept else None)


def _table(console, comparisons, metric: str, tol: float) -> None:
    from rich.markup import escape
    from rich.table import Table

    from hmedit.cli.report import wide

    unit = " dB" if metric == "psnr" else ""
    table = Table(show_edge=False, pad_edge=False)
    for name in ("scene", "seed", metric, "result", "note"):
        table.add_column(name, justify="right" if name in ("seed", metric) else "left", overflow="fold")
    for c in comparisons:
        if c.value is None:
            value = ""
        elif math.isinf(c.value):
            value = "inf"
        else:
            value = f"{c.value:.2f}{unit}" if metric == "psnr" else f"{c.value:g}"
        if c.passed:
            result = "[green]pass[/]"
        elif c.regressed:
            result = "[bold red]FAIL[/]"
        else:
            result = "[yellow]error[/]"
        notes = [n for n in (c.problem, c.note, c.diff and f"see {c.diff}") if n]
        table.add_row(
            escape(str(c.file)),
            "" if c.seed is None else str(c.seed),
            value,
            result,
            escape("; ".join(map(str, notes))),
        )
    wide(console).print(table)
    passed = sum(c.passed for c in comparisons)
    failed = sum(c.regressed for c in comparisons)
    errors = len(comparisons) - passed - failed
    bound = f">= {tol:g} dB" if metric == "psnr" else f"<= {tol:g}"
    console.print(
        f"{len(comparisons)} image{'s' * (len(comparisons) != 1)} ({metric} {bound}): "
        f"{passed} passed, {failed} failed, {errors} not compared"
    )


def register(app: typer.Typer) -> None:
    from hmedit.cli.options import Command

    app.command("check", cls=Command)(check_command)
