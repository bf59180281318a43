"""Randomly initialised SD-family models of any size, for tests and speed benchmarks (speed does not depend on
the weights). The tokenizer is the bundled world's, so nothing is downloaded."""

from __future__ import annotations

from pathlib import Path


def bundled_tokenizer():
    """The bundled toy model's tokenizer (a CLIP BPE over the toy world's words): the one vocabulary available
    offline, read from the shipped weights."""
    from transformers import CLIPTokenizer

    from hmedit.models.load import BUNDLED

    return CLIPTokenizer.from_pretrained(BUNDLED["toy"] / "tokenizer")


def tiny_components(family: str = "sd1", seed: int = 0, sample_size: int = 32) -> dict:
    """Tiny SD1-like (epsilon, conv projection, 32-dim text), SD2-like (v-prediction, linear projection,
    larger text width) or SDXL-like (two text encoders, text-time added conditioning; see
    :func:`_tiny_sdxl`) components, keyed as the family's diffusers pipeline takes them."""
    import torch
    from diffusers import UNet2DConditionModel

    if family == "sdxl":
        return _tiny_sdxl(seed, sample_size)
    if family not in ("sd1", "sd2"):
        raise ValueError(family)
    sd2 = family == "sd2"
    torch.manual_seed(seed)
    tok = bundled_tokenizer()
    xdim = 48 if sd2 else 32
    text = _clip_text(
        tok,
        hidden_size=xdim,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        hidden_act="gelu" if sd2 else "quick_gelu",
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
    vae = _tiny_vae(sample_size)
    return dict(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=sd_scheduler(sd2))


def _tiny_vae(sample_size: int, **config):
    """The tiny VAE of the tiny models (factor 2); ``config``: SDXL's scaling factor and upcasting."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(32, 32),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=sample_size * 2,
        **config,
    )


def _clip_text(tok, projection: bool = False, **config):
    """A CLIP text tower (with the pooled-output projection when ``projection``) whose vocabulary and special
    tokens are ``tok``'s."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(
        CLIPTextConfig(
            vocab_size=len(tok),
            max_position_embeddings=77,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            **config,
        )
    )


def sdxl_tokenizers():
    """SDXL's two tokenizers over the bundled vocabulary: the first pads with the end token (CLIP ViT-L's),
    the second with "!" (id 0), as SDXL's OpenCLIP bigG tokenizer does."""
    import copy

    tok = bundled_tokenizer()
    tok_2 = copy.deepcopy(tok)
    tok_2.pad_token = "!"
    return tok, tok_2


def _tiny_sdxl(seed: int = 0, sample_size: int = 32) -> dict:
    """Tiny random SDXL components, shaped as diffusers' own SDXL pipeline tests build them: a UNet with
    ``text_time`` added conditioning (6 time ids of 8 dims + the pooled projection), no cross-attention at the
    finest level, linear projections and 1/2 transformer layers per level; a CLIP text encoder (32 wide,
    quick_gelu as CLIP ViT-L) and a CLIP text encoder with projection (64 wide, gelu as OpenCLIP bigG,
    projection 32), whose widths add up to the cross-attention width; SDXL's VAE scaling factor and SDXL
    base's Euler scheduler. The UNet's default output is 64x64 pixels when ``sample_size`` is 32."""
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    tok, tok_2 = sdxl_tokenizers()
    common = dict(intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, projection_dim=32)
    text = _clip_text(tok, hidden_size=32, hidden_act="quick_gelu", **common)
    text_2 = _clip_text(tok_2, projection=True, hidden_size=64, hidden_act="gelu", **common)
    time_dim = 8
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * time_dim + text_2.config.projection_dim,
        cross_attention_dim=text.config.hidden_size + text_2.config.hidden_size,
        norm_num_groups=32,
    )
    vae = _tiny_vae(sample_size, scaling_factor=0.13025, force_upcast=True)
    return dict(
        vae=vae,
        text_encoder=text,
        text_encoder_2=text_2,
        tokenizer=tok,
        tokenizer_2=tok_2,
        unet=unet,
        scheduler=sdxl_scheduler(),
    )


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


def sdxl_scheduler():
    """SDXL base 1.0's Euler scheduler (its published scheduler_config.json)."""
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        interpolation_type="linear",
        use_karras_sigmas=False,
        timestep_spacing="leading",
        steps_offset=1,
    )


