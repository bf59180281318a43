"""The library API: load_scene / load_model / render -> Render, the same path as the CLI (same pixels), the
README's notebook example as written, presets."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import hmedit
from hmedit.cli.app import main
from hmedit.errors import HmeditError

ROOT = Path(__file__).resolve().parent.parent

SCENE = """
size: [64, 64]
steps: 3
seed: 5
root:
  prompt: a yellow background
  children:
    - id: disc
      prompt: a red circle
      mask: {ellipse: [0.2, 0.2, 0.5, 0.5]}
"""


def run(*args: str) -> int:
    try:
        main(list(args))
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


def test_load_scene_takes_a_path_text_or_dict_alike(write_scene):
    path = write_scene(SCENE, "disc.yaml")
    from_file = hmedit.load_scene(path)
    from_text = hmedit.load_scene(SCENE)
    import yaml

    from_dict = hmedit.load_scene(yaml.safe_load(SCENE))
    assert from_file.name == "disc" and from_text.name == from_dict.name == "scene"
    dump = {k: v for k, v in from_file.model_dump().items() if k != "name"}
    assert dump == {k: v for k, v in from_text.model_dump().items() if k != "name"}
    assert dump == {k: v for k, v in from_dict.model_dump().items() if k != "name"}
    with pytest.raises(HmeditError, match="steps"):
        hmedit.load_scene({"steps": 0, "root": {"prompt": "a"}})


@pytest.mark.slow
def test_the_api_and_the_cli_give_the_same_pixels_and_record(write_scene, tmp_path):
    path = write_scene(SCENE, "disc.yaml")
    out = hmedit.render(path, seed=2, steps=3)
    assert out.seeds == [2] and out.image.size == (64, 64)
    assert run("render", str(path), "--seed", "2", "--steps", "3", "-o", str(tmp_path / "cli")) == 0
    from PIL import Image

    cli = np.asarray(Image.open(tmp_path / "cli" / "disc" / "image.png").convert("RGB"))
    assert np.array_equal(np.asarray(out.image), cli)
    record = json.loads((tmp_path / "cli" / "disc" / "render.json").read_text())
    assert record["key"] == out.job.key == hmedit.plan(path, seed=2, steps=3).key
    assert record["settings"] == json.loads(json.dumps(out.provenance["settings"]))
    saved = out.save(tmp_path / "api")
    assert saved["key"] == record["key"] and sorted(saved["files"]) == sorted(record["files"])
    for name, meta in saved["files"].items():  # the same files, byte for byte (the PNG text included) ...
        if name != "influence.safetensors":
            assert meta["sha256"] == record["files"][name]["sha256"], name
    # ... but safetensors writes its metadata from a hash map, in no fixed order: same tensors and metadata
    from safetensors import safe_open

    api = safe_open(str(tmp_path / "api" / "influence.safetensors"), "pt")
    cli_maps = safe_open(str(tmp_path / "cli" / "disc" / "influence.safetensors"), "pt")
    assert api.metadata() == cli_maps.metadata() and sorted(api.keys()) == sorted(cli_maps.keys())
    assert all(np.array_equal(api.get_tensor(k), cli_maps.get_tensor(k)) for k in api.keys())  # noqa: SIM118


@pytest.mark.slow
def test_the_readme_notebook_example_runs_as_written(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## In a notebook") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    (tmp_path / "scenes").symlink_to(ROOT / "scenes")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own example
    out = namespace["out"]
    assert out.image.size == tuple(out.provenance["settings"][0][k] for k in ("width", "height"))
    assert namespace["ring"].shape == (out.image.size[1], out.image.size[0])
    assert (tmp_path / "out" / "notebook" / "render.json").is_file()
    assert (tmp_path / "out" / "notebook" / "image.png").is_file()


def test_presets_ship_with_the_package_and_fill_the_defaults(write_scene):
    from hmedit.scene.presets import load_preset, preset_names

    assert {"toy", "sd15", "sd21", "sdxl"} <= set(preset_names())
    assert (ROOT / "configs" / "sdxl.yaml").read_text() == (
        ROOT / "hmedit" / "configs" / "sdxl.yaml"
    ).read_text()
    path = write_scene(SCENE.replace("steps: 3\n", ""), "disc.yaml")
    job = hmedit.plan(path)
    assert job.preset.name == "toy" and job.requests[0].steps == load_preset("toy").steps
    xl = hmedit.plan(path, preset="sdxl")
    assert (xl.requests[0].scheduler, xl.requests[0].guidance) == ("euler", 5.0)
    assert xl.key != job.key
    assert hmedit.plan(path, steps=7).requests[0].steps == 7  # the caller wins over the preset


def test_an_unknown_preset_is_one_line_with_a_did_you_mean(write_scene, tmp_path, capsys):
    path = write_scene(SCENE.replace("seed: 5\n", "seed: 5\npreset: sdx1\n"), "disc.yaml")
    with pytest.raises(HmeditError, match="did you mean 'sdxl'") as info:
        hmedit.plan(path)
    assert info.value.location.field == "preset" and info.value.location.line == 4
    assert run("render", str(write_scene(SCENE, "ok.yaml")), "--preset", "sd1.5", "-o", str(tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "did you mean 'sd15'" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "kw", [{"seed": 2**64}, {"seed": -1}, {"steps": 0}, {"guidance": float("inf")}, {"scheduler": "heun"}]
)
def test_the_callers_values_obey_the_scenes_ranges(write_scene, kw):
    (name, value), path = next(iter(kw.items())), write_scene(SCENE, "disc.yaml")
    with pytest.raises(HmeditError) as info:
        hmedit.plan(path, **kw)
    assert info.value.location.field == f"--{name}" and repr(value) in str(info.value)
    assert "\n" not in str(info.value)
    assert hmedit.plan(path, seed=2**63 - 1, steps=1000, guidance=100).requests[0].steps == 1000


def test_a_preset_file_is_read_as_bounded_data(tmp_path):
    """A preset named by path is read with the scenes' bounded YAML reader and validated key by key."""
    from hmedit.scene.presets import load_preset

    toy = (ROOT / "configs" / "toy.yaml").read_text()
    (tmp_path / "mine.yaml").write_text(toy.replace("steps: 30", "steps: 12"))
    assert load_preset("mine.yaml", base_dir=tmp_path).steps == 12
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi")
    )
    (tmp_path / "bomb.yaml").write_text(bomb)
    with pytest.raises(HmeditError, match="expands to more than"):
        load_preset("bomb.yaml", base_dir=tmp_path)
    (tmp_path / "typo.yaml").write_text(toy.replace("guidance: 7.5", "guidance: 700"))
    with pytest.raises(HmeditError) as info:
        load_preset("typo.yaml", base_dir=tmp_path)
    assert info.value.location.field == "guidance"


