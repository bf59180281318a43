"""Per-render precomputation: noise-level maps, paste-back weights, canvases, step gates."""

import numpy as np
import torch
from PIL import Image

from hmedit.masks.levels import downsample
from hmedit.sampling.plan import build_plan, noise_levels
from hmedit.scene.spec import Scene


def test_noise_map_and_paste_back_weight():
    eff = torch.zeros(2, 64, 64)
    eff[1, 16:48, 16:48] = 1
    eff[0] = 1 - eff[1]
    level, keep = noise_levels(eff, torch.tensor([0.0, 0.8]), (16, 16))
    assert level.shape == (1, 1, 16, 16)
    assert torch.isclose(level[0, 0, 8, 8], torch.tensor(0.8), atol=0.01)  # inside: the node's level
    assert level[0, 0, 0, 0] < 0.01  # far outside: the root's
    assert 0.1 < level[0, 0, 8, 3] < 0.7  # just outside the boundary: softened upwards
    assert torch.isclose(level[0, 0, 8, 4], torch.tensor(0.8), atol=0.01)  # the region keeps its level
    assert torch.equal(keep, eff[1])  # generated exactly where the noisy node acts


def test_build_plan_levels_gates_and_canvas(tmp_path):
    Image.new("RGB", (64, 64), (255, 0, 0)).save(tmp_path / "init.png")
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 2] = 255
    rgba[8:24, 8:24, 3] = 255
    Image.fromarray(rgba).save(tmp_path / "layer.png")
    sc = Scene.model_validate(
        {
            "size": [64, 64],
            "init_image": str(tmp_path / "init.png"),
            "root": {
                "prompt": "r",
                "noise": 0.2,
                "children": [
                    {
                        "id": "a",
                        "layer": str(tmp_path / "layer.png"),
                        "prompt": "a",
                        "noise": 0.6,
                        "levels": ["coarse"],
                        "active": [0.0, 0.5],
                        "strength": 2.0,
                        "attention": {"pos": 0.5, "neg": 3.0},
                    }
                ],
            },
        }
    )
    p = build_plan(sc, [1, 2, 4], 64, 64, 8)
    assert p.latent == (8, 8) and sorted(p.level_masks) == [4, 16, 64]
    assert p.level_gate[4].tolist() == [True, True] and p.level_gate[64].tolist() == [True, False]
    assert p.pos.tolist() == [1.0, 1.0] and p.neg.tolist() == [1.0, 6.0]
    assert p.step_gate(0.25).tolist() == [True, True] and p.step_gate(0.75).tolist() == [True, False]
    assert p.step_gate(0.5).tolist() == [True, False]  # active ranges are half-open: the end is excluded
    assert p.step_gate(0.0).tolist() == [True, True]  # and the start included
    for n, hw in ((4, (2, 2)), (16, (4, 4)), (64, (8, 8))):
        # max-pooled, so small regions survive at coarse levels
        torch.testing.assert_close(p.level_masks[n], downsample(p.effective, hw, "max").reshape(2, n))
    canvas = (p.canvas[0] + 1) / 2
    assert torch.allclose(canvas[:, 12, 12], torch.tensor([0.0, 0.0, 1.0]), atol=1e-3)  # layer pasted
    assert torch.allclose(canvas[:, 40, 40], torch.tensor([1.0, 0.0, 0.0]), atol=1e-3)  # init elsewhere
    assert abs(p.max_noise - 0.6) < 0.05
