"""Model families: everything that differs between SD 1.x, SD 2.x and SDXL, in one class each.

A family owns: which components a model has and how they load, how a prompt becomes conditioning (which text
encoders, which hidden layer, a pooled embedding), the extra UNet inputs (SDXL's size and crop ids), the UNet
levels that have cross-attention, the VAE's precision and the preset that holds its defaults; a learned token
has one row per text encoder its ``text_components`` name. Adding a family is adding one class here and
naming it in :data:`FAMILIES`.

SDXL follows diffusers' ``StableDiffusionXLPipeline`` (Podell et al., "SDXL: Improving Latent Diffusion Models
for High-Resolution Image Synthesis", arXiv:2307.01952): both encoders' penultimate hidden states,
concatenated; the pooled embedding of the second encoder; ``time_ids`` = original size + crop top-left +
target size; with ``force_zeros_for_empty_prompt`` an empty negative prompt is all zeros.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from hmedit.errors import HmeditError


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False, truncation=False).input_ids


@dataclass
class TextStack:
    """The text encoders of one model, used together: ``pairs`` of (tokenizer, encoder); the hidden states
    of ``layer`` (-1: the last, after the final norm, as SD 1/2 use; -2: the penultimate, as SDXL) of each
    encoder, concatenated along the features; the pooled embedding from encoder ``pooled`` (or none)."""

    pairs: list[tuple]
    layer: int = -1
    pooled: int | None = None

    @property
    def window(self) -> int:
        return self.pairs[0][0].model_max_length

    @property
    def width(self) -> int:
        return sum(enc.config.hidden_size for _, enc in self.pairs)

    def word_ids(self, text: str) -> list[list[int]]:
        """Each tokenizer's word ids of ``text`` (no start/end); the tokenizers must agree on the count."""
        out = [_ids(tok, text) for tok, _ in self.pairs]
        if len({len(o) for o in out}) > 1:
            raise HmeditError(
                f"the model's tokenizers split '{text[:40]}' into different numbers of tokens",
                hint="a model whose tokenizers share one vocabulary is needed for regional prompts",
            )
        return out

    def _run(self, k: int, ids: Tensor) -> tuple[Tensor, Tensor | None]:
        """Encoder ``k`` on ``ids`` [B, T]: (hidden states [B, T, D_k], pooled [B, P] or None)."""
        enc = self.pairs[k][1]
        out = enc(ids.to(enc.device), output_hidden_states=self.layer != -1)
        hidden = out.last_hidden_state if self.layer == -1 else out.hidden_states[self.layer]
        pooled = None
        if self.pooled == k:  # CLIPTextModelWithProjection: the projected embedding; else the pooled output
            pooled = out.text_embeds if getattr(out, "text_embeds", None) is not None else out.pooler_output
        return hidden, pooled

    def embed(self, rows: Sequence[Tensor]) -> tuple[Tensor, Tensor | None]:
        """``rows[k]``: [B, T] ids of tokenizer k -> ([B, T, D] hidden states, concatenated; pooled)."""
        hidden, pooled = [], None
        for k in range(len(self.pairs)):
            h, p = self._run(k, rows[k])
            hidden.append(h)
            pooled = p if p is not None else pooled
        return torch.cat(hidden, dim=-1), pooled

    @torch.no_grad()
    def encode_window(self, text: str, *, zero: bool = False) -> tuple[Tensor, Tensor | None]:
        """[77·n, D] embeddings of one prompt, identical to diffusers for prompts that fit the window (longer
        ones in 75-token chunks, as A1111 does), and the pooled embedding of its first window. ``zero``: both
        all zeros, of the same shapes (SDXL's ``force_zeros_for_empty_prompt`` for an empty negative)."""
        n = self.window
        rows = []
        words = self.word_ids(text)
        for (tok, _), ids in zip(self.pairs, words):
            if len(ids) <= n - 2:
                rows.append(
                    tok(
                        text, padding="max_length", max_length=n, truncation=True, return_tensors="pt"
                    ).input_ids
                )
            else:
                body = n - 2
                chunks = [ids[i : i + body] for i in range(0, len(ids), body)]
                pad = tok.pad_token_id
                rows.append(
                    torch.tensor(
                        [[tok.bos_token_id, *c, tok.eos_token_id] + [pad] * (body - len(c)) for c in chunks]
                    )
                )
        hidden, pooled = self.embed(rows)
        hidden, pooled = hidden.reshape(-1, hidden.shape[-1]), (pooled[0] if pooled is not None else None)
        if zero:
            hidden, pooled = (
                torch.zeros_like(hidden),
                (torch.zeros_like(pooled) if pooled is not None else None),
            )
        return hidden, pooled

    @torch.no_grad()
    def encode_words(self, text: str) -> Tensor:
        """A non-root node's tokens: its words and end token, [n_words + 1, D] (chunked if long). CLIP's text
        attention is causal, so these equal the same positions of the padded 77-token encoding."""
        words = self.word_ids(text)
        if not words[0]:
            return torch.zeros(0, self.width)
        body = self.window - 2
        out = []
        for i in range(0, len(words[0]), body):
            rows = [
                torch.tensor([[tok.bos_token_id, *ids[i : i + body], tok.eos_token_id]])
                for (tok, _), ids in zip(self.pairs, words)
            ]
            out.append(self.embed(rows)[0][0, 1:])
        return torch.cat(out)


