"""Heatmaps, the contact sheet and the influence files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from hmedit.outputs.influence import (
    LUT,
    SheetNode,
    colormap,
    contact_sheet,
    heatmap,
    influence_tensors,
    sheet_nodes,
    split_name,
    write_influence,
)


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Relative luminance (ITU-R BT.709 on linearised sRGB)."""
    c = rgb.astype(np.float64) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return lin @ np.array([0.2126, 0.7152, 0.0722])


def test_colormap_luminance_is_strictly_increasing():
    assert LUT.shape == (256, 3) and LUT.dtype == np.uint8
    assert np.all(np.diff(luminance(LUT)) > 0)


def test_colormap_clips_and_handles_nan():
    out = colormap(np.array([-1.0, 0.0, np.nan, 1.0, 5.0]))
    assert np.array_equal(out[0], LUT[0]) and np.array_equal(out[2], LUT[0])
    assert np.array_equal(out[3], LUT[-1]) and np.array_equal(out[4], LUT[-1])


def test_heatmap_shape_dtype_from_tensor():
    img = heatmap(torch.linspace(0, 1, 6 * 9).reshape(6, 9))
    assert img.shape == (6, 9, 3) and img.dtype == np.uint8
    with pytest.raises(ValueError):
        heatmap(torch.zeros(2, 3, 4))


def test_heatmap_overlay_blends_with_resized_base():
    base = Image.new("RGB", (20, 10), (255, 0, 0))
    plain = heatmap(np.zeros((5, 10)))
    over = heatmap(np.zeros((5, 10)), base, alpha=0.5)
    assert over.shape == (5, 10, 3)
    expected = np.rint(np.array([255, 0, 0]) * 0.5 + plain[0, 0] * 0.5)
    assert np.abs(over[2, 3].astype(int) - expected).max() <= 1
    assert np.array_equal(heatmap(np.zeros((5, 10)), base, alpha=0.0)[0, 0], [255, 0, 0])


def tree(k: int) -> list[SheetNode]:
    nodes = [SheetNode("root", 0, -1, "a yellow background")]
    for i in range(1, k):
        parent = (i - 1) // 2
        nodes.append(SheetNode(f"n{i}", nodes[parent].depth + 1, parent, "a striped red circle " * 3))
    return nodes


def test_contact_sheet_grows_with_node_count_and_stays_narrow():
    small = contact_sheet(tree(2), torch.rand(2, 64, 64), torch.rand(2, 64, 64))
    big = contact_sheet(tree(7), torch.rand(7, 64, 64), torch.rand(7, 64, 64))
    assert big.height > small.height
    wide = contact_sheet(tree(3), torch.rand(3, 512, 2048), torch.rand(3, 512, 2048), extra={"a": [None] * 3})
    assert wide.width <= 2000
    assert isinstance(wide, Image.Image) and wide.mode == "RGB"


def test_contact_sheet_checks_counts():
    with pytest.raises(ValueError, match="3 effective maps for 2 nodes"):
        contact_sheet(tree(2), None, torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="at least one column"):
        contact_sheet(tree(2))


def test_sheet_nodes_from_flat_scene(write_scene):
    from hmedit.scene import load_scene

    scene = load_scene(
        write_scene(
            """
            composition: hybrid
            root:
              prompt: a yellow background
              children:
                - id: a
                  mask: {rect: [0, 0, 0.5, 0.5]}
                  strength: 0.5
                  composition: top_down
            """
        )
    )
    rows = sheet_nodes(scene.flat())
    assert rows[0] == SheetNode("root", 0, -1, "a yellow background", "")
    assert rows[1] == SheetNode("a", 1, 0, "", "strength 0.5, top_down")


def test_influence_tensors_and_names():
    ids = ["root", "a"]
    named = influence_tensors(
        ids, intrinsic=torch.zeros(2, 4, 4), effective=torch.ones(2, 4, 4), attention=None
    )
    assert list(named) == ["intrinsic/root", "intrinsic/a", "effective/root", "effective/a"]
    assert split_name("attention/a") == ("attention", "a")
    with pytest.raises(ValueError):
        split_name("noslash")


def test_write_influence_files(tmp_path):
    ids = ["root", "sky", "sun"]
    nodes = [SheetNode("root", 0, -1), SheetNode("sky", 1, 0), SheetNode("sun", 2, 1)]
    intrinsic, effective = torch.rand(3, 24, 32), torch.rand(3, 24, 32)
    tensors = influence_tensors(ids, intrinsic=intrinsic, effective=effective)
    tensors["attention/sun"] = torch.rand(3, 4)  # a later render adds maps at its own resolution
    # an earlier write had a node "gone": its heatmap goes; a PNG hmedit did not write stays
    write_influence(
        tmp_path, ["root", "gone"], {"effective/root": torch.rand(4, 4), "effective/gone": torch.rand(4, 4)}
    )
    assert (tmp_path / "influence" / "gone.png").is_file()
    (tmp_path / "influence" / "notes.png").write_bytes(b"the user's")

    files = write_influence(tmp_path, ids, tensors, nodes=nodes, metadata={"scene": "s.yaml"})

    assert files.tensors == tmp_path / "influence.safetensors"
    with safe_open(files.tensors, framework="pt") as f:
        assert set(f.keys()) == set(tensors)
        meta = f.metadata()
        assert json.loads(meta["ids"]) == ids and json.loads(meta["parents"]) == [-1, 0, 1]
        assert meta["scene"] == "s.yaml"
        assert torch.equal(f.get_tensor("effective/sky"), effective[1])
        assert f.get_tensor("attention/sun").shape == (3, 4)
    names = sorted(p.name for p in (tmp_path / "influence").iterdir())
    assert names == ["notes.png", "root.png", "sky.png", "sun.png"]
    with Image.open(files.heatmaps["sun"]) as img:
        assert img.size == (32, 24)
        assert img.text["node"] == "sun" and img.text["kind"] == "effective"
        assert np.array_equal(np.asarray(img), heatmap(effective[2]))
    with Image.open(files.sheet) as sheet:
        assert sheet.width <= 2000
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_write_influence_rejects_unknown_ids(tmp_path):
    with pytest.raises(ValueError, match="not among the ids"):
        write_influence(tmp_path, ["root"], {"effective/other": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        write_influence(tmp_path, ["root"], {"effective/root": torch.zeros(1, 2, 2)})
