"""hmedit.metrics on synthetic arrays: every metric can fail."""

import numpy as np
import pytest

from hmedit import metrics
from hmedit.toy.world import PALETTE


def canvas(colour: str, h: int = 32, w: int = 32) -> np.ndarray:
    return np.broadcast_to(np.array(PALETTE[colour], np.uint8), (h, w, 3)).copy()


def box(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_region_colour_fraction_counts_nearest_palette_colour_inside_the_mask_only():
    img = canvas("blue")
    img[:, :8] = PALETTE["red"]  # a quarter of the image is red
    img[:, 8:12] = (200, 50, 45)  # near red, not exactly it
    full = np.ones((32, 32), bool)
    assert metrics.region_colour_fraction(img, full, "red", palette=PALETTE) == pytest.approx(12 / 32)
    assert metrics.region_colour_fraction(img, full, "blue", palette=PALETTE) == pytest.approx(20 / 32)
    assert metrics.region_colour_fraction(
        img, box(32, 32, 0, 32, 0, 16), "red", palette=PALETTE
    ) == pytest.approx(12 / 16)
    assert metrics.region_colour_fraction(img, box(32, 32, 0, 32, 16, 32), "red", palette=PALETTE) == 0.0
    assert metrics.region_colour_fraction(img, np.zeros((32, 32), bool), "red", palette=PALETTE) == 0.0


def test_float_masks_count_pixels_above_one_half():
    img = canvas("green")
    img[:, 16:] = PALETTE["yellow"]
    soft = np.zeros((32, 32), np.float32)
    soft[:, 12:20] = 0.6  # 4 green columns, 4 yellow ones
    soft[:, 20:] = 0.5  # not inside: exactly one half
    assert metrics.region_colour_fraction(img, soft, "yellow", palette=PALETTE) == pytest.approx(0.5)


def test_region_match_threshold():
    img = canvas("white")
    img[:10] = PALETTE["black"]  # 10 of 32 rows
    full = np.ones((32, 32), bool)
    assert metrics.region_match(img, full, "black", palette=PALETTE)  # 0.3125 >= 0.3
    assert not metrics.region_match(img, full, "black", threshold=0.35, palette=PALETTE)
    assert not metrics.region_match(img, full, "red", palette=PALETTE)


def test_colours_are_those_of_the_palette_passed_in():
    """metrics knows no world: the caller's palette names the colours, in its own order."""
    img = np.zeros((4, 4, 3), np.uint8)
    img[:, :1] = (250, 0, 0)
    img[:, 1:] = (10, 10, 10)
    full = np.ones((4, 4), bool)
    palette = {"dark": (0, 0, 0), "scarlet": (255, 0, 0)}
    assert metrics.region_colour_fraction(img, full, "scarlet", palette=palette) == pytest.approx(0.25)
    assert metrics.region_match(img, full, "dark", 0.7, palette=palette)
    assert metrics.colour_index("scarlet", palette) == 1
    assert metrics.nearest_colour(img[0], palette).tolist() == [1, 0, 0, 0]
    with pytest.raises(ValueError, match="the palette has dark, scarlet"):
        metrics.region_colour_fraction(img, full, "red", palette=palette)


def test_metrics_import_no_world():
    import subprocess
    import sys

    code = "import sys, hmedit.metrics; print(sorted(m for m in sys.modules if m.startswith('hmedit.toy')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="unknown colour"):
        metrics.region_colour_fraction(canvas("red"), np.ones((32, 32), bool), "mauve", palette=PALETTE)
    with pytest.raises(ValueError, match="differ"):
        metrics.region_colour_fraction(canvas("red"), np.ones((16, 32), bool), "red", palette=PALETTE)


def test_dilate_is_a_disk():
    m = np.zeros((21, 21), bool)
    m[10, 10] = True
    d = metrics.dilate(m, 3)
    yy, xx = np.mgrid[:21, :21]
    assert np.array_equal(d, (yy - 10) ** 2 + (xx - 10) ** 2 <= 9)
    assert np.array_equal(metrics.dilate(m, 0), m)


def test_locality_separates_inside_margin_and_outside():
    before = canvas("gray", 40, 40)
    after = before.copy()
    region = box(40, 40, 10, 20, 10, 20)
    after[region] += 30  # inside: +30 on every channel
    ring = metrics.dilate(region, 4) & ~region
    after[ring] += 100  # within the margin: ignored by both figures
    out = metrics.locality(before, after, region.astype(np.float32), margin_px=4)
    assert out["inside_mean"] == pytest.approx(30)
    assert out["outside_mean"] == pytest.approx(0)
    # a change just beyond the margin counts outside
    after[30, 30] = before[30, 30] + 90
    n_out = 40 * 40 - metrics.dilate(region, 4).sum()
    out = metrics.locality(before, after, region, margin_px=4)
    assert out["outside_mean"] == pytest.approx(90 / n_out)
    # with a smaller margin the ring's change leaks into outside_mean
    assert metrics.locality(before, after, region, margin_px=1)["outside_mean"] > 10


def test_seam_score_flags_a_step_at_a_tile_border():
    rng = np.random.default_rng(0)
    base = rng.integers(100, 110, (64, 64, 3)).astype(np.uint8)  # mild texture everywhere
    assert metrics.seam_score(base, [32], [32]) == pytest.approx(1.0, abs=0.15)
    seamed = base.copy()
    seamed[:, 32:] += 40  # a vertical seam at x = 32
    assert metrics.seam_score(seamed, [32], []) > 3
    assert metrics.seam_score(seamed, [32], [32]) > 2  # the clean horizontal border dilutes it
    assert metrics.seam_score(seamed, [16], []) == pytest.approx(1.0, abs=0.3)  # wrong border: no seam there
    flat = np.full((16, 16, 3), 7, np.uint8)
    assert metrics.seam_score(flat, [8], [8]) == pytest.approx(1.0)
    assert metrics.seam_score(flat, [], []) == 1.0


def test_seam_score_by_phase_ignores_a_texture_in_step_with_the_latent_grid():
    rng = np.random.default_rng(1)
    img = rng.integers(100, 110, (64, 64, 3)).astype(np.int16)
    img[:, ::8] += 30  # a decoder's 8 px lattice: strong edges at every multiple of 8, borders or not
    img = img.clip(0, 255).astype(np.uint8)
    assert metrics.seam_score(img, [32], [32]) > 1.5  # the plain ratio sees the lattice at the border
    assert metrics.seam_score(img, [32], [32], period=8) == pytest.approx(1.0, abs=0.2)
    seamed = img.copy()
    seamed[:, 32:] = (seamed[:, 32:].astype(int) + 40).clip(0, 255)
    assert metrics.seam_score(seamed, [32], [], period=8) > 1.5  # a real step still shows


def test_mean_colour_error_is_the_distance_of_the_region_mean_in_0_255():
    image = np.zeros((4, 4, 3), np.uint8)
    image[:2] = (30, 140, 140)
    image[2:] = (255, 255, 255)
    mask = np.zeros((4, 4), bool)
    mask[:2] = True
    assert metrics.mean_colour_error(image, mask, (30, 140, 140)) == 0
    assert metrics.mean_colour_error(image, ~mask, (0, 0, 0)) == pytest.approx(255)
    # the mean of the region, not of its pixels' errors: half black, half white is mid-gray on average
    image[:1] = 0
    image[1:2] = 254
    assert metrics.mean_colour_error(image, mask, (127, 127, 127)) == pytest.approx(0)
    assert np.isnan(metrics.mean_colour_error(image, np.zeros((4, 4)), (0, 0, 0)))