def save_tiny(path: Path, family: str = "sd1", seed: int = 0, sample_size: int = 32) -> Path:
    """Write a tiny random SD1/SD2/SDXL diffusers folder at ``path`` (SDXL: ``StableDiffusionXLPipeline`` and
    ``StableDiffusionXLImg2ImgPipeline`` both load it; ``force_zeros_for_empty_prompt`` is on, as in SDXL
    base)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if family == "sdxl":
        pipe = StableDiffusionXLPipeline(
            **tiny_components(family, seed, sample_size), force_zeros_for_empty_prompt=True
        )
        pipe.save_pretrained(path)
        return Path(path)
    pipe = StableDiffusionPipeline(
        **tiny_components(family, seed, sample_size),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path)
    return Path(path)


def tiny_controlnet(unet, seed: int = 0, vae_scale: int = 2, scale: float = 0.05):
    """A random ControlNet for a (tiny) UNet: ``ControlNetModel.from_unet`` (the UNet's encoder copied), its
    conditioning embedding sized for a VAE of factor ``vae_scale``, and its zero convolutions (and the
    embedding's last conv) filled with N(0, ``scale``²) weights instead of zeros, so its residuals are not
    zero and tests can see them."""
    import math

    import torch
    from diffusers import ControlNetModel

    levels = int(math.log2(vae_scale)) + 1
    net = ControlNetModel.from_unet(
        unet, conditioning_embedding_out_channels=tuple(16 * 2**k for k in range(levels))
    )
    g = torch.Generator("cpu").manual_seed(seed)
    zeros = [*net.controlnet_down_blocks, net.controlnet_mid_block, net.controlnet_cond_embedding.conv_out]
    with torch.no_grad():
        for conv in zeros:
            for p in conv.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    return net


def save_tiny_controlnet(path: Path, model_dir: Path, seed: int = 0) -> Path:
    """Write :func:`tiny_controlnet` of the tiny model folder ``model_dir``'s UNet as a diffusers ControlNet
    folder at ``path``."""
    import json

    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet")
    vae = json.loads((Path(model_dir) / "vae" / "config.json").read_text())
    net = tiny_controlnet(unet, seed, vae_scale=2 ** (len(vae["block_out_channels"]) - 1))
    net.save_pretrained(path)
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
_CLIP_VIT_L = dict(  # CLIP ViT-L/14's text tower (SD 1.x; SDXL's first encoder)
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    projection_dim=768,
    hidden_act="quick_gelu",
)
SD_ARCHITECTURES: dict[str, dict] = {
    "sd15": dict(
        unet=dict(_SD_UNET, sample_size=64, cross_attention_dim=768, attention_head_dim=8),
        vae=dict(_SD_VAE, sample_size=512),
        # CLIP ViT-L/14's text tower
        text=_CLIP_VIT_L,
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
    # stabilityai/stable-diffusion-xl-base-1.0
    "sdxl": dict(
        unet=dict(
            _SD_UNET,
            sample_size=128,
            block_out_channels=(320, 640, 1280),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(5, 10, 20),
            cross_attention_dim=2048,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,  # 6 time ids x 256 + text_2's 1280-wide projection
        ),
        vae=dict(_SD_VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True),
        # CLIP ViT-L/14's text tower (its penultimate layer feeds the UNet, so all 12 are kept)
        text=_CLIP_VIT_L,
        # OpenCLIP ViT-bigG/14's text tower with its projection (the pooled embedding)
        text_2=dict(
            hidden_size=1280,
            intermediate_size=5120,
            num_hidden_layers=32,
            num_attention_heads=20,
            projection_dim=1280,
            hidden_act="gelu",
        ),
        prediction_type="epsilon",
    ),
}
RANDOM_KINDS = ("tiny", "tiny-sd2", "tiny-sdxl", *SD_ARCHITECTURES)
_TINY_KINDS = {"tiny": "sd1", "tiny-sd2": "sd2", "tiny-sdxl": "sdxl"}


def sd_components(kind: str, seed: int = 0, device=None) -> dict:
    """Components of the named architecture ("sd15", "sd2", "sdxl", or "tiny"/"tiny-sd2"/"tiny-sdxl" for
    :func:`tiny_components`) with random weights, keyed as the family's diffusers pipeline takes them; the
    SD-sized ones are built directly on ``device`` (no initialisation on the CPU and copy of billions of
    parameters). The text encoders' vocabulary is the bundled tokenizer's (the only one available offline);
    its size does not change the cost of a step."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    if kind in _TINY_KINDS:  # small enough to build on the CPU; the loader moves modules anyway
        return tiny_components(_TINY_KINDS[kind], seed)
    if kind not in SD_ARCHITECTURES:
        raise ValueError(kind)
    arch = SD_ARCHITECTURES[kind]
    xl = "text_2" in arch
    torch.manual_seed(seed)
    tok, tok_2 = sdxl_tokenizers() if xl else (bundled_tokenizer(), None)
    with torch.device(device or "cpu"):
        text = _clip_text(tok, **arch["text"])
        text_2 = _clip_text(tok_2, projection=True, **arch["text_2"]) if xl else None
        unet = UNet2DConditionModel(**arch["unet"])
        vae = AutoencoderKL(**arch["vae"])
    if xl:
        return dict(
            vae=vae,
            text_encoder=text,
            text_encoder_2=text_2,
            tokenizer=tok,
            tokenizer_2=tok_2,
            unet=unet,
            scheduler=sdxl_scheduler(),
        )
    sched = sd_scheduler(arch["prediction_type"] == "v_prediction")
    return dict(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=sched)


# ---------------------------------------------------------------- single-file (SGM / A1111) layout
# An SDXL checkpoint as one .safetensors file, keyed as Stability's generative-models code (and A1111,
# ComfyUI) write it: the UNet under "model.diffusion_model.", the VAE under "first_stage_model.", CLIP ViT-L
# under "conditioner.embedders.0.transformer.text_model." (Hugging Face names) and OpenCLIP bigG under
# "conditioner.embedders.1.model." (OpenCLIP names: fused q/k/v, transposed projection). diffusers reads this
# layout (from_single_file) but ships no writer, so the inverse mapping lives here; tests check that
# diffusers' own reader gives back every tensor unchanged.
_RESNET_TO_SGM = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_ATTN_TO_SGM = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_OPENCLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}


def _unet_to_sgm(sd: dict, config) -> dict:
    n = (
        config.layers_per_block + 1
    )  # SGM numbers the down path's resnets, attentions and downsamplers together
    top = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "add_embedding.linear_1": "label_emb.0.0",
        "add_embedding.linear_2": "label_emb.0.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    out = {}
    for key, value in sd.items():
        module, leaf = key.rsplit(".", 1)
        parts = module.split(".")
        if module in top:
            new = top[module]
        elif parts[0] in ("down_blocks", "up_blocks"):
            i, kind = int(parts[1]), parts[2]
            j, rest = int(parts[3]), parts[4:]
            blocks = "input_blocks" if parts[0] == "down_blocks" else "output_blocks"
            first = 1 + i * n if parts[0] == "down_blocks" else i * n
            if kind == "resnets":
                new = f"{blocks}.{first + j}.0.{_RESNET_TO_SGM[rest[0]]}"
            elif kind == "attentions":
                new = ".".join([blocks, str(first + j), "1", *rest])
            elif kind == "downsamplers":
                new = f"input_blocks.{(i + 1) * n}.0.op"
            else:  # upsamplers: after the block's last resnet (and its attention, if any)
                has_attn = "CrossAttn" in config.up_block_types[i]
                new = f"output_blocks.{first + n - 1}.{2 if has_attn else 1}.conv"
        elif parts[0] == "mid_block":
            kind, j, rest = parts[1], int(parts[2]), parts[3:]
            if kind == "resnets":
                new = f"middle_block.{2 * j}.{_RESNET_TO_SGM[rest[0]]}"
            else:
                new = ".".join(["middle_block", "1", *rest])
        else:
            raise KeyError(f"no SGM name for UNet weight {key}")
        out[f"model.diffusion_model.{new}.{leaf}"] = value
    return out


def _vae_to_sgm(sd: dict, config) -> dict:
    levels = len(config.block_out_channels)
    out = {}
    for key, value in sd.items():
        module, leaf = key.rsplit(".", 1)
        parts = module.split(".")
        side = parts[0]
        if len(parts) > 1 and parts[1] in ("down_blocks", "up_blocks"):
            i = int(parts[2]) if parts[1] == "down_blocks" else levels - 1 - int(parts[2])
            level = "down" if parts[1] == "down_blocks" else "up"
            if parts[3] == "resnets":
                sub = "nin_shortcut" if parts[5] == "conv_shortcut" else parts[5]
                new = f"{side}.{level}.{i}.block.{parts[4]}.{sub}"
            else:  # downsamplers.0.conv / upsamplers.0.conv
                new = f"{side}.{level}.{i}.{'downsample' if level == 'down' else 'upsample'}.conv"
        elif len(parts) > 1 and parts[1] == "mid_block":
            if parts[2] == "resnets":
                sub = "nin_shortcut" if parts[4] == "conv_shortcut" else parts[4]
                new = f"{side}.mid.block_{int(parts[3]) + 1}.{sub}"
            else:
                new = f"{side}.mid.attn_1.{_VAE_ATTN_TO_SGM['.'.join(parts[4:])]}"
                if value.ndim == 2:  # SGM's attention projections are 1x1 convolutions
                    value = value[:, :, None, None]
        elif len(parts) > 1 and parts[1] == "conv_norm_out":
            new = f"{side}.norm_out"
        else:
            new = module
        out[f"first_stage_model.{new}.{leaf}"] = value
    return out


def _openclip_to_sgm(sd: dict, prefix: str = "conditioner.embedders.1.model.") -> dict:
    import torch

    top = {
        "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
        "text_model.embeddings.position_embedding.weight": "positional_embedding",
        "text_model.final_layer_norm.weight": "ln_final.weight",
        "text_model.final_layer_norm.bias": "ln_final.bias",
    }
    out = {}
    for key, value in sd.items():
        if key in top:
            out[prefix + top[key]] = value
        elif key == "text_projection.weight":
            out[prefix + "text_projection"] = value.T.contiguous()  # OpenCLIP multiplies x @ projection
        elif key.startswith("text_model.encoder.layers."):
            layer, rest = key[len("text_model.encoder.layers.") :].split(".", 1)
            block = f"{prefix}transformer.resblocks.{layer}."
            module, leaf = rest.rsplit(".", 1)
            if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                if module.endswith("q_proj"):  # one fused in_proj per layer
                    qkv = [sd[f"text_model.encoder.layers.{layer}.self_attn.{p}_proj.{leaf}"] for p in "qkv"]
                    out[f"{block}attn.in_proj_{leaf}"] = torch.cat(qkv)
            else:
                out[f"{block}{_OPENCLIP_LAYER[module]}.{leaf}"] = value
        else:
            raise KeyError(f"no OpenCLIP name for text encoder weight {key}")
    return out


def _clip_state_dict(model) -> dict:
    """A CLIP text model's weights named as transformers 4 (and every checkpoint) names them: under
    "text_model." (transformers 5 drops that level from ``CLIPTextModel``)."""
    out = {}
    for key, value in model.state_dict().items():
        if key.endswith("position_ids"):
            continue
        top = key.startswith("text_model.") or key == "text_projection.weight"
        out[key if top else "text_model." + key] = value
    return out


def sdxl_state_dict_to_sgm(components: dict) -> dict:
    """One state dict of an SDXL pipeline's UNet, VAE and both text encoders, in the original SGM layout
    that single-file SDXL checkpoints use (and ``from_single_file`` reads)."""
    out = _unet_to_sgm(components["unet"].state_dict(), components["unet"].config)
    out.update(_vae_to_sgm(components["vae"].state_dict(), components["vae"].config))
    for key, value in _clip_state_dict(components["text_encoder"]).items():
        out["conditioner.embedders.0.transformer." + key] = value
    out.update(_openclip_to_sgm(_clip_state_dict(components["text_encoder_2"])))
    return {k: v.detach().contiguous() for k, v in out.items()}


def save_single_file_sdxl(path: Path, components: dict) -> Path:
    """Write SDXL components as one ``.safetensors`` checkpoint in the SGM/A1111 key layout. diffusers loads
    it offline with ``StableDiffusionXLPipeline.from_single_file(path, config=<diffusers folder>)``, the
    folder supplying the configs, tokenizers and scheduler (e.g. one written by :func:`save_tiny`)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sdxl_state_dict_to_sgm(components), str(path))
    return path


def save_tiny_single_file(path: Path, seed: int = 0, sample_size: int = 32) -> Path:
    """The tiny random SDXL of :func:`tiny_components` as one SGM-layout ``.safetensors`` file (same weights
    as ``save_tiny(folder, "sdxl", seed, sample_size)``; load it with that folder as ``config``)."""
    return save_single_file_sdxl(path, tiny_components("sdxl", seed, sample_size))
