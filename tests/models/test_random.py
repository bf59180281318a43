"""Random-weight models: the published SD architectures (for speed and memory benchmarks) and tiny ones."""

import pytest
import torch

from hmedit.errors import HmeditError
from hmedit.models import load as L
from hmedit.models.random import SD_ARCHITECTURES, sd_components

# Parameter counts of the published checkpoints (stable-diffusion-v1-5, stable-diffusion-2-1,
# stable-diffusion-xl-base-1.0); the text encoders with CLIP's 49408-token vocabulary
PUBLISHED = {
    "sd15": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
    "sd2": {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840},
    "sdxl": {
        "unet": 2_567_463_684,
        "vae": 83_653_863,
        "text_encoder": 123_060_480,
        "text_encoder_2": 694_659_840,
    },
}
CLIP_VOCAB = 49408


@pytest.mark.parametrize("kind", sorted(SD_ARCHITECTURES))
def test_sd_architectures_are_the_published_ones(kind):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    arch, want = SD_ARCHITECTURES[kind], PUBLISHED[kind]
    assert sorted(want) == sorted(["unet", "vae", "text_encoder"] + ["text_encoder_2"] * ("text_2" in arch))
    with torch.device("meta"):  # shapes only: nothing is allocated
        got = {
            "unet": UNet2DConditionModel(**arch["unet"]),
            "vae": AutoencoderKL(**arch["vae"]),
            "text_encoder": CLIPTextModel(
                CLIPTextConfig(vocab_size=CLIP_VOCAB, max_position_embeddings=77, **arch["text"])
            ),
        }
        if "text_2" in arch:
            got["text_encoder_2"] = CLIPTextModelWithProjection(
                CLIPTextConfig(vocab_size=CLIP_VOCAB, max_position_embeddings=77, **arch["text_2"])
            )
    assert {k: sum(p.numel() for p in m.parameters()) for k, m in got.items()} == want
    widths = [got[k].config.hidden_size for k in ("text_encoder", "text_encoder_2") if k in got]
    assert sum(widths) == got["unet"].config.cross_attention_dim
    assert 2 ** (len(got["vae"].config.block_out_channels) - 1) == 8
    if "text_2" in arch:  # SDXL's added conditioning: 6 time ids and the pooled, projected text embedding
        unet = got["unet"].config
        assert unet.projection_class_embeddings_input_dim == (
            6 * unet.addition_time_embed_dim + got["text_encoder_2"].config.projection_dim
        )


def test_random_models_load_by_name():
    ref = L.resolve("random:tiny-sd2")
    assert ref.source == "random" and ref.weight_files() == [] and ref.size_bytes() == 0
    m = L.load(ref, device="cpu")
    assert (
        getattr(m.family, "name", m.family) == "sd2"
        and m.prediction_type == "v_prediction"
        and m.hash == "random:tiny-sd2"
    )
    again = sd_components("tiny-sd2")  # same name, same weights
    assert torch.equal(next(m.unet.parameters()), next(again["unet"].parameters()))


def test_unknown_random_architecture_is_a_user_error():
    with pytest.raises(HmeditError, match="unknown random architecture 'random:sd9'") as e:
        L.resolve("random:sd9")
    assert "random:sd15" in e.value.hint
