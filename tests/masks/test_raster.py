"""Rasterisation of intrinsic masks: coverage, placement, feathering, scene adapter."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from hmedit.errors import HmeditError
from hmedit.masks import raster
from hmedit.scene import load_scene

FAST = settings(max_examples=25, deadline=None)
SIZES = [(7, 5), (64, 48), (200, 333)]
boxes = st.tuples(st.floats(0.0, 0.6), st.floats(0.0, 0.6), st.floats(0.02, 0.4), st.floats(0.02, 0.4))


# ---------------------------------------------------------------------------------------------------------
# Coverage


@FAST
@given(boxes, st.sampled_from(SIZES))
def test_rect_area_is_exact(box, size):
    w, h = size
    m = raster.rect(*box, w, h)
    assert m.dtype == torch.float32 and m.shape == (h, w)
    assert float(m.min()) >= 0 and float(m.max()) <= 1
    assert float(m.double().sum()) == pytest.approx(box[2] * box[3] * w * h, rel=1e-5, abs=1e-4)


@FAST
@given(boxes, st.sampled_from(SIZES))
def test_ellipse_area_matches_pi_ab(box, size):
    """Each strip carries its exact area (mean chord), so the total is pi/4 w h up to float64 rounding and
    the float32 result: 1e-5 relative, even for ellipses a fraction of a pixel high."""
    w, h = size
    m = raster.ellipse(*box, w, h)
    expected = math.pi / 4 * box[2] * box[3] * w * h
    assert float(m.double().sum()) == pytest.approx(expected, rel=1e-5, abs=1e-5)
    assert float(m.min()) >= 0 and float(m.max()) <= 1


def _row_sampling_bound(points, w, h):
    """Worst-case area error (px^2) of sampling y at SUBROWS scanlines per row, x being exact.

    The covered width is piecewise linear in y, so the midpoint rule is exact except in the sub-row that
    holds a break: an edge shorter than a pixel in y acts as a jump of its |dx| (error <= |dx| / 2 of a
    sub-row), a longer one as a kink of slope |dx/dy| at each end (error <= |dx/dy| * subrow^2 / 8 each).
    """
    sub = 1.0 / raster.SUBROWS
    bound = 0.0
    for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1], strict=True):
        dx, dy = abs(x1 - x0) * w, abs(y1 - y0) * h
        bound += dx * sub / 2 if dy < 1 else 2 * (dx / dy) * sub**2 / 8
    return bound


@FAST
@given(
    st.lists(st.tuples(st.floats(0.0, 1.0), st.floats(0.0, 1.0)), min_size=3, max_size=3),
    st.sampled_from(SIZES),
)
def test_triangle_area_matches_shoelace(points, size):
    w, h = size
    (x0, y0), (x1, y1), (x2, y2) = points
    area = abs((x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)) / 2 * w * h
    m = raster.polygon(points, w, h)
    assert float(m.double().sum()) == pytest.approx(area, abs=1e-6 + _row_sampling_bound(points, w, h))


def test_shapes_are_placed_symmetrically():
    """A centred ellipse or diamond equals its mirror images (catches sub-scanline offsets)."""
    e = raster.ellipse(0.2, 0.1, 0.6, 0.8, 40, 30)
    d = raster.polygon([(0.5, 0.1), (0.8, 0.5), (0.5, 0.9), (0.2, 0.5)], 40, 30)
    for m in (e, d):
        torch.testing.assert_close(m, m.flip(0), atol=1e-6, rtol=0)
        torch.testing.assert_close(m, m.flip(1), atol=1e-6, rtol=0)
    assert float(e[15, 20]) == 1.0 and float(e[0, 20]) == 0.0 and float(e[15, 7]) == 0.0


def test_polygon_rectangle_matches_rect_within_the_row_sampling_bound():
    pts = [(0.1, 0.2), (0.65, 0.2), (0.65, 0.57), (0.1, 0.57)]
    m = raster.polygon(pts, 64, 48)
    assert (m - raster.rect(0.1, 0.2, 0.55, 0.37, 64, 48)).abs().max() <= 1.0 / raster.SUBROWS


def test_polygon_fill_rules_on_a_pentagram():
    """Even-odd leaves the inner pentagon empty, nonzero fills it: the difference is its area."""
    big_r, n = 0.45, 200
    star = [
        (
            0.5 + big_r * math.cos(math.pi / 2 + k * 4 * math.pi / 5),
            0.5 - big_r * math.sin(math.pi / 2 + k * 4 * math.pi / 5),
        )
        for k in range(5)
    ]
    evenodd = raster.polygon(star, n, n).double().sum()
    nonzero = raster.polygon(star, n, n, fill="nonzero").double().sum()
    inner_r = big_r * math.cos(2 * math.pi / 5) / math.cos(math.pi / 5)
    pentagon = 2.5 * inner_r**2 * math.sin(2 * math.pi / 5) * n * n
    assert float(nonzero - evenodd) == pytest.approx(pentagon, rel=3e-3)
    assert float(raster.polygon(star, n, n)[100, 100]) == 0.0
    assert float(raster.polygon(star, n, n, fill="nonzero")[100, 100]) == 1.0


def test_shapes_outside_the_frame_are_clipped():
    assert float(raster.rect(1.2, 0.1, 0.2, 0.2, 32, 32).sum()) == 0.0
    assert float(raster.ellipse(-0.5, -0.5, 0.3, 0.3, 32, 32).sum()) == 0.0
    half = raster.rect(-0.25, 0.0, 0.5, 1.0, 32, 32)  # left half of it is outside
    assert float(half.sum()) == pytest.approx(0.25 * 32 * 32)
    tri = raster.polygon([(0.5, 0.5), (1.5, 0.5), (0.5, 1.5)], 32, 32)  # area 0.5, a quarter square inside
    assert float(tri.double().sum()) == pytest.approx(0.25 * 32 * 32, rel=1e-3)


def test_same_scene_at_two_resolutions_has_the_same_fractional_area():
    for fn in (raster.rect, raster.ellipse):
        a = fn(0.21, 0.33, 0.37, 0.29, 50, 30).double().mean()
        b = fn(0.21, 0.33, 0.37, 0.29, 500, 300).double().mean()
        assert float(a) == pytest.approx(float(b), rel=2e-3)


# ---------------------------------------------------------------------------------------------------------
# Images and layers


def test_from_image_is_exact_area_resampling():
    g = np.random.default_rng(0).random((30, 40)).astype(np.float32)
    same = raster.from_image(g, 40, 30)
    np.testing.assert_allclose(same.numpy(), g, atol=1e-6)
    half = raster.from_image(g, 20, 15)
    np.testing.assert_allclose(half.numpy(), g.reshape(15, 2, 20, 2).mean((1, 3)), atol=1e-6)
    up = raster.from_image(g, 80, 60)  # upsampling by 2 repeats pixels
    np.testing.assert_allclose(up.numpy(), np.kron(g, np.ones((2, 2))), atol=1e-6)
    odd = raster.from_image(g, 17, 13)  # any ratio keeps the mean
    assert float(odd.mean()) == pytest.approx(float(g.mean()), rel=1e-5)
    np.testing.assert_allclose(raster.from_image(g, 40, 30, invert=True).numpy(), 1 - g, atol=1e-6)


def test_layer_alpha_lands_at_its_position_and_size():
    alpha = np.ones((10, 20), np.float32)  # h=10, w=20 pixels of the reference canvas
    m = raster.layer_alpha(alpha, (0.25, 0.5), 64, 64, ref_size=(64, 64))
    rows, cols = torch.nonzero(m, as_tuple=True)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (32, 41, 16, 35)
    assert float(m.sum()) == 200.0
    # rendered at twice the reference size the layer is twice as large in pixels, at the same place
    m2 = raster.layer_alpha(alpha, (0.25, 0.5), 128, 128, ref_size=(64, 64))
    assert float(m2.sum()) == 800.0 and float(m2[64, 32]) == 1.0 and float(m2[63, 32]) == 0.0


def test_layer_alpha_subpixel_position_gives_coverage():
    alpha = np.ones((4, 4), np.float32)
    m = raster.layer_alpha(alpha, (0.5 / 16 + 0.25, 0.25), 16, 16, ref_size=(16, 16))  # shifted by 0.5 px
    assert float(m[4, 4]) == pytest.approx(0.5) and float(m[4, 8]) == pytest.approx(0.5)
    assert float(m.sum()) == pytest.approx(16.0)


def test_layer_scale_sets_width_and_keeps_aspect():
    alpha = np.ones((50, 100), np.float32)
    m = raster.layer_alpha(alpha, (0.0, 0.0), 80, 40, scale=0.5, ref_size=(80, 40))
    # width 0.5 * 80 = 40 px; height 40 * 50/100 = 20 px (aspect kept on the reference canvas)
    assert float(m.sum()) == pytest.approx(40 * 20)
    assert raster.layer_box((100, 50), (0.1, 0.2), 0.5, (80, 40)) == (0.1, 0.2, 0.5, 0.5)


def test_layer_partly_outside_is_clipped():
    alpha = np.ones((16, 16), np.float32)
    m = raster.layer_alpha(alpha, (0.875, -0.125), 32, 32, ref_size=(32, 32))
    assert m.shape == (32, 32)
    assert float(m.sum()) == pytest.approx(4 * 12)  # 4 columns and 12 rows are inside


def test_layer_rgba_on_canvas_shares_the_placement():
    rng = np.random.default_rng(1)
    rgba = rng.random((6, 9, 4)).astype(np.float32)
    rgba[..., 3] = (rgba[..., 3] > 0.5).astype(np.float32)
    args = ((0.3, 0.2), 48, 40, None, (24, 20))
    placed = raster.layer_rgba_on_canvas(rgba, *args)
    assert placed.shape == (40, 48, 4)
    torch.testing.assert_close(placed[..., 3], raster.layer_alpha(rgba[..., 3], *args))
    # each layer pixel becomes a 2x2 block; the colour of an opaque one is kept
    y, x = np.argwhere(rgba[..., 3] == 1)[0]
    py, px = 8 + 2 * y, int(round(0.3 * 48)) + 2 * x
    np.testing.assert_allclose(placed[py, px, :3].numpy(), rgba[y, x, :3], atol=1e-6)
    assert float(placed[..., :3][placed[..., 3] == 0].abs().max()) == 0.0  # no colour without alpha


# ---------------------------------------------------------------------------------------------------------
# Feather


@FAST
@given(st.floats(0.3, 3.0), st.floats(0.5, 2.0))
def test_feather_keeps_mass_and_range(sigma, scale):
    # the kernel (radius 3 sigma <= 18 px) stays off the border, where replication would add mass
    m = raster.rect(0.35, 0.3, 0.3, 0.4, 64, 64).double()
    f = raster.feather(m, sigma, scale=scale)
    assert float(f.sum()) == pytest.approx(float(m.sum()), rel=1e-9)
    assert float(f.min()) >= 0 and float(f.max()) <= 1 + 1e-12


def test_feather_keeps_a_full_frame_at_one_and_scales_sigma():
    torch.testing.assert_close(raster.feather(torch.ones(10, 12), 6.0), torch.ones(10, 12))
    delta = torch.zeros(1, 81, 81, dtype=torch.float64)
    delta[0, 40, 40] = 1
    blurred = raster.feather(delta, 2.0, scale=2.0)[0]  # sigma 4 px at this size
    xs = torch.arange(81, dtype=torch.float64) - 40
    var_x = float((blurred.sum(0) * xs**2).sum())
    assert var_x == pytest.approx(16.0, rel=0.05)  # truncation at 3 sigma trims ~3% of the variance
    assert raster.feather(delta, 0.0) is delta


# ---------------------------------------------------------------------------------------------------------
# Scene adapter


def _png(path, arr, mode=None):
    Image.fromarray(arr, mode).save(path)
    return path


def test_rasterize_scene_in_flat_order(tmp_path, write_scene):
    _png(tmp_path / "m.png", np.where(np.arange(64)[None, :] < 32, 255, 0).astype(np.uint8).repeat(64, 0))
    layer = np.zeros((16, 16, 4), np.uint8)
    layer[..., 3] = 255
    _png(tmp_path / "layer.png", layer, "RGBA")
    path = write_scene(
        """
        size: [64, 64]
        root:
          prompt: a room
          children:
            - id: box
              mask: {rect: [0.25, 0.25, 0.5, 0.5]}
              feather: 2
              children:
                - id: ell
                  mask: {ellipse: [0.3, 0.3, 0.2, 0.2]}
            - id: img
              mask: {image: m.png, invert: true}
            - id: lay
              layer: layer.png
              at: [0.5, 0.5]
        """
    )
    scene = load_scene(path)
    ids, masks = raster.rasterize_scene(scene, 128, 128)
    assert ids == ["root", "box", "ell", "img", "lay"]
    assert masks.shape == (5, 128, 128) and masks.dtype == torch.float32
    assert float(masks[0].min()) == 1.0
    assert float(masks[1].sum()) == pytest.approx(64 * 64, rel=1e-4)  # feather keeps the area
    assert 0 < float(masks[1, 32, 40]) < 1  # ... and softens the edge (2 px at 64 -> 4 px at 128)
    assert float(masks[3, :, :64].max()) == 0.0 and float(masks[3, :, 64:].min()) == 1.0  # inverted
    assert float(masks[4].sum()) == pytest.approx(32 * 32)  # 16 px at ref 64 -> 32 px at 128


def test_rasterize_scene_reports_a_layer_without_alpha_at_its_field(tmp_path, write_scene):
    _png(tmp_path / "rgb.png", np.zeros((8, 8, 3), np.uint8))
    path = write_scene(
        """
        size: [64, 64]
        root:
          children:
            - id: lay
              layer: rgb.png
        """
    )
    with pytest.raises(HmeditError, match="no alpha") as info:
        raster.rasterize_scene(load_scene(path), 32, 32)
    assert info.value.location.field == "root.children[0].layer"
    assert info.value.location.line == 5


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError):
        raster.rect(0, 0, 1, 1, 0, 10)
    with pytest.raises(ValueError):
        raster.polygon([(0, 0), (1, 0), (1, 1)], 4, 4, fill="winding")
    assert float(raster.polygon([(0, 0), (1, 1)], 4, 4).sum()) == 0.0
