"""hmedit score: regions cut out by the nodes' maps, scored against their prompts; clip_score.json."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest

from hmedit.clip import score as S


def test_square_box_is_centred_and_padded():
    support = np.zeros((100, 100), bool)
    support[10:30, 40:80] = True  # 40 wide, 20 high
    x0, y0, x1, y1 = S.square_box(support, margin=0.1)
    assert x1 - x0 == y1 - y0 == 48  # 40 + 2 * 4
    assert (x0 + x1) / 2 == 60 and (y0 + y1) / 2 == 20
    assert S.square_box(np.zeros((5, 5), bool)) is None


def test_region_masks_crops_and_pads_with_the_fill():
    image = np.zeros((64, 64, 3), np.uint8)
    image[:, :, 0] = 200
    mask = np.zeros((64, 64), np.float32)
    mask[0:16, 0:32] = 1.0  # top-left corner: the square leaves the image
    out = S.region(image, mask, fill=(10, 20, 30))
    assert out.shape[0] == out.shape[1] and out.shape[0] >= 32
    assert (out == [200, 0, 0]).all(-1).sum() == 16 * 32  # every masked pixel, nothing else
    assert (out == [10, 20, 30]).all(-1).sum() == out.shape[0] ** 2 - 16 * 32
    small = S.region(image, mask[::4, ::4], fill=(10, 20, 30))  # a 16x16 map is resized to the image
    assert (
        small.shape == out.shape and (small == out).all(-1).mean() > 0.8
    )  # the same but at the blurred edge
    assert S.region(image, np.zeros((64, 64)), fill=(0, 0, 0)) is None


def test_node_prompts_in_tree_order():
    spec = {"root": {"id": "root", "prompt": "a", "children": [{"id": "x", "prompt": "b", "children": []}]}}
    assert S.node_prompts(spec) == {"root": "a", "x": "b"}


SCENE = """
size: [64, 64]
steps: 2
root:
  prompt: a red circle on a yellow background
  children:
    - id: left
      prompt: a red circle
      mask: {rect: [0, 0, 0.5, 1]}
    - id: right
      prompt: a blue square
      mask: {rect: [0.5, 0, 0.5, 1]}
"""


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """A tiny random model's render of SCENE: (its output folder, the model folder)."""
    from hmedit.cli.app import main
    from hmedit.models.random import save_tiny

    root = tmp_path_factory.mktemp("score")
    model = save_tiny(root / "model")
    (root / "scene.yaml").write_text(textwrap.dedent(SCENE).lstrip())
    with pytest.raises(SystemExit) as info:
        main(["render", str(root / "scene.yaml"), "--model", str(model), "-o", str(root / "out")])
    assert info.value.code == 0
    return root / "out" / "scene"


def run(*args) -> int:
    from hmedit.cli.app import main

    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    return info.value.code


def test_score_writes_every_nodes_score_of_its_region(rendered, tiny_clip, capsys):
    from PIL import Image

    from hmedit.clip.load import load_clip

    assert run("score", rendered.parent, "--clip", tiny_clip) == 0
    out = capsys.readouterr().out
    assert "left" in out and "a blue square" in out and "clip_score.json" in out
    res = json.loads((rendered / "clip_score.json").read_text())
    nodes = res["images"]["image.png"]["nodes"]
    assert sorted(nodes) == ["left", "right", "root"] and res["map"] == "effective"
    assert nodes["left"]["area"] == pytest.approx(0.5, abs=0.02)
    # the scores are those of the regions the effective maps cut out
    model, proc = load_clip(str(tiny_clip))
    image = np.asarray(Image.open(rendered / "image.png").convert("RGB"))
    maps = S.read_maps(rendered, "effective")
    crops = [S.region(image, maps[k], S.processor_fill(proc)) for k in ("left", "right")]
    want = S.clip_scores(model, proc, crops, ["a red circle", "a blue square"])
    assert [nodes["left"]["score"], nodes["right"]["score"]] == pytest.approx(want, abs=1e-4)
    assert res["images"]["image.png"]["mean"] == pytest.approx(
        np.mean([n["score"] for n in nodes.values() if n["score"] is not None]), abs=1e-4
    )


def test_score_json_and_map_choice(rendered, tiny_clip, capsys):
    assert run("score", rendered, "--clip", tiny_clip, "--map", "intrinsic", "--json") == 0
    printed = json.loads(capsys.readouterr().out)
    (res,) = printed.values()
    assert res["map"] == "intrinsic" and res["images"]["image.png"]["nodes"]["root"]["area"] == 1.0


def test_score_of_a_folder_without_a_render_is_one_line_exit_2(tmp_path, tiny_clip, capsys):
    (tmp_path / "empty").mkdir()
    assert run("score", tmp_path / "empty", "--clip", tiny_clip) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "no render.json" in err


def test_score_with_a_missing_clip_is_one_line_exit_2(rendered, tmp_path, capsys):
    before = (rendered / "clip_score.json").read_bytes() if (rendered / "clip_score.json").exists() else None
    assert run("score", rendered, "--clip", tmp_path / "no-clip") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "CLIP" in err and "not found" in err
    after = (rendered / "clip_score.json").read_bytes() if (rendered / "clip_score.json").exists() else None
    assert before == after  # nothing written over
