"""Per-level and per-step masks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hmedit.masks.levels import LevelMasks, downsample, level_names, level_sizes


def test_max_pool_keeps_a_one_pixel_region_that_area_averaging_dilutes():
    m = torch.zeros(1, 64, 64)
    m[0, 37, 21] = 1.0
    for size in [(32, 32), (16, 16), (8, 8), (4, 4)]:
        kept = downsample(m, size, "max")
        diluted = downsample(m, size, "area")
        assert float(kept.max()) == 1.0
        assert float(diluted.max()) < 1.0
        assert float(diluted.sum()) * (64 * 64) / (size[0] * size[1]) == pytest.approx(1.0)  # mass kept
    assert float(downsample(m, (5, 5), "max").max()) == 1.0  # also with a partial border window
    assert float(downsample(m, (8, 8), "area").max()) == pytest.approx(1 / 64)


def test_downsample_ceil_mode_matches_unet_sizes():
    m = torch.zeros(2, 3, 9, 7)
    m[..., 8, 6] = 1.0  # the last pixel, alone in a partial border window
    out = downsample(m, (5, 4), "max")
    assert out.shape == (2, 3, 5, 4) and float(out[0, 0, 4, 3]) == 1.0
    ones = downsample(torch.ones(9, 7), (5, 4), "area")
    torch.testing.assert_close(ones, torch.ones(5, 4))  # partial windows average what is inside
    assert downsample(torch.ones(6, 6), (4, 4), "area").shape == (4, 4)  # not a pooling: adaptive
    with pytest.raises(ValueError):
        downsample(m, (5, 4), "nearest")


def test_level_names_and_sizes():
    assert level_names([1, 2, 4, 8]) == {1: "fine", 2: "mid", 4: "mid", 8: "coarse"}
    assert level_names([4, 1, 2]) == {1: "fine", 2: "mid", 4: "coarse"}
    assert level_names([1, 2]) == {1: "fine", 2: "coarse"}
    assert level_names([1]) == {1: "fine"}
    assert level_sizes((64, 96), [1, 2, 4, 8]) == {1: (64, 96), 2: (32, 48), 4: (16, 24), 8: (8, 12)}
    assert level_sizes((9, 7), [1, 2, 4]) == {1: (9, 7), 2: (5, 4), 4: (3, 2)}


def _level_masks(active=None, levels=None):
    masks = torch.rand(3, 64, 48, generator=torch.Generator().manual_seed(0))
    return masks, LevelMasks(masks, (8, 6), (1, 2, 4, 8), active=active, levels=levels, mode="area")


def test_level_masks_are_keyed_by_query_length_and_precomputed():
    masks, lm = _level_masks()
    assert lm.query_lens == [48, 12, 4, 1]  # 8x6, 4x3, 2x2, 1x1
    for n, f in zip(lm.query_lens, (1, 2, 4, 8), strict=True):
        h, w = lm.sizes[f]
        assert lm.factor(n) == f
        torch.testing.assert_close(lm.at(0.5, n), downsample(masks, (h, w), "area").reshape(3, n))
    with pytest.raises(KeyError, match="query length 49"):
        lm.at(0.5, 49)


@settings(max_examples=40, deadline=None)
@given(st.floats(0.0, 0.999), st.sampled_from([48, 12, 4, 1]))
def test_level_masks_honour_active_ranges_and_levels(t, n):
    active = [None, (0.2, 0.6), (0.5, 1.0)]
    levels = [None, ["fine", "coarse"], [2, "coarse"]]  # names or factors
    _, lm = _level_masks(active, levels)
    _, plain = _level_masks()
    name = lm.names[lm.factor(n)]
    got, full = lm.at(t, n), plain.at(t, n)
    expect_on = [
        True,
        0.2 <= t < 0.6 and name in ("fine", "coarse"),
        t >= 0.5 and (lm.factor(n) == 2 or name == "coarse"),
    ]
    for k, on in enumerate(expect_on):
        torch.testing.assert_close(got[k], full[k] if on else torch.zeros_like(full[k]))


def test_level_masks_step_boundaries_are_half_open():
    _, lm = _level_masks(active=[(0.0, 0.5), (0.5, 1.0), None])
    assert float(lm.at(0.5, 48)[0].abs().sum()) == 0.0  # end excluded
    assert float(lm.at(0.5, 48)[1].abs().sum()) > 0.0  # start included
    assert float(lm.at(0.99, 48)[1].abs().sum()) > 0.0


def test_level_masks_to_moves_the_tables():
    _, lm = _level_masks()
    lm.to(dtype=torch.float64)
    assert lm.at(0.1, 12).dtype == torch.float64
