"""Tiling geometry: coverage, weights that sum to one, edges, seams, offsets, parity with diffusers' views."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hmedit.sampling.tiling import (
    Window,
    crop,
    fusion_weights,
    panorama_views,
    random_offset,
    window_weights,
    windows,
)


@st.composite
def layouts(draw):
    tile = draw(st.integers(1, 24))
    overlap = draw(st.integers(0, tile - 1))
    h, w = draw(st.integers(1, 70)), draw(st.integers(1, 70))
    offset = (draw(st.integers(0, 40)), draw(st.integers(0, 40)))
    return h, w, tile, overlap, offset


@settings(max_examples=150, deadline=None)
@given(layouts())
def test_windows_cover_everything_inside_the_image(layout):
    h, w, tile, overlap, offset = layout
    wins = windows(h, w, tile, overlap, offset)
    count = torch.zeros(h, w)
    for win in wins:
        assert 0 <= win.y0 < win.y1 <= h and 0 <= win.x0 < win.x1 <= w
        assert (win.height, win.width) == (min(tile, h), min(tile, w))  # no partial windows
        count[win.slice] += 1
    assert (count > 0).all()
    assert len(set(wins)) == len(wins)
    if offset == (0, 0):
        # the fewest windows of that stride: per axis 1, else ceil((dim - tile) / stride) + 1
        per_axis = [1 if d <= tile else -(-(d - tile) // (tile - overlap)) + 1 for d in (h, w)]
        assert len(wins) == per_axis[0] * per_axis[1]


@settings(max_examples=100, deadline=None)
@given(layouts(), st.sampled_from(["gaussian", "uniform"]), st.booleans(), st.integers(0, 12))
def test_fusion_weights_sum_to_one_everywhere(layout, kind, fade, ramp):
    h, w, tile, overlap, offset = layout
    wins = windows(h, w, tile, overlap, offset)
    weights, norm = fusion_weights(h, w, wins, kind, fade=fade, ramp=ramp)
    assert weights.shape == (len(wins), min(tile, h), min(tile, w))
    assert (weights > 0).all() and torch.isfinite(weights).all()
    total = torch.zeros(h, w)
    for win, wt in zip(wins, weights):
        total[win.slice] += wt / norm[win.slice]
    torch.testing.assert_close(total, torch.ones(h, w), rtol=0, atol=1e-5)


def test_stride_and_far_edge_alignment():
    wins = windows(40, 100, tile=32, overlap=8)
    assert sorted({w.y0 for w in wins}) == [0, 8]  # 40 = 32 + 8: the last window sits on the far edge
    assert sorted({w.x0 for w in wins}) == [0, 24, 48, 68]
    assert wins[0] == Window(0, 32, 0, 32) and wins[-1] == Window(8, 40, 68, 100)


def test_image_smaller_than_a_tile_is_one_window():
    assert windows(10, 7, tile=32, overlap=8) == [Window(0, 10, 0, 7)]
    assert windows(10, 7, tile=32, overlap=8, offset=(5, 3)) == [Window(0, 10, 0, 7)]
    weights, norm = fusion_weights(10, 7, [Window(0, 10, 0, 7)], "gaussian", fade=True)
    torch.testing.assert_close(weights[0], torch.ones(10, 7))  # all four sides are image borders
    torch.testing.assert_close(norm, torch.ones(10, 7))


def test_offset_shifts_the_grid_and_clamps_at_edges():
    wins = windows(64, 64, tile=16, overlap=4, offset=(5, 0))
    ys = sorted({w.y0 for w in wins})
    assert ys == [0, 5, 17, 29, 41, 48]  # grid 5 + 12k, clamped window at each end
    assert windows(64, 64, 16, 4, offset=(12, 24)) == windows(64, 64, 16, 4)  # offsets are mod stride


def test_bad_arguments():
    with pytest.raises(ValueError):
        windows(10, 10, tile=8, overlap=8)
    with pytest.raises(ValueError):
        windows(0, 10, tile=8, overlap=2)
    with pytest.raises(ValueError):
        fusion_weights(10, 10, [Window(0, 8, 0, 8)], "uniform")  # leaves a gap
    with pytest.raises(ValueError):
        fusion_weights(10, 10, [Window(4, 12, 0, 8)], "uniform")  # outside the image
    with pytest.raises(ValueError):
        window_weights(4, 4, "cosine")


@pytest.mark.parametrize("kind", ["gaussian", "uniform"])
def test_weights_fall_to_zero_at_inner_borders_only(kind):
    w = window_weights(16, 16, kind, fade=(True, False, False, True), ramp=4)
    assert torch.isclose(w.max(), torch.tensor(1.0))
    # faded sides: top row and right column fall towards zero, increasing inwards
    assert w[0, :8].max() <= 0.125 + 1e-6 and w[:8, -1].max() <= 0.125 + 1e-6
    assert (w[:4, 8].diff() > 0).all() and (w[8, -4:].diff() < 0).all()
    # image-border sides (bottom, left) keep full weight
    torch.testing.assert_close(w[-1, 0], torch.tensor(1.0))
    assert w[-1, :8].min() > 0.99 and w[8:, 0].min() > 0.99
    # the plain profiles: Mixture of Diffusers' bell (σ = 0.1·tile) and MultiDiffusion's flat average
    plain = window_weights(16, 16, kind)
    if kind == "uniform":
        torch.testing.assert_close(plain, torch.ones(16, 16))
    else:
        assert plain[0, 0] < 1e-9 and plain[7:9, 7:9].min() > 0.99


def test_uniform_ramps_over_the_overlap_are_a_partition_of_unity():
    wins = windows(8, 40, tile=16, overlap=4)
    weights, norm = fusion_weights(8, 40, wins, "uniform", fade=True, ramp=4)
    torch.testing.assert_close(norm, torch.ones(8, 40), rtol=0, atol=1e-5)


def test_fusion_blends_seams_continuously():
    """Two windows side by side: with fading, the right window's share of the fused prediction rises in steps
    of at most 1/ramp across the overlap instead of jumping from 0 to 1."""
    wins = windows(8, 24, tile=16, overlap=8)
    assert wins == [Window(0, 8, 0, 16), Window(0, 8, 8, 24)]

    def right_share(weights, norm):
        share = torch.zeros(8, 24)
        share[wins[1].slice] = weights[1] / norm[wins[1].slice]
        return share[0]

    row = right_share(*fusion_weights(8, 24, wins, "uniform", fade=True, ramp=8))
    assert row[0] == 0 and row[-1] == 1
    assert row.diff().abs().max() <= 1 / 8 + 1e-6
    hard = right_share(*fusion_weights(8, 24, wins, "uniform", fade=False))
    assert hard.diff().abs().max() >= 0.5  # without fading: a step at the window's edge


def test_random_offsets_are_deterministic_and_in_range():
    def draw(seed):
        g = torch.Generator().manual_seed(seed)
        return [random_offset(g, 32, 8) for _ in range(50)]

    a, b = draw(1), draw(1)
    assert a == b and a != draw(2)
    assert all(0 <= d < 24 for pair in a for d in pair)
    assert len(set(a)) > 10


def test_crop_and_scaled_window():
    x = torch.arange(2 * 6 * 8).reshape(2, 6, 8)
    win = Window(1, 4, 2, 7)
    assert torch.equal(crop(x, win), x[:, 1:4, 2:7])
    assert win.scaled(8) == Window(8, 32, 16, 56)


@pytest.mark.parametrize(
    "height,width,window,stride",
    [(512, 2048, 64, 8), (512, 512, 64, 8), (256, 1024, 64, 8), (640, 1000, 64, 16), (512, 900, 32, 8)],
)
def test_panorama_views_match_diffusers(height, width, window, stride):
    from diffusers import StableDiffusionPanoramaPipeline

    ref = StableDiffusionPanoramaPipeline.get_views(None, height, width, window_size=window, stride=stride)
    ours = panorama_views(height // 8, width // 8, window, stride)
    assert [tuple(v) for v in ours] == [tuple(v) for v in ref]
