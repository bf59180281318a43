"""The attention-masks bench: its generated scenes, its oracle, and a quick run on a tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hmedit import bench
from hmedit import bench_attention as ba
from hmedit.scene.spec import Scene, prompt_words
from hmedit.toy.world import PALETTE


def test_generated_scenes_are_deterministic_valid_and_name_their_objects():
    seen = set()
    for seed in range(12):
        raw, objects = ba.generated_scene(seed, 128, 30, 7.5)
        assert (raw, objects) == ba.generated_scene(seed, 128, 30, 7.5)
        sc = Scene.model_validate(raw)
        assert sc.flat()[1:] == [] and 1 <= len(objects) <= 2
        words = prompt_words(sc.root.prompt)
        for colour, shape in objects:
            assert colour in words and shape in words
        assert len({c for c, _ in objects}) == len(
            objects
        )  # one colour per object: the oracle tells them apart
        seen.add(sc.root.prompt)
    assert len(seen) == 12


def test_oracle_and_prompt_colour():
    img = np.zeros((4, 4, 3), np.uint8)
    img[:] = PALETTE["blue"]
    img[1:3, 1:3] = np.asarray(PALETTE["red"]) - 10  # near red
    assert ba.oracle(img, "red").sum() == 4 and ba.oracle(img, "blue").sum() == 12
    assert ba.prompt_colour("a red ring") == "red"
    assert ba.prompt_colour("a red ring on a blue background") is None  # two colours: no oracle
    assert ba.prompt_colour("a ring") is None


def test_registration_and_example_scenes():
    assert "attention-masks" in bench.SUITES and "attention-masks" not in bench.check_suites(None)
    full = ba.AttentionConfig.of(bench.Config())
    assert full.scenes == 24 and full.size == 128 and full.threshold == 0.4 and full.dataset_seeds == 4
    names = {p.stem for p in ba.example_scenes(full)}
    assert "attention_band" in names and "hires_garden" not in names  # 1024 px scenes are left out
    quick = bench.Config.quick_config()
    assert bench.render_count("attention-masks", quick) == 2 + 1


@pytest.mark.slow
def test_quick_run_on_a_tiny_model(tiny_model_dir, tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setenv("HMEDIT_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)
    from hmedit.cli.app import main

    out = tmp_path / "bench"
    with pytest.raises(SystemExit) as info:
        main(
            ["bench", "attention-masks", "--quick", "--model", str(tiny_model_dir("sd1")), "--out", str(out)]
        )
    assert info.value.code in (0, None, 1)  # a tiny random model fails the target; the run must finish
    assert "attention-masks:" in capsys.readouterr().out
    f = json.loads((out / "bench.json").read_text())["suites"]["attention-masks"]
    g, d = f["generated"], f["dataset"]
    assert g["scenes"] == 2 and len(g["cases"]) >= 2
    assert all(0 <= c["iou_word_self"] <= 1 for c in g["cases"])
    assert d["images"] == 1 and d["areas_match"] and d["scenes"] == ["attention_band"]
    assert d["seconds_per_image"] > 0
