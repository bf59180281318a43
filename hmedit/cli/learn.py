"""``hmedit learn``: learn the token of every scene node with ``learn:`` (textual inversion) into the cache,
so that ``hmedit render`` finds them; the work is done by hmedit.conditioning.tokens."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from hmedit.cli.options import CacheDirOpt, DeviceOpt, DtypeOpt, ModelOpt, ScenePaths


@dataclass
class Row:
    """One line of the summary: a node's token, or a scene that failed or had nothing to learn."""

    file: Path
    node: str = ""
    status: str = ""  # learned, cached, file, nothing to learn, failed, interrupted
    token: str = ""
    seconds: float = 0.0
    loss: float | None = None
    path: Path | None = None


def learn_command(
    ctx: typer.Context,
    paths: ScenePaths,
    model: ModelOpt = None,
    cache_dir: CacheDirOpt = None,
    force: Annotated[
        bool, typer.Option("--force", help="Learn again even the tokens that are in the cache.")
    ] = False,
    export: Annotated[
        Path | None,
        typer.Option(
            "--export",
            metavar="DIR",
            help="Also write each learned token to DIR/<scene name>/<node id>.safetensors (diffusers' "
            "format).",
            show_default=False,
        ),
    ] = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """Learn a token for every node with [bold]learn:[/] (textual inversion, Collage Diffusion §4.3).

    Each node's prompt becomes [bold]<hm-id-xxxxxxxx> prompt[/]; only the token's embedding is trained, on the composite of the layers up to the node, with the loss inside the node's alpha, at the model's native size around the node.

    Tokens are cached (by model, composite, alpha, prompt and settings) in [bold]--cache-dir[/], so a second run and [bold]hmedit render[/] reuse them. Nodes with [bold]embedding:[/] are loaded and checked.

    Cached files are diffusers' [bold]learned_embeds[/] format: [green]pipe.load_textual_inversion(path, token="<my-token>")[/] loads them.

    A failing scene is reported in one line and the others go on. Exit code 2 if any scene failed (1 if only internal errors did); 130 on Ctrl-C.

    [bold]Examples[/]

      [green]hmedit learn my_collage.yaml[/]

      [green]hmedit learn scenes/ --model ./my-sd15 --export tokens/[/]
    """  # noqa: E501 - one line per paragraph: rich re-wraps help text to the terminal
    from hmedit.batch import Options, prepare
    from hmedit.cli.options import stdout
    from hmedit.cli.render import scene_files
    from hmedit.cli.report import SceneLoop, error_line, progress_bar
    from hmedit.conditioning.textual_inversion import export_diffusers, widths
    from hmedit.conditioning.tokens import install_tokens, needs_tokens
    from hmedit.jobs import default_models as models
    from hmedit.models.load import pick_device

    files = scene_files(paths)
    pick_device(device, dtype)  # a bad --device or --dtype fails before the first scene
    options = Options(model=model, device=device, dtype=dtype)
    console = stdout()
    debug = bool(ctx.find_root().params.get("debug"))
    rows: list[Row] = []
    from rich.progress import TextColumn

    progress = progress_bar(console, TextColumn("{task.fields[loss]}"), transient=False)  # a bar per node
    tasks: dict[tuple[str, str], int] = {}
    loop = SceneLoop(progress, lambda f, status: rows.append(Row(f, status=status)), debug=debug)
    with progress:
        for file in files:

            def on_step(node: str, i: int, n: int, loss: float | None, name: str = file.name) -> None:
                if i == 0:
                    tasks[name, node] = progress.add_task(f"{name}: {node}", total=n, loss="")
                else:
                    progress.update(tasks[name, node], completed=i, loss=f"loss {loss:.4f}")

            with loop.scene(file):
                job = prepare(
                    file,
                    options,
                    on_warning=lambda w, f=file: progress.console.print(error_line(w, f, "warning")),
                )
                if not needs_tokens(job.scene):
                    rows.append(Row(file, status="nothing to learn"))
                    continue
                loaded, _ = models.get(job.model_ref, job.device, job.dtype)
                tokens = install_tokens(
                    job.scene,
                    loaded,
                    cache_dir=cache_dir,
                    progress=on_step,
                    force=force,
                    guidance=job.requests[0].guidance,
                    defaults=job.preset.learn,
                )
                for tok in tokens.tokens.values():
                    path = tok.path
                    if export is not None and tok.source != "file" and tok.vector is not None:
                        target = export / str(job.scene.name) / f"{tok.node_id}.safetensors"
                        path = export_diffusers(target, tok.text, tok.vector, widths(loaded))
                    rows.append(Row(file, tok.node_id, tok.source, tok.text, tok.seconds, tok.loss, path))
            if loop.interrupted:
                break
    print_rows(console, rows)
    loop.exit()


_STYLE = {
    "learned": "[green]learned[/]",
    "cached": "[dim]cached[/]",
    "file": "[dim]loaded from file[/]",
    "failed": "[bold red]failed[/]",
    "interrupted": "[bold yellow]interrupted[/]",
    "nothing to learn": "[dim]nothing to learn[/]",
}


def print_rows(console, rows: list[Row]) -> None:
    """The summary table (scene, node, token, status, loss, time, file) and a count line."""
    from rich.markup import escape
    from rich.table import Table

    from hmedit.cli.report import wide

    table = Table(show_edge=False, pad_edge=False)
    for name in ("scene", "node", "token", "status", "loss", "time", "file"):
        table.add_column(name, justify="right" if name in ("loss", "time") else "left", overflow="fold")
    for r in rows:
        table.add_row(
            escape(str(r.file)),
            escape(r.node),
            escape(r.token),
            _STYLE.get(r.status, r.status),
            f"{r.loss:.4f}" if r.loss is not None else "",
            f"{r.seconds:.1f}s" if r.status == "learned" else "",
            escape(str(r.path)) if r.path is not None else "",
        )
    wide(console).print(table)
    count = {s: sum(r.status == s for r in rows) for s in _STYLE}
    tokens = count["learned"] + count["cached"] + count["file"]
    parts = [f"{count['learned']} learned", f"{count['cached']} cached", f"{count['file']} loaded"]
    failed = count["failed"] + count["interrupted"]
    line = f"{tokens} token{'s' * (tokens != 1)}: " + ", ".join(parts)
    if failed:
        line += f"; {failed} scene{'s' * (failed != 1)} failed"
    console.print(line)


def register(app: typer.Typer) -> None:
    from hmedit.cli.options import Command

    app.command("learn", cls=Command)(learn_command)
