"""Masks from other nodes, model-free: band geometry, DAAM aggregation, normalising and thresholding,
self-attention sharpening, word tokens, the first-pass scene."""

import math

import pytest
import torch

from hmedit.masks.attention import (
    aggregate,
    auto_threshold,
    band,
    find_tokens,
    first_pass_scene,
    guided_filter,
    level_shape,
    normalise,
    phrase_tokens,
    sharpen,
    threshold,
    token_position,
    word_tokens,
)
from hmedit.masks.raster import rasterize_scene, rect
from hmedit.scene.spec import Scene

# ---------------------------------------------------------------------------------------------------------
# band geometry


def test_band_peaks_on_the_boundary_and_is_symmetric_across_it():
    m = rect(0.25, 0.0, 0.5, 1.0, 128, 8)  # vertical edges at x = 32 and x = 96
    b = band(m, 8.0)[4]  # sigma 4 px
    # on the boundary (between pixel 31 and 32) the band is ~1; it falls to ~0 far from it
    assert b[31] > 0.95 and b[32] > 0.95
    assert b[64] < 1e-3 and b[0] < 1e-3 and b[127] < 1e-3
    # inside and outside alike: pixel 32 + d mirrors pixel 31 - d
    for d in range(12):
        assert b[32 + d] == pytest.approx(float(b[31 - d]), abs=1e-4)
    # a Gaussian-blurred edge: 4 Phi (1 - Phi) at the distance of pixel 36's centre (4.5 px = 1.125 sigma)
    phi = 0.5 * (1 + math.erf(1.125 / math.sqrt(2)))
    assert b[36] == pytest.approx(4 * phi * (1 - phi), abs=0.02)


def test_band_width_scales_with_width_and_render_scale():
    m = rect(0.25, 0.25, 0.5, 0.5, 128, 128)

    def half_width(x: torch.Tensor) -> int:
        return int((x[64] > 0.5).sum())  # pixels of a row through the middle above half maximum

    narrow, wide = half_width(band(m, 4.0)), half_width(band(m, 12.0))
    assert wide > 2.5 * narrow
    # the same scene twice as large: the band is twice as wide in pixels (scale = render / reference)
    big = rect(0.25, 0.25, 0.5, 0.5, 256, 256)
    assert half_width(band(big, 4.0, scale=2.0)[::2, ::2]) == pytest.approx(narrow, abs=2)


def test_band_of_empty_or_full_mask_is_empty():
    assert band(torch.zeros(16, 16), 4.0).max() == 0
    assert band(torch.ones(16, 16), 4.0).max() < 1e-6  # the frame is no boundary (replicated border)
    with pytest.raises(ValueError):
        band(torch.ones(4, 4), 0.0)


def _scene(children, prompt="a red circle on a blue background") -> Scene:
    return Scene.model_validate({"root": {"prompt": prompt, "children": children}})


def test_scene_band_follows_its_sibling_whatever_their_order():
    sc = _scene(
        [
            {"id": "edge", "prompt": "blend", "mask": {"band": {"of": "box", "width": 6}}},
            {"id": "box", "prompt": "a square", "mask": {"rect": [0.25, 0.25, 0.5, 0.5]}},
        ]
    )
    ids, masks = rasterize_scene(sc, 64, 64)
    assert ids == ["root", "edge", "box"]
    assert torch.allclose(masks[1], band(masks[2], 6.0))


def test_scene_attention_mask_is_the_given_one_or_empty():
    sc = _scene(
        [{"id": "c", "prompt": "a green circle", "mask": {"attention": {"of": "root", "word": "circle"}}}]
    )
    given = torch.zeros(32, 32)
    given[4:10, 5:20] = 1
    assert torch.equal(rasterize_scene(sc, 32, 32, given={"c": given})[1][1], given)
    assert rasterize_scene(sc, 32, 32)[1][1].max() == 0  # no first pass: an empty region


# ---------------------------------------------------------------------------------------------------------
# aggregation


