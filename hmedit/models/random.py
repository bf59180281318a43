"""Randomly initialised SD-family models of any size, for tests and speed benchmarks (speed does not depend on
the weights). The tokenizer is the bundled world's, so nothing is downloaded."""

from __future__ import annotations

from pathlib import Path


def tiny_components(family: str = "sd1", seed: int = 0, sample_size: int = 32) -> dict:
    """Tiny SD1-like (epsilon, conv projection, 32-dim text) or SD2-like (v-prediction, linear projection,
    larger text width) components."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
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
    sched = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="v_prediction" if sd2 else "epsilon",
    )
    return dict(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=sched)


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
