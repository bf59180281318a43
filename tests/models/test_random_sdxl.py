"""Random-weight SDXL: the tiny components (shaped as diffusers' own SDXL tests build them), the diffusers
folder and single-file checkpoint they save to, and the published SDXL base architecture by name."""

import numpy as np
import pytest
import torch

from hmedit.models import load as L
from hmedit.models.random import (
    RANDOM_KINDS,
    save_single_file_sdxl,
    save_tiny,
    sd_components,
    sdxl_state_dict_to_sgm,
    tiny_components,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SDXL_KEYS = {"vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "scheduler"}


@pytest.fixture(scope="module")
def tiny():
    return tiny_components("sdxl")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny-sdxl") / "model", "sdxl")


def test_tiny_sdxl_is_shaped_as_sdxl(tiny):
    assert set(tiny) == SDXL_KEYS
    unet, te, te2 = tiny["unet"].config, tiny["text_encoder"].config, tiny["text_encoder_2"].config
    assert type(tiny["text_encoder_2"]).__name__ == "CLIPTextModelWithProjection"
    assert unet.addition_embed_type == "text_time" and unet.use_linear_projection
    assert unet.cross_attention_dim == te.hidden_size + te2.hidden_size
    assert unet.projection_class_embeddings_input_dim == 6 * unet.addition_time_embed_dim + te2.projection_dim
    assert unet.down_block_types == ("DownBlock2D", "CrossAttnDownBlock2D")  # none at the finest level
    # the bundled vocabulary for both, with SDXL's padding: the end token for CLIP-L, "!" for OpenCLIP bigG
    assert tiny["tokenizer"].get_vocab() == tiny["tokenizer_2"].get_vocab()
    assert tiny["tokenizer"].pad_token_id == tiny["tokenizer"].eos_token_id
    assert tiny["tokenizer_2"].pad_token == "!" and tiny["tokenizer_2"].pad_token_id == 0
    sched = tiny["scheduler"].config
    assert type(tiny["scheduler"]).__name__ == "EulerDiscreteScheduler"
    assert (sched.timestep_spacing, sched.steps_offset, sched.prediction_type) == ("leading", 1, "epsilon")
    assert tiny["vae"].config.scaling_factor == 0.13025


def test_tiny_sdxl_unet_takes_the_added_conditioning(tiny):
    unet, te2 = tiny["unet"], tiny["text_encoder_2"].config
    x = torch.randn(2, 4, 8, 8)
    ctx = torch.randn(2, 77, unet.config.cross_attention_dim)
    added = {
        "text_embeds": torch.randn(2, te2.projection_dim),
        "time_ids": torch.tensor([[64, 64, 0, 0, 64, 64]] * 2),
    }
    with torch.no_grad():
        out = unet(x, 500, encoder_hidden_states=ctx, added_cond_kwargs=added).sample
        other = dict(added, time_ids=added["time_ids"] + torch.tensor([0, 0, 8, 8, 0, 0]))
        moved = unet(x, 500, encoder_hidden_states=ctx, added_cond_kwargs=other).sample
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert not torch.equal(out, moved)  # the crop coordinates reach the UNet


def test_saved_folder_loads_and_runs_in_both_sdxl_pipelines(tiny_dir, tiny):
    import json

    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    assert json.loads((tiny_dir / "model_index.json").read_text())["force_zeros_for_empty_prompt"] is True
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_dir, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    assert torch.equal(pipe.unet.conv_in.weight, tiny["unet"].conv_in.weight)  # same seed, same weights
    img = pipe(
        "a red cube", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np"
    )
    img = img.images
    assert img.shape == (1, 64, 64, 3) and np.isfinite(img).all() and img.std() > 0
    i2i = StableDiffusionXLImg2ImgPipeline.from_pretrained(tiny_dir, local_files_only=True)
    i2i.set_progress_bar_config(disable=True)
    assert i2i.config.force_zeros_for_empty_prompt and not i2i.config.requires_aesthetics_score
    out = i2i(
        "a red cube",
        image=torch.rand(1, 3, 64, 64),
        strength=0.5,
        num_inference_steps=4,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert out.shape == (1, 64, 64, 3) and np.isfinite(out).all()


def test_single_file_checkpoint_round_trips_through_diffusers(tiny_dir, tiny, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    path = save_single_file_sdxl(tmp_path / "tiny-sdxl.safetensors", tiny)
    pipe = StableDiffusionXLPipeline.from_single_file(str(path), config=str(tiny_dir), local_files_only=True)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        got, want = getattr(pipe, name).state_dict(), tiny[name].state_dict()
        assert got.keys() == want.keys(), name
        assert all(torch.equal(got[k], want[k]) for k in want), name


def test_sdxl_base_single_file_layout_is_the_published_one():
    """The SGM names of the full-size architecture (built on the meta device: nothing is allocated) are those
    diffusers detects as SDXL base and converts back to the same shapes."""
    from diffusers.loaders import single_file_utils as S

    comps = sd_components("sdxl", device="meta")
    sgm = sdxl_state_dict_to_sgm(comps)
    assert S.infer_diffusers_model_type(sgm) == "xl_base"
    for name in (
        "model.diffusion_model.label_emb.0.0.weight",
        "model.diffusion_model.input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight",
        "model.diffusion_model.input_blocks.7.1.transformer_blocks.9.ff.net.2.weight",
        "model.diffusion_model.output_blocks.2.2.conv.weight",  # the upsampler after cross-attention
        "model.diffusion_model.output_blocks.5.2.conv.weight",
        "model.diffusion_model.middle_block.1.transformer_blocks.9.norm3.weight",
        "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight",
        "first_stage_model.encoder.mid.attn_1.proj_out.weight",
        "conditioner.embedders.0.transformer.text_model.encoder.layers.11.mlp.fc2.bias",
        "conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight",
        "conditioner.embedders.1.model.text_projection",
    ):
        assert name in sgm, name
    back = {
        "unet": S.convert_ldm_unet_checkpoint(sgm, comps["unet"].config),
        "vae": S.convert_ldm_vae_checkpoint(sgm, comps["vae"].config),
    }
    for name, got in back.items():
        want = comps[name].state_dict()
        assert got.keys() == want.keys() and all(got[k].shape == want[k].shape for k in want), name


def test_random_sdxl_resolves_by_name():
    assert {"sdxl", "tiny-sdxl"} <= set(RANDOM_KINDS)
    assert L.resolve("random:sdxl").source == "random"
    assert set(sd_components("tiny-sdxl")) == SDXL_KEYS
