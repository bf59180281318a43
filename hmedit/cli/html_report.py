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

    Each scene: its image(s), the node tree with prompts and influence maps, timings and provenance.

    Where [bold]hmedit check[/] wrote check.json: the golden, the new render and the difference with its PSNR.

    Scenes that failed to render are listed with their error; a folder with no render is refused.

    The page needs no server and no network: embedded images (or [bold]--link[/]), inline style, no script.

    [bold]Examples[/]

      [green]hmedit render scenes/ --out out && hmedit report out[/]     writes out/report.html

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
