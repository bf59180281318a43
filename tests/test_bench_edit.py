"""hmedit.bench_edit: the edit images and scenes (no model), and `hmedit bench edit --quick` on a tiny
random model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hmedit import bench, bench_edit
from hmedit.scene.spec import Scene
from hmedit.toy.train import HELD_OUT


def test_images_are_held_out_and_fit_for_a_colour_edit():
    assert bench_edit.HELD_OUT_FROM == HELD_OUT
    picked = bench_edit.edit_images(4, 128)
    assert len(picked) == 4
    for seed, w, k, colour in picked:
        assert seed >= HELD_OUT and seed >= bench_edit.EDIT_SEEDS
        assert w.background_texture == "solid" and not w.outlined
        o = w.objects[k]
        assert o.texture == "solid" and (o.mask > 0.5).mean() >= bench_edit.MIN_OBJECT_FRACTION
        assert colour not in {w.background} | {x.colour for x in w.objects}
    assert bench_edit.RECON_SEEDS >= HELD_OUT


def test_edit_scene_recolours_one_object_and_keeps_the_rest(tmp_path):
    seed, w, k, colour = bench_edit.edit_images(1, 128)[0]
    masks = bench_edit.write_masks(w, tmp_path, "m")
    raw = bench_edit.edit_scene(w, k, colour, str(tmp_path / "i.png"), masks, "null_text", 128, 30, 7.5)
    sc = Scene.model_validate(raw)
    assert sc.inversion == "null_text" and sc.root.noise == 0.0
    nodes = sc.root.children
    assert len(nodes) == len(w.objects)
    edited = nodes[k]
    assert edited.noise == bench_edit.EDIT_NOISE and colour in edited.prompt
    assert edited.source_prompt == w.objects[k].phrase
    assert all(n.noise == 0.0 and n.source_prompt is None for j, n in enumerate(nodes) if j != k)


def test_foreground_is_what_is_not_background():
    img = np.zeros((8, 8, 3), np.uint8)
    img[:] = bench.PALETTE["blue"]
    img[2:4, 2:4] = bench.PALETTE["red"]
    box = np.ones((8, 8), bool)
    fg = bench_edit.foreground(img, box, "blue")
    assert fg.sum() == 4 and fg[2:4, 2:4].all()
    box[:, 3:] = False
    assert bench_edit.foreground(img, box, "blue").sum() == 2


def test_the_suite_is_registered_and_opt_in():
    assert "edit" in bench.SUITES and "edit" in bench.OPT_IN_SUITES
    assert "edit" not in bench.check_suites(None)
    assert bench.check_suites(["edit"]) == ["edit"]


@pytest.mark.parametrize("task", bench_edit.PAIR_TASKS)
def test_pair_scenes_edit_one_region_of_a_control_scene(task):
    raw, edit, colour = bench_edit.pair_scene(task, 3, 128, 30, 7.5)
    sc = Scene.model_validate({**raw, "edits": [edit]})
    target = sc.edit_target(sc.edits[0])
    ids = {f.node.id for f in sc.flat()}
    if task == "attribute":
        node = target.node(edit["node"])
        assert bench.colour_of(node.prompt) == colour != bench.colour_of(sc.node(edit["node"]).prompt)
    elif task == "addition":
        assert edit["add"]["id"] not in ids and bench.colour_of(edit["add"]["prompt"]) == colour
        assert len(target.flat()) == len(sc.flat()) + 1
    else:
        assert colour == bench.colour_of(sc.root.prompt) and len(target.flat()) == len(sc.flat()) - 1
    assert raw == bench_edit.pair_scene(task, 3, 128, 30, 7.5)[0]  # a function of the seed


def test_the_pairs_suite_is_registered_and_opt_in():
    assert "edit-pairs" in bench.OPT_IN_SUITES and bench.check_suites(["edit-pairs"]) == ["edit-pairs"]
    cfg = bench.Config.make(quick=True)
    assert bench.render_count("edit-pairs", cfg) == 3 * len(bench_edit.PAIR_VARIANTS)


@pytest.mark.slow
def test_bench_edit_quick_on_a_tiny_model(tiny_model_dir, tmp_path, monkeypatch):
    from hmedit.cli.app import main

    monkeypatch.setattr(bench_edit, "WORKERS", 1)
    monkeypatch.setattr(bench_edit, "PHOTO_PROMPTS", {"coffee": "a cup of coffee"})
    monkeypatch.setattr(bench_edit, "image_counts", lambda cfg: (1, 1))
    model = tiny_model_dir("sd1")
    out = tmp_path / "b"
    with pytest.raises(SystemExit) as info:
        main(["bench", "edit", "--quick", "--model", str(model), "--out", str(out), "--device", "cpu"])
    assert (info.value.code or 0) == 0
    f = json.loads((out / "bench.json").read_text())["suites"]["edit"]
    rec = f["reconstruction"]
    assert rec["images"] == 1 and f["photos"]["images"] == 1 and f["edits"]["images"] == 1
    for key in ("none@1", "ddim@1", "negative_prompt@1", "null_text@1", "null_text@7.5", "ceiling_db"):
        assert np.isfinite(rec["mean_psnr_db"][key])
    # at guidance 1 every inversion method samples the same conditional trajectory
    for case in rec["cases"]:
        assert case["ddim@1"] == case["negative_prompt@1"]
    for m in bench_edit.METHODS:
        s = f["edits"]["summary"][m]
        assert 0 <= s["oracle_rate"] <= 1 and 0 <= s["iou_mean"] <= 1 and s["ssim_i"] <= 1
        assert -1 <= s["clip"] <= 1  # the bundled toy-clip's score of the edited region vs its new prompt
    cost = f["cost"]
    assert cost["null_text_cached"]["invert_wall_s"] < cost["null_text_first"]["invert_wall_s"]
    ratio = cost["negative_prompt_edit"]["cpu_s"] / cost["plain_edit"]["cpu_s"]
    assert cost["negative_prompt_edit_ratio_cpu"] == pytest.approx(ratio, abs=1e-3)
    pairs = f["pairs"]
    assert set(pairs["tasks"]) == set(bench_edit.PAIR_TASKS) and len(pairs["cases"]) == 3
    for task in pairs["tasks"].values():
        for v in bench_edit.PAIR_VARIANTS:
            assert 0 <= task[v]["oracle_rate"] <= 1 and task[v]["ssim_i"] <= 1 and task[v]["cpu_s"] > 0
        target = bench_edit.TARGET_PAIR_SSIM_I
        assert task["pass"] == (task["attention+inject"]["ssim_i"] >= target)
        assert task["pass_blend"] == (task["attention+inject+blend"]["ssim_i"] >= target)
    assert pairs["pass"] == all(t["pass"] for t in pairs["tasks"].values())
    assert pairs["pass_blend"] == all(t["pass_blend"] for t in pairs["tasks"].values())
    images = [*(out / "images" / "edit").glob("*.png"), *(out / "images" / "pairs").glob("*.png")]
    assert len(images) == bench_edit.render_count(bench.Config.make(quick=True))


def _handlers(_):
    import signal

    return signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)


def test_forked_workers_end_quietly_on_sigterm_and_leave_ctrl_c_to_the_parent():
    import multiprocessing as mp
    import signal

    def raising(signum, frame):  # as the CLI's: SIGTERM becomes Ctrl-C
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, raising)
    try:
        with mp.get_context("fork").Pool(1, initializer=bench_edit._quiet_worker) as pool:
            term, intr = pool.map(_handlers, [0])[0]
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert term == signal.SIG_DFL and intr == signal.SIG_IGN
