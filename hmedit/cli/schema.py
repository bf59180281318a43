"""``hmedit schema``: the JSON Schema of the scene format, for editors (completion, tooltips, checks)."""

from __future__ import annotations

import json

import typer

from hmedit.cli.options import Output


def schema_command(output: Output = None) -> None:
    """Print the JSON Schema of scene files.

    Editors use it for completion, tooltips and checks while you type.

    With the YAML language server (VS Code's YAML extension and others), save it and start a scene with:

      [dim]# yaml-language-server: $schema=./hmedit-scene.schema.json[/]

    [bold]Examples[/]

      [green]hmedit schema[/]

      [green]hmedit schema -o hmedit-scene.schema.json[/]
    """
    from hmedit.scene.spec import json_schema

    text = json.dumps(json_schema(), indent=2) + "\n"
    if output is None:
        typer.echo(text, nl=False)
        return
    from hmedit.errors import HmeditError

    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise HmeditError(f"cannot write the schema: {exc.strerror or exc}", file=output) from exc


def register(app: typer.Typer) -> None:
    app.command("schema")(schema_command)
