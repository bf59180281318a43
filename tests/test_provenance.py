"""hmedit.provenance: the up-to-date key, the assets a scene names, the render.json record. No model."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pytest

from hmedit import provenance
from hmedit.scene import load_scene

BASE = dict(
    scene_bytes=b"root: {prompt: a red circle}\n",
    assets={"init_image": "a" * 64},
    model_hash="0123456789abcdef",
    settings=[{"seed": 1, "size": [64, 64], "steps": 2, "guidance": 7.5, "scheduler": "ddim"}],
    device="cpu",
    dtype="float32",
)


def test_key_is_stable_hex():
    key = provenance.render_key(**BASE)
    assert key == provenance.render_key(**BASE) and len(key) == 64
    int(key, 16)
    # order of mapping keys does not matter
    shuffled = {**BASE, "settings": [dict(reversed(list(BASE["settings"][0].items())))]}
    assert provenance.render_key(**shuffled) == key


@pytest.mark.parametrize(
    "change",
    [
        {"scene_bytes": b"root: {prompt: a red circle} \n"},
        {"assets": {"init_image": "b" * 64}},
        {"assets": {}},
        {"model_hash": "fedcba9876543210"},
        {"settings": [{**BASE["settings"][0], "steps": 3}]},
        {"settings": [{**BASE["settings"][0], "size": None}]},
        {"settings": BASE["settings"] * 2},
        {"device": "cuda"},
        {"dtype": "float16"},
        {"version": "9.9.9"},
    ],
)
def test_key_changes_with_every_ingredient(change):
    assert provenance.render_key(**{**BASE, **change}) != provenance.render_key(**BASE)


def test_asset_paths_lists_init_image_layers_and_mask_images(write_scene, write_png):
    write_png("init.png", mode="RGB", size=(64, 64))
    write_png("layers/hat.png", mode="RGBA", size=(16, 16))
    write_png("masks/m.png", size=(64, 64))
    path = write_scene(
        """
        size: [64, 64]
        init_image: init.png
        root:
          prompt: a yellow background
          children:
            - id: hat
              prompt: a red hat
              layer: layers/hat.png
              children:
                - id: band
                  prompt: a black band
                  mask: {image: masks/m.png}
            - id: box
              prompt: a box
              mask: {rect: [0, 0, 0.5, 0.5]}
        """
    )
    scene = load_scene(path)
    found = provenance.asset_paths(scene)
    base = path.parent.absolute()
    assert found == {
        "init_image": base / "init.png",
        "root.children[0].layer": base / "layers/hat.png",
        "root.children[0].children[0].mask.image": base / "masks/m.png",
    }
    assert (
        provenance.file_sha256(found["init_image"])
        == hashlib.sha256((base / "init.png").read_bytes()).hexdigest()
    )


@dataclass
class _Settings:
    seed: int
    width: int = 64
    height: int = 64


def test_record_fields(write_scene):
    path = write_scene("seeds: [4, 5]\nroot: {prompt: a red circle}\n", "s.yaml")
    scene = load_scene(path)
    when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    rec = provenance.record(
        key="k" * 64,
        scene=scene,
        scene_file=path,
        scene_bytes=path.read_bytes(),
        assets={},
        model={"name": "tiny", "hash": "0123456789abcdef"},
        device="cpu",
        dtype="float32",
        settings=[_Settings(4), {"seed": 5, "width": 64, "height": 64}],
        key_settings=[{"seed": 4}, {"seed": 5}],
        overrides={"steps": 3, "model": None},
        timings={"total": 1.5},
        outputs=["influence.png", "image-4.png", "image-5.png"],
        created=when,
    )
    assert rec["created"] == "2030-01-02T01:04:05Z"
    assert rec["seeds"] == [4, 5] and rec["settings"][0] == {"seed": 4, "width": 64, "height": 64}
    assert rec["overrides"] == {"steps": 3}
    assert rec["outputs"] == ["image-4.png", "image-5.png", "influence.png"]
    assert rec["scene"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert rec["scene"]["file"] == str(path.absolute()) and rec["scene"]["name"] == "s"
    assert rec["scene"]["spec"]["seeds"] == [4, 5]
    assert rec["model"]["hash"] == "0123456789abcdef" and rec["key"] == "k" * 64
    assert set(rec["versions"]) == {"hmedit", "python", "torch", "diffusers", "transformers"}
    json.dumps(rec)  # plain JSON all the way down


def test_record_carries_size_and_hash_of_each_output(write_scene, tmp_path):
    from hmedit.outputs.folder import describe_outputs, verify_outputs

    path = write_scene("root: {prompt: a red circle}\n", "s.yaml")
    out = tmp_path / "out"
    out.mkdir()
    (out / "image.png").write_bytes(b"pixels")
    common = dict(
        key="k" * 64,
        scene=load_scene(path),
        scene_file=path,
        scene_bytes=path.read_bytes(),
        assets={},
        model={"name": "tiny"},
        device="cpu",
        dtype="float32",
        settings=[{"seed": 0}],
        key_settings=[{"seed": 0}],
        overrides={},
        timings={},
        outputs=["image.png"],
    )
    rec = provenance.record(**common, files=describe_outputs(out, ["image.png"]))
    assert rec["files"] == {"image.png": {"size": 6, "sha256": hashlib.sha256(b"pixels").hexdigest()}}
    assert verify_outputs(out, rec)
    (out / "image.png").write_bytes(b"pixelz")  # same size, other content
    assert not verify_outputs(out, rec)
    assert "files" not in provenance.record(**common)
    assert not verify_outputs(out, provenance.record(**common))  # no sizes and hashes: never up to date
