"""``hmedit toy``: train and evaluate the bundled model of the procedural world."""

from __future__ import annotations

import typer

toy_app = typer.Typer(
    help="The bundled model: train it, measure it, draw from its world.", no_args_is_help=True
)
_PASS = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


@toy_app.command("train", context_settings=_PASS, add_help_option=False)
def train(ctx: typer.Context) -> None:
    """Train the bundled model (VAE, text encoder, UNet); every option of ``python -m hmedit.toy.train``.

    Example: hmedit toy train --run-dir runs/toy --out hmedit/models/weights/toy   (--help for all options)
    """
    from hmedit.toy.train import main

    main(list(ctx.args))


@toy_app.command("evaluate", context_settings=_PASS, add_help_option=False)
def evaluate(ctx: typer.Context) -> None:
    """Measure the model's quality figures (VAE PSNR, colour oracle over 100 prompts).

    Example: hmedit toy evaluate --json toy-figures.json   (--help for all options)
    """
    from hmedit.toy.evaluate import main

    main(list(ctx.args))


@toy_app.command("train-controlnet", context_settings=_PASS, add_help_option=False)
def train_controlnet(ctx: typer.Context) -> None:
    """Train the bundled edge ControlNet; every option of ``python -m hmedit.toy.train_controlnet``.

    Example: hmedit toy train-controlnet --run-dir runs/cnet --out hmedit/models/weights/toy-controlnet
    """
    from hmedit.toy.train_controlnet import main

    main(list(ctx.args))


@toy_app.command("evaluate-controlnet", context_settings=_PASS, add_help_option=False)
def evaluate_controlnet(ctx: typer.Context) -> None:
    """Measure the bundled ControlNet (IoU of renders from held-out edges, with and without control).

    Example: hmedit toy evaluate-controlnet --json cnet.json   (--help for all options)
    """
    from hmedit.toy.evaluate_controlnet import main

    main(list(ctx.args))


@toy_app.command("sample")
def sample(
    out: str = typer.Option("world.png", "--out", "-o", help="PNG file for the grid."),
    count: int = typer.Option(32, help="How many pictures."),
    seed: int = typer.Option(0, help="First seed."),
) -> None:
    """Draw pictures of the procedural world (with their captions) into one grid PNG.

    Example: hmedit toy sample --count 16 --out world.png
    """
    import numpy as np

    from hmedit.outputs.write import save_png
    from hmedit.toy import world

    samples = [world.sample(seed + i) for i in range(count)]
    cols = 8
    rows = -(-count // cols)
    grid = np.zeros((rows * world.SIZE, cols * world.SIZE, 3), np.uint8)
    for i, s in enumerate(samples):
        r, c = divmod(i, cols)
        grid[r * world.SIZE : (r + 1) * world.SIZE, c * world.SIZE : (c + 1) * world.SIZE] = s.image
        typer.echo(f"{seed + i}: {s.caption}")
    save_png(out, grid)
    typer.echo(f"wrote {out}")


def register(app: typer.Typer) -> None:
    app.add_typer(toy_app, name="toy")
