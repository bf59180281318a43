"""COCO annotations: hmedit's RLE is byte for byte pycocotools' (maskApi.c), and the file loads there."""

import json

import numpy as np
import pytest

from hmedit.outputs.coco import Coco, bbox, rle_counts, rle_decode, rle_encode, rle_string


def test_runs_are_column_major_and_start_with_zeros():
    m = np.array([[1, 0], [1, 1]], bool)  # column-major: 1 1 0 1
    assert rle_counts(m) == [0, 2, 1, 1]
    assert rle_counts(np.zeros((2, 3), bool)) == [6]
    assert rle_decode(rle_encode(m)).tolist() == m.tolist()


def test_bbox():
    m = np.zeros((10, 20), bool)
    m[2:5, 7:9] = True
    assert bbox(m) == [7.0, 2.0, 2.0, 3.0]
    assert bbox(np.zeros((3, 3), bool)) == [0.0, 0.0, 0.0, 0.0]


def test_rle_matches_pycocotools():
    mask_api = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(0)
    cases = [rng.random((int(h), int(w))) < rng.random() for h, w in rng.integers(1, 50, (100, 2))]
    big = np.zeros((300, 301), bool)
    big[10:250, 5:290] = True  # runs of 1000s: several characters each, negative differences
    for m in [*cases, big, np.ones((7, 5), bool)]:
        ours = rle_encode(m)
        theirs = mask_api.encode(np.asfortranarray(m.astype(np.uint8)))
        assert ours["counts"] == theirs["counts"].decode() and ours["size"] == list(theirs["size"])
        assert (rle_decode(ours) == m).all()
    assert rle_string([]) == ""


def test_dataset_file_loads_in_pycocotools(tmp_path):
    coco_api = pytest.importorskip("pycocotools.coco")
    data = Coco()
    a = data.add_image("images/a-0.png", 20, 10, scene="a", seed=0)
    m1 = np.zeros((10, 20), bool)
    m1[1:4, 2:9] = True
    m2 = np.zeros((10, 20), bool)
    m2[5:, 10:] = True
    assert data.add_mask(a, "circle", m1) == 1
    assert data.add_mask(a, "square", m2) == 2
    assert data.add_mask(a, "circle", np.zeros((10, 20), bool)) is None  # empty: left out
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(data.data()))
    coco = coco_api.COCO(str(path))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["circle", "square"]
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[a]))
    for ann, m in zip(anns, (m1, m2)):
        assert (coco.annToMask(ann) == m).all()
        assert ann["area"] == int(m.sum()) and ann["bbox"] == bbox(m)
