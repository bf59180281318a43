"""``hmedit score``: the CLIP score of every node's region of a render, against the node's prompt."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

MAPS = ("effective", "intrinsic")


def score_command(
    ctx: typer.Context,
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="Output folders of hmedit render (OUT/<scene name>), or folders above them.",
            metavar="PATH...",
            show_default=False,
        ),
    ],
    clip: Annotated[
        str | None,
        typer.Option(
            "--clip",
            help="The CLIP: 'toy' (bundled), a CLIPModel folder or a hub id in the local cache. "
            "Default: each scene's clip:, else toy.",
            show_default=False,
        ),
    ] = None,
    kind: Annotated[
        str,
        typer.Option("--map", help="The node maps that cut the regions out: effective or intrinsic."),
    ] = "effective",
    device: Annotated[str, typer.Option("--device", help="cpu, cuda or cuda:N.")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print the scores as JSON.")] = False,
) -> None:
    """Score each node's region of a render against its prompt with CLIP (MRGD's CLIP metric).

    A node's region is the render masked by its effective mask (the output folder's influence maps) and
    cropped to a square around it; its score is the cosine similarity of the region's CLIP embedding and the
    prompt's. Scores are written to [bold]clip_score.json[/] in each output folder (atomically) and printed.

    A failing folder is reported in one line and the others go on; exit code 2 if any failed.

    [bold]Examples[/]

      [green]hmedit score out/nested_rings[/]

      [green]hmedit score out/[/]                                   every output below the folder

      [green]hmedit score out/garden --clip openai/clip-vit-base-patch16[/]
    """
    import json

    from hmedit.cli.options import problem_line, stderr, stdout
    from hmedit.clip.score import output_folders, score_folder
    from hmedit.errors import HmeditError
    from hmedit.models.load import quiet_libraries

    if kind not in MAPS:
        raise HmeditError(f"unknown map kind '{kind}'", field="--map", hint="use effective or intrinsic")
    quiet_libraries()
    folders = output_folders(paths)
    console = stdout()
    results, failed = {}, 0
    for folder in folders:
        try:
            results[str(folder)] = score_folder(folder, clip, kind=kind, device=device)
        except HmeditError as err:
            stderr().print(problem_line(err))
            failed += 1
    if as_json:
        typer.echo(json.dumps(results, indent=2))
    else:
        _table(console, results)
    if failed:
        raise typer.Exit(2)


def _table(console, results: dict) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(show_edge=False, pad_edge=False)
    for name in ("output", "node", "prompt", "area", "clip"):
        table.add_column(name, justify="right" if name in ("area", "clip") else "left", overflow="fold")
    for folder, res in results.items():
        for image, per in res["images"].items():
            for node_id, row in per["nodes"].items():
                table.add_row(
                    escape(f"{folder}/{image}"),
                    escape(node_id),
                    escape(row["prompt"]),
                    "" if row["area"] is None else f"{row['area']:.3f}",
                    "" if row["score"] is None else f"{row['score']:.4f}",
                )
            mean = per["mean"]
            table.add_row(
                escape(f"{folder}/{image}"), "[bold]mean[/]", "", "", "" if mean is None else f"{mean:.4f}"
            )
    console.print(table)
    if results:
        first = next(iter(results.values()))
        console.print(f"written: clip_score.json in each output folder (CLIP: {first['clip']})", markup=False)


def register(app: typer.Typer) -> None:
    from hmedit.cli.options import Command

    app.command("score", cls=Command)(score_command)
