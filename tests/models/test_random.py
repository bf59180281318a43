"""Random-weight models: the published SD architectures (for speed and memory benchmarks) and tiny ones."""

import pytest
import torch

from hmedit.errors import HmeditError
from hmedit.models import load as L
from hmedit.models.random import SD_ARCHITECTURES, sd_components

# Parameter counts of the published checkpoints (stable-diffusion-v1-5, stable-diffusion-2-1)
PUBLISHED = {
    "sd15": {"unet": 859_520_964, "vae": 83_653_863, "text_layers": 12, "text_width": 768},
    "sd2": {"unet": 865_910_724, "vae": 83_653_863, "text_layers": 23, "text_width": 1024},
}


@pytest.mark.parametrize("kind", sorted(SD_ARCHITECTURES))
def test_sd_architectures_are_the_published_ones(kind):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    arch, want = SD_ARCHITECTURES[kind], PUBLISHED[kind]
    with torch.device("meta"):  # shapes only: nothing is allocated
        unet = UNet2DConditionModel(**arch["unet"])
        vae = AutoencoderKL(**arch["vae"])
    assert sum(p.numel() for p in unet.parameters()) == want["unet"]
    assert sum(p.numel() for p in vae.parameters()) == want["vae"]
    assert arch["text"]["num_hidden_layers"] == want["text_layers"]
    assert arch["text"]["hidden_size"] == unet.config.cross_attention_dim == want["text_width"]
    assert 2 ** (len(vae.config.block_out_channels) - 1) == 8


def test_random_models_load_by_name():
    ref = L.resolve("random:tiny-sd2")
    assert ref.source == "random" and ref.weight_files() == [] and ref.size_bytes() == 0
    m = L.load(ref, device="cpu")
    assert m.family == "sd2" and m.prediction_type == "v_prediction" and m.hash == "random:tiny-sd2"
    again = sd_components("tiny-sd2")  # same name, same weights
    assert torch.equal(next(m.unet.parameters()), next(again["unet"].parameters()))


def test_unknown_random_architecture_is_a_user_error():
    with pytest.raises(HmeditError, match="unknown random architecture 'random:sd9'") as e:
        L.resolve("random:sd9")
    assert "random:sd15" in e.value.hint
