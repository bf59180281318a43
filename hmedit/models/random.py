"""Randomly initialised SD-family models of any size, for tests and speed benchmarks (speed does not depend on
the weights). The tokenizer is the bundled world's, so nothing is downloaded."""

from __future__ import annotations

from pathlib import Path


def tiny_components(family: str = "sd1", seed: int = 0, sample_size: int = 32) -> dict:
    """Tiny SD1-like (epsilon, conv projection, 32-dim text) or SD2-like (v-prediction, linear projection,
    larger text width) components."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from hmedit.toy.train import build_tokenizer

    if family not in ("sd1", "sd2"):
        raise ValueError(family)
    sd2 = family == "sd2"
    torch.manual_seed(seed)
    tok = build_tokenizer()
    xdim = 48 if sd2 else 32
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tok),
            hidden_size=xdim,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            hidden_act="gelu" if sd2 else "quick_gelu",
        )
    )
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=xdim,
        attention_head_dim=(2, 4) if sd2 else 2,
        use_linear_projection=sd2,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(32, 32),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=sample_size * 2,
    )
    return dict(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=sd_scheduler(sd2))


def sd_scheduler(v_prediction: bool):
    """SD's DDIM scheduler (the published scheduler_config.json), epsilon or v-prediction."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="v_prediction" if v_prediction else "epsilon",
    )


def save_tiny(path: Path, family: str = "sd1", seed: int = 0, sample_size: int = 32) -> Path:
    """Write a tiny random SD1/SD2 diffusers folder at ``path``."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        **tiny_components(family, seed, sample_size),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path)
    return Path(path)


# The published architectures (runwayml/stable-diffusion-v1-5 and stabilityai/stable-diffusion-2-1 config.json
# files), for speed and memory benchmarks with random weights: speed does not depend on the weights.
_SD_UNET = dict(
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    norm_num_groups=32,
    act_fn="silu",
    flip_sin_to_cos=True,
    freq_shift=0,
    downsample_padding=1,
)
_SD_VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    norm_num_groups=32,
    act_fn="silu",
    scaling_factor=0.18215,
)
SD_ARCHITECTURES: dict[str, dict] = {
    "sd15": dict(
        unet=dict(_SD_UNET, sample_size=64, cross_attention_dim=768, attention_head_dim=8),
        vae=dict(_SD_VAE, sample_size=512),
        # CLIP ViT-L/14's text tower
        text=dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            projection_dim=768,
            hidden_act="quick_gelu",
        ),
        prediction_type="epsilon",
    ),
    "sd2": dict(
        unet=dict(
            _SD_UNET,
            sample_size=96,
            cross_attention_dim=1024,
            attention_head_dim=(5, 10, 20, 20),
            use_linear_projection=True,
        ),
        vae=dict(_SD_VAE, sample_size=768),
        # OpenCLIP ViT-H/14's text tower, as SD 2 uses it (23 of its 24 layers)
        text=dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=23,
            num_attention_heads=16,
            projection_dim=512,
            hidden_act="gelu",
        ),
        prediction_type="v_prediction",
    ),
}
RANDOM_KINDS = ("tiny", "tiny-sd2", *SD_ARCHITECTURES)


def sd_components(kind: str, seed: int = 0, device=None) -> dict:
    """Components of the named architecture ("sd15", "sd2", or "tiny"/"tiny-sd2" for
    :func:`tiny_components`) with random weights; the SD-sized ones are built directly on ``device`` (no
    initialisation on the CPU and copy of a billion parameters). The text encoder's vocabulary is the
    bundled tokenizer's (the only one available offline); its size does not change the cost of a step."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from hmedit.toy.train import build_tokenizer

    if kind in ("tiny", "tiny-sd2"):  # small enough to build on the CPU; the loader moves modules anyway
        return tiny_components("sd2" if kind == "tiny-sd2" else "sd1", seed)
    if kind not in SD_ARCHITECTURES:
        raise ValueError(kind)
    arch = SD_ARCHITECTURES[kind]
    torch.manual_seed(seed)
    tok = build_tokenizer()
    with torch.device(device or "cpu"):
        text = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tok),
                max_position_embeddings=77,
                bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
                **arch["text"],
            )
        )
        unet = UNet2DConditionModel(**arch["unet"])
        vae = AutoencoderKL(**arch["vae"])
    sched = sd_scheduler(arch["prediction_type"] == "v_prediction")
    return dict(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=sched)
