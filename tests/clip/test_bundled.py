"""The bundled toy-clip: listed by hmedit models, loads as fp32, and sees the world (real behaviour)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hmedit.clip import load as L
from hmedit.toy import world

BUNDLED = L.bundled_folder()
needs_bundled = pytest.mark.skipif(not (BUNDLED / "config.json").is_file(), reason="toy-clip is not trained")


def run(*args) -> int:
    from hmedit.cli.app import main

    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    return info.value.code


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HMEDIT_CACHE", str(tmp_path / "cache"))


def test_models_lists_toy_clip_and_prints_its_folder(monkeypatch, tiny_clip, capsys):
    monkeypatch.setattr(L, "bundled_folder", lambda: tiny_clip)
    assert run("models", "--path", "toy-clip") == 0
    assert capsys.readouterr().out.strip() == str(tiny_clip)
    assert run("models", "--json") == 0
    (row,) = [r for r in json.loads(capsys.readouterr().out) if r["name"] == "toy-clip"]
    assert row["present"] and row["path"] == str(tiny_clip) and row["size_mb"] > 0 and len(row["hash"]) == 16


def test_a_missing_toy_clip_is_listed_missing_and_path_is_exit_2(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(L, "bundled_folder", lambda: tmp_path / "absent")
    assert run("models", "--path", "toy-clip") == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "bundled CLIP is missing" in err
    assert run("models") == 0
    assert "toy-clip is missing: train it with `make train-clip`" in capsys.readouterr().out


@needs_bundled
def test_the_bundled_folder_loads_in_plain_transformers_as_fp32_under_15_mb():
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(BUNDLED)
    CLIPProcessor.from_pretrained(BUNDLED)
    assert model.dtype == torch.float32
    assert sum(f.stat().st_size for f in BUNDLED.iterdir()) <= 15e6


def _best(model, proc, image, texts: list[str]) -> int:
    inp = proc(text=texts, images=[image], return_tensors="pt", padding=True)
    with torch.no_grad():
        img = torch.nn.functional.normalize(L.image_features(model, inp["pixel_values"]), dim=-1)
        txt = L.text_features(model, inp["input_ids"], inp["attention_mask"])
        txt = torch.nn.functional.normalize(txt, dim=-1)
    return int((img @ txt.T).argmax())


@needs_bundled
def test_the_bundled_clip_names_the_colour_of_held_out_objects():
    """Among "a {colour} {its shape}" for every palette colour, the best caption of a held-out single-object
    image names the object's colour (not the background's)."""
    from hmedit.toy.evaluate_clip import held_out

    model, proc = L.load_clip("toy")
    items = held_out(12)
    right = 0
    for _, s in items:
        o = s.objects[0]
        texts = [world.object_phrase(c, o.shape) for c in world.COLOURS]
        right += world.COLOURS[_best(model, proc, s.image, texts)] == o.colour
    assert right >= 11


@needs_bundled
def test_the_bundled_clip_names_the_shape_of_held_out_objects():
    """Among "a {its colour} {shape}" for every shape, the best caption of a held-out single-object image
    names the object's shape (the model card measures 95.8% on 500 such images; chance is 20%)."""
    from hmedit.toy.evaluate_clip import held_out

    model, proc = L.load_clip("toy")
    items = held_out(20)
    right = 0
    for _, s in items:
        o = s.objects[0]
        texts = [world.object_phrase(o.colour, sh) for sh in world.SHAPES]
        right += world.SHAPES[_best(model, proc, s.image, texts)] == o.shape
    assert right >= 17


@needs_bundled
def test_a_region_scores_higher_against_its_own_colour(tmp_path):
    """hmedit.clip.score on a two-object world image: each object's region matches its own colour's phrase
    better than the other object's colour."""
    from hmedit.clip.score import clip_scores, processor_fill, region

    model, proc = L.load_clip("toy")
    image, masks = world.render(
        "white", "solid", [("circle", "red", "solid", 35, 40, 26), ("square", "blue", "solid", 90, 88, 26)]
    )
    fill = processor_fill(proc)
    crops = [region(image, m, fill) for m in masks]
    own = clip_scores(model, proc, crops, ["a red circle", "a blue square"])
    swapped = clip_scores(model, proc, crops, ["a blue circle", "a red square"])
    assert own[0] > swapped[0] and own[1] > swapped[1]
    assert np.all(np.abs(own) <= 1)
