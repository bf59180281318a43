"""The scene keys of per-node tokens: ``learn`` (true or {steps, lr, init, batch, guidance}) and
``embedding: path``, their checks (one line each, at the field) and their place in the schema and the asset
list."""

from __future__ import annotations

import json

import pytest

from hmedit import provenance
from hmedit.scene import LearnSpec, Scene, load_scene, validate
from hmedit.scene.spec import json_schema

LAYERED = """
init_image: init.png
root:
  prompt: a white background
  children:
    - id: sq
      prompt: a square
      layer: sq.png
      learn: {learn}
    - id: box
      prompt: a box
      mask: {{rect: [0.5, 0.5, 0.4, 0.4]}}
      learn: {{steps: 200, lr: 0.005, init: square, batch: 4}}
    - id: plain
      prompt: a circle
      mask: {{ellipse: [0, 0, 0.3, 0.3]}}
      learn: false
    - id: loaded
      prompt: a style
      mask: {{rect: [0, 0.5, 0.3, 0.3]}}
      embedding: tokens/style.pt
"""


@pytest.fixture
def assets(write_png, tmp_path):
    write_png("init.png", mode="RGB", size=(64, 64))
    write_png("sq.png", mode="RGBA", size=(16, 16))
    (tmp_path / "tokens").mkdir()
    (tmp_path / "tokens" / "style.pt").write_bytes(b"x")
    return tmp_path


def errors(path) -> dict[str, str]:
    scene, diags = validate(path)
    assert scene is None and diags.errors
    for e in diags.errors:
        assert "\n" not in e.format()
    return {e.location.field: e.format() for e in diags.errors}


def test_learn_and_embedding_load_typed(write_scene, assets):
    scene = load_scene(write_scene(LAYERED.format(learn="true")))
    sq, box, plain, loaded = scene.root.children
    assert sq.learn == LearnSpec() and (sq.learn.steps, sq.learn.lr, sq.learn.batch) == (None, None, None)
    assert sq.learn.init is None
    assert box.learn == LearnSpec(steps=200, lr=0.005, init="square", batch=4)
    assert plain.learn is None and scene.root.learn is None and sq.embedding is None
    assert (
        loaded.embedding.path == assets / "tokens" / "style.pt" and loaded.embedding.raw == "tokens/style.pt"
    )
    spec = scene.model_dump(mode="json")["root"]["children"]
    assert spec[0]["learn"]["steps"] is None and spec[3]["embedding"] == "tokens/style.pt"


def test_embedding_files_are_assets(write_scene, assets):
    scene = load_scene(write_scene(LAYERED.format(learn="true")))
    found = provenance.asset_paths(scene)
    assert found["root.children[3].embedding"] == assets / "tokens" / "style.pt"
    assert list(found) == ["init_image", "root.children[0].layer", "root.children[3].embedding"]


def test_learn_values_are_checked_with_hints(write_scene, assets):
    path = write_scene(LAYERED.format(learn="{steps: 0, lr: -1, init: '', batchh: 3}"))
    found = errors(path)
    assert found["root.children[0].learn.steps"].endswith(
        "root.children[0].learn.steps: steps must be >= 1 (got 0) (the default is 120)"
    )
    assert "lr must be > 0 (got -1) (the default is 0.01)" in found["root.children[0].learn.lr"]
    assert "must not be empty" in found["root.children[0].learn.init"]
    assert "unknown key 'batchh' (did you mean 'batch'?)" in found["root.children[0].learn.batchh"]
    assert found["root.children[0].learn.steps"].startswith(f"{path}:8:15: ")

    found = errors(write_scene(LAYERED.format(learn="5")))
    assert (
        "learn is true, false or a mapping of steps, lr, init, batch, guidance (got 5)"
        in found["root.children[0].learn"]
    )
    found = errors(write_scene(LAYERED.format(learn="{step: 3}")))
    assert "did you mean 'steps'?" in found["root.children[0].learn.step"]
    found = errors(write_scene(LAYERED.format(learn='{steps: "3"}')))
    assert "expected a whole number" in found["root.children[0].learn.steps"]


def test_learn_needs_pixels_to_learn_from(write_scene, assets):
    no_init = LAYERED.format(learn="true").replace("init_image: init.png\n", "")
    found = errors(write_scene(no_init))
    # the layer node can learn without init_image; the mask node cannot
    assert set(found) == {"root.children[1].learn"}
    assert "learn needs a layer, or a mask and the scene's init_image" in found["root.children[1].learn"]
    found = errors(write_scene("root:\n  prompt: x\n  learn: true\n"))
    assert "the root cannot learn a token" in found["root.learn"]
    assert found["root.learn"].split(": ")[0].endswith(":3:3")


def test_learn_and_embedding_together_and_missing_embedding(write_scene, assets):
    text = LAYERED.format(learn="true").replace(
        "      embedding: tokens/style.pt", "      embedding: nope.pt"
    )
    found = errors(write_scene(text))
    assert "file not found: nope.pt" in found["root.children[3].embedding"]
    text = LAYERED.format(learn="true") + "      learn: true\n"
    found = errors(write_scene(text))
    assert "a node has either learn or embedding, not both" in found["root.children[3].embedding"]


def test_built_in_code_and_schema():
    scene = Scene.model_validate(
        {
            "init_image": "x.png",
            "root": {"children": [{"id": "a", "mask": {"rect": [0, 0, 1, 1]}, "learn": True}]},
        }
    )
    assert scene.node("a").learn == LearnSpec()
    with pytest.raises(ValueError, match="learn needs a layer"):
        Scene.model_validate(
            {"root": {"children": [{"id": "a", "mask": {"rect": [0, 0, 1, 1]}, "learn": True}]}}
        )
    schema = json_schema()
    node = schema["$defs"]["Node"]["properties"]
    assert {"type": "boolean"} in node["learn"]["anyOf"] and node["learn"]["description"]
    assert node["embedding"]["description"]
    learn = schema["$defs"]["LearnSpec"]
    assert set(learn["properties"]) == {"steps", "lr", "init", "batch", "guidance"}
    assert learn["additionalProperties"] is False
    assert json.dumps(schema)  # serialisable