def test_level_shape():
    assert level_shape(256, (16, 16)) == (16, 16)
    assert level_shape(16, (16, 16)) == (4, 4)
    assert level_shape(6, (8, 12)) == (2, 3) and level_shape(24, (8, 12)) == (4, 6)
    with pytest.raises(ValueError):
        level_shape(7, (16, 16))


def test_aggregate_is_the_mean_of_upsampled_levels():
    fine = torch.zeros(2, 64)  # 8 x 8
    fine[0, :32] = 1.0  # token 0 attends the top half at the fine level
    coarse = torch.zeros(2, 4)  # 2 x 2
    coarse[1] = 1.0  # token 1 attends everywhere at the coarse level
    out = aggregate({64: fine, 4: coarse}, (8, 8), (8, 8))
    assert out.shape == (2, 8, 8)
    assert torch.allclose(out[1], torch.full((8, 8), 0.5))  # mean of 0 and 1
    assert out[0, :3].mean() == pytest.approx(0.5, abs=0.02) and out[0, 5:].max() < 0.05
    # skip a level (DAAM drops SD's 8 x 8)
    only_fine = aggregate({64: fine, 4: coarse}, (8, 8), (8, 8), skip=[4])
    assert torch.allclose(only_fine[1], torch.zeros(8, 8))
    assert (aggregate({64: fine}, (8, 8), (32, 32)) >= 0).all()  # bicubic overshoot clamped


def test_normalise_and_threshold():
    m = torch.tensor([[[2.0, 4.0], [6.0, 10.0]], [[3.0, 3.0], [3.0, 3.0]]])
    n = normalise(m)
    assert torch.allclose(n[0], torch.tensor([[0.0, 0.25], [0.5, 1.0]]))
    assert torch.equal(n[1], torch.zeros(2, 2))  # constant: nothing stands out
    assert torch.equal(threshold(m, 0.4)[0], torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    assert torch.equal(normalise(m * 7 + 1), n)  # scale and offset free (sum or mean over steps alike)


def _two_colour_image(edge: int, size: int = 64) -> torch.Tensor:
    """A guide [3, size, size]: red left of column ``edge``, blue from it on."""
    img = torch.zeros(3, size, size)
    img[0, :, :edge] = 0.9
    img[2, :, edge:] = 0.8
    return img


def test_guided_filter_moves_a_coarse_step_onto_the_image_edge():
    # an attention map is blocky (8 px cells) and its step sits 4 px right of the object's edge
    guide = _two_colour_image(28)
    coarse = torch.zeros(64, 64)
    coarse[:, :32] = 1.0
    coarse = torch.nn.functional.avg_pool2d(coarse[None, None], 8)[0, 0]  # 8 x 8 cells
    coarse = torch.nn.functional.interpolate(coarse[None, None], (64, 64), mode="bilinear")[0, 0]
    out = guided_filter(coarse, guide, 8)
    assert out.shape == coarse.shape and out.dtype == coarse.dtype
    cols = (out >= 0.5).float().mean(0)
    edge = int(cols.sum())
    assert torch.equal(cols[:edge], torch.ones(edge)) and abs(edge - 28) <= 1  # one run, on the image's edge
    # without the filter the threshold misses the edge by the coarse step's offset
    assert abs(int((coarse >= 0.5).float().mean(0).sum()) - 28) >= 3
    # a flat guide only smooths: a constant map stays constant
    flat = guided_filter(torch.full((32, 32), 0.3), torch.full((3, 32, 32), 0.5), 4)
    assert torch.allclose(flat, torch.full((32, 32), 0.3), atol=1e-6)
    with pytest.raises(ValueError, match="does not fit"):
        guided_filter(coarse, guide[:, :32], 8)


def test_auto_threshold_picks_the_threshold_the_image_agrees_with():
    # the map is high on the object (columns < 24), lower but above 0.4 on a band beside it that the image
    # shows as background: 0.4 leaks into the band; auto finds a threshold between and the object's edge
    guide = _two_colour_image(24)
    m = torch.zeros(64, 64)
    m[:, :24] = 1.0
    m[:, 24:30] = 0.45
    m[:, 30:] = torch.linspace(0.0, 0.3, 34)
    mask, t = auto_threshold(m, guide, 8)
    assert 0.45 < t <= 1.0
    assert torch.equal(mask.mean(0), torch.cat([torch.ones(24), torch.zeros(40)]))
    assert int(threshold(m, 0.4).mean(0).sum()) == 30  # DAAM's fixed 0.4 takes the band too


def test_sharpen_propagates_through_self_attention():
    # two groups of pixels that attend only within their group: a map that lights one pixel of a group
    # spreads over that group and not the other
    n = 4
    a = torch.zeros(n, n)
    a[:2, :2] = 1.0
    a[2:, 2:] = 3.0  # rows are normalised
    m = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])  # [1, 2, 2]: pixel 0
    out = sharpen(m, a)
    assert torch.allclose(out.reshape(-1), torch.tensor([0.5, 0.5, 0.0, 0.0]))
    assert torch.allclose(sharpen(m, torch.eye(4)), m)  # identity attention: unchanged
    with pytest.raises(ValueError):
        sharpen(m, torch.eye(3))


