"""SSIM (torchmetrics) and MRGD's SSIM-i / SSIM-e, and mask IoU (hmedit.metrics)."""

from __future__ import annotations

import numpy as np
import pytest

from hmedit import metrics


def _picture(seed: int = 0, size: int = 48) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.kron(rng.integers(0, 256, (size // 8, size // 8, 3)), np.ones((8, 8, 1)))
    return np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)


def test_ssim_is_one_for_equal_images_and_falls_with_noise():
    a = _picture()
    assert metrics.ssim(a, a) == pytest.approx(1.0, abs=1e-6)
    rng = np.random.default_rng(1)
    light = np.clip(a + rng.normal(0, 8, a.shape), 0, 255).astype(np.uint8)
    heavy = np.clip(a + rng.normal(0, 40, a.shape), 0, 255).astype(np.uint8)
    assert 1.0 > metrics.ssim(a, light) > metrics.ssim(a, heavy) > 0.0
    assert metrics.ssim_map(a, heavy).shape == a.shape[:2]


def test_ssim_is_torchmetrics_whole_image_figure():
    import torch
    from torchmetrics.functional.image import structural_similarity_index_measure as tm

    a, b = _picture(2), _picture(3)
    ta, tb = (torch.from_numpy(x.astype(np.float32)).permute(2, 0, 1)[None] for x in (a, b))
    whole = float(tm(ta, tb, data_range=255.0))
    # the map is per pixel (reflect-padded image), and its mean is torchmetrics' figure
    assert metrics.ssim(a, b) == pytest.approx(whole, abs=1e-5)


def test_ssim_inherent_ignores_the_edited_region_and_ssim_edge_sees_its_surroundings():
    a = _picture(4, 64)
    edited = np.zeros((64, 64), bool)
    edited[24:40, 24:40] = True
    inside_only = a.copy()
    inside_only[24:40, 24:40] = 255 - inside_only[24:40, 24:40]
    # a change confined to the region: SSIM-i stays 1 (its window never reaches the region past the margin)
    assert metrics.ssim_inherent(a, inside_only, edited, margin_px=6) == pytest.approx(1.0, abs=1e-6)
    around = a.copy()
    ring = metrics.dilate(edited, 6) & ~edited
    around[ring] = 255 - around[ring]
    assert metrics.ssim_edge(a, around, edited, band_px=6) < 0.5
    assert metrics.ssim_edge(a, a, edited, band_px=6) == pytest.approx(1.0, abs=1e-6)
    assert np.isnan(metrics.ssim(a, a, np.zeros((64, 64), bool)))


def test_iou():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    assert metrics.iou(a, b) == 1.0
    a[:5] = True
    b[:, :5] = True
    assert metrics.iou(a, b) == pytest.approx(25 / 75)
    assert metrics.iou(a, a) == 1.0


def test_ssim_refuses_images_of_different_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.ssim(_picture(0, 48), _picture(0, 56))
