"""Image loading for masks, layers and sources."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from hmedit.errors import HmeditError
from hmedit.scene.assets import has_alpha, load_gray, load_rgb, load_rgba


def test_gray_8_bit_and_colour(tmp_path):
    arr = np.array([[0, 128, 255]], np.uint8)
    Image.fromarray(arr).save(tmp_path / "g.png")
    g = load_gray(tmp_path / "g.png")
    assert g.dtype == np.float32 and g.shape == (1, 3)
    np.testing.assert_allclose(g, arr / 255.0, atol=1e-7)
    Image.fromarray(np.full((2, 2, 3), (255, 0, 0), np.uint8)).save(tmp_path / "red.png")
    assert load_gray(tmp_path / "red.png")[0, 0] == pytest.approx(76 / 255)  # luminance 0.299 * 255


def test_gray_16_bit_keeps_precision(tmp_path):
    arr = np.array([[0, 1, 32768, 65535]], np.uint16)
    Image.fromarray(arr).save(tmp_path / "g16.png")
    g = load_gray(tmp_path / "g16.png")
    np.testing.assert_allclose(g, arr / 65535.0, rtol=1e-6)
    assert 0 < g[0, 1] < 1 / 255  # a value 8-bit would lose


def test_palette_images(tmp_path):
    img = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), "P")
    img.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    img.save(tmp_path / "p.png")
    np.testing.assert_allclose(load_gray(tmp_path / "p.png"), [[0, 1], [1, 0]])
    assert not has_alpha(tmp_path / "p.png")
    img.info["transparency"] = 0
    img.save(tmp_path / "pt.png", transparency=0)
    assert has_alpha(tmp_path / "pt.png")
    rgba = load_rgba(tmp_path / "pt.png")
    np.testing.assert_allclose(rgba[..., 3], [[0, 1], [1, 0]])


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((2, 4), np.uint8)  # 4 wide, 2 high, one white pixel top-left
    arr[0, 0] = 255
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    img.save(tmp_path / "rot.png", exif=exif)
    g = load_gray(tmp_path / "rot.png")
    assert g.shape == (4, 2)  # upright: 2 wide, 4 high
    assert g[0, 1] == 1.0  # the top-left pixel went to the top-right


def test_rgba_rgb_and_la(tmp_path):
    rgba = np.array([[[255, 0, 0, 128], [0, 255, 0, 255]]], np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "l.png")
    out = load_rgba(tmp_path / "l.png", require_alpha=True)
    assert out.shape == (1, 2, 4) and out.dtype == np.float32
    np.testing.assert_allclose(out, rgba / 255.0, atol=1e-7)
    np.testing.assert_allclose(load_rgb(tmp_path / "l.png"), rgba[..., :3] / 255.0, atol=1e-7)

    Image.new("RGB", (3, 2), (10, 20, 30)).save(tmp_path / "rgb.jpg", quality=100)
    out = load_rgba(tmp_path / "rgb.jpg")
    assert out.shape == (2, 3, 4) and (out[..., 3] == 1).all()  # no alpha: opaque
    assert not has_alpha(tmp_path / "rgb.jpg")

    Image.new("LA", (2, 2), (200, 50)).save(tmp_path / "la.png")
    out = load_rgba(tmp_path / "la.png")
    np.testing.assert_allclose(out[0, 0], [200 / 255] * 3 + [50 / 255], atol=1e-7)


def test_layer_without_alpha_can_be_required(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "flat.png")
    with pytest.raises(HmeditError, match="no alpha channel") as info:
        load_rgba(tmp_path / "flat.png", require_alpha=True, field="root.children[0].layer")
    assert info.value.location.field == "root.children[0].layer"
    assert "transparency" in info.value.hint


def test_missing_file(tmp_path):
    with pytest.raises(HmeditError, match="image file not found") as info:
        load_gray(tmp_path / "nope.png")
    assert str(info.value.location.file).endswith("nope.png") and info.value.hint


def test_not_an_image_and_truncated(tmp_path):
    (tmp_path / "a.png").write_text("hello")
    with pytest.raises(HmeditError, match="not an image") as info:
        load_rgb(tmp_path / "a.png")
    assert "PNG" in info.value.hint
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(HmeditError) as info:
        load_rgb(tmp_path / "cut.png")
    assert "cut.png" in str(info.value)
    with pytest.raises(HmeditError, match="folder"):
        load_gray(tmp_path)
