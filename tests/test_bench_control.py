"""The control-net bench's scenes: pure functions of a seed, valid, with the layers and regions they claim."""

from __future__ import annotations

import numpy as np
from PIL import Image

from hmedit import bench
from hmedit import bench_control as bc
from hmedit.scene.spec import Scene


def test_collages_are_deterministic_two_distinct_objects_apart(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    one, two = bc.collage(3, a, size=64), bc.collage(3, b, size=64)
    assert [o["shape"] for o in one["objects"]] == [o["shape"] for o in two["objects"]]
    for x, y in zip(one["objects"], two["objects"], strict=True):
        assert np.array_equal(np.asarray(Image.open(x["layer"])), np.asarray(Image.open(y["layer"])))
    colours = [one["background"], *(o["colour"] for o in one["objects"])]
    assert len(set(colours)) == 3
    alphas = [np.asarray(Image.open(o["layer"]))[..., 3] > 0 for o in one["objects"]]
    assert all(m.any() for m in alphas) and not (alphas[0] & alphas[1]).any()
    x, y, w, h = one["objects"][0]["box"]
    ys, xs = np.nonzero(alphas[0] & (np.asarray(Image.open(one["objects"][0]["layer"]))[..., 3] > 127))
    assert abs(xs.min() / 64 - x) < 1e-3 and abs((ys.max() + 1) / 64 - (y + h)) < 1e-3


def test_control_net_scenes_differ_only_in_the_control_and_the_region(tmp_path):
    pics = bc.collage(0, tmp_path, size=64)
    kw = dict(size=64, steps=2, guidance=5.0, feather=2.0)
    with_c = Scene.model_validate(bc.control_net_scene(0, pics, **kw))
    plain = Scene.model_validate(bc.control_net_scene(0, pics, control=False, **kw))
    loose = Scene.model_validate(bc.control_net_scene(0, pics, loose=True, **kw))
    assert with_c.node("ctl").control.source == "layer" and with_c.node("free").control is None
    assert plain.node("ctl").control is None and plain.node("ctl").layer == with_c.node("ctl").layer
    assert loose.node("ctl").layer is None and loose.node("ctl").mask.rect == tuple(pics["objects"][0]["box"])
    assert loose.node("ctl").control.source.raw == pics["objects"][0]["layer"]
    assert with_c.root.noise == 0 and with_c.node("ctl").noise == 1 and with_c.init_image is not None


def test_iou_and_the_suites_registration():
    a = np.zeros((4, 4), bool)
    b = a.copy()
    a[:2], b[1:3] = True, True
    assert bc.iou(a, b) == 4 / 12 and bc.iou(a, a) == 1.0
    assert "control-net" in bench.SUITES and "control-net" not in bench.check_suites(None)
    assert bench.render_count("control-net", bench.Config.quick_config()) == 4 * 2 + 2 + 2 + 2


def test_the_cost_ratio_is_of_cpu_seconds_with_one_thread_else_of_wall_seconds(tmp_path, monkeypatch):
    import torch

    # wall seconds inflated by other jobs (plain waited more), CPU seconds the renders' own work
    times = {"control": (20.0, 12.0), "plain": (25.0, 10.0)}

    def fake_render(b, raw, label, size=None, steps=None):
        from types import SimpleNamespace

        wall, cpu = times["plain" if raw["name"].endswith("-plain") else "control"]
        return SimpleNamespace(timings={"sample": cpu}), None, wall, cpu

    monkeypatch.setattr(bc, "_render", fake_render)
    cc = bc.ControlNetConfig(repeats=2)
    kw = dict(size=64, steps=2, guidance=5.0, feather=2.0)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = bc._cost(None, tmp_path, cc, kw)
        torch.set_num_threads(2)
        two = bc._cost(None, tmp_path, cc, kw)
    finally:
        torch.set_num_threads(threads)
    assert one["ratio_of"] == "cpu" and one["ratio"] == 1.2 and one["ratio_wall"] == 0.8
    assert two["ratio_of"] == "wall" and two["ratio"] == 0.8
    assert one["cpu_runs_s"] == {"control": [12.0, 12.0], "plain": [10.0, 10.0]}
