"""``hmedit models``: the bundled models (and SD pipelines in the local Hugging Face cache)."""

from __future__ import annotations

import json
import os
from contextlib import suppress
from pathlib import Path
from typing import Annotated, Any

import typer


def _folder_size(path: Path) -> int:
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            with suppress(OSError):  # stat follows the HF cache's symlinks to the blobs
                total += (Path(folder) / name).stat().st_size
    return total


BUNDLED_CLIP = "toy-clip"  # the bundled CLIP (hmedit.clip.load: scenes call it clip: toy)


def bundled_folders() -> dict[str, Path]:
    """Every bundled model's name and folder: the diffusion model and ControlNet, then the CLIP."""
    from hmedit.clip.load import bundled_folder
    from hmedit.models.load import BUNDLED

    return {**BUNDLED, BUNDLED_CLIP: bundled_folder()}


def bundled() -> list[dict[str, Any]]:
    """Each bundled model: name, folder, whether it is there, its size in MB and hash (None when absent)."""
    from hmedit.models.load import BUNDLED_CONTROLNETS, ModelRef, model_hash

    rows = []
    for name, folder in bundled_folders().items():
        marker = "config.json" if name in BUNDLED_CONTROLNETS or name == BUNDLED_CLIP else "model_index.json"
        present = (folder / marker).is_file()
        ref = ModelRef(name, folder, "bundled")
        rows.append(
            {
                "name": name,
                "source": "bundled",
                "path": str(folder),
                "present": present,
                "size_mb": round(_folder_size(folder) / 1e6, 1) if present else None,
                "hash": model_hash(ref) if present else None,
            }
        )
    return rows


def _hub_cache() -> Path | None:
    try:
        from huggingface_hub import constants
    except ImportError:
        return None
    return Path(constants.HF_HUB_CACHE)


def hub_models(cache: Path | None = None) -> list[dict[str, Any]]:
    """SD-like pipelines in the local Hugging Face cache: repos whose snapshot has a model_index.json.

    Only looks at folder names and one small file per snapshot; no weights are read or hashed.
    """
    cache = cache or _hub_cache()
    if cache is None or not cache.is_dir():
        return []
    rows = []
    for repo in sorted(cache.glob("models--*")):
        snapshots = sorted((repo / "snapshots").glob("*/model_index.json"), key=lambda p: p.stat().st_mtime)
        if not snapshots:
            continue
        index = snapshots[-1]
        try:
            kind = json.loads(index.read_text(encoding="utf-8")).get("_class_name", "")
        except (OSError, ValueError):
            kind = ""
        rows.append(
            {
                "name": repo.name.removeprefix("models--").replace("--", "/"),
                "source": "hub",
                "path": str(index.parent),
                "present": True,
                "size_mb": round(_folder_size(index.parent) / 1e6, 1),
                "hash": None,
                "pipeline": kind,
            }
        )
    return rows


def models_command(
    path: Annotated[
        str | None,
        typer.Option(
            "--path",
            metavar="NAME",
            help="Print only the folder of this bundled model (exit code 2 if it is missing).",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the list as JSON.")] = False,
) -> None:
    """List the bundled models and the SD pipelines in the local Hugging Face cache.

    [bold]Examples[/]

      [green]hmedit models[/]

      [green]hmedit models --path toy[/]      the toy model's folder, for scripts

      [green]hmedit models --path toy-controlnet[/]      the bundled ControlNet's folder

      [green]hmedit models --path toy-clip[/]      the bundled CLIP's folder (CLIPModel.from_pretrained)

      [green]hmedit models --json[/]
    """
    from hmedit.errors import HmeditError

    if path is not None:
        from hmedit.clip.load import resolve_clip
        from hmedit.models.load import BUNDLED_CONTROLNETS, resolve, resolve_controlnet

        names = bundled_folders()
        if path not in names:
            raise HmeditError(
                f"'{path}' is not a bundled model", hint="bundled models: " + ", ".join(sorted(names))
            )
        if path == BUNDLED_CLIP:
            found = resolve_clip("toy")
        else:
            found = (resolve_controlnet(path) if path in BUNDLED_CONTROLNETS else resolve(path)).path
        typer.echo(str(found))  # the resolvers raise the one-line error when it is missing
        return

    rows = bundled() + hub_models()
    if as_json:
        typer.echo(json.dumps(rows, indent=2, sort_keys=True))
        return

    from rich.markup import escape
    from rich.table import Table

    from hmedit.cli.options import stdout
    from hmedit.cli.report import wide

    table = Table(show_edge=False, pad_edge=False)
    for name in ("name", "source", "present", "size", "hash", "folder"):
        table.add_column(name, justify="right" if name == "size" else "left", overflow="fold")
    for r in rows:
        table.add_row(
            escape(r["name"]),
            r["source"],
            "[green]yes[/]" if r["present"] else "[bold red]missing[/]",
            "" if r["size_mb"] is None else f"{r['size_mb']:.1f} MB",
            r["hash"] or "",
            escape(r["path"]),
        )
    console = stdout()
    wide(console).print(table)
    for r in rows:
        if not r["present"]:
            console.print(
                f"{r['name']} is missing: train it with `make {_TRAIN.get(r['name'], 'train-toy')}`"
                " or reinstall hmedit",
                markup=False,
            )


_TRAIN = {"toy-controlnet": "train-controlnet", BUNDLED_CLIP: "train-clip"}


def register(app: typer.Typer) -> None:
    app.command("models")(models_command)
