"""bench masks: registration, the cases (pure functions of their index) and the pass rules."""

import numpy as np

from hmedit import bench, bench_masks
from hmedit.metrics import nearest_colour
from hmedit.toy.world import PALETTE


def test_masks_is_an_opt_in_suite():
    assert "masks" in bench.SUITES and "masks" in bench.OPT_IN_SUITES
    assert "masks" not in bench.check_suites(None) and bench.check_suites(["masks"]) == ["masks"]
    assert bench.render_count("masks", bench.Config()) == 20 + 2 * 12
    assert bench.render_count("masks", bench.Config.quick_config()) == 3


def test_click_cases_are_reproducible_backgrounds_with_a_new_colour():
    a, b = bench_masks.click_cases(5, 64), bench_masks.click_cases(5, 64)
    assert [c["click"] for c in a] == [c["click"] for c in b]
    for c in a:
        assert np.array_equal(c["image"], b[c["index"]]["image"])
        assert c["colour"] != c["background"] and all(0.3 <= v <= 0.7 for v in c["click"])
        assert not (nearest_colour(c["image"], PALETTE) == list(PALETTE).index(c["colour"])).any()


def test_refine_boxes_are_off_by_a_shift_and_a_growth_of_30_percent():
    for c in bench_masks.refine_cases(3, 128):
        x0, y0, x1, y1 = c["world"].objects[c["object"]].box
        bw, bh = (x1 - x0) / 128, (y1 - y0) / 128
        x, y, w, h = c["box"]
        assert abs(w - 1.3 * bw) < 1e-3 and abs(h - 1.3 * bh) < 1e-3
        assert abs(abs((x + w / 2) - (x0 / 128 + bw / 2)) - 0.3 * bw) < 1e-3
        assert abs(abs((y + h / 2) - (y0 / 128 + bh / 2)) - 0.3 * bh) < 1e-3


def test_pass_rules():
    ok = {"oracle": True, "centroid_distance": 0.05, "outside_max_change": 0, "iou": 0.7}
    assert bench_masks.click_summary([ok] * 4)["pass"]
    assert not bench_masks.click_summary([ok] * 3 + [{**ok, "outside_max_change": 2}])["pass"]
    assert not bench_masks.click_summary([ok, {**ok, "oracle": False}])["pass"]
    drawn = {"region_match": 0.5, "object_match": 0.5, "iou": 0.3}
    better = {"drawn": drawn, "refined": {"region_match": 0.6, "object_match": 0.5, "iou": 0.4}}
    worse = {"drawn": drawn, "refined": {"region_match": 0.4, "object_match": 0.5, "iou": 0.4}}
    assert bench_masks.refine_summary([better])["pass"] and not bench_masks.refine_summary([worse])["pass"]
