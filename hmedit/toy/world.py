"""The procedural world of the bundled model: coloured shapes on a background, with captions and masks.

Every image is a pure function of its seed, so datasets, tests and benchmarks draw the same pictures on every
machine. Objects are rendered anti-aliased (4x4 supersampling inside each object's box); textures have a
period of 16 px so an 8x-downsampling VAE can represent them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SIZE = 128
SUPERSAMPLE = 4
TEXTURE_PERIOD = 16

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (240, 220, 40),
    "green": (50, 170, 60),
    "cyan": (40, 200, 210),
    "blue": (40, 70, 220),
    "purple": (140, 60, 190),
    "pink": (240, 130, 190),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
    "brown": (130, 80, 40),
}
COLOURS = list(PALETTE)
SHAPES = ["circle", "square", "triangle", "star", "ring"]
TEXTURES = ["solid", "striped", "dotted", "checkered"]
STYLE_WORD = "outlined"  # a global style: every object gets a dark outline
OUTLINE_RGB = (20, 20, 20)
OUTLINE_PX = 3.0


@dataclass
class WorldObject:
    shape: str
    colour: str
    texture: str
    centre: tuple[float, float]  # px
    radius: float  # px
    mask: np.ndarray = field(repr=False)  # [H, W] float32 visible coverage after occlusion
    box: tuple[int, int, int, int] = (0, 0, 0, 0)  # x0, y0, x1, y1 (px, exclusive end) of the visible part

    @property
    def phrase(self) -> str:
        return object_phrase(self.colour, self.shape, self.texture)


@dataclass
class WorldImage:
    image: np.ndarray  # [H, W, 3] uint8
    caption: str
    background: str
    background_texture: str
    objects: list[WorldObject]
    outlined: bool


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def object_phrase(colour: str, shape: str, texture: str = "solid", outlined: bool = False) -> str:
    words = ([STYLE_WORD] if outlined else []) + ([] if texture == "solid" else [texture]) + [colour, shape]
    return f"{article(words[0])} {' '.join(words)}"


def background_phrase(colour: str, texture: str = "solid") -> str:
    words = ([] if texture == "solid" else [texture]) + [colour, "background"]
    return f"{article(words[0])} {' '.join(words)}"


def caption_for(
    objects: list[tuple[str, str, str]],
    background: str | None,
    bg_texture: str = "solid",
    outlined: bool = False,
) -> str:
    """Caption in the world's grammar: "a striped red circle and a blue square on a yellow background"."""
    phrases = [object_phrase(c, s, t) for c, s, t in objects]
    text = ", ".join(phrases[:-1]) + " and " + phrases[-1] if len(phrases) > 2 else " and ".join(phrases)
    if background is not None:
        bg = background_phrase(background, bg_texture)
        text = f"{text} on {bg}" if text else bg
    if outlined:
        text = f"{text}, {STYLE_WORD}"
    return text


def vocabulary() -> list[str]:
    """Every word the world's captions use (the tokenizer keeps each as one token)."""
    words = ["a", "an", "and", "on", "background", STYLE_WORD, ","]
    return words + COLOURS + SHAPES + [t for t in TEXTURES if t != "solid"]


def _shade(rgb: np.ndarray) -> np.ndarray:
    """The second colour of a texture: the same hue, darker."""
    return rgb * 0.55


