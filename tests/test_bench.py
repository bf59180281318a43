"""hmedit.bench: the scene builders (no model), and `hmedit bench --quick` on a tiny random model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hmedit import bench
from hmedit.errors import HmeditError
from hmedit.masks.checks import check_masks
from hmedit.scene.spec import Scene
from hmedit.toy.world import COLOURS, PALETTE

SEEDS = range(40)


def valid(raw: dict) -> Scene:
    scene = Scene.model_validate(raw)
    diags = check_masks(scene)
    assert not diags.errors and not diags.warnings, [e.format() for e in diags.errors + diags.warnings]
    assert not scene.warnings
    return scene


def box_of(node) -> tuple[str, list[float]]:
    kind = "rect" if node.mask.__class__.__name__ == "RectMask" else "ellipse"
    return kind, list(getattr(node.mask, kind))


# ------------------------------------------------------------------------------------------------
# Scene builders


def test_colour_of():
    assert bench.colour_of("a red circle") == "red"
    assert bench.colour_of("a cyan background") == "cyan"
    with pytest.raises(ValueError):
        bench.colour_of("a circle")
    with pytest.raises(ValueError):
        bench.colour_of("a red circle and a blue square")


@pytest.mark.parametrize("seed", SEEDS)
def test_control_scene_regions_are_distinct_separate_and_sized(seed):
    raw = bench.control_scene(seed)
    sc = valid(raw)
    assert sc.size == (128, 128) and sc.steps == 30 and sc.guidance == 7.5 and sc.scheduler == "ddim"
    assert sc.attention.pos == 1.0 and sc.attention.neg == 1.0
    regions = sc.root.children
    assert 2 <= len(regions) <= 4
    assert all(not r.children for r in regions)
    bg = bench.colour_of(sc.root.prompt)
    assert sc.root.prompt == f"a {bg} background"
    colours = [bench.colour_of(r.prompt) for r in regions]
    assert len(set(colours + [bg])) == len(colours) + 1
    boxes = []
    for r, colour in zip(regions, colours, strict=True):
        kind, (x, y, w, h) = box_of(r)
        assert r.prompt == f"a {colour} {'square' if kind == 'rect' else 'circle'}"
        assert 0.25 <= w <= 0.45 and 0.25 <= h <= 0.45
        assert x >= 0 and y >= 0 and x + w <= 1 and y + h <= 1
        boxes.append((x, y, w, h))
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert bench._apart(a, b, 0.0)
    masks = bench.region_masks(sc, 128, 128)
    total = sum(masks[r.id] for r in regions)
    assert total.max() <= 1 + 1e-5  # no pixel in two regions


def test_control_scenes_are_deterministic_and_vary():
    assert bench.control_scene(3) == bench.control_scene(3)
    scenes = [bench.control_scene(s) for s in range(24)]
    assert len({json.dumps(s["root"], sort_keys=True) for s in scenes}) == 24
    counts = {len(s["root"]["children"]) for s in scenes}
    assert counts == {2, 3, 4}
    kinds = {k for s in scenes for r in s["root"]["children"] for k in r["mask"]}
    assert kinds == {"rect", "ellipse"}
    assert len({bench.colour_of(s["root"]["prompt"]) for s in scenes}) >= 6


def test_control_scene_without_masking_differs_only_in_attention():
    on, off = bench.control_scene(5), bench.control_scene(5, masking=False)
    assert off.pop("attention") == {"pos": 0.0, "neg": 0.0}
    assert on == off
    sc = valid(bench.control_scene(5, masking=False))
    assert sc.attention.pos == 0 and sc.attention.neg == 0


def test_control_scene_options():
    raw = bench.control_scene(1, n=3, size=64, steps=2, guidance=3.0)
    sc = valid(raw)
    assert len(sc.root.children) == 3 and sc.size == (64, 64) and sc.steps == 2 and sc.guidance == 3.0
    cost = valid(bench.cost_scene(256))
    assert len(cost.flat()) == 4 and cost.size == (256, 256)


@pytest.mark.parametrize("seed", range(16))
def test_hierarchy_scene_child_inside_parent_for_every_scheme(seed):
    geometry = set()
    for scheme, how in bench.HIERARCHY_SCHEMES.items():
        sc = valid(bench.hierarchy_scene(seed, scheme))
        assert sc.composition == how["composition"]
        parent, child = sc.node("parent"), sc.node("child")
        flat = {f.node.id: f for f in sc.flat()}
        if how.get("flat"):
            assert flat["child"].parent == 0 and flat["parent"].parent == 0
        else:
            assert sc.root.children == (parent,) and parent.children == (child,)
            assert flat["child"].parent == flat["parent"].index
        if scheme == "hybrid":
            assert parent.composition == "normalized" and child.composition == "multiplicative"
        bg, c1, c2 = (bench.colour_of(n.prompt) for n in (sc.root, parent, child))
        assert len({bg, c1, c2}) == 3
        assert parent.prompt == f"a {c1} square" and child.prompt == f"a {c2} circle"
        pk, (px, py, pw, ph) = box_of(parent)
        ck, (cx, cy, cw, ch) = box_of(child)
        assert (pk, ck) == ("rect", "ellipse")
        assert 0.5 <= pw <= 0.7 and pw == ph and px >= 0 and py >= 0 and px + pw <= 1 and py + ph <= 1
        assert cw == pytest.approx(0.4 * pw, abs=1e-3) and cw == ch
        assert px < cx and py < cy and cx + cw < px + pw and cy + ch < py + ph  # strictly inside
        masks = bench.region_masks(sc, 128, 128)
        assert (masks["child"] <= masks["parent"] + 1e-6).all()
        ring = (masks["parent"] > 0.5) & ~(masks["child"] > 0.5)
        assert ring.sum() > 0.5 * (masks["parent"] > 0.5).sum()  # the ring is most of the square
        geometry.add(json.dumps([box_of(parent), box_of(child), bg, c1, c2]))
    assert len(geometry) == 1  # every scheme renders the same picture


def test_hierarchy_scene_rejects_unknown_scheme():
    with pytest.raises(ValueError):
        bench.hierarchy_scene(0, "sideways")


@pytest.mark.parametrize("seed", range(12))
def test_edit_scene_recolours_one_region_and_keeps_the_rest(seed, tmp_path):
    raw = bench.control_scene(seed, n=3, suite="locality")
    node, colour = bench.edit_target(raw, seed)
    used = {bench.colour_of(raw["root"]["prompt"])} | {
        bench.colour_of(r["prompt"]) for r in raw["root"]["children"]
    }
    assert colour in COLOURS and colour not in used
    init = tmp_path / "init.png"
    edit = bench.edit_scene(raw, node, colour, str(init), noise=0.8, feather=2.0)
    assert raw["root"].get("noise") is None  # the input is not changed
    sc = Scene.model_validate(edit)
    assert sc.init_image is not None and sc.init_image.path == init
    assert sc.root.noise == 0.0
    for before, after in zip(raw["root"]["children"], sc.root.children, strict=True):
        assert after.mask == Scene.model_validate(raw).node(after.id).mask
        if after.id == node:
            assert after.noise == 0.8 and after.feather == 2.0
            assert after.prompt == before["prompt"].replace(bench.colour_of(before["prompt"]), colour)
        else:
            assert after.noise == 0.0 and after.feather == 0 and after.prompt == before["prompt"]
    with pytest.raises(ValueError):
        bench.edit_scene(raw, "nobody", colour, str(init))


@pytest.mark.parametrize("colour", list(bench.INVERSION_COLOURS))
def test_inversion_scenes_remake_one_layer_with_the_generic_prompt(colour, tmp_path):
    from PIL import Image

    rgb = bench.INVERSION_COLOURS[colour]
    init, layer = bench.inversion_images(rgb, 128)
    assert init.shape == (128, 128, 3) and (init == PALETTE[bench.INVERSION_BACKGROUND]).all()
    assert layer.shape == (51, 51, 4) and (layer[..., :3] == rgb).all() and (layer[..., 3] == 255).all()
    Image.fromarray(init).save(tmp_path / "init.png")
    Image.fromarray(layer, "RGBA").save(tmp_path / "layer.png")
    paths = (str(tmp_path / "init.png"), str(tmp_path / "layer.png"))
    plain = valid(bench.inversion_scene(colour, *paths, 2))
    learned = valid(bench.inversion_scene(colour, *paths, 2, learn={"steps": 5}))
    assert plain.root.noise == 0 and plain.seed_list == [2] and plain.size == (128, 128)
    (node,) = plain.root.children
    assert node.prompt == "a square" and node.noise == 0.8 and node.learn is None and node.at == (0.3, 0.3)
    assert learned.node("layer").learn.steps == 5 and learned.name != plain.name
    assert bench.inversion_scene(colour, *paths, 2) == bench.inversion_scene(colour, *paths, 2)
    mask = bench.region_masks(plain, 128, 128)["layer"]
    assert abs(mask.sum() - 51 * 51) < 1 and mask[64, 64] == 1  # the square, in the middle
    picture = bench.init_with_layer(init, layer)
    assert (picture[64, 64] == rgb).all() and (picture[0, 0] == init[0, 0]).all()
    assert bench.metrics.mean_colour_error(picture, mask, rgb) == pytest.approx(0, abs=1)


def test_inversion_colours_are_off_the_palette():
    for rgb in bench.INVERSION_COLOURS.values():
        nearest = min(np.linalg.norm(np.subtract(rgb, p)) for p in PALETTE.values())
        assert nearest > 40  # no palette word names them


def test_place_boxes_always_succeeds_for_four():
    rng = np.random.default_rng(0)
    for _ in range(100):
        boxes = bench.place_boxes(rng, 4)
        assert len(boxes) == 4


def test_seeds_n_sets_every_suites_count_even_when_n_is_a_default():
    from hmedit import bench_attention, bench_control, bench_edit

    for n in (24, 10, 7):  # 24 is the control suite's default, 10 the edit pairs'
        cfg = bench.Config.make(seeds=n)
        assert bench_edit.pair_count(cfg) == n and bench_edit.image_counts(cfg) == (n, n)
        assert bench_attention.AttentionConfig.of(cfg).scenes == n
        assert bench_control.ControlNetConfig.of(cfg).scenes == n
    cfg = bench.Config.make()
    assert bench_edit.pair_count(cfg) == bench_edit.PAIR_SCENES
    assert bench_edit.image_counts(cfg) == (bench_edit.RECON_IMAGES, bench_edit.EDIT_IMAGES)
    assert bench_attention.AttentionConfig.of(cfg).scenes == bench_attention.AttentionConfig.scenes


def test_config_and_suites():
    quick = bench.Config.make(quick=True)
    assert quick.size == 64 and quick.steps == 2 and quick.control_scenes == 2 and quick.repeats == 1
    assert quick.inversion_seeds == 1 and quick.learn_steps == 2 and bench.Config().learn_steps is None
    full = bench.Config.make(seeds=30, repeats=5)
    assert (full.size, full.cost_size, full.steps, full.guidance) == (128, 256, 30, 7.5)
    assert full.control_scenes == full.hierarchy_scenes == full.locality_scenes == 30 and full.repeats == 5
    default = bench.Config()
    assert default.control_scenes >= 24 and default.hierarchy_scenes >= 12 and default.locality_scenes >= 6
    default = [s for s in bench.SUITES if s not in bench.OPT_IN_SUITES]
    assert bench.check_suites(None) == default and "scale" not in bench.check_suites(None)
    assert bench.check_suites(["scale", "tiling"]) == ["tiling", "scale"]
    assert bench.check_suites(["locality", "cost"]) == ["cost", "locality"]
    with pytest.raises(HmeditError, match="unknown suite 'speed'"):
        bench.check_suites(["speed"])


# ------------------------------------------------------------------------------------------------
# End to end on a tiny random model


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run(*args) -> int:
    from hmedit.cli.app import main

    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    return info.value.code or 0


@pytest.mark.slow
def test_bench_quick_runs_every_suite(tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HMEDIT_CACHE", str(tmp_path / "cache"))
    model, out = tiny_model_dir("sd1"), tmp_path / "bench"
    assert run("bench", "--quick", "--model", model, "--out", out, "--device", "cpu") == 0
    printed = capsys.readouterr().out
    for title in (
        "cost:",
        "control:",
        "hierarchy:",
        "locality:",
        "inversion:",
        "tiling:",
        "memory:",
        "bench.json",
    ):
        assert title in printed
    doc = json.loads((out / "bench.json").read_text())
    assert {"format", "format_version", "model", "machine", "config", "suites"} <= set(doc)
    assert doc["model"]["hash"] and doc["config"]["quick"] is True
    assert {"cpu_count", "torch", "diffusers", "device"} <= set(doc["machine"])
    assert set(doc["suites"]) == {"cost", "control", "hierarchy", "locality", "inversion", "tiling", "memory"}

    cost = doc["suites"]["cost"]
    assert set(cost["seconds"]) == {"diffusers", "hmedit", "hmedit_no_record"}
    assert all(s > 0 for s in cost["seconds"].values()) and cost["nodes"] == 4
    assert cost["ratio"] == pytest.approx(cost["seconds"]["hmedit"] / cost["seconds"]["diffusers"])
    assert {"ratio_no_record", "target_ratio", "pass", "runs_s", "hmedit_stages_s"} <= set(cost)

    control = doc["suites"]["control"]
    assert control["scenes"] == 2 and control["size"] == [64, 64] and control["steps"] == 2
    for v in ("masked", "unmasked", "fusion"):
        assert {"match_rate", "bleed_rate", "scene_match_rate", "cpu_s_per_image"} <= set(control[v])
        assert 0 <= control[v]["match_rate"] <= 1
        assert -1 <= control[v]["clip_mean"] <= 1  # the bundled toy-clip's region-vs-prompt score
    assert control["regions"] == sum(len(c["regions"]["masked"]) for c in control["cases"])

    hier = doc["suites"]["hierarchy"]
    assert set(hier["schemes"]) == set(bench.HIERARCHY_SCHEMES)
    for r in hier["schemes"].values():
        assert {"child", "ring", "both"} <= set(r) and r["both"] <= min(r["child"], r["ring"])

    loc = doc["suites"]["locality"]
    assert {"outside_mean", "inside_mean", "new_colour_rate", "pass", "cases"} <= set(loc)
    assert loc["margin_px"] == 6.0 and len(loc["cases"]) == 2
    # the edit keeps the pixels outside the region (pasted back) and repaints inside it
    assert loc["outside_mean"] < 1.0 and loc["inside_mean"] > 0

    inv = doc["suites"]["inversion"]
    assert inv["colours"] == ["teal", "olive", "salmon"] and inv["seeds"] == 1 and inv["noise"] == 0.8
    assert inv["learn"]["steps"] == 2 and inv["learn"]["batch"] == 2
    assert {"drop_pct_min", "learn_s_max", "cached_s_max", "pass_drop", "pass_learn", "pass_cached"} <= set(
        inv
    )
    for layer in inv["layers"].values():
        assert layer["learned"] and layer["cache_hit"] and layer["learn_s"] > 0 and layer["cached_s"] >= 0
        assert 0 <= layer["error_prompt"] <= 255 and 0 <= layer["error_token"] <= 255
        assert len(layer["cases"]) == 1 and layer["token"].startswith("<hm-layer-")
    assert inv["cached_s_max"] < inv["learn_s_max"]

    tiling = doc["suites"]["tiling"]
    assert tiling["size"] == [128, 128] and set(tiling["scenes"]) == {"nested_rings", "hires_edit"}
    assert (
        "panorama" not in tiling["scenes"]["hires_edit"]
        and tiling["scenes"]["hires_edit"]["hmedit"]["seam"] > 0
    )
    row = tiling["scenes"]["nested_rings"]
    assert row["hmedit"]["tiling"]["offsets"] and not row["hmedit_plain"]["tiling"]["offsets"]
    assert row["hmedit"]["windows_per_step"] > 1 and row["panorama"]["views_per_step"] >= 1
    assert row["speedup"] == pytest.approx(row["panorama"]["seconds"] / row["hmedit"]["seconds"], rel=0.01)
    assert all(row[k]["seam"] > 0 for k in ("hmedit", "hmedit_plain", "panorama"))
    assert tiling["world_reference"] is None  # only the bundled model has a world to compare with
    comp = tiling["composition"]  # the control scenes at the native size and above it
    assert comp["sizes"] == [64, 128] and comp["scenes"] == 1 and len(comp["cases"]) == 3
    assert set(comp["by"]) == {"native", "128-defaults", "128-plain"}
    assert all(0 <= g["match"] <= 1 and g["seconds_mean"] > 0 for g in comp["by"].values())

    memory = doc["suites"]["memory"]
    assert (
        memory["size"] == [256, 256]
        and 0 < memory["peak_rss_gib"] < 64
        and "sample" in str(memory["timings"])
    )

    images = out / "images"
    assert len(list((images / "tiling").glob("*.png"))) == 4
    assert len(list((images / "composition").glob("*.png"))) == 3
    assert len(list((images / "control").glob("*.png"))) == 2 * 3  # masked, unmasked, fusion
    assert len(list((images / "hierarchy").glob("*.png"))) == 2 * len(bench.HIERARCHY_SCHEMES)
    assert len(list((images / "locality").glob("*.png"))) == 4
    assert len(list((images / "inversion").glob("*.png"))) == 3 * 3  # prompt, token, comparison

    # rerunning one suite keeps the others' figures
    assert run("bench", "locality", "--quick", "--model", model, "--out", out, "--no-images") == 0
    again = json.loads((out / "bench.json").read_text())
    assert set(again["suites"]) == set(doc["suites"])
    assert again["suites"]["control"] == doc["suites"]["control"]
    assert again["suites"]["locality"]["finished"] >= doc["suites"]["locality"]["finished"]


@pytest.mark.slow
def test_bench_scale_measures_both_tools(tmp_path, capsys):
    out = tmp_path / "bench"
    args = ("bench", "scale", "--quick", "--model", "random:tiny", "--out", out, "--device", "cpu")
    assert run(*args, "--size", "100") == 2  # a one-line error, nothing written
    assert "--size 100 is not a multiple of 64" in capsys.readouterr().err and not out.exists()
    assert run(*args) == 0
    printed = capsys.readouterr().out
    assert "scale:" in printed
    assert "bench scale 128 hmedit (1/2, " in printed  # not a terminal: one progress line per step
    doc = json.loads((out / "bench.json").read_text())
    assert doc["model"]["source"] == "random" and set(doc["suites"]) == {"scale"}
    scale = doc["suites"]["scale"]
    assert scale["steps"] == 1 and list(scale["sizes"]) == ["128"]
    hm, pano = scale["sizes"]["128"]["hmedit"], scale["sizes"]["128"]["panorama"]
    # tiled above the tiny model's native 64 px; Panorama's views of 64 latent px cover 128 px once
    assert hm["windows_per_step"] > 1 and pano["views_per_step"] == 1
    assert hm["s_per_step"] == pytest.approx(hm["timings"]["sample"], rel=0.01)
    assert 0 < hm["s_per_step"] < hm["seconds"] and pano["s_per_step"] > 0 and pano["decode_s"] > 0
    assert hm["peak_gib"] is None and pano["sample_peak_gib"] is None  # CPU: see the memory suite
    assert (out / "images" / "scale" / "scale-128-hmedit.png").exists()


@pytest.mark.slow
def test_bench_scale_runs_sdxl_alone(tmp_path, capsys):
    """SDXL has no Panorama pipeline in diffusers: hmedit is measured alone, the family recorded."""
    out = tmp_path / "bench"
    assert run("bench", "scale", "--quick", "--model", "random:tiny-sdxl", "-o", out, "--size", "192") == 0
    scale = json.loads((out / "bench.json").read_text())["suites"]["scale"]
    assert scale["family"] == "sdxl" and scale["scheduler"] == "euler"  # the SDXL preset's sampler
    assert list(scale["sizes"]) == ["192"]  # --size replaces the default sizes
    row = scale["sizes"]["192"]
    assert row["hmedit"]["windows_per_step"] > 1 and row["hmedit"]["s_per_step"] > 0
    assert "no Panorama pipeline for SDXL" in row["panorama"]["skipped"]


def test_bench_unknown_suite_is_a_user_error(tmp_path, capsys):
    assert run("bench", "speed", "--out", tmp_path) == 2
    assert "unknown suite 'speed'" in capsys.readouterr().err


def test_tile_borders_are_window_edges_inside_the_image():
    from hmedit.bench_tiled import borders
    from hmedit.sampling.tiling import windows

    wins = windows(32, 40, 16, 4)  # latent px; starts 0, 12, 16 (y) and 0, 12, 24 (x)
    bx, by = borders(wins, 8, 32 * 8, 40 * 8)
    assert by == [96, 128, 224] and bx == [96, 128, 192, 224]


def test_the_toy_world_scores_above_one_on_latent_grid_lines_without_any_tiling():
    """The reference beside the tiling suite's seam scores: the world's textures sit on an 8 px lattice."""
    from hmedit.bench_tiled import world_reference

    ref = world_reference(12)
    assert ref["grid_lines_px"] == [32, 64, 96] and ref["images"] == 12
    assert ref["seam_on_latent_grid"] > 1.2 and ref["seam_on_latent_grid"] > ref["seam_off_grid"] + 0.15


@pytest.mark.slow
def test_the_bundled_vae_draws_textures_best_in_step_with_its_latent_grid(toy_model):
    """Why the world's lattice shows in renders: its VAE reconstructs textured pictures markedly better when
    their textures sit on the latent grid than half a latent pixel off it."""
    from hmedit.bench_tiled import vae_lattice

    psnr = vae_lattice(toy_model.vae, 16)
    assert psnr["images"] >= 4
    assert psnr["0"] > psnr["4"] + 2 and psnr["0"] > 25
