"""Masks at each UNet level: resampling, names, sizes (per-render tables: tests/sampling/test_plan.py)."""

from __future__ import annotations

import pytest
import torch

from hmedit.masks.levels import downsample, level_names, level_sizes


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