# ---------------------------------------------------------------------------------------------------------
# tokens


def fake_tokenize(text: str) -> list[int]:
    vocab = {"a": 1, "red": 2, "circle": 3, "on": 4, "blue": 5, "background": 6, "green": 7}
    out = []
    for w in text.lower().split():
        if w == "bluebird":  # a word the tokenizer splits into two tokens
            out += [5, 99]
        else:
            out.append(vocab.get(w, 50))
    return out


def test_word_tokens_and_phrases():
    words = dict(word_tokens("a red circle on a blue background", fake_tokenize))
    assert words["circle"] == [2] and words["a"] == [0, 4] and words["background"] == [6]
    assert phrase_tokens("a red circle on a blue background", "red circle", fake_tokenize) == [1, 2]
    assert phrase_tokens("a red circle and a red circle", "red circle", fake_tokenize) == [1, 2, 5, 6]
    assert phrase_tokens("a red circle", "green", fake_tokenize) is None
    assert dict(word_tokens("a bluebird", fake_tokenize))["bluebird"] == [1, 2]
    assert find_tokens([1, 2, 3], []) is None


def test_token_positions_follow_the_conditioning_layout():
    # the root: [start, words..., end, padding] per 77-token window of 75 words
    assert token_position(0, root=True, start=0, window=77) == 1
    assert token_position(74, root=True, start=0, window=77) == 75
    assert token_position(75, root=True, start=0, window=77) == 77 + 1
    # a node: [words..., end] per chunk of 75 words, from its range's start
    assert token_position(0, root=False, start=77, window=77) == 77
    assert token_position(75, root=False, start=77, window=77) == 77 + 76


# ---------------------------------------------------------------------------------------------------------
# the first pass


def test_first_pass_scene_drops_attention_nodes_and_their_bands():
    sc = _scene(
        [
            {"id": "keep", "prompt": "a blue square", "mask": {"rect": [0, 0, 0.3, 0.3]}},
            {
                "id": "c",
                "prompt": "a green circle",
                "mask": {"attention": {"of": "root", "word": "circle"}},
                "children": [{"id": "inner", "prompt": "a dot", "mask": {"rect": [0.4, 0.4, 0.1, 0.1]}}],
            },
            {"id": "edge", "prompt": "blend", "mask": {"band": {"of": "c", "width": 4}}},
            {"id": "edge2", "prompt": "blend", "mask": {"band": {"of": "edge", "width": 4}}},
            {"id": "kept_band", "prompt": "blend", "mask": {"band": {"of": "keep", "width": 4}}},
        ]
    )
    first = first_pass_scene(sc)
    assert [f.node.id for f in first.flat()] == ["root", "keep", "kept_band"]
    assert first.root.prompt == sc.root.prompt
    plain = _scene([{"id": "keep", "prompt": "x", "mask": {"rect": [0, 0, 0.3, 0.3]}}])
    assert first_pass_scene(plain) == plain
