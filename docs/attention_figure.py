"""Make docs/attention-masks.png: scenes/attention_band.yaml on the toy model, its first pass, the map of the
word "circle", the mask, the band and the edit. Run from the repository root:

    python docs/attention_figure.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

import hmedit
from hmedit.masks.attention import first_pass_scene
from hmedit.outputs import heatmap, save_png

ROOT = Path(__file__).resolve().parent.parent
SCALE = 2


def main() -> None:
    torch.set_num_threads(1)
    scene = hmedit.load_scene(ROOT / "scenes" / "attention_band.yaml")
    first = hmedit.render(first_pass_scene(scene), "toy").results
    edit = hmedit.render(scene, "toy")
    first_image = next(iter(first.values())).image
    maps = edit.maps

    def gray(m: torch.Tensor) -> np.ndarray:
        return np.repeat((m.clamp(0, 1).numpy() * 255).round().astype(np.uint8)[..., None], 3, 2)

    panels = [
        ("first pass", first_image),
        ('"circle"', heatmap(maps["source/recolour"], first_image)),
        ("mask", gray(maps["intrinsic/recolour"])),
        ("band", gray(maps["intrinsic/blend"])),
        ("edit", np.asarray(edit.image)),
    ]
    h, w = first_image.shape[:2]
    pad, label = 4, 14
    sheet = Image.new("RGB", (len(panels) * (w * SCALE + pad) + pad, h * SCALE + label + 2 * pad), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (name, img) in enumerate(panels):
        x = pad + i * (w * SCALE + pad)
        tile = Image.fromarray(np.asarray(img)[..., :3]).resize((w * SCALE, h * SCALE), Image.NEAREST)
        sheet.paste(tile, (x, pad + label))
        draw.text((x, pad), name, fill="black")
    save_png(ROOT / "docs" / "attention-masks.png", np.asarray(sheet))


if __name__ == "__main__":
    main()
