"""``hmedit report``: a static HTML page of an output folder; the page is built by hmedit.outputs.html.

(The console's lines of a batch are ``hmedit.cli.report``, which is no command.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def report_command(
    out_dir: Annotated[
        Path,
        typer.Argument(
            help="An output folder of [bold]hmedit render[/] or [bold]hmedit check[/] (OUT/<scene>/...).",
            metavar="OUT_DIR",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="The HTML file to write (default: OUT_DIR/report.html).",
            show_default=False,
        ),
    ] = None,
    link: Annotated[
        bool,
        typer.Option(
            "--link",
            help="Link the images by relative paths instead of embedding them: a small page that must stay "
            "beside the output folder.",
        ),
    ] = False,
    max_side: Annotated[
        int,
        typer.Option(
            "--max-side",
            min=16,
            max=8192,
            help="Embedded images are downscaled to at most this many pixels a side.",
        ),
    ] = 512,
    title: Annotated[
        str | None, typer.Option("--title", help="The page's heading.", show_default=False)
    ] = None,
) -> None:
    """Write one static HTML page showing every scene of an output folder.

    For each scene: the image(s), the node tree with prompts and influence maps, timings and provenance
    (render.json); where [bold]hmedit check[/] ran into the folder (check.json), the golden, the new render
    and their difference with its PSNR. Scenes whose render failed are listed with what is known.

    The page opens in any browser without a server or network: images are embedded (or linked with
    [bold]--link[/]), the style is inline, and there is no script.

    [bold]Examples[/]

      [green]hmedit render scenes/ --out out && hmedit report out[/]           out/report.html

      [green]hmedit check scenes/ -g tests/golden -o out; hmedit report out -o report.html[/]
    """
    from hmedit.cli.options import stdout
    from hmedit.outputs.html import write_report

    page = output if output is not None else out_dir / "report.html"
    written = write_report(out_dir, page, embed=not link, max_side=max_side, title=title)
    stdout().print(f"report written to {written}", highlight=False)


def register(app: typer.Typer) -> None:
    from hmedit.cli.options import Command

    app.command("report", cls=Command)(report_command)
