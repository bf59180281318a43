"""A checked output folder, made once per session for the report, JUnit and PNG-metadata tests: three scenes
(two seeds with regions; a tiled 96x64 render with nested nodes; one that fails to render) rendered on the
tiny random model by ``hmedit check --update`` into goldens, one golden altered on purpose (an injected
regression), then ``hmedit check --out OUT --junit junit.xml``; plus a leftover scene folder with an image
and no render.json (an interrupted render)."""

from __future__ import annotations

import shutil
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

TWO_SEEDS = """
size: [64, 64]
steps: 2
seeds: [3, 4]
root:
  prompt: 'a yellow background, "warm": sunny'
  negative: blurry, dark
  children:
    - id: disc
      prompt: a red circle, shiny <b>bold</b>
      negative: 'noise: grain'
      mask: {ellipse: [0.2, 0.2, 0.5, 0.5]}
"""

TILED = """
size: [96, 64]
steps: 2
seed: 7
scheduler: euler_a
root:
  prompt: a blue sky
  children:
    - id: sun
      prompt: a yellow sun
      mask: {rect: [0.1, 0.1, 0.3, 0.3]}
      children:
        - id: spot.1
          prompt: a red spot
          mask: {ellipse: [0.15, 0.15, 0.1, 0.1]}
"""

BROKEN = """
size: [64, 64]
steps: 2
init_image: missing.png
root:
  prompt: an edit of a missing image
"""


@dataclass
class Checked:
    scenes: Path
    golden: Path
    out: Path  # the check's output folder (check.json, <scene>/...)
    junit: Path
    code: int  # the check's exit code


def run_cli(*args) -> int:
    from hmedit.cli.app import main

    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    return info.value.code


@pytest.fixture(scope="session")
def checked(tiny, tmp_path_factory) -> Checked:
    import torch
    from PIL import Image

    root = tmp_path_factory.mktemp("checked")
    scenes = root / "scenes"
    scenes.mkdir()
    for name, text in (("two_seeds", TWO_SEEDS), ("tiled", TILED), ("broken", BROKEN)):
        (scenes / f"{name}.yaml").write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    golden, out, junit = root / "golden", root / "out", root / "junit.xml"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert run_cli("check", scenes, "-g", golden, "--model", tiny, "--update") == 2  # broken.yaml
        path = golden / "two_seeds" / "image-4.png"
        with Image.open(path) as img:
            pixels = np.asarray(img.convert("RGB")).copy()
        pixels[10:30, 10:30] ^= 0x80  # the injected regression
        Image.fromarray(pixels).save(path)
        code = run_cli("check", scenes, "-g", golden, "--model", tiny, "-o", out, "--junit", junit)
    finally:
        torch.set_num_threads(threads)
    (out / "leftover").mkdir()
    shutil.copy(out / "tiled" / "image.png", out / "leftover" / "image.png")
    return Checked(scenes, golden, out, junit, code)
