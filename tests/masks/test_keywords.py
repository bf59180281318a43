"""Keyword selection (MRGD eq. 6) on synthetic maps: image entropy, N, auto."""

from __future__ import annotations

import math

import pytest
import torch

from hmedit.masks.keywords import auto_count, image_entropy, select_keywords


def blob(cx: float, cy: float, sigma: float = 2.0, size: int = 32) -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    return torch.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))


def flat(seed: int, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 1.0 + 0.1 * torch.rand(size, size, generator=g)


def test_entropy_of_a_peaked_map_is_below_a_spread_one():
    h = image_entropy(torch.stack([blob(8, 8), flat(0)]))
    assert float(h[0]) < float(h[1])
    # a uniform-noise map fills the histogram: near log(256)
    assert float(h[1]) > math.log(256) - 0.5
    # a binary map: two levels, entropy of its area fraction
    binary = torch.zeros(1, 10, 10)
    binary[0, :5] = 1
    assert float(image_entropy(binary)[0]) == pytest.approx(math.log(2), abs=1e-6)


def test_a_constant_map_counts_as_spread():
    h = image_entropy(torch.stack([torch.ones(8, 8), blob(4, 4, size=8)]))
    assert float(h[0]) == pytest.approx(math.log(256))
    assert select_keywords(torch.stack([torch.ones(8, 8), blob(4, 4, size=8)]), 1) == [1]


def test_peaked_maps_win_and_n_is_respected():
    maps = torch.stack([flat(1), blob(5, 5), flat(2), blob(20, 25, 3.0), flat(3), flat(4)])
    assert select_keywords(maps, 2) == [1, 3]
    assert select_keywords(maps, 1) in ([1], [3])
    assert len(select_keywords(maps, 4)) == 4 and {1, 3} <= set(select_keywords(maps, 4))
    assert select_keywords(maps, 100) == list(range(6))


def test_auto_splits_peaked_from_spread_and_keeps_at_least_one():
    maps = torch.stack([flat(1), blob(5, 5), flat(2), blob(20, 25, 3.0), flat(3), flat(4)])
    assert select_keywords(maps, "auto") == [1, 3]
    assert select_keywords(maps[:1], "auto") == [0]
    # all alike: nothing to tell apart, all kept
    assert auto_count(torch.tensor([2.0, 2.0, 2.0])) == 3
    # one clear keyword among fillers
    assert auto_count(torch.tensor([5.1, 0.5, 5.3, 5.0, 5.2])) == 1


@pytest.mark.parametrize("n", [0, -1, 1.5, True, "some"])
def test_bad_n_is_refused(n):
    with pytest.raises(ValueError):
        select_keywords(torch.stack([blob(4, 4)]), n)