def _texture_pattern(texture: str, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """1 where a texture shows its main colour, 0 where its shade; coordinates in px (image space)."""
    p = TEXTURE_PERIOD
    if texture == "solid":
        return np.ones(np.broadcast(ys, xs).shape, np.float32)
    if texture == "striped":
        return (((ys // (p // 2)) % 2) == 0).astype(np.float32) * np.ones_like(xs)
    if texture == "checkered":
        return ((((ys // (p // 2)) + (xs // (p // 2))) % 2) == 0).astype(np.float32)
    if texture == "dotted":
        dy = (ys % p) - p / 2
        dx = (xs % p) - p / 2
        return (dy * dy + dx * dx > (p * 0.25) ** 2).astype(np.float32)
    raise ValueError(texture)


def _star_polygon(cx: float, cy: float, r: float) -> np.ndarray:
    angles = -np.pi / 2 + np.arange(10) * np.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
    return np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1)


def _inside_polygon(px: np.ndarray, py: np.ndarray, poly: np.ndarray) -> np.ndarray:
    px, py = np.broadcast_arrays(px, py)
    inside = np.zeros(px.shape, bool)
    n = len(poly)
    for i in range(n):
        x1, y1 = poly[i]
        x2, y2 = poly[(i + 1) % n]
        crosses = (y1 > py) != (y2 > py)
        xint = x1 + (py - y1) * (x2 - x1) / (y2 - y1 + 1e-12)
        inside ^= crosses & (px < xint)
    return inside


def shape_sdf_inside(
    shape: str, px: np.ndarray, py: np.ndarray, cx: float, cy: float, r: float, grow: float = 0.0
) -> np.ndarray:
    """Boolean inside-test of a shape at sample points; ``grow`` enlarges it (for outlines)."""
    dx, dy = px - cx, py - cy
    if shape == "circle":
        return dx * dx + dy * dy <= (r + grow) ** 2
    if shape == "square":
        s = r * 0.85 + grow
        return (np.abs(dx) <= s) & (np.abs(dy) <= s)
    if shape == "ring":
        d2 = dx * dx + dy * dy
        return (d2 <= (r + grow) ** 2) & (d2 >= max(r * 0.5 - grow, 0.0) ** 2)
    if shape == "triangle":
        # equilateral, pointing up, inscribed in the circle of radius r (centroid at the centre)
        rr = r + 2 * grow
        a = _inside_polygon(
            px,
            py,
            np.array([[cx, cy - rr], [cx + rr * 0.866, cy + rr * 0.5], [cx - rr * 0.866, cy + rr * 0.5]]),
        )
        return a
    if shape == "star":
        return _inside_polygon(px, py, _star_polygon(cx, cy, r + 1.6 * grow))
    raise ValueError(shape)


def _coverage(shape: str, cx: float, cy: float, r: float, grow: float = 0.0, size: int = SIZE) -> np.ndarray:
    """Anti-aliased coverage [size, size] in 0..1 by 4x4 supersampling inside the shape's box."""
    cov = np.zeros((size, size), np.float32)
    ext = r + 2 * grow + 2
    x0, x1 = max(int(np.floor(cx - ext)), 0), min(int(np.ceil(cx + ext)), size)
    y0, y1 = max(int(np.floor(cy - ext)), 0), min(int(np.ceil(cy + ext)), size)
    if x1 <= x0 or y1 <= y0:
        return cov
    s = SUPERSAMPLE
    sub = (np.arange(s) + 0.5) / s
    xs = (np.arange(x0, x1)[:, None] + sub[None]).reshape(-1)
    ys = (np.arange(y0, y1)[:, None] + sub[None]).reshape(-1)
    inside = shape_sdf_inside(shape, xs[None, :], ys[:, None], cx, cy, r, grow).astype(np.float32)
    cov[y0:y1, x0:x1] = inside.reshape(y1 - y0, s, x1 - x0, s).mean((1, 3))
    return cov


def _fill(texture: str, rgb: tuple[int, int, int], size: int = SIZE) -> np.ndarray:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    pat = _texture_pattern(texture, ys + 0.5, xs + 0.5)[..., None]
    base = np.asarray(rgb, np.float32)
    return pat * base + (1 - pat) * _shade(base)


def render(
    background: str,
    bg_texture: str,
    objects: list[tuple[str, str, str, float, float, float]],
    outlined: bool = False,
    size: int = SIZE,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Paint a scene back to front. objects: (shape, colour, texture, cx, cy, r) in px.

    Returns the uint8 image and each object's visible coverage (after later objects occlude it).
    """
    img = _fill(bg_texture, PALETTE[background], size)
    masks = []
    for shape, colour, texture, cx, cy, r in objects:
        if outlined:
            ring = _coverage(shape, cx, cy, r, grow=OUTLINE_PX, size=size)[..., None]
            img = ring * np.asarray(OUTLINE_RGB, np.float32) + (1 - ring) * img
            masks = [m * (1 - ring[..., 0]) for m in masks]
        cov = _coverage(shape, cx, cy, r, size=size)
        img = cov[..., None] * _fill(texture, PALETTE[colour], size) + (1 - cov[..., None]) * img
        masks = [m * (1 - cov) for m in masks]
        masks.append(cov)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), masks


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask > 0.5)
    if len(xs) == 0:
        return (0, 0, 0, 0)
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


def sample(seed: int, size: int = SIZE) -> WorldImage:
    """Draw one random world image; a pure function of ``seed``."""
    rng = np.random.default_rng([seed, 0x7E57])
    kind = rng.random()
    n_obj = 0 if kind < 0.06 else int(rng.choice([1, 2, 3, 4], p=[0.4, 0.27, 0.19, 0.14]))
    background = str(rng.choice(COLOURS))
    bg_texture = "solid" if rng.random() < 0.75 else str(rng.choice(TEXTURES[1:]))
    outlined = n_obj > 0 and rng.random() < 0.2
    free = [c for c in COLOURS if c != background]
    used: list[str] = []
    objs = []
    for _ in range(n_obj):
        pool = [c for c in free if c not in used] or free
        colour = str(rng.choice(pool))
        used.append(colour)
        shape = str(rng.choice(SHAPES))
        texture = "solid" if rng.random() < 0.6 else str(rng.choice(TEXTURES[1:]))
        # a lone object is drawn large, so that "a blue star" alone fills a fair part of the frame (a star or
        # triangle of radius 0.13 covers only 2% of it); crowded scenes keep smaller objects
        lo, hi = (0.2, 0.36) if n_obj == 1 else (0.13, 0.26 if n_obj > 2 else 0.3)
        r = float(rng.uniform(lo, hi)) * size
        cx, cy = (float(rng.uniform(r * 0.9, size - r * 0.9)) for _ in range(2))
        objs.append((shape, colour, texture, cx, cy, r))
    image, masks = render(background, bg_texture, objs, outlined, size)
    objects = [WorldObject(s, c, t, (cx, cy), r, m, _box(m)) for (s, c, t, cx, cy, r), m in zip(objs, masks)]
    keep_bg = n_obj == 0 or rng.random() > 0.1  # sometimes only the objects are named
    caption = caption_for(
        [(o.colour, o.shape, o.texture) for o in objects],
        background if keep_bg else None,
        bg_texture,
        outlined,
    )
    return WorldImage(image, caption, background, bg_texture, objects, outlined)


def nearest_palette(image: np.ndarray) -> np.ndarray:
    """Index into COLOURS of the nearest palette colour per pixel ; image [..., 3] uint8."""
    from hmedit.metrics import nearest_colour

    return nearest_colour(image, PALETTE)
