"""Draw the example scenes' assets (run from anywhere: ``python scenes/assets/make_assets.py``).

Colours are the bundled toy model's palette (hmedit/toy/world.py), so the pictures look like its world. Shapes
are drawn 4x larger and downsampled (box filter) for anti-aliased edges. Every file is deterministic.
"""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
SS = 4  # supersampling factor

RED = (220, 40, 40)
YELLOW = (240, 220, 40)
BLUE = (40, 70, 220)


def _down(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    return img.resize(size, Image.Resampling.BOX)


def _star(cx: float, cy: float, r_out: float, r_in: float, points: int = 5) -> list[tuple[float, float]]:
    out = []
    for i in range(2 * points):
        r = r_out if i % 2 == 0 else r_in
        a = -math.pi / 2 + i * math.pi / points
        out.append((cx + r * math.cos(a), cy + r * math.sin(a)))
    return out


def red_circle_layer(size: int = 96) -> Image.Image:
    """A red circle with a transparent surround (RGBA): a layer whose alpha is its region."""
    big = Image.new("RGBA", (size * SS, size * SS), RED + (0,))
    ImageDraw.Draw(big).ellipse((2 * SS, 2 * SS, (size - 2) * SS, (size - 2) * SS), fill=RED + (255,))
    return _down(big, (size, size))


def blue_star_layer(size: int = 80) -> Image.Image:
    """A blue five-pointed star (RGBA)."""
    big = Image.new("RGBA", (size * SS, size * SS), BLUE + (0,))
    c = size * SS / 2
    ImageDraw.Draw(big).polygon(_star(c, c * 1.06, c * 0.95, c * 0.4), fill=BLUE + (255,))
    return _down(big, (size, size))


def ring_mask(width: int = 256, height: int = 192) -> Image.Image:
    """A grayscale mask image (white = inside): a ring, a shape rect/ellipse/polygon cannot give."""
    big = Image.new("L", (width * SS, height * SS), 0)
    draw = ImageDraw.Draw(big)
    cx, cy, r = 0.62 * width * SS, 0.5 * height * SS, 0.3 * height * SS
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    r2 = r * 0.55
    draw.ellipse((cx - r2, cy - r2, cx + r2, cy + r2), fill=0)
    return _down(big, (width, height))


def blue_square_on_yellow(size: int = 256) -> Image.Image:
    """An init image in the toy world's style: a blue square on a yellow background."""
    img = Image.new("RGB", (size, size), YELLOW)
    ImageDraw.Draw(img).rectangle(
        (round(size * 0.3), round(size * 0.3), round(size * 0.7) - 1, round(size * 0.7) - 1), fill=BLUE
    )
    return img


def hires_board(size: int = 2048) -> Image.Image:
    """A large init image for the high-resolution edit: shapes of the toy world on a green background,
    drawn at full size (flat colours, so the PNG stays small)."""
    green, white, purple = (50, 170, 60), (245, 245, 245), (140, 60, 190)
    img = Image.new("RGB", (size, size), green)
    d = ImageDraw.Draw(img)
    s = size / 16
    d.rectangle((1 * s, 1 * s, 7 * s - 1, 7 * s - 1), fill=BLUE)
    d.ellipse((9 * s, 1.5 * s, 14.5 * s, 7 * s), fill=RED)
    d.polygon(_star(4 * s, 12 * s, 3.2 * s, 1.3 * s), fill=YELLOW)
    d.ellipse((9.5 * s, 9.5 * s, 14.5 * s, 14.5 * s), fill=white)
    d.ellipse((10.75 * s, 10.75 * s, 13.25 * s, 13.25 * s), fill=green)
    d.rectangle((7.4 * s, 7.4 * s, 8.6 * s - 1, 8.6 * s - 1), fill=purple)
    return img


def main() -> None:
    red_circle_layer().save(HERE / "red_circle_layer.png", optimize=True)
    blue_star_layer().save(HERE / "blue_star_layer.png", optimize=True)
    ring_mask().save(HERE / "ring_mask.png", optimize=True)
    blue_square_on_yellow().save(HERE / "blue_square_on_yellow.png", optimize=True)
    hires_board().save(HERE / "hires_board.png", optimize=True)


if __name__ == "__main__":
    main()