class Family:
    """SD 1.x: one CLIP text encoder (last hidden state), 4 latent channels, epsilon prediction."""

    name = "sd1"
    label = "SD 1.x"
    preset = "sd15"
    text_components: tuple[tuple[str, str], ...] = (("tokenizer", "text_encoder"),)
    pipeline = "StableDiffusionPipeline"
    hidden_layer = -1
    pooled_from: int | None = None

    def __repr__(self) -> str:
        return f"<family {self.name}>"

    # ---- text
    def text(self, model) -> TextStack:
        return TextStack(
            list(zip(model.tokenizers, model.text_encoders)), self.hidden_layer, self.pooled_from
        )

    def zero_empty_negative(self, model) -> bool:
        """Whether an empty root negative prompt is all zeros instead of the encoding of ''."""
        return False

    def added_cond(self, pooled: Tensor | None, ids: Tensor) -> dict | None:
        """Extra UNet inputs (``added_cond_kwargs``) for a batch: ``pooled`` [B, P] and ``ids`` [B, 6]."""
        return None

    def time_ids(self, original: tuple[int, int], crop: tuple[int, int], target: tuple[int, int]) -> Tensor:
        """SDXL's micro-conditioning, (h, w) original, (top, left) crop, (h, w) target, as [6]."""
        return torch.tensor([*original, *crop, *target], dtype=torch.float32)

    @property
    def uses_time_ids(self) -> bool:
        return False

    # ---- UNet and VAE
    @staticmethod
    def factors(unet) -> list[int]:
        """The latent downsampling factor of every UNet level (SD 1.x/2.x: 1, 2, 4, 8)."""
        return [2**i for i in range(len(unet.config.block_out_channels))]

    @staticmethod
    def cross_attention_factors(unet) -> list[int]:
        """The factors of the levels that have cross-attention (down, mid or up blocks)."""
        cfg = unet.config
        n = len(cfg.block_out_channels)
        out = {2**i for i, t in enumerate(cfg.down_block_types) if "CrossAttn" in t}
        out |= {2 ** (n - 1 - i) for i, t in enumerate(cfg.up_block_types) if "CrossAttn" in t}
        if cfg.mid_block_type and "CrossAttn" in cfg.mid_block_type:
            out.add(2 ** (n - 1))
        return sorted(out)

    def vae_dtype(self, dtype: torch.dtype, vae_config: dict) -> torch.dtype:
        """The VAE runs in fp32 when the model runs in fp16: fp16 VAEs overflow into NaN (black images)."""
        return torch.float32 if dtype == torch.float16 else dtype

    @staticmethod
    def detect(unet_config: dict, index: dict) -> bool:
        return False


class SD2(Family):
    """SD 2.x: OpenCLIP ViT-H (1024 wide), linear projections, v-prediction for the 768 px models."""

    name = "sd2"
    label = "SD 2.x"
    preset = "sd21"

    @staticmethod
    def detect(unet_config: dict, index: dict) -> bool:
        return unet_config.get("cross_attention_dim") == 1024 or bool(
            unet_config.get("use_linear_projection")
        )


class SDXL(Family):
    """SDXL: two text encoders (penultimate states concatenated), a pooled embedding and size/crop ids."""

    name = "sdxl"
    label = "SDXL"
    preset = "sdxl"
    text_components = (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))
    pipeline = "StableDiffusionXLPipeline"
    hidden_layer = -2
    pooled_from = 1

    def zero_empty_negative(self, model) -> bool:
        return bool(model.config.get("force_zeros_for_empty_prompt", True))

    def added_cond(self, pooled: Tensor | None, ids: Tensor) -> dict | None:
        return {"text_embeds": pooled, "time_ids": ids}

    @property
    def uses_time_ids(self) -> bool:
        return True

    def vae_dtype(self, dtype: torch.dtype, vae_config: dict) -> torch.dtype:
        if dtype == torch.float16 and vae_config.get("force_upcast", True):
            return torch.float32
        return dtype

    @staticmethod
    def detect(unet_config: dict, index: dict) -> bool:
        return (
            unet_config.get("addition_embed_type") == "text_time"
            or "XL" in str(index.get("_class_name", ""))
            or "text_encoder_2" in index
        )


FAMILIES: dict[str, Family] = {f.name: f for f in (SDXL(), SD2(), Family())}
"""Families by name, in the order :func:`detect` tries them (most specific first)."""


def detect(unet_config: dict, index: dict | None = None) -> Family:
    """The family of a model from its UNet config (and model_index.json, when there is one)."""
    for fam in FAMILIES.values():
        if fam.detect(dict(unet_config), index or {}):
            return fam
    return FAMILIES["sd1"]
