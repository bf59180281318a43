"""The ControlNet evaluation's oracle and bookkeeping (no weights needed)."""

import numpy as np

from hmedit.toy import evaluate_controlnet as ev


def test_oracle_is_exact_on_the_held_out_sources():
    items = ev.held_out(5)
    assert len({h.seed for h in items}) == 5 and min(h.seed for h in items) >= ev.EVAL_SEED
    for h in items:
        s = h.sample
        assert h.source_iou >= ev.ORACLE_MIN_IOU and s.background_texture == "solid" and not s.outlined
        assert s.caption.endswith(f"{s.background} background")
        # a render of background alone scores 0; the source's own masks score 1
        flat = np.broadcast_to(np.asarray(ev.world.PALETTE[s.background], np.uint8), s.image.shape)
        assert ev.iou(ev.foreground(flat, s.background), h.truth) == 0.0
        assert ev.iou(h.truth, h.truth) == 1.0


def test_foreground_is_every_colour_but_the_background():
    img = np.zeros((4, 4, 3), np.uint8)
    img[:] = ev.world.PALETTE["blue"]
    img[1:3, 1:3] = (200, 50, 50)  # nearest palette colour: red
    fg = ev.foreground(img, "blue")
    assert fg.sum() == 4 and fg[1:3, 1:3].all()
    truth = np.zeros((4, 4), bool)
    truth[1:3, 1:4] = True
    assert ev.iou(fg, truth) == 4 / 6


def test_parts_and_runs_combine_by_seed_and_means_need_every_image():
    base = {"images": 4, "first_seed": 7, "steps": 30, "guidance": 7.5, "scheduler": "ddim"}
    rows = [{"seed": s, "caption": "c", "source_iou": 1.0} for s in range(4)]
    plain = dict(base, rows=[dict(r, iou_plain=0.25) for r in rows])
    part0 = dict(base, rows=[dict(r, iou_control=0.5) for r in rows[0::2]])
    part1 = dict(base, rows=[dict(r, iou_control=1.0) for r in rows[1::2]])
    half = ev.combine([part0, plain])
    assert half["count_control"] == 2 and "mean_iou_control" not in half and half["mean_iou_plain"] == 0.25
    full = ev.combine([part1, part0, plain])
    assert [r["seed"] for r in full["rows"]] == [0, 1, 2, 3]
    assert full["mean_iou_control"] == 0.75 and full["mean_iou_plain"] == 0.25
    assert all({"iou_control", "iou_plain"} <= r.keys() for r in full["rows"])
