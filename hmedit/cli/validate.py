"""``hmedit validate``: check scene files without rendering anything."""

from __future__ import annotations

import typer
from rich.text import Text

from hmedit.cli.options import Quiet, ScenePaths, Strict, problem_line, stdout


def validate_command(paths: ScenePaths, quiet: Quiet = False, strict: Strict = False) -> None:
    """Check scene files: the format, every value, the files they name, and the masks.

    Prints one line per problem, [bold]file:line:col: field: problem (hint)[/], and one OK line per scene.

    Exit code 2 if any scene has an error, 0 otherwise (warnings do not fail unless [bold]--strict[/]).

    [bold]Examples[/]

      [green]hmedit validate scenes/nested_rings.yaml[/]

      [green]hmedit validate scenes/[/]            every *.yaml / *.yml below the folder

      [green]hmedit validate --strict -q scenes/[/]   for CI: only problems, warnings fail too
    """
    # Imported here so that `hmedit --help` stays fast.
    from hmedit.masks.checks import validate
    from hmedit.scene import find_scenes

    files = find_scenes(paths)
    out = stdout()
    if not files:
        from hmedit.errors import HmeditError

        raise HmeditError(
            "no scene files found", file=", ".join(map(str, paths)), hint="scene files end in .yaml or .yml"
        )

    counts = {"ok": 0, "warnings": 0, "errors": 0}
    for file in files:
        scene, diags = validate(file)
        for err in diags.errors:
            out.print(problem_line(err, "error"))
        for warning in diags.warnings:
            out.print(problem_line(warning, "warning"))
        if diags.errors or (strict and diags.warnings):
            counts["errors"] += 1
        elif diags.warnings:
            counts["warnings"] += 1
        else:
            counts["ok"] += 1
        if scene is not None and not diags.errors and not quiet:
            nodes = len(scene.flat())
            warned = len(diags.warnings)
            note = f", {warned} warning{'s' * (warned != 1)}" if warned else ""
            text = f"{file} ({nodes} node{'s' * (nodes != 1)}{note})"
            out.print(Text.assemble(("ok: ", "bold green"), text))

    if len(files) > 1 and not quiet:
        out.print(
            f"{len(files)} scenes: {counts['ok']} ok, {counts['warnings']} with warnings, "
            f"{counts['errors']} with errors"
        )
    if counts["errors"]:
        raise typer.Exit(2)


def register(app: typer.Typer) -> None:
    from hmedit.cli.options import Command

    app.command("validate", cls=Command)(validate_command)
