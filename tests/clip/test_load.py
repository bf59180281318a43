"""load_clip: the bundled CLIP, a folder, a hub id in the cache; cached, frozen; one-line errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from hmedit.clip import load as L
from hmedit.errors import HmeditError


def test_a_folder_loads_frozen_in_eval_mode_and_is_cached(tiny_clip):
    from transformers import CLIPModel, CLIPProcessor

    model, proc = L.load_clip(str(tiny_clip))
    assert isinstance(model, CLIPModel) and isinstance(proc, CLIPProcessor)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    again = L.load_clip(str(tiny_clip), device="cpu", dtype=torch.float32)
    assert again[0] is model and again[1] is proc
    half, _ = L.load_clip(str(tiny_clip), dtype=torch.bfloat16)
    assert half is not model and half.dtype == torch.bfloat16


def test_features_of_a_loaded_clip(tiny_clip):
    model, proc = L.load_clip(str(tiny_clip))
    import numpy as np

    inp = proc(
        text=["a red circle", "a blue star on a white background"],
        images=[np.zeros((128, 128, 3), np.uint8)],
        return_tensors="pt",
        padding=True,
    )
    assert inp["pixel_values"].shape == (1, 3, 64, 64)  # the tiny processor's size
    img = L.image_features(model, inp["pixel_values"])
    txt = L.text_features(model, inp["input_ids"], inp["attention_mask"])
    assert img.shape == (1, 16) and txt.shape == (2, 16)
    assert not torch.allclose(txt[0], txt[1])


def test_relative_folders_are_taken_from_base_dir(tiny_clip, tmp_path):
    shutil.copytree(tiny_clip, tmp_path / "mine")
    assert L.resolve_clip("mine", base_dir=tmp_path) == (tmp_path / "mine").resolve()


def test_the_bundled_clip_is_toy(monkeypatch, tiny_clip):
    monkeypatch.setattr(L, "bundled_folder", lambda: tiny_clip)
    assert L.resolve_clip("toy") == tiny_clip and L.resolve_clip("toy-clip") == tiny_clip


def _one_line(exc: HmeditError) -> str:
    text = str(exc)
    assert "\n" not in text and exc.hint
    return text


def test_a_missing_bundled_clip_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setattr(L, "bundled_folder", lambda: tmp_path / "absent")
    with pytest.raises(HmeditError) as e:
        L.load_clip("toy")
    assert "bundled CLIP is missing" in _one_line(e.value) and "make train-clip" in str(e.value)


def test_missing_and_wrong_folders_are_one_line_errors(tmp_path, tiny_clip):
    with pytest.raises(HmeditError) as e:
        L.load_clip(str(tmp_path / "nowhere"))
    assert "not found" in _one_line(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(HmeditError) as e:
        L.load_clip(str(tmp_path / "empty"))
    assert "no readable config.json" in _one_line(e.value)
    unet = tmp_path / "unet"
    unet.mkdir()
    (unet / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    with pytest.raises(HmeditError) as e:
        L.load_clip(str(unet))
    assert "not a CLIP model" in _one_line(e.value)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_clip, broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(HmeditError) as e:
        L.load_clip(str(broken))
    assert "cannot load the CLIP" in _one_line(e.value)


def test_a_hub_id_not_in_the_cache_is_not_downloaded(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(HmeditError) as e:
        L.load_clip("nobody/no-such-clip")
    assert "not in the local Hugging Face cache" in _one_line(e.value)


def test_a_hub_id_in_the_cache_loads(monkeypatch, tiny_clip, tmp_path):
    import huggingface_hub

    calls = []

    def fake_download(repo_id, local_files_only=False, **kw):
        calls.append((repo_id, local_files_only))
        return str(tiny_clip)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    model, _ = L.load_clip("org/some-clip")
    assert calls == [("org/some-clip", True)] and not model.training


def test_scenes_name_their_clip_and_the_schema_describes_it(write_scene):
    from hmedit.scene import load_scene
    from hmedit.scene.spec import json_schema

    scene = load_scene(write_scene("clip: openai/clip-vit-base-patch16\nroot:\n  prompt: a red circle\n"))
    assert scene.clip == "openai/clip-vit-base-patch16"
    assert load_scene(write_scene("root:\n  prompt: a red circle\n", "b.yaml")).clip is None  # toy
    prop = json_schema()["properties"]["clip"]
    assert "toy" in prop["description"] and "hub id" in prop["description"]
