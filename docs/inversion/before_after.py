"""How docs/inversion/coffee-before-after.png is made: the source photo beside coffee_edit.yaml rendered with
`inversion: none`, `negative_prompt` and `null_text` (bundled toy model at 128 px, each render as `hmedit render` does; the strip shown at 2x).

    .venv/bin/python docs/inversion/before_after.py
"""

from pathlib import Path

import numpy as np
from PIL import Image

import hmedit

HERE = Path(__file__).resolve().parent

scene = hmedit.load_scene(HERE / "coffee_edit.yaml")
row = []
for method in ("none", "negative_prompt", "null_text"):
    out = hmedit.render(scene.model_copy(update={"inversion": method}))
    row.append(np.asarray(out.image.convert("RGB")))
source = Image.open(scene.init_image).convert("RGB").resize(out.image.size, Image.LANCZOS)
row.insert(0, np.asarray(source))
strip = Image.fromarray(np.concatenate(row, axis=1))
strip.resize((strip.width * 2, strip.height * 2), Image.LANCZOS).save(HERE / "coffee-before-after.png")
