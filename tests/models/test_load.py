"""Loading any SD-family checkpoint, exercised with tiny random SD1-like and SD2-like components."""

import json

import pytest
import torch

from hmedit.errors import HmeditError
from hmedit.models import load as L
from hmedit.models.random import save_tiny


@pytest.fixture(scope="module", params=["sd1", "sd2"])
def tiny(request, tmp_path_factory):
    return request.param, save_tiny(tmp_path_factory.mktemp(request.param) / "model", request.param)


def test_loads_and_runs_forward(tiny, monkeypatch, tmp_path):
    family, path = tiny
    monkeypatch.setenv("HMEDIT_CACHE", str(tmp_path))
    m = L.load(str(path))
    assert m.family.name == family and m.ref.source == "folder"
    assert m.prediction_type == ("v_prediction" if family == "sd2" else "epsilon")
    assert m.device.type == "cpu" and m.dtype == torch.float32
    ids = m.tokenizer(["a red circle"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    emb = m.text_encoder(ids).last_hidden_state
    out = m.unet(torch.randn(1, 4, 8, 8), 10, emb).sample
    assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()
    img = m.vae.decode(torch.randn(1, 4, 8, 8)).sample
    assert img.shape == (1, 3, 16, 16)
    assert m.native_size == 64 and m.vae_scale_factor == 2  # sample_size 32 latent px
    assert len(m.hash) == 16 and m.hash == L.model_hash(m.ref)


def test_hash_changes_with_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("HMEDIT_CACHE", str(tmp_path / "cache"))
    a = L.resolve(str(save_tiny(tmp_path / "a", seed=0)))
    b = L.resolve(str(save_tiny(tmp_path / "b", seed=1)))
    assert L.model_hash(a) != L.model_hash(b)


def test_an_incomplete_sdxl_folder_is_explained(tmp_path):
    d = tmp_path / "xl"
    (d / "unet").mkdir(parents=True)
    (d / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    (d / "unet" / "config.json").write_text(json.dumps({"addition_embed_type": "text_time"}))
    with pytest.raises(
        HmeditError, match="lacks vae, scheduler, tokenizer, text_encoder, tokenizer_2, text_encoder_2"
    ) as e:
        L.load(str(d))
    assert "SDXL folder needs" in e.value.hint


def test_sdxl_loads_from_a_folder_and_from_a_single_file_with_a_local_config(tiny_model_dir, tmp_path):
    """A single .safetensors SDXL checkpoint (original SGM key names) loads offline with the architecture
    of a local diffusers folder, and gives the same model as the folder; its preset is found from the file's
    tensor names alone."""
    from hmedit.models.random import save_tiny_single_file

    folder = tiny_model_dir("sdxl")
    xl = L.load(str(folder), device="cpu")
    assert xl.family.name == "sdxl" and len(xl.text_encoders) == 2 and L.default_preset(xl.ref) == "sdxl"
    file = save_tiny_single_file(tmp_path / "tiny-xl.safetensors")
    ref = L.resolve(str(file))
    assert ref.source == "file" and L.default_preset(ref) == "sdxl"
    one = L.load(ref, device="cpu", config=str(folder))
    assert one.family.name == "sdxl"
    for a, b in [(one.unet, xl.unet), (one.vae, xl.vae), *zip(one.text_encoders, xl.text_encoders)]:
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize(
    "name,match",
    [
        ("no/such-model", "not in the local Hugging Face cache"),
        ("./missing.safetensors", "not found"),
        ("justaword", "unknown model"),
    ],
)
def test_missing_models_are_one_line_errors(name, match, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(HmeditError, match=match) as e:
        L.resolve(name)
    assert "\n" not in str(e.value) and e.value.hint


def test_folder_without_index_is_explained(tmp_path):
    with pytest.raises(HmeditError, match="model_index.json"):
        L.resolve(str(tmp_path))


def test_device_and_dtype_flags():
    dev, dt = L.pick_device("cpu", "bf16")
    assert dev.type == "cpu" and dt == torch.bfloat16
    with pytest.raises(HmeditError):
        L.pick_device("cpu", "fp8")
    if not torch.cuda.is_available():
        with pytest.raises(HmeditError, match="no CUDA"):
            L.pick_device("cuda")


@pytest.mark.parametrize("name", L.SCHEDULERS)
def test_schedulers_by_name_keep_the_model_config(name):
    cfg = {
        "prediction_type": "v_prediction",
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "num_train_timesteps": 1000,
    }
    s = L.make_scheduler(name, cfg)
    assert s.config.prediction_type == "v_prediction"
    s.set_timesteps(10)
    assert len(s.timesteps) >= 10


def test_unknown_scheduler():
    with pytest.raises(HmeditError, match="unknown scheduler"):
        L.make_scheduler("heunx", {})