def test_the_decode_tile_is_one_number_or_one_per_device(tmp_path):
    """Shipped presets give an accelerator few large tiles and a CPU small ones; a bad device or size is a
    one-line error naming the key."""
    from hmedit.scene.presets import load_preset

    sd15 = load_preset("sd15")
    assert (sd15.vae.decode_tile_on("cpu"), sd15.vae.decode_tile_on("cuda")) == (32, 128)
    assert sd15.vae.decode_tile_on("xpu") == 32  # a device the preset does not name: its CPU tile
    toy = (ROOT / "configs" / "toy.yaml").read_text()
    line = next(x for x in toy.splitlines() if "decode_tile:" in x)
    (tmp_path / "one.yaml").write_text(toy.replace(line, "  decode_tile: 48"))
    one = load_preset("one.yaml", base_dir=tmp_path).vae
    assert (one.decode_tile_on("cpu"), one.decode_tile_on("cuda")) == (48, 48)
    for bad in ("{gpu: 64}", "{cuda: 4}", "seven"):
        (tmp_path / "bad.yaml").write_text(toy.replace(line, f"  decode_tile: {bad}"))
        with pytest.raises(HmeditError) as info:
            load_preset("bad.yaml", base_dir=tmp_path)
        assert "decode_tile" in str(info.value.location.field) and "\n" not in str(info.value)
