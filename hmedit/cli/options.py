"""What commands share: Annotated argument/option aliases and the consoles that print one problem per line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperCommand

from hmedit.errors import HmeditError
from hmedit.scene.spec import Dtype


class Command(TyperCommand):
    """A command whose usage line shows an argument's metavar as written: ``hmedit masks [OPTIONS] SCENE...``.

    typer wraps a required argument in braces and appends "..." to a variadic one (``{SCENE...}...``);
    arguments without a metavar keep that. Register with ``app.command("name", cls=Command)``.
    """

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        if any(p.name == "ray" for p in self.params):
            args = ray_value(args)
        return super().parse_args(ctx, args)

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument" and param.metavar:
                pieces.append(param.metavar)
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces


ScenePaths = Annotated[
    list[Path],
    typer.Argument(
        help="Scene files ([bold]*.yaml[/]) or folders, searched recursively for them.",
        metavar="SCENE...",
        show_default=False,
    ),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print only problems, not the OK lines.")]
Strict = Annotated[bool, typer.Option("--strict", help="Treat warnings as errors (exit code 2).")]
OutDir = Annotated[
    Path,
    typer.Option(
        "--out", "-o", help="Output folder; each scene writes to OUT/<scene name>/.", show_default=True
    ),
]
Output = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="Write to this file instead of standard output.", show_default=False),
]


# The model options of render, check, learn and bench
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="Model for every scene, instead of each scene's own: 'toy', a diffusers folder, a hub id in "
        "the local cache, or a .safetensors file.",
        show_default=False,
    ),
]
DeviceOpt = Annotated[
    str, typer.Option("--device", help="auto (CUDA if present, else CPU), cpu, cuda or cuda:N.")
]
DtypeOpt = Annotated[
    Dtype, typer.Option("--dtype", help="Weights' precision; auto: fp16 on CUDA, fp32 on CPU.")
]
CacheDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir",
        metavar="DIR",
        help="Folder of learned tokens (embeddings), reused across runs. Default: embeddings/ in hmedit's "
        "cache folder ($HMEDIT_CACHE, else ~/.cache/hmedit).",
        show_default=False,
    ),
]
SizeOpt = Annotated[
    str | None,
    typer.Option(
        "--size",
        metavar="WxH",
        help="Output size for every scene, e.g. 512x384. Default: the scene's size, else the model's.",
        show_default=False,
    ),
]


# Batches on a Ray cluster (render, check): hmedit.distributed
RayOpt = Annotated[
    str | None,
    typer.Option(
        "--ray",
        metavar="[ADDRESS]",
        help="Run the batch on a Ray cluster (pip install 'hmedit\\[ray]'): alone or 'local', a new local "
        "one (or $RAY_ADDRESS's); 'auto', HOST:PORT or ray://HOST:PORT, a running one (ray start --head).",
        show_default=False,
    ),
]
RayCpusOpt = Annotated[
    int | None,
    typer.Option(
        "--ray-cpus",
        min=1,
        metavar="N",
        help="With --ray on CPUs: CPUs per worker (default 1, one worker per CPU). On GPUs: one per GPU.",
        show_default=False,
    ),
]


def ray_value(args: list[str]) -> list[str]:
    """``--ray`` takes an address only when one follows it (``local``, ``auto``, ``HOST:PORT``,
    ``ray://HOST:PORT``); else it stands alone (value ""), so ``--ray scenes/`` renders scenes/ locally."""
    from hmedit.distributed import is_address

    out: list[str] = []
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        out.append(arg)
        if arg == "--":
            return out + rest
        if arg == "--ray" and not (rest and is_address(rest[0])):
            out[-1] = "--ray="
    return out


def stdout() -> Console:
    """A console for a command's report; soft_wrap keeps one problem on one line, whatever the width."""
    return Console(highlight=False, soft_wrap=True)


def stderr() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def problem_line(err: HmeditError, severity: str = "error") -> Text:
    """``error: file:line:col: field: problem (hint)`` as one rich Text (no markup: brackets stay literal)."""
    style = {"error": "bold red", "warning": "bold yellow"}.get(severity, "bold")
    return Text.assemble((f"{severity}: ", style), err.format())
