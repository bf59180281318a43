"""Generation above the native size keeps the native composition: the preset's coarse pass by default."""

from __future__ import annotations

from pathlib import Path

import pytest

from hmedit.bench_tiled import composition_cases, composition_scene, summarise_composition
from hmedit.pipeline import Settings, render
from hmedit.sampling.tiled import resolve_tiling
from hmedit.scene.presets import TilingDefaults, load_preset
from hmedit.scene.spec import Scene, Tiling

SCENES = Path(__file__).resolve().parents[2] / "scenes"


def test_preset_coarse_applies_to_renders_from_noise_above_the_native_size():
    native, d = 16, TilingDefaults(coarse=True, refine=0.4)
    big = resolve_tiling(None, (128, 64), native, 4, d)
    assert big.coarse and big.refine == 0.4
    # an edit takes its composition from its source picture; at the native size there is nothing to refine
    assert not resolve_tiling(None, (128, 64), native, 4, d, from_noise=False).coarse
    assert not resolve_tiling(Tiling(force=True), (16, 16), native, 4, d).coarse
    # the scene's own keys win both ways
    assert not resolve_tiling(Tiling(coarse=False), (128, 64), native, 4, d).coarse
    assert resolve_tiling(Tiling(coarse=True), (128, 64), native, 4, d, from_noise=False).coarse
    assert resolve_tiling(Tiling(refine=0.7), (128, 64), native, 4, d).refine == 0.7
    # a preset without coarse tiles every window from noise, as before
    off = resolve_tiling(None, (128, 64), native, 4, TilingDefaults())
    assert not off.coarse and off.refine == 0.6


def test_toy_preset_turns_the_coarse_pass_on_and_other_presets_leave_it_off():
    toy = load_preset("toy").tiling
    assert toy.coarse and 0 < toy.refine < 0.6
    assert not load_preset("sd15").tiling.coarse


def test_settings_pick_the_coarse_pass_for_generation_and_not_for_edits(toy_model):
    gen = Scene.model_validate(composition_scene(0, 1024, 20))
    s = Settings.of(gen, toy_model, 0)
    assert s.tiling.coarse and s.tiling.refine == load_preset("toy").tiling.refine
    plain = Scene.model_validate(composition_scene(0, 1024, 20, "plain"))
    assert not Settings.of(plain, toy_model, 0).tiling.coarse
    native = Scene.model_validate(composition_scene(0, 128, 20))
    assert Settings.of(native, toy_model, 0).tiling is None
    from hmedit.scene.load import load_scene

    edit = load_scene(SCENES / "hires_edit.yaml")  # init_image: refined window by window, as before
    assert not Settings.of(edit, toy_model, 11).tiling.coarse


@pytest.mark.slow
def test_a_render_from_noise_above_the_native_size_refines_a_native_render(tiny_model):
    m = tiny_model("sd1")
    raw = composition_scene(1, 2 * m.native_size, 4)
    sc = Scene.model_validate(raw)
    r = render(sc, m, Settings.of(sc, m, 1, preset="toy"))
    assert "coarse" in r.timings  # the native render ran first
    assert float(r.plan.noise_map.max()) == pytest.approx(load_preset("toy").tiling.refine)
    plain = Scene.model_validate(composition_scene(1, 2 * m.native_size, 4, "plain"))
    old = render(plain, m, Settings.of(plain, m, 1, preset="toy"))
    # the refinement runs only its share of the steps over the windows (1 of 4 here), the old way all 4
    assert "coarse" not in old.timings and old.stats["windows_total"] > 2 * r.stats["windows_total"]


def _row(seed, size, variant, matched, regions=4, seconds=1.0):
    return {
        "seed": seed,
        "size": size,
        "variant": variant,
        "matched": matched,
        "regions": regions,
        "fraction_mean": matched / regions,
        "seconds": seconds,
    }


def test_composition_summary_compares_each_size_with_native_on_the_same_scenes():
    rows = [_row(0, 128, "defaults", 4), _row(1, 128, "defaults", 2)]
    rows += [_row(0, 1024, "defaults", 4, seconds=3.0), _row(1, 1024, "defaults", 2, seconds=5.0)]
    rows += [_row(0, 1024, "plain", 1), _row(1, 1024, "plain", 1)]
    rows += [_row(1, 2048, "defaults", 2)]  # only one scene finished at 2048
    out = summarise_composition(rows, 128)
    by = out["by"]
    assert by["native"]["match"] == 0.75 and by["native"]["scenes"] == 2
    assert by["1024-defaults"]["drop"] == 0 and by["1024-defaults"]["seconds_mean"] == 4.0
    assert by["1024-plain"]["match"] == 0.25 and by["1024-plain"]["drop"] == 0.5
    # 2048 is compared with native on scene 1 alone, where both match half the regions
    assert by["2048-defaults"]["native_match_same_scenes"] == 0.5 and by["2048-defaults"]["drop"] == 0
    assert out["pass"]  # the plain variant is reported, not judged
    rows.append(_row(0, 2048, "defaults", 3))
    assert not summarise_composition(rows, 128)["pass"]  # 5/8 against native's 6/8 on the same scenes


def test_composition_cases_run_native_first_then_each_size():
    from hmedit.bench import Config

    cfg = Config(composition_scenes=2, composition_sizes=(1024, 2048))
    cases = composition_cases(cfg, 128)
    assert cases[:2] == [(0, 128, "defaults"), (1, 128, "defaults")]
    assert cases[2:4] == [(0, 1024, "defaults"), (1, 1024, "defaults")]
    assert len(cases) == 2 + 2 * 2 * 2 and cases[-1] == (1, 2048, "plain")
    no_plain = Config(composition_scenes=2, composition_plain=False)
    assert all(v == "defaults" for _, _, v in composition_cases(no_plain, 128))
    with pytest.raises(ValueError):
        composition_scene(0, 256, 2, "other")
